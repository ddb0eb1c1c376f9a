"""The main job, ``surgery demo``: what a person reads after the first command."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from surgery import count_random_ops, find
from surgery.__main__ import main
from surgery.demo import build_demo_model, demo_inputs

# The benchmark step is not under test here: time it as briefly as allowed.
SECONDS = "0.05"


@pytest.fixture(scope="module")
def demo() -> str:
    """What ``surgery demo`` prints, run once through the command line's entry."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["demo", "--seconds", SECONDS])
    assert code == 0, out.getvalue()
    return out.getvalue()


HEADER = ["path", "kind", "class", "p", "state"]


def _table_rows(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:5] == HEADER)
    rows = {}
    for line in lines[header + 2 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


def test_the_table_lists_every_site_with_kind_class_p_and_state(
    demo: str,
) -> None:
    text = demo
    rows = _table_rows(text)
    sites = find(build_demo_model())
    assert list(rows) == [site.path for site in sites]
    for site in sites:
        _, kind, cls, p, state = rows[site.path][:5]
        assert kind == site.kind
        assert cls == site.cls.rpartition(".")[2]
        assert float(p) == pytest.approx(site.p)
        assert state == "original"


def test_strip_is_shown_by_random_ops_before_and_after(
    demo: str,
) -> None:
    text = demo
    expected = count_random_ops(build_demo_model(), demo_inputs()).count
    assert expected > 0
    strip_lines = [line for line in text.splitlines() if "strip" in line.lower()]
    assert any(re.search(rf"\b{expected}\b.*\b0\b", line) for line in strip_lines), (
        strip_lines
    )


def test_gate_is_shown_too(demo: str) -> None:
    text = demo
    after_table = text.split("\n\n", 2)[-1]
    assert re.search(r"\bgated?\b", after_table, flags=re.IGNORECASE)


def test_outputs_are_shown_random_before_and_deterministic_after(
    demo: str,
) -> None:
    text = demo
    assert re.search(r"\bdeterministic\b", text, flags=re.IGNORECASE)
