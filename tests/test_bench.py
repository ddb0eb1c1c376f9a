"""compare_throughput on tiny models: right variants, same-run ratios, no trace left.

Nothing here checks that one variant is faster than another: timings on a
shared machine are not test material. The benchmarks under benchmarks/ do that.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import surgery
from surgery import BenchmarkError, _bench, compare_throughput

# Short enough that the whole file stays fast; the figures are not used.
QUICK: dict[str, Any] = {"seconds": 0.02, "rounds": 2, "warmup": 1}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny forwards on a busy shared CPU spend their time waiting on threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Net(nn.Module):
    """Dropout, Dropout2d (not an nn.Dropout) and batch norm: every variant shows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.drop2d = nn.Dropout2d(0.2)
        self.head = nn.Linear(4 * 6 * 6, 5)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop2d(torch.relu(self.norm(self.conv(x))))
        return self.head(self.drop(x.flatten(1)))


def _inputs(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, 6, 6)


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "types": [(path, type(m)) for path, m in model.named_modules()],
        "training": [m.training for m in model.modules()],
        "sites": [(s.path, s.state, s.p) for s in surgery.find(model)],
    }


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["types"] == after["types"]
    assert before["training"] == after["training"]
    assert before["sites"] == after["sites"]
    assert before["state"].keys() == after["state"].keys()
    for key, tensor in before["state"].items():
        assert torch.equal(tensor, after["state"][key]), key


def test_every_variant_is_measured_in_order_against_eval_of_the_same_run() -> None:
    report = compare_throughput(_Net(), _inputs(), **QUICK)

    assert [row.variant for row in report.rows] == list(_bench.VARIANTS)
    assert not any(row.compiled for row in report.rows)
    eval_median = statistics.median(report.row("eval").round_seconds)
    for row in report.rows:
        assert len(row.round_seconds) == QUICK["rounds"]
        assert row.seconds_per_batch == statistics.median(row.round_seconds)
        assert row.time_vs_eval == row.seconds_per_batch / eval_median
        assert row.samples_per_s == pytest.approx(4 / row.seconds_per_batch)
        assert row.throughput_vs_eval == pytest.approx(1 / row.time_vs_eval)
    assert report.row("eval").time_vs_eval == 1.0


def test_each_variant_is_prepared_as_named() -> None:
    # Random ops per forward are the ground truth of what each variant runs.
    report = compare_throughput(_Net(), _inputs(), **QUICK)

    drawn = {row.variant: row.random_ops for row in report.rows}
    assert drawn == {
        "train": 2,
        "eval": 0,
        "p0_loop": 1,  # the common loop misses Dropout2d
        "strip": 0,
        "gate_train": 2,
        "gate_on": 2,  # eval mode, gates on: Monte Carlo dropout
        "gate_off": 0,
    }
    modes = {row.variant: row.training for row in report.rows}
    assert modes["eval"] is False
    assert modes["gate_on"] is False
    assert modes["strip"] is True


def test_a_subset_gets_eval_as_its_baseline() -> None:
    report = compare_throughput(
        _Net(), _inputs(), variants=["strip", "gate_off"], **QUICK
    )

    assert [row.variant for row in report.rows] == ["eval", "strip", "gate_off"]


def test_the_model_and_the_random_state_are_left_as_they_were() -> None:
    model = _Net().train()
    surgery.gate(model, "drop")
    before = _snapshot(model)
    inputs = _inputs()
    rng = torch.random.get_rng_state()

    compare_throughput(model, inputs, compile=True, backend="eager", **QUICK)

    _assert_same(before, _snapshot(model))
    assert torch.equal(rng, torch.random.get_rng_state())


def test_a_new_dtype_is_measured_on_a_copy() -> None:
    model = _Net()
    before = _snapshot(model)

    report = compare_throughput(
        model, _inputs(), variants=["strip"], dtype=torch.float64, **QUICK
    )

    assert report.dtype == "float64"
    assert report.device == "cpu"
    assert next(model.parameters()).dtype == torch.float32
    _assert_same(before, _snapshot(model))


@pytest.mark.slow
def test_compiled_rows_count_their_graphs_and_no_recompile() -> None:
    report = compare_throughput(
        _Net(), _inputs(), compile=True, backend="eager", **QUICK
    )

    compiled = [row for row in report.rows if row.compiled]
    assert [row.variant for row in compiled] == list(_bench.VARIANTS)
    for row in compiled:
        assert row.graphs is not None
        assert row.graphs >= 1
        assert row.recompiles == 0
    assert report.row("eval", compiled=True).time_vs_eval == 1.0
    assert report.row("strip").graphs is None


