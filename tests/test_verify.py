"""surgery.verify as a user relies on it: it passes honest rewrites, names
planted mistakes, reports every leaf, and leaves models and RNG untouched."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import surgery
from surgery import Tolerance, VerificationError
from surgery.demo import build_demo_model, demo_inputs


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "grads": {n: p.grad for n, p in model.named_parameters()},
        "sites": surgery.find(model),
    }


def _assert_unchanged(model: nn.Module, before: dict[str, object]) -> None:
    after = _snapshot(model)
    state = after["state"]
    assert isinstance(state, dict)
    for key, value in before["state"].items():  # type: ignore[attr-defined]
        assert torch.equal(state[key], value), key
    assert after["training"] == before["training"]
    for name, grad in before["grads"].items():  # type: ignore[attr-defined]
        assert after["grads"][name] is grad, name  # type: ignore[index]
    assert after["sites"] == before["sites"]


class _WithNorm(nn.Module):
    """Batch norm (running statistics) next to dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 6)
        self.norm = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.norm(self.linear(x)))


def test_strip_passes_every_claim_with_every_site_required_off() -> None:
    model, x = build_demo_model(), demo_inputs()
    stripped = surgery.strip(copy.deepcopy(model))

    report = surgery.verify(model, stripped, x, require_off="*")

    assert report.passed, str(report)
    assert [claim.name for claim in report.claims] == [
        "sites",
        "state_dict",
        "outputs (train)",
        "random ops (train)",
        "gradients (train)",
        "outputs (eval)",
    ]
    outputs = report.claim("outputs (train)")
    assert "10 site(s) off" in outputs.description
    assert outputs.results[0].leaf == "output"
    assert outputs.results[0].rule.endswith("(float32)")
    assert report.raise_for_failure() is report


def test_a_gate_that_follows_training_is_checked_bitwise() -> None:
    model, x = build_demo_model(), demo_inputs()
    gated = surgery.gate(copy.deepcopy(model))

    report = surgery.verify(model, gated, x)

    assert report.passed, str(report)
    for name in ("outputs (train)", "outputs (eval)"):
        claim = report.claim(name)
        assert "the reference itself" in claim.description
        assert all(result.rule == "exact" for result in claim.results)
    # The draws are really compared: the train-mode forward is random.
    assert report.claim("random ops (train)").results[0].leaf != "(model)"


def test_gates_set_off_pass_with_every_site_required_off() -> None:
    model, x = build_demo_model(), demo_inputs()
    off = surgery.set_dropout(copy.deepcopy(model), mode="off")

    report = surgery.verify(model, off, x, require_off="*")

    assert report.passed, str(report)
    assert "10 site(s) off" in report.claim("outputs (train)").description


def test_forced_on_sites_are_compared_with_the_reference_forced_on() -> None:
    model, x = build_demo_model(), demo_inputs()
    candidate = surgery.set_dropout(copy.deepcopy(model), "blocks.*", mode="on")

    report = surgery.verify(model, candidate, x)

    assert report.passed, str(report)
    assert "forced on" in report.claim("outputs (eval)").description
    # The eval claim is not vacuous: forced-on sites drop in eval mode.
    torch.manual_seed(0)
    with torch.no_grad():
        plain = model.eval()(x)
        on = candidate.eval()(x)
    assert not torch.equal(plain, on)


def _leave_a_site_on(model: nn.Module) -> nn.Module:
    return surgery.restore(surgery.strip(model), "blocks.0.mlp.2")


def _wrong_gate_p(model: nn.Module) -> nn.Module:
    return surgery.set_dropout(surgery.gate(model), "blocks.1.mlp.2", p=0.5)


def _wrong_module_p(model: nn.Module) -> nn.Module:
    surgery.strip(model, exclude="blocks.1.mlp.2")
    model.blocks[1].mlp[2].p = 0.3  # type: ignore[index,union-attr]
    return model


def _attribute_written_back(model: nn.Module) -> nn.Module:
    surgery.strip(model)
    model.classifier_dropout = 0.2  # stale code writing the float again
    return model


def _changed_weight(model: nn.Module) -> nn.Module:
    surgery.strip(model)
    with torch.no_grad():
        model.head.weight[0, 0] += 1e-3  # type: ignore[index,operator,union-attr]
    return model


def _missing_key(model: nn.Module) -> nn.Module:
    surgery.strip(model)
    model.head.register_parameter("bias", None)  # type: ignore[union-attr,operator]
    return model


# (mistake, require_off, claims that must fail, a leaf that must be named)
MISTAKES: list[tuple[Callable[[nn.Module], nn.Module], str | None, set[str], str]] = [
    (_leave_a_site_on, "*", {"sites", "random ops (train)"}, "blocks.0.mlp.2"),
    (
        _wrong_gate_p,
        None,
        {"sites", "outputs (train)", "gradients (train)"},
        "blocks.1.mlp.2",
    ),
    (_wrong_module_p, None, {"sites", "outputs (train)"}, "blocks.1.mlp.2"),
    (
        _attribute_written_back,
        "*",
        {"sites", "random ops (train)"},
        "classifier_dropout",
    ),
    (
        _changed_weight,
        "*",
        {"state_dict", "outputs (train)", "outputs (eval)"},
        "head.weight",
    ),
    (_missing_key, "*", {"state_dict", "outputs (train)"}, "head.bias"),
]


