"""The modules that take a dropout module's place: a gate and a stripped stand-in.

A :class:`GatedDropout` reproduces the module it replaced draw for draw while
its gate follows ``training``, and can be forced on or off and given another
probability without touching the model's code. A :class:`StrippedDropout` is an
``nn.Identity`` that still answers ``p`` (and ``drop_prob``) with ``0.0``.

Both remember the module they replaced, outside ``state_dict``, so
:func:`surgery.restore` can put the very same object back.
"""

# No ``from __future__ import annotations`` here: TorchScript cannot resolve
# annotations written as strings, and GatedDropout must script.
import math
from typing import Any, Final

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._jit_internal import is_scripting

from ._errors import OptionError, SiteError
from ._site import MODES, Mode

__all__ = ["KERNELS", "GatedDropout", "StrippedDropout"]

KERNELS: Final = (
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "feature_dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "drop_path",
    "stochastic_depth",
    "module",
)
"""How a gate drops when it drops. ``"module"`` calls the replaced module."""

# SELU's negative saturation value, as used by ATen's alpha dropout.
_ALPHA: Final = 1.7580993408473766

# The hook dictionaries a replacement shares with the module it replaces, so
# hooks keep firing and their handles keep working in both directions.
_HOOK_DICTS: Final = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)

# The containers of a module's state, shared the same way.
_STATE_DICTS: Final = (
    "_parameters",
    "_buffers",
    "_non_persistent_buffers_set",
    "_modules",
)


