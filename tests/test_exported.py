"""Exported programs: the same sites, stripped in the aten graph."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor

import surgery
from surgery import count_random_ops
from surgery.demo import build_demo_model, demo_inputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def x() -> Tensor:
    return demo_inputs()


def _export(train: bool, decompose: bool, x: Tensor) -> torch.export.ExportedProgram:
    model = build_demo_model()
    model.train(train)
    program = torch.export.export(model, (x,), strict=False)
    return program.run_decompositions() if decompose else program


def _random_nodes(program: torch.export.ExportedProgram) -> list[str]:
    names = ("dropout", "bernoulli", "rand")
    return [
        str(node.target)
        for node in program.graph.nodes
        if node.op == "call_function" and any(n in str(node.target) for n in names)
    ]


@pytest.mark.parametrize("decompose", [False, True], ids=["export", "decomposed"])
def test_strip_train_program_equals_eval_program(
    decompose: bool, x: Tensor, tmp_path: Path
) -> None:
    program = _export(True, decompose, x)
    reference = _export(False, decompose, x)
    assert surgery.find(program)

    assert surgery.strip(program) is program

    assert surgery.find(program) == []
    assert _random_nodes(program) == []
    assert count_random_ops(program.module(), x).count == 0
    assert torch.equal(program.module()(x), reference.module()(x))

    path = tmp_path / "stripped.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path)
    assert torch.equal(loaded.module()(x), reference.module()(x))
    assert _random_nodes(loaded.run_decompositions()) == []


def test_sites_keep_their_eager_paths(x: Tensor) -> None:
    program = _export(True, False, x)
    eager = {site.path for site in surgery.find(build_demo_model())}

    exported = {site.path for site in surgery.find(program)}

    # Dropout and drop-path modules keep their path; attention and the head's
    # functional dropout are named after the module that called them.
    assert {p for p in exported if ":" not in p} == {
        p for p in eager if surgery.find(build_demo_model(), p)[0].kind != "read_p"
    } - {"classifier_dropout"}
    assert "blocks.0.attn:scaled_dot_product_attention#0" in exported
    assert ":dropout#0" in exported


def test_selectors_apply_to_module_paths(x: Tensor) -> None:
    program = _export(True, False, x)

    surgery.strip(program, "blocks.0.*", exclude="*drop_path")

    left = {site.path for site in surgery.find(program)}
    assert "blocks.0.mlp.2" not in left
    assert "blocks.0.attn:scaled_dot_product_attention#0" not in left
    assert "blocks.0.drop_path" in left
    assert "blocks.1.mlp.2" in left
    with pytest.raises(surgery.SelectionError, match="encoder"):
        surgery.strip(program, "encoder.*")


def test_set_dropout_turns_an_eval_program_on(x: Tensor) -> None:
    program = _export(False, False, x)
    assert count_random_ops(program.module(), x).count == 0

    surgery.set_dropout(program, "*.mlp.*", mode="on", p=0.5)

    assert count_random_ops(program.module(), x).count == 2


def test_restore_is_refused_with_a_reason(x: Tensor) -> None:
    program = _export(True, False, x)
    with pytest.raises(surgery.SiteError, match="export the eager model again"):
        surgery.restore(program)


def test_graph_module_from_export_is_accepted(x: Tensor) -> None:
    module = _export(True, False, x).module()
    reference = copy.deepcopy(build_demo_model()).eval()

    surgery.strip(module)

    assert count_random_ops(module, x).count == 0
    assert torch.allclose(module(x), reference(x), atol=1e-6)
