"""Kind: a dropout module that forward code calls (``nn.Dropout`` and kin).

Covers the six classes under ``torch.nn.modules.dropout._DropoutNd`` and
their subclasses. A subclass that overrides ``forward`` is gated by calling
it, so its own behaviour is kept; the six built-in forwards are reproduced by
the gate's kernels, which also compile without recompiling on a new rate.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from .._gate import GatedDropout
from .._site import Mode
from .._tree import ModuleIndex
from ._replace import ModuleSwapKind
from .read_p import owner_reads_p

__all__ = ["DropoutModuleKind", "kernel_for"]

_KERNELS: dict[type[nn.Module], str] = {
    nn.Dropout: "dropout",
    nn.Dropout1d: "dropout1d",
    nn.Dropout2d: "dropout2d",
    nn.Dropout3d: "dropout3d",
    nn.AlphaDropout: "alpha_dropout",
    nn.FeatureAlphaDropout: "feature_alpha_dropout",
}


def kernel_for(module: nn.Module) -> str:
    """The gate kernel that reproduces ``module``'s forward exactly."""
    forward = type(module).forward
    for cls, kernel in _KERNELS.items():
        if isinstance(module, cls) and forward is cls.forward:
            return kernel
    return "module"


def build_dropout_gate(module: nn.Module, *, mode: Mode, p: float) -> GatedDropout:
    kernel = kernel_for(module)
    if kernel == "module":
        return GatedDropout(p, mode=mode, kernel="module", inner=module, p_attr="p")
    return GatedDropout(p, mode=mode, kernel=kernel, inplace=bool(module.inplace))


class DropoutModuleKind(ModuleSwapKind):
    """Dropout modules that are called, and whose owner does not read ``.p``."""

    name = "module"
    mechanism = "module swap"

    def claims(self, index: ModuleIndex, path: str, module: nn.Module) -> bool:
        return isinstance(module, _DropoutNd) and not owner_reads_p(index, path)

    def build_gate(self, module: nn.Module, *, mode: Mode, p: float) -> GatedDropout:
        return build_dropout_gate(module, mode=mode, p=p)