def test_batch_size_comes_from_the_first_tensor_or_the_caller() -> None:
    assert compare_throughput(_Net(), (_inputs(3),), **QUICK).batch_size == 3

    report = compare_throughput(_Net(), _inputs(3), batch_size=12, **QUICK)

    assert report.batch_size == 12
    row = report.row("eval")
    assert row.samples_per_s == pytest.approx(12 / row.seconds_per_batch)


def test_keyword_inputs_reach_the_forward() -> None:
    class Keyed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, *, features: torch.Tensor) -> torch.Tensor:
            return self.drop(features)

    report = compare_throughput(
        Keyed(), (), example_kwargs={"features": torch.randn(5, 3)}, **QUICK
    )

    assert report.batch_size == 5
    assert report.row("train").random_ops == 1


def test_report_renders_as_json_and_text() -> None:
    report = compare_throughput(_Net(), _inputs(), variants=["strip"], **QUICK)

    data = json.loads(json.dumps(report.to_dict()))
    assert data["model"] == "_Net"
    assert [row["variant"] for row in data["rows"]] == ["eval", "strip"]
    assert data["rows"][1]["time_vs_eval"] == report.row("strip").time_vs_eval
    text = str(report)
    assert text.splitlines()[0].startswith("_Net on cpu (float32), batch 4")
    assert "strip" in text
    assert "x eval time" in text
    with pytest.raises(KeyError, match="no compiled row for 'strip'"):
        report.row("strip", compiled=True)


def _broken(x: torch.Tensor) -> torch.Tensor:
    return x


def _meta_model() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))


BAD: list[tuple[str, Any, Any, dict[str, Any], str]] = [
    ("zeros", _Net(), torch.zeros(2, 3, 6, 6), {}, "all zeros"),
    ("no tensor", _Net(), (1, 2), {}, "hold no tensor"),
    ("string inputs", _Net(), "abc", {}, "tensor or a sequence"),
    ("scalar", _Net(), torch.tensor(3.0), {}, "pass batch_size="),
    ("unknown variant", _Net(), _inputs(), {"variants": ["fast"]}, "'fast'"),
    ("empty variants", _Net(), _inputs(), {"variants": []}, "non-empty"),
    ("variant string", _Net(), _inputs(), {"variants": "strip"}, "non-empty"),
    ("seconds", _Net(), _inputs(), {"seconds": 0}, "seconds must be positive"),
    ("rounds", _Net(), _inputs(), {"rounds": 0}, "rounds must be an int"),
    ("warmup", _Net(), _inputs(), {"warmup": 0}, "warmup must be an int"),
    ("batch", _Net(), _inputs(), {"batch_size": 0}, "batch_size must be >= 1"),
    ("device", _Net(), _inputs(), {"device": "nowhere"}, "not a device"),
    ("backend", _Net(), _inputs(), {"compile": True, "backend": "nope"}, "'nope'"),
    ("not a module", _broken, _inputs(), {}, "expected an nn.Module"),
    ("meta", _meta_model(), torch.randn(2, 2), {}, r"'0\.weight' is on the meta"),
    ("shape", _Net(), torch.randn(2, 5), {}, "variant 'train': the forward pass"),
]


@pytest.mark.parametrize(
    ("model", "inputs", "options", "match"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_input_is_a_benchmark_error(
    model: Any, inputs: Any, options: dict[str, Any], match: str
) -> None:
    snapshot = _snapshot(model) if isinstance(model, _Net) else None

    with pytest.raises(BenchmarkError, match=match):
        compare_throughput(model, inputs, **{**QUICK, **options})

    if snapshot is not None:
        _assert_same(snapshot, _snapshot(model))


def test_a_compiled_model_is_refused() -> None:
    compiled = torch.compile(_Net(), backend="eager")

    with pytest.raises(BenchmarkError, match=r"already compiled.*_orig_mod"):
        compare_throughput(compiled, _inputs(), **QUICK)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(BenchmarkError, match="CUDA is not available"):
        compare_throughput(_Net(), _inputs(), device="cuda", **QUICK)


def test_benchmark_error_is_a_value_error() -> None:
    assert issubclass(BenchmarkError, surgery.SurgeryError)
    assert issubclass(BenchmarkError, ValueError)