def check_p(p: object, *, where: str = "p") -> float:
    """Return ``p`` as a float, or raise ``ValueError`` if it is no probability."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise OptionError(f"{where} must be a float in [0, 1], got {p!r}")
    value = float(p)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise OptionError(f"{where} must be in [0, 1], got {value}")
    return value


def check_mode(mode: object) -> Mode:
    """Return ``mode`` if it is one of ``"train"``, ``"on"``, ``"off"``."""
    if mode not in MODES:
        raise OptionError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def adopt(replacement: nn.Module, original: nn.Module, kind: str) -> None:
    """Make ``replacement`` stand in for ``original``: mode, hooks and memory."""
    replacement.training = original.training
    for name in _HOOK_DICTS:
        if name in original.__dict__:
            # Share the dict itself: a handle removes its hook from both.
            replacement.__dict__[name] = original.__dict__[name]

    # A gate that calls the original holds it as a plain attribute, not a
    # child: the original's own tensors are shared below instead.
    for name, child in list(replacement._modules.items()):
        if child is original:
            del replacement._modules[name]
            replacement.__dict__[name] = original
    if replacement._parameters or replacement._buffers or replacement._modules:
        raise SiteError(f"{type(replacement).__name__} has tensors of its own")

    # Share the original's parameters, buffers and children: state_dict() keys
    # and values stay the same, and .to(), to_empty() and load_state_dict()
    # reach the original's very tensors, so restore() finds them up to date.
    for name in _STATE_DICTS:
        replacement.__dict__[name] = original.__dict__[name]

    # Kept out of _modules on purpose: it must not appear in state_dict() or
    # named_modules(), and restore() puts this very object back.
    replacement.__dict__["_surgery_original"] = original
    replacement.__dict__["_surgery_kind"] = kind


def original_of(replacement: nn.Module) -> nn.Module:
    """The module a gate or stripped stand-in replaced."""
    original = replacement.__dict__["_surgery_original"]
    if not isinstance(original, nn.Module):
        raise SiteError(f"{type(replacement).__name__} holds no original module")
    return original


def kind_of(module: nn.Module) -> str | None:
    """The kind that made ``module`` if it is a replacement, else ``None``."""
    kind = module.__dict__.get("_surgery_kind")
    return kind if isinstance(kind, str) else None


class GatedDropout(nn.Module):
    """Dropout under a gate: follow ``training``, always drop, or never drop.

    With ``mode="train"`` it behaves exactly like the module it replaced and
    draws the same random numbers, so outputs under a fixed seed are bitwise
    equal. ``mode="on"`` drops in eval mode too (Monte Carlo dropout);
    ``mode="off"`` returns its input untouched and runs no random op.

    ``p`` answers the probability that model code reading ``module.p`` should
    use: the configured rate, or ``0.0`` while the gate is off. Assigning
    ``p`` sets the rate. Neither a new rate nor a new mode changes any guarded
    Python value inside a compiled graph beyond the mode string, so under
    ``torch.compile`` changing ``p`` never recompiles and each mode compiles once.

    Args:
        p: Drop probability in ``[0, 1]``.
        mode: ``"train"``, ``"on"`` or ``"off"``.
        kernel: Which dropout it performs, one of :data:`KERNELS`.
        inplace: Passed to the functional dropout, as ``nn.Dropout(inplace=)``.
        scale_by_keep: For ``"drop_path"``: divide kept samples by ``1 - p``.
        batchwise: For ``"stochastic_depth"``: one draw for the whole batch
            (torchvision's ``mode="batch"``) instead of one per sample.
        inner: For ``kernel="module"``: the module called when dropping.
        p_attr: For ``kernel="module"``: the attribute of ``inner`` that
            holds its probability.

    Example:
        >>> gate = GatedDropout(0.5, mode="off")
        >>> x = torch.ones(4)
        >>> gate(x) is x
        True
        >>> gate.mode = "on"
        >>> _ = gate.eval()
        >>> bool((gate(torch.ones(1000)) == 0).any())
        True
    """

    # p and drop_prob compile, so scripted owners that read .p work.
    __jit_unused_properties__: Final = ["rate"]

    kernel: str
    mode: str
    inplace: bool
    scale_by_keep: bool
    batchwise: bool

    def __init__(
        self,
        p: float = 0.5,
        *,
        mode: Mode = "train",
        kernel: str = "dropout",
        inplace: bool = False,
        scale_by_keep: bool = True,
        batchwise: bool = False,
        inner: nn.Module | None = None,
        p_attr: str = "p",
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}; got {kernel!r}")
        if (kernel == "module") != (inner is not None):
            raise ValueError("pass inner= exactly when kernel='module'")
        self.kernel = kernel
        self.mode = check_mode(mode)
        self.inplace = inplace
        self.scale_by_keep = scale_by_keep
        self.batchwise = batchwise
        self.p_attr = p_attr
        self._held = False
        if inner is not None:
            self.inner = inner

        # The rate lives twice: a float for eager kernels and export, and a
        # CPU tensor (not a buffer: no state_dict key, untouched by to_empty)
        # that compiled graphs read, so a new rate is data, not a new guard.
        self._rate = 0.0
        self._rate_tensor = torch.zeros((), dtype=torch.float32, device="cpu")
        self.rate = p

    @property
    def rate(self) -> float:
        """The configured drop probability, whatever the mode."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._set_rate(value)

    # Setters are compiled with the getters under torch.jit.script; the work
    # of setting the rate is Python only (a scripted module never sets it).
    @torch.jit.unused
    def _set_rate(self, value: float) -> None:
        value = check_p(value)
        self._rate = value
        self._rate_tensor.fill_(value)
        if self.kernel == "module":
            setattr(self.inner, self.p_attr, value)

    @property
    def p(self) -> float:
        """The probability model code should use: the rate, or 0.0 when off."""
        if self.mode == "off" or self._held:
            return 0.0
        return self._rate

    @p.setter
    def p(self, value: float) -> None:
        self._set_rate(value)

    @property
    def drop_prob(self) -> float:
        """Alias of :attr:`p` for code written against drop-path modules."""
        return self.p

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        self._set_rate(value)

    def extra_repr(self) -> str:
        return f"p={self._rate}, mode={self.mode!r}, kernel={self.kernel!r}"

    def train(self, mode: bool = True) -> "GatedDropout":
        """Set the training flag, and that of the module the gate calls."""
        super().train(mode)
        # The called module is no child (its tensors are shared instead), so
        # nn.Module.train would not reach it.
        inner = self.__dict__.get("inner")
        if isinstance(inner, nn.Module):
            inner.training = mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "off":
            return x
        if self.kernel == "module":
            # A class of its own may do something in eval mode too (drop
            # anyway, rescale): in "train" mode it sees the gate's own flag.
            return self._call_inner(x, self.mode == "on" or self.training)
        if not (self.mode == "on" or self.training):
            return x
        # TorchScript skips a branch under a lone is_scripting() test unseen;
        # it cannot compile the check inside.
        if not is_scripting():  # noqa: SIM102
            if _in_compiled_graph():
                return _tensor_rate_kernel(
                    self.kernel,
                    x,
                    self._rate_tensor,
                    self.scale_by_keep,
                    self.batchwise,
                )
        return _float_rate_kernel(
            self.kernel,
            x,
            self._rate,
            self.inplace,
            self.scale_by_keep,
            self.batchwise,
        )

    def effective_rate(self) -> float:
        """The probability a call site governed by this gate should pass now.

        What model code computes as ``p if self.training else 0.0``, under the
        gate: the rate when on, or when following a module that is training.
        """
        if self.mode == "off" or self._held:
            return 0.0
        if self.mode == "on" or self.training:
            return self._rate
        return 0.0

    @torch.jit.unused
    def _call_inner(self, x: Tensor, training: bool) -> Tensor:
        # The inner module decides by its own training flag; set it to what
        # the gate wants. Its forward is called directly: its hooks are the
        # gate's hooks and have fired already.
        inner = self.inner
        was_training = inner.training
        inner.training = training
        try:
            out: Tensor = inner.forward(x)
        finally:
            inner.training = was_training
        return out


class StrippedDropout(nn.Identity):
    """An ``nn.Identity`` that stands in for a stripped dropout site.

    It is an ``nn.Identity`` so that ``isinstance`` checks in other libraries
    still see one, and it answers ``p == 0.0`` and ``drop_prob == 0.0`` so that
    model code reading the probability sees that nothing is dropped. Both
    properties compile under ``torch.jit.script``, so a scripted owner that
    reads ``.p`` gets the constant ``0.0``.
    """

    @property
    def p(self) -> float:
        """Always ``0.0``."""
        return 0.0

    @p.setter
    def p(self, value: float) -> None:
        raise SiteError(
            "cannot set p on a stripped dropout site; "
            "use surgery.gate() or surgery.set_dropout() to control it instead"
        )

    @property
    def drop_prob(self) -> float:
        """Always ``0.0``."""
        return 0.0

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        self.p = value

    def extra_repr(self) -> str:
        original = self.__dict__.get("_surgery_original")
        return f"stripped={type(original).__name__}" if original is not None else ""


def _in_compiled_graph() -> bool:
    """True while dynamo traces, but not under torch.export.

    Export should record the real dropout op (``aten.dropout``), which the
    float-rate kernels produce; only compiled graphs need the rate as data.
    """
    compiler: Any = torch.compiler
    return bool(compiler.is_dynamo_compiling()) and not bool(compiler.is_exporting())


def _float_rate_kernel(
    kernel: str,
    x: Tensor,
    p: float,
    inplace: bool,
    scale_by_keep: bool,
    batchwise: bool,
) -> Tensor:
    """Drop exactly as the replaced module would in training mode."""
    if kernel == "dropout":
        return F.dropout(x, p, True, inplace)
    if kernel == "dropout1d":
        return F.dropout1d(x, p, True, inplace)
    if kernel == "dropout2d":
        return F.dropout2d(x, p, True, inplace)
    if kernel == "dropout3d":
        return F.dropout3d(x, p, True, inplace)
    if kernel == "feature_dropout":
        if inplace:
            return torch.feature_dropout_(x, p, True)
        return torch.feature_dropout(x, p, True)
    if kernel == "alpha_dropout":
        return F.alpha_dropout(x, p, True, inplace)
    if kernel == "feature_alpha_dropout":
        return F.feature_alpha_dropout(x, p, True, inplace)
    if p == 0.0:
        return x
    keep = 1.0 - p
    noise = x.new_empty(_noise_shape(kernel, x, batchwise)).bernoulli_(keep)
    if kernel == "drop_path":
        # Same draws and arithmetic as timm's drop_path().
        if keep > 0.0 and scale_by_keep:
            noise.div_(keep)
        return x * noise
    # Same draws and arithmetic as torchvision's stochastic_depth().
    if keep > 0.0:
        noise.div_(keep)
    return x * noise


def _noise_shape(kernel: str, x: Tensor, batchwise: bool) -> list[int]:
    """Shape of the random mask: one value per element, feature or sample."""
    dims = x.dim()
    if kernel in ("dropout", "alpha_dropout"):
        return list(x.shape)
    if kernel in ("dropout1d", "dropout2d", "dropout3d"):
        spatial = int(kernel[len("dropout")])
        return list(x.shape[: dims - spatial]) + [1] * spatial
    if kernel in ("feature_dropout", "feature_alpha_dropout"):
        return list(x.shape[:2]) + [1] * (dims - 2)
    if kernel == "stochastic_depth" and batchwise:
        return [1] * dims
    return [x.shape[0]] + [1] * (dims - 1)


def _tensor_rate_kernel(
    kernel: str, x: Tensor, rate: Tensor, scale_by_keep: bool, batchwise: bool
) -> Tensor:
    """The same dropout with the rate as a tensor, for compiled graphs.

    Compiled dropout never draws the same numbers as eager dropout anyway;
    what matters here is that a new rate is a new value, not a recompile.
    """
    keep = 1.0 - rate.to(device=x.device, dtype=torch.float32)
    mask = torch.rand(_noise_shape(kernel, x, batchwise), device=x.device) < keep
    noise = mask.to(x.dtype)
    scale = torch.where(keep > 0, 1.0 / keep.clamp_min(1e-12), 0.0).to(x.dtype)
    if kernel in ("alpha_dropout", "feature_alpha_dropout"):
        a = torch.rsqrt((_ALPHA * _ALPHA * rate + 1) * keep).to(x.dtype)
        a = torch.where(keep > 0, a, 0.0)
        b = (noise - 1) * (_ALPHA * a) + _ALPHA * a * rate.to(x.dtype)
        return x * (noise * a) + b
    if kernel == "drop_path" and not scale_by_keep:
        return x * noise
    return x * (noise * scale)
