"""The result of :func:`surgery.verify`: claims, their compared leaves, a table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import torch

from ._compare import LeafResult, Tolerance
from ._errors import VerificationError

__all__ = ["Claim", "VerificationReport", "format_results"]

# Passing rows shown per claim in the table; failing rows are always shown.
_PASSING_ROWS: Final = 12
# Failing leaves named per claim in an error message.
_ERROR_ROWS: Final = 8
_HEADERS: Final = ("leaf", "result", "max abs", "max rel", "rule", "note")


@dataclass(frozen=True)
class Claim:
    """One thing a rewrite promises, and the leaves compared to check it.

    Attributes:
        name: Short name (``"outputs (train)"``, ``"gradients (train)"``,
            ``"state_dict"``, ``"sites"``, ``"random ops (train)"``).
        description: What was compared with what, in a sentence.
        results: One :class:`LeafResult` per compared leaf.
    """

    name: str
    description: str
    results: tuple[LeafResult, ...]

    @property
    def passed(self) -> bool:
        """True when every leaf passed."""
        return all(result.passed for result in self.results)

    @property
    def failures(self) -> list[LeafResult]:
        """The leaves that did not pass."""
        return [result for result in self.results if not result.passed]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the claim and all its leaves."""
        return {
            "name": self.name,
            "description": self.description,
            "passed": self.passed,
            "results": [result.to_dict() for result in self.results],
        }


@dataclass(frozen=True)
class VerificationReport:
    """What :func:`surgery.verify` checked, leaf by leaf.

    ``str(report)`` is a table for people; :meth:`to_dict` and
    :meth:`to_json` carry every leaf for machines; :meth:`raise_for_failure`
    turns a failed claim into a :class:`~surgery.VerificationError`.

    Attributes:
        claims: The claims checked, in order.
        seed: The seed both models ran under.
        device: Where the models ran.
        tolerances: The tolerance used for each floating dtype.
        sites: The candidate's sites as JSON-ready dicts.
    """

    claims: tuple[Claim, ...]
    seed: int
    device: str
    tolerances: Mapping[torch.dtype, Tolerance]
    sites: tuple[Mapping[str, Any], ...] = field(default=())

    @property
    def passed(self) -> bool:
        """True when every claim held."""
        return all(claim.passed for claim in self.claims)

    @property
    def failures(self) -> list[LeafResult]:
        """Every leaf that did not pass, across claims."""
        return [result for claim in self.claims for result in claim.failures]

    def claim(self, name: str) -> Claim:
        """The claim called ``name``.

        Raises:
            KeyError: No claim of that name was checked; the message lists
                the ones that were.
        """
        for claim in self.claims:
            if claim.name == name:
                return claim
        names = ", ".join(repr(claim.name) for claim in self.claims)
        raise KeyError(f"no claim {name!r}; this report has {names}")

    def raise_for_failure(self) -> VerificationReport:
        """Raise :class:`~surgery.VerificationError` naming each failed claim.

        Returns:
            The report itself when everything passed, so calls chain.
        """
        if self.passed:
            return self
        lines = [f"verification failed: {self._summary()}"]
        for claim in self.claims:
            failures = claim.failures
            if not failures:
                continue
            lines.append(f"- {claim.name}: {claim.description}")
            for result in failures[:_ERROR_ROWS]:
                lines.append(f"    {result.leaf}: {_describe(result)}")
            if len(failures) > _ERROR_ROWS:
                lines.append(f"    ... and {len(failures) - _ERROR_ROWS} more")
        lines.append("str(report) shows every compared leaf.")
        raise VerificationError("\n".join(lines))

    def to_dict(self) -> dict[str, Any]:
        """Every claim and leaf as JSON-ready values."""
        return {
            "passed": self.passed,
            "seed": self.seed,
            "device": self.device,
            "tolerances": {
                str(dtype).removeprefix("torch."): {"rtol": tol.rtol, "atol": tol.atol}
                for dtype, tol in self.tolerances.items()
            },
            "claims": [claim.to_dict() for claim in self.claims],
            "sites": [dict(site) for site in self.sites],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"verification {verdict}: {self._summary()} "
            f"(seed {self.seed}, {self.device})"
        ]
        for claim in self.claims:
            mark = "pass" if claim.passed else "FAIL"
            lines.append("")
            lines.append(f"[{mark}] {claim.name}: {claim.description}")
            lines.extend("  " + line for line in format_results(claim.results))
        return "\n".join(lines)

    def _summary(self) -> str:
        failed = [claim.name for claim in self.claims if not claim.passed]
        if not failed:
            return f"all {len(self.claims)} claims hold"
        return (
            f"{len(failed)} of {len(self.claims)} claims failed ({', '.join(failed)})"
        )


def format_results(results: tuple[LeafResult, ...]) -> list[str]:
    """A fixed-width table of leaves: every failure, and the first passes."""
    shown = [result for result in results if not result.passed]
    passing = [result for result in results if result.passed]
    shown += passing[:_PASSING_ROWS]
    shown.sort(key=results.index)
    rows = [_HEADERS, *(_row(result) for result in shown)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS))]
    lines = [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    hidden = len(passing) - min(len(passing), _PASSING_ROWS)
    if hidden:
        lines.append(f"... and {hidden} more passing (to_dict() lists them all)")
    return lines


def _row(result: LeafResult) -> tuple[str, ...]:
    return (
        result.leaf,
        "pass" if result.passed else "FAIL",
        _number(result.max_abs),
        _number(result.max_rel),
        result.rule,
        result.note,
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _describe(result: LeafResult) -> str:
    parts = [result.note] if result.note else []
    if result.max_abs is not None and result.max_rel is not None:
        parts.append(
            f"max abs {_number(result.max_abs)}, max rel {_number(result.max_rel)} "
            f"({result.rule})"
        )
    return "; ".join(parts) or "differs"
