"""Kind: drop-path and stochastic depth modules, from a registry of classes.

Classes are recognised by qualified name, so timm and torchvision need not be
installed or imported. Users add their own with :func:`register_drop_path`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .._gate import KERNELS, GatedDropout
from .._site import Mode
from .._tree import ModuleIndex, qualname
from ._replace import ModuleSwapKind

__all__ = ["DropPathKind", "register_drop_path"]


@dataclass(frozen=True)
class DropPathSpec:
    """How to read and reproduce one drop-path class."""

    p_attr: str
    kernel: str


_TIMM_DROP_PATH = DropPathSpec("drop_prob", "drop_path")
_TIMM_DROP_BLOCK = DropPathSpec("drop_prob", "module")
_REGISTRY: dict[str, DropPathSpec] = {
    "timm.layers.drop.DropPath": _TIMM_DROP_PATH,
    "timm.models.layers.drop.DropPath": _TIMM_DROP_PATH,
    "timm.layers.drop.DropBlock2d": _TIMM_DROP_BLOCK,
    "timm.models.layers.drop.DropBlock2d": _TIMM_DROP_BLOCK,
    "torchvision.ops.stochastic_depth.StochasticDepth": DropPathSpec(
        "p", "stochastic_depth"
    ),
    "torchvision.ops.drop_block.DropBlock2d": DropPathSpec("p", "module"),
    "torchvision.ops.drop_block.DropBlock3d": DropPathSpec("p", "module"),
}


def register_drop_path(
    cls: type[nn.Module] | str, *, p_attr: str = "drop_prob", kernel: str = "module"
) -> None:
    """Teach surgery a drop-path or stochastic-depth class of your own.

    Args:
        cls: The class, or its qualified name (``"mypkg.layers.DropPath"``) so
            the package need not be imported.
        p_attr: The attribute that holds the drop probability.
        kernel: ``"module"`` (default) gates by calling your module, which is
            always faithful. ``"drop_path"`` (timm semantics: one draw per
            sample, scaled by ``1 - p``) or ``"stochastic_depth"``
            (torchvision's ``mode="row"``) reproduce it without calling it,
            which also compiles without recompiling when ``p`` changes.

    Example:
        >>> class MyDropPath(nn.Module):
        ...     def __init__(self, rate: float) -> None:
        ...         super().__init__()
        ...         self.rate = rate
        ...     def forward(self, x):
        ...         return x
        >>> register_drop_path(MyDropPath, p_attr="rate")
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}; got {kernel!r}")
    name = cls if isinstance(cls, str) else qualname(cls)
    _REGISTRY[name] = DropPathSpec(p_attr, kernel)
    _BY_CLASS.clear()


def is_drop_path_class(name: str) -> bool:
    """True if ``name`` (``module.Class``) is a registered drop-path class."""
    return name in _REGISTRY


# spec_for's answers by class: discovery asks about every module of a model,
# and walking each class's MRO by name each time dominated it on large models.
_BY_CLASS: dict[type, DropPathSpec | None] = {}


def spec_for(module: nn.Module) -> DropPathSpec | None:
    """The registered spec of ``module``'s class, or of its nearest base."""
    cls = type(module)
    if cls not in _BY_CLASS:
        _BY_CLASS[cls] = _spec_of_class(cls)
    return _BY_CLASS[cls]


def _spec_of_class(cls: type) -> DropPathSpec | None:
    for position, klass in enumerate(cls.__mro__):
        spec = _REGISTRY.get(qualname(klass))
        if spec is None:
            continue
        if position > 0 and spec.kernel != "module":
            # A subclass may change forward: call it rather than imitate it.
            return DropPathSpec(spec.p_attr, "module")
        return spec
    return None


class DropPathKind(ModuleSwapKind):
    """Drop-path, stochastic-depth and drop-block modules."""

    name = "drop_path"
    mechanism = "module swap"

    def claims(self, index: ModuleIndex, path: str, module: nn.Module) -> bool:
        return spec_for(module) is not None

    def probability(self, module: nn.Module) -> float:
        spec = spec_for(module)
        if spec is None:
            raise TypeError(f"{qualname(module)} is not a registered drop-path class")
        return float(getattr(module, spec.p_attr))

    def build_gate(self, module: nn.Module, *, mode: Mode, p: float) -> GatedDropout:
        spec = spec_for(module)
        if spec is None or spec.kernel == "module":
            p_attr = spec.p_attr if spec is not None else "drop_prob"
            return GatedDropout(
                p, mode=mode, kernel="module", inner=module, p_attr=p_attr
            )
        return GatedDropout(
            p,
            mode=mode,
            kernel=spec.kernel,
            scale_by_keep=bool(getattr(module, "scale_by_keep", True)),
            batchwise=getattr(module, "mode", "row") == "batch",
        )
