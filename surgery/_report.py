"""Plain-text tables of sites, for people; dicts of sites, for machines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._site import Site

__all__ = ["format_sites", "site_to_dict", "sites_table_rows"]

HEADERS = ("path", "kind", "class", "p", "state", "mechanism")


def sites_table_rows(sites: Sequence[Site]) -> list[tuple[str, ...]]:
    """One row of strings per site, in :data:`HEADERS` order."""
    rows: list[tuple[str, ...]] = []
    for site in sites:
        state = f"gated ({site.mode})" if site.state == "gated" else site.state
        if site.aliases:
            state += f", also at {', '.join(site.aliases)}"
        rows.append(
            (
                site.path,
                site.kind,
                site.cls.rpartition(".")[2],
                f"{site.p:g}",
                state,
                site.mechanism,
            )
        )
    return rows


def format_sites(sites: Sequence[Site]) -> str:
    """A fixed-width table of sites, one per line, with a header."""
    rows = [HEADERS, *sites_table_rows(sites)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def site_to_dict(site: Site) -> dict[str, Any]:
    """A JSON-ready dict of a site's fields."""
    return {
        "path": site.path,
        "kind": site.kind,
        "owner": site.owner,
        "class": site.cls,
        "p": site.p,
        "original_p": site.original_p,
        "state": site.state,
        "mode": site.mode,
        "mechanism": site.mechanism,
        "aliases": list(site.aliases),
    }
