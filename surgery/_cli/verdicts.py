"""Verification reports as the command line shows and saves them."""

from __future__ import annotations

from typing import Any

__all__ = ["report_payload", "report_rows"]


def report_payload(report: Any) -> Any:
    """A JSON-ready form of a verification report."""
    return report.to_dict()


def report_rows(report: Any) -> list[tuple[str, str, str]]:
    """One ``(claim, pass|FAIL, detail)`` row per checked claim."""
    rows = []
    for claim in report.claims:
        failures = claim.failures
        if not failures:
            detail = f"{len(claim.results)} compared"
        else:
            first = failures[0]
            detail = f"{len(failures)} failed, first {first.leaf}"
            if first.note:
                detail += f": {first.note}"
        rows.append((str(claim.name), "FAIL" if failures else "pass", detail))
    return rows
