"""Comparing two values leaf by leaf, exactly or within a named tolerance."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import torch

__all__ = [
    "DEFAULT_TOLERANCES",
    "LeafResult",
    "Tolerance",
    "ToleranceSpec",
    "compare_leaf",
    "resolve_tolerances",
]


@dataclass(frozen=True)
class Tolerance:
    """How far two floating tensors may be apart and still count as equal.

    Elementwise ``|actual - expected| <= atol + rtol * |expected|``, as in
    :func:`torch.allclose`; NaN equals NaN.

    Example:
        >>> Tolerance(rtol=1e-3, atol=1e-5)
        Tolerance(rtol=0.001, atol=1e-05)
    """

    rtol: float
    atol: float

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Tolerance.{name} must be a float, got {value!r}")
            if not value >= 0.0 or math.isinf(value):
                raise ValueError(
                    f"Tolerance.{name} must be finite and >= 0, got {value}"
                )

    def __str__(self) -> str:
        return f"rtol={self.rtol:g} atol={self.atol:g}"


# The defaults torch.testing.assert_close uses for each dtype.
DEFAULT_TOLERANCES: Final[Mapping[torch.dtype, Tolerance]] = {
    torch.float64: Tolerance(rtol=1e-7, atol=1e-7),
    torch.float32: Tolerance(rtol=1.3e-6, atol=1e-5),
    torch.float16: Tolerance(rtol=1e-3, atol=1e-5),
    torch.bfloat16: Tolerance(rtol=1.6e-2, atol=1e-5),
}

ToleranceSpec = Mapping["torch.dtype | str", "Tolerance | tuple[float, float]"]
"""Overrides keyed by dtype or dtype name: ``{"float16": (1e-2, 1e-3)}``."""

# Dtypes without a tolerance of their own borrow the nearest named one.
_BORROW: Final[Mapping[torch.dtype, torch.dtype]] = {
    torch.complex128: torch.float64,
    torch.complex64: torch.float32,
    torch.complex32: torch.float16,
}


def resolve_tolerances(
    overrides: ToleranceSpec | None,
) -> dict[torch.dtype, Tolerance]:
    """The default tolerances with ``overrides`` applied, keyed by dtype.

    Example:
        >>> resolve_tolerances({"float32": (0.0, 1e-4)})[torch.float32]
        Tolerance(rtol=0.0, atol=0.0001)
    """
    table = dict(DEFAULT_TOLERANCES)
    for key, value in (overrides or {}).items():
        dtype = getattr(torch, key, None) if isinstance(key, str) else key
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(
                f"tolerances: {key!r} is not a floating dtype; use one of "
                "float64, float32, float16, bfloat16 (or the torch dtype)"
            )
        if isinstance(value, Tolerance):
            table[dtype] = value
        elif isinstance(value, tuple) and len(value) == 2:
            table[dtype] = Tolerance(rtol=value[0], atol=value[1])
        else:
            raise TypeError(
                f"tolerances[{key!r}] must be a Tolerance or (rtol, atol); "
                f"got {value!r}"
            )
    return table


def tolerance_for(
    dtype: torch.dtype, table: Mapping[torch.dtype, Tolerance]
) -> Tolerance:
    """The tolerance that applies to tensors of ``dtype``."""
    dtype = _BORROW.get(dtype, dtype)
    if dtype in table:
        return table[dtype]
    # Narrow float types (float8 and friends) are at least as coarse as bfloat16.
    return table[torch.bfloat16]


@dataclass(frozen=True)
class LeafResult:
    """One compared leaf: where it is, how far apart, and whether it passed.

    Attributes:
        claim: The claim the leaf belongs to (``"outputs (train)"``).
        leaf: The leaf's position (``output.logits``, a parameter name, a
            ``state_dict`` key or a site path).
        passed: Whether the leaf satisfied the rule.
        max_abs: Largest absolute difference (``None`` for non-numbers).
        max_rel: Largest difference relative to the expected value.
        rule: ``"exact"`` (``torch.equal``) or the tolerance applied.
        note: Why it failed, or what was compared, in words.
    """

    claim: str
    leaf: str
    passed: bool
    max_abs: float | None = None
    max_rel: float | None = None
    rule: str = "exact"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (infinities become strings)."""
        return {
            "claim": self.claim,
            "leaf": self.leaf,
            "passed": self.passed,
            "max_abs": _json_number(self.max_abs),
            "max_rel": _json_number(self.max_rel),
            "rule": self.rule,
            "note": self.note,
        }


def compare_leaf(
    claim: str,
    leaf: str,
    actual: Any,
    expected: Any,
    *,
    exact: bool,
    tolerances: Mapping[torch.dtype, Tolerance],
) -> LeafResult:
    """Compare one leaf of a candidate (``actual``) with the reference's.

    Floating tensors are compared with ``torch.equal`` when ``exact`` is set,
    else within their dtype's tolerance; other tensors and plain values are
    always compared exactly.
    """
    if not isinstance(actual, torch.Tensor) or not isinstance(expected, torch.Tensor):
        if isinstance(actual, torch.Tensor) or isinstance(expected, torch.Tensor):
            return LeafResult(
                claim,
                leaf,
                False,
                note=f"{_kind(actual)} where the reference has {_kind(expected)}",
            )
        same = bool(actual == expected)
        note = "" if same else f"{actual!r} != {expected!r}"
        return LeafResult(claim, leaf, same, note=note)

    if actual.shape != expected.shape:
        return LeafResult(
            claim,
            leaf,
            False,
            note=f"shape {tuple(actual.shape)} != {tuple(expected.shape)}",
        )
    if actual.dtype != expected.dtype:
        return LeafResult(
            claim, leaf, False, note=f"dtype {actual.dtype} != {expected.dtype}"
        )
    if actual.device != expected.device:
        # An exported artifact may run elsewhere (onnxruntime on the CPU).
        actual, expected = actual.cpu(), expected.cpu()

    max_abs, max_rel = _errors(actual, expected)
    floating = actual.dtype.is_floating_point or actual.dtype.is_complex
    if exact or not floating:
        return LeafResult(
            claim, leaf, torch.equal(actual, expected), max_abs, max_rel, "exact"
        )
    tolerance = tolerance_for(actual.dtype, tolerances)
    close = torch.allclose(
        actual, expected, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True
    )
    rule = f"{tolerance} ({str(actual.dtype).removeprefix('torch.')})"
    return LeafResult(claim, leaf, bool(close), max_abs, max_rel, rule)


def _errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """Largest absolute and relative differences, computed in double precision."""
    if actual.numel() == 0:
        return 0.0, 0.0
    wide = torch.complex128 if actual.dtype.is_complex else torch.float64
    a, e = actual.detach().to(wide), expected.detach().to(wide)
    both_nan = torch.isnan(a) & torch.isnan(e) if not wide.is_complex else None
    diff = (a - e).abs()
    if both_nan is not None:
        diff = torch.where(both_nan, torch.zeros_like(diff), diff)
    diff = torch.nan_to_num(diff, nan=math.inf, posinf=math.inf)
    scale = e.abs()
    rel = torch.where(
        diff == 0, torch.zeros_like(diff), diff / torch.where(scale == 0, 0.0, scale)
    )
    return float(diff.max()), float(
        torch.nan_to_num(rel, nan=math.inf, posinf=math.inf).max()
    )


def _kind(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"


def _json_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return str(value)