@pytest.mark.parametrize(
    ("plant", "require_off", "failing", "named"),
    MISTAKES,
    ids=[m[0].__name__ for m in MISTAKES],
)
def test_a_planted_mistake_fails_and_is_named(
    plant: Callable[[nn.Module], nn.Module],
    require_off: str | None,
    failing: set[str],
    named: str,
) -> None:
    model, x = build_demo_model(), demo_inputs()
    candidate = plant(copy.deepcopy(model))

    report = surgery.verify(model, candidate, x, require_off=require_off)

    assert not report.passed
    failed = {claim.name for claim in report.claims if not claim.passed}
    assert failing <= failed, str(report)
    with pytest.raises(VerificationError, match=named) as caught:
        report.raise_for_failure()
    for name in failing:
        assert name in str(caught.value)
    assert "FAIL" in str(report)


def test_without_require_off_a_restored_site_is_simply_on() -> None:
    model, x = build_demo_model(), demo_inputs()
    candidate = _leave_a_site_on(copy.deepcopy(model))

    report = surgery.verify(model, candidate, x)

    assert report.passed, str(report)
    row = {r.leaf: r for r in report.claim("sites").results}["blocks.0.mlp.2"]
    assert row.note.startswith("original")


def test_a_site_the_candidate_lost_is_reported() -> None:
    model, x = build_demo_model(), demo_inputs()
    candidate = copy.deepcopy(model)
    candidate.embed_dropout = nn.Identity()

    report = surgery.verify(model, candidate, x)

    row = {r.leaf: r for r in report.claim("sites").results}["embed_dropout"]
    assert not row.passed
    assert "not found in the candidate" in row.note


def test_models_rng_and_gradients_are_left_exactly_as_they_were() -> None:
    model = _WithNorm().train()
    x = torch.randn(8, 6)
    model(x).sum().backward()  # the user's gradients must survive
    candidate = surgery.strip(copy.deepcopy(model))
    candidate.eval()
    before = {"reference": _snapshot(model), "candidate": _snapshot(candidate)}
    rng = torch.random.get_rng_state()

    report = surgery.verify(model, candidate, x)

    assert report.passed, str(report)
    assert torch.equal(torch.random.get_rng_state(), rng)
    _assert_unchanged(model, before["reference"])
    _assert_unchanged(candidate, before["candidate"])
    running = report.claim("state_dict").results
    assert "norm.running_mean" in {result.leaf for result in running}


@dataclasses.dataclass
class _Pair:
    logits: Tensor
    extras: tuple[Tensor, ...]


class _Structured(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.linear = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> object:
        h = self.drop(self.linear(x))
        if self.kind == "tuple":
            return h, [h.sum(), 3]
        if self.kind == "dict":
            return {"h": h, "n": h.shape[0]}
        return _Pair(h, (h * 2,))


@pytest.mark.parametrize(
    ("kind", "leaves"),
    [
        ("tuple", ["output[0]", "output[1][0]", "output[1][1]"]),
        ("dict", ["output['h']", "output['n']"]),
        ("dataclass", ["output.logits", "output.extras[0]"]),
    ],
)
def test_each_output_leaf_is_reported_by_position(kind: str, leaves: list[str]) -> None:
    model = _Structured(kind).train()
    candidate = surgery.strip(copy.deepcopy(model))

    report = surgery.verify(model, candidate, torch.randn(3, 4))

    assert report.passed, str(report)
    assert [r.leaf for r in report.claim("outputs (train)").results] == leaves


def test_a_leaf_the_candidate_adds_or_drops_fails() -> None:
    model = _Structured("dict").train()
    candidate = surgery.strip(copy.deepcopy(model))
    candidate.kind = "tuple"

    report = surgery.verify(model, candidate, torch.randn(3, 4))

    notes = {r.leaf: r.note for r in report.claim("outputs (train)").failures}
    assert notes["output['h']"] == "missing in the candidate"
    assert notes["output[0]"] == "not in the reference"


def test_transformers_model_output_leaves_and_keyword_inputs() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    model = transformers.BertModel(config).train()
    candidate = surgery.strip(copy.deepcopy(model))
    ids = torch.randint(0, 50, (2, 5))

    report = surgery.verify(model, candidate, {"input_ids": ids}, require_off="*")

    assert report.passed, str(report)
    leaves = [r.leaf for r in report.claim("outputs (eval)").results]
    assert leaves == ["output.last_hidden_state", "output.pooler_output"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_tolerance_of_each_dtype_is_named(dtype: torch.dtype) -> None:
    model = _WithNorm().to(dtype).train()
    candidate = surgery.strip(copy.deepcopy(model))

    report = surgery.verify(model, candidate, torch.randn(8, 6, dtype=dtype))

    name = str(dtype).removeprefix("torch.")
    rule = report.claim("outputs (train)").results[0].rule
    assert rule == f"{surgery.DEFAULT_TOLERANCES[dtype]} ({name})"
    assert report.passed, str(report)


def test_tolerances_can_be_overridden_and_bad_ones_are_refused() -> None:
    model = _WithNorm().train()
    candidate = surgery.strip(copy.deepcopy(model))
    x = torch.randn(8, 6)

    report = surgery.verify(model, candidate, x, tolerances={"float32": (0.0, 0.5)})

    assert report.claim("outputs (train)").results[0].rule.startswith("rtol=0 atol=0.5")
    assert report.tolerances[torch.float32] == Tolerance(rtol=0.0, atol=0.5)
    with pytest.raises(ValueError, match="int64"):
        surgery.verify(model, candidate, x, tolerances={"int64": (0.0, 0.0)})
    with pytest.raises(ValueError, match="atol"):
        Tolerance(rtol=0.0, atol=-1.0)


def test_the_report_renders_and_converts_to_json() -> None:
    model, x = build_demo_model(), demo_inputs()
    candidate = _changed_weight(copy.deepcopy(model))

    report = surgery.verify(model, candidate, x)

    text = str(report)
    assert text.startswith("verification FAILED")
    assert "[FAIL] state_dict" in text
    assert "head.weight" in text
    assert "more passing" in text  # long claims are shortened for people
    data = json.loads(report.to_json())
    assert data == report.to_dict()
    assert data["passed"] is False
    claims = {claim["name"]: claim for claim in data["claims"]}
    rows = {row["leaf"]: row for row in claims["state_dict"]["results"]}
    assert rows["head.weight"]["passed"] is False
    assert rows["head.weight"]["max_abs"] == pytest.approx(1e-3, rel=1e-2)
    assert len(rows) == len(model.state_dict())  # every leaf, not just the shown ones
    assert data["tolerances"]["bfloat16"] == {"rtol": 0.016, "atol": 1e-05}
    assert {site["path"] for site in data["sites"]} >= {"embed_dropout"}


def test_bad_arguments_are_refused_clearly() -> None:
    model = _WithNorm()
    with pytest.raises(TypeError, match=r"candidate must be an nn\.Module"):
        surgery.verify(model, "model", torch.ones(2, 6))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="example_inputs must be"):
        surgery.verify(model, model, 3)
    with pytest.raises(surgery.SelectionError):
        surgery.verify(model, model, torch.ones(2, 6), require_off="nothing.*")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_models_verify_and_keep_the_cuda_rng() -> None:
    model, x = build_demo_model().cuda(), demo_inputs().cuda()
    stripped = surgery.strip(copy.deepcopy(model))
    gated = surgery.gate(copy.deepcopy(model))
    cuda_rng = torch.cuda.get_rng_state()

    assert surgery.verify(model, stripped, x, require_off="*").passed
    report = surgery.verify(model, gated, x)

    assert report.passed, str(report)
    assert report.device == "cuda:0"
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=8),
    scale=st.floats(0.0, 1e-2),
)
def test_a_leaf_passes_exactly_when_within_tolerance(
    values: list[float], scale: float
) -> None:
    from surgery._compare import compare_leaf

    expected = torch.tensor(values, dtype=torch.float64)
    actual = expected + scale
    tolerance = Tolerance(rtol=0.0, atol=5e-3)
    table = {torch.float64: tolerance}

    result = compare_leaf("c", "x", actual, expected, exact=False, tolerances=table)

    assert result.passed == bool((actual - expected).abs().max() <= 5e-3)
    assert result.max_abs == pytest.approx(float((actual - expected).abs().max()))
    exact = compare_leaf("c", "x", actual, expected, exact=True, tolerances=table)
    assert exact.passed == torch.equal(actual, expected)


def _helper_dropout(x: Tensor) -> Tensor:
    return torch.nn.functional.dropout(x, 0.3, True)


class _CallsHelper(nn.Module):
    """Dropout called from a helper function: a site seen only at run time."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return _helper_dropout(self.linear(x))


def test_sites_seen_only_at_run_time_are_verified_too() -> None:
    model, x = _CallsHelper().train(), torch.randn(2, 4)
    stripped = surgery.strip(copy.deepcopy(model), example_inputs=(x,))
    missed = surgery.strip(copy.deepcopy(model), exclude="*", example_inputs=(x,))

    assert surgery.verify(model, stripped, x, require_off="*").passed
    report = surgery.verify(model, missed, x, require_off="*")

    failed = {(r.claim, r.leaf) for r in report.failures}
    assert ("sites", ":dropout#0") in failed
    assert ("random ops (train)", "(root)") in failed
