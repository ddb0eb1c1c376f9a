"""Dropout schedules: values over steps, every kind of site, resuming, compile."""

from __future__ import annotations

import doctest
import importlib
import io
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter

import surgery
from surgery.demo import DemoDropPath, DemoTransformer, build_demo_model, demo_inputs

ROOT = Path(__file__).resolve().parents[1]

Build = Callable[[nn.Module], surgery.DropoutSchedule]


def effective(model: nn.Module) -> dict[str, float]:
    """What each site drops with now, as the user reads it from find()."""
    return {
        site.path: 0.0 if site.mode == "off" else site.p for site in surgery.find(model)
    }


def half_cosine(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


# Each schedule with the effective p it must give at steps 0..5, worked out
# by hand from its definition.
CURVES: list[tuple[str, Build, list[float]]] = [
    ("constant", lambda m: surgery.ConstantDropout(m, p=0.3), [0.3] * 6),
    (
        "linear",
        lambda m: surgery.LinearDropout(m, start=0.0, end=0.4, steps=4),
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.4],
    ),
    (
        "cosine",
        lambda m: surgery.CosineDropout(m, start=0.4, end=0.0, steps=4),
        [half_cosine(0.4, 0.0, min(t, 4) / 4) for t in range(6)],
    ),
    (
        "step",
        lambda m: surgery.StepDropout(m, milestones=[2, 4], values=[0.1, 0.2, 0.3]),
        [0.1, 0.1, 0.2, 0.2, 0.3, 0.3],
    ),
    (
        "early",
        lambda m: surgery.EarlyDropout(m, p=0.2, until=3),
        [0.2, 0.2, 0.2, 0.0, 0.0, 0.0],
    ),
    (
        "late",
        lambda m: surgery.LateDropout(m, p=0.2, start=2),
        [0.0, 0.0, 0.2, 0.2, 0.2, 0.2],
    ),
]


@pytest.mark.parametrize(
    ("name", "build", "expected"), CURVES, ids=[c[0] for c in CURVES]
)
def test_each_schedule_sets_every_kind_of_site_step_by_step(
    name: str, build: Build, expected: list[float]
) -> None:
    model = build_demo_model()
    kinds = {site.kind for site in surgery.find(model)}
    assert kinds >= {"module", "read_p", "attribute", "drop_path"}

    schedule = build(model)
    x = demo_inputs()
    for step, p in enumerate(expected):
        assert schedule.last_step == step
        rates = effective(model)
        assert rates == pytest.approx(dict.fromkeys(rates, p), abs=1e-12), step
        assert schedule.get_last_p() == pytest.approx(rates, abs=1e-12)

        # What runs follows the schedule: no random op at all exactly when
        # every site is at zero (the model is in train mode throughout).
        drew = surgery.count_random_ops(model, x).count
        assert (drew == 0) == (p == 0.0), (step, drew)
        schedule.step()


def test_depth_schedule_grows_linearly_over_blocks_like_timm() -> None:
    model = DemoTransformer(depth=5, drop_path=0.0).train()
    schedule = surgery.DepthDropout(model, "*.drop_path", max_p=0.2)

    rates = [site.p for site in surgery.find(model, "*.drop_path")]
    timm_rule = torch.linspace(0, 0.2, 5).tolist()
    assert rates == pytest.approx(timm_rule, abs=1e-7)

    # The first block now drops nothing: its drop-path runs no random op.
    with surgery.RandomOpCounter(model) as counter:
        model(demo_inputs())
    by_module = counter.by_module()
    assert "blocks.0.drop_path" not in by_module
    assert by_module["blocks.4.drop_path"] == 2  # called twice per block

    schedule.step()
    assert [site.p for site in surgery.find(model, "*.drop_path")] == rates


def test_depth_schedule_of_one_site_gives_zero_as_linspace_does() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    assert surgery.DepthDropout(model, max_p=0.3).get_last_p() == {"1": 0.0}


def test_schedules_on_disjoint_selections_compose() -> None:
    model = build_demo_model()
    blocks = surgery.LinearDropout(model, "blocks.*", start=0.0, end=0.3, steps=3)
    rest = surgery.EarlyDropout(model, exclude="blocks.*", p=0.4, until=1)

    blocks.step()
    rates = effective(model)
    assert all(rates[path] == pytest.approx(0.1) for path in blocks.paths)
    assert all(rates[path] == 0.4 for path in rest.paths)

    rest.step()
    rates = effective(model)
    assert all(rates[path] == pytest.approx(0.1) for path in blocks.paths)
    assert all(rates[path] == 0.0 for path in rest.paths)
    assert set(blocks.paths) | set(rest.paths) == set(rates)


def test_overlapping_schedules_raise_naming_the_shared_sites() -> None:
    model = build_demo_model()
    kept = surgery.LinearDropout(model, "blocks.0.*", start=0.0, end=0.3, steps=3)
    before = surgery.find(model)

    with pytest.raises(surgery.SelectionError, match="already drives") as caught:
        surgery.ConstantDropout(model, ["blocks.0.mlp.*", "embed_dropout"], p=0.5)
    assert "blocks.0.mlp.2" in str(caught.value)
    assert "embed_dropout" not in str(caught.value)
    assert surgery.find(model) == before
    kept.step()


def test_overlap_is_seen_through_a_wrapper_and_for_float_attributes() -> None:
    model = build_demo_model()
    kept = surgery.ConstantDropout(model, "classifier_dropout", p=0.1)
    wrapper = nn.ModuleDict({"module": model})  # as DistributedDataParallel does

    with pytest.raises(surgery.SelectionError, match=r"module\.classifier_dropout"):
        surgery.ConstantDropout(wrapper, "*classifier_dropout", p=0.5)
    assert kept.get_last_p() == {"classifier_dropout": 0.1}


def test_detach_frees_the_sites_and_stops_the_schedule() -> None:
    model = build_demo_model()
    first = surgery.ConstantDropout(model, p=0.1)
    first.detach()
    second = surgery.ConstantDropout(model, p=0.2)

    assert set(effective(model).values()) == {0.2}
    with pytest.raises(surgery.SurgeryError, match="detached"):
        first.step()
    second.step()


def test_a_dropped_schedule_releases_its_sites() -> None:
    model = build_demo_model()
    surgery.ConstantDropout(model, p=0.1)  # not kept: garbage at once
    surgery.ConstantDropout(model, p=0.2)
    assert set(effective(model).values()) == {0.2}


def test_a_site_restored_behind_the_schedule_is_driven_again() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    schedule = surgery.LinearDropout(model, start=0.0, end=0.3, steps=3)
    surgery.restore(model)
    assert isinstance(model[1], nn.Dropout)

    schedule.step()
    assert isinstance(model[1], surgery.GatedDropout)
    assert model[1].p == pytest.approx(0.1)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(3))
    for _ in range(steps):
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 1), nn.Dropout(0.1)
    )


def _schedules(model: nn.Module) -> list[surgery.DropoutSchedule]:
    return [
        surgery.CosineDropout(model, "1", start=0.5, end=0.1, steps=5),
        surgery.EarlyDropout(model, "4", p=0.3, until=4),
    ]


def _run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedules: list[surgery.DropoutSchedule],
    steps: int,
) -> list[dict[str, float]]:
    seen = []
    for _ in range(steps):
        _train(model, optimizer, 1)
        for schedule in schedules:
            schedule.step()
        seen.append(effective(model))
    return seen


def test_training_resumes_exactly_from_state_dicts() -> None:
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    full = _run_steps(model, optimizer, _schedules(model), 6)
    finished = [p.detach().clone() for p in model.parameters()]

    # The same run, stopped after 3 steps and resumed into new objects.
    torch.manual_seed(0)
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedules = _schedules(model)
    _run_steps(model, optimizer, schedules, 3)
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedules": [s.state_dict() for s in schedules],
            "rng": torch.get_rng_state(),
        },
        buffer,
    )

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _mlp()
    resumed.load_state_dict(saved["model"])
    optimizer = torch.optim.SGD(resumed.parameters(), lr=0.1)
    optimizer.load_state_dict(saved["optimizer"])
    schedules = _schedules(resumed)
    for schedule, state in zip(schedules, saved["schedules"], strict=True):
        schedule.load_state_dict(state)
    torch.set_rng_state(saved["rng"])

    assert effective(resumed) == full[2]
    assert _run_steps(resumed, optimizer, schedules, 3) == full[3:]
    for mine, reference in zip(resumed.parameters(), finished, strict=True):
        assert torch.equal(mine, reference)


def test_state_dict_is_plain_json() -> None:
    model = build_demo_model()
    schedule = surgery.StepDropout(model, milestones=[1, 3], values=[0.1, 0.2, 0.0])
    schedule.step()
    state = json.loads(json.dumps(schedule.state_dict()))
    schedule.detach()

    again = surgery.StepDropout(model, milestones=[5], values=[0.4, 0.5])
    again.load_state_dict(state)
    assert again.last_step == 1
    assert again.milestones == [1, 3]
    assert set(effective(model).values()) == {0.2}


def test_load_state_dict_refuses_another_schedule_or_other_sites() -> None:
    model = build_demo_model()
    linear = surgery.LinearDropout(model, "blocks.0.*", start=0.0, end=0.2, steps=2)
    state = linear.state_dict()
    linear.detach()

    cosine = surgery.CosineDropout(model, "blocks.0.*", start=0.0, end=0.2, steps=2)
    with pytest.raises(surgery.SelectionError, match="LinearDropout"):
        cosine.load_state_dict(state)
    cosine.detach()

    other = surgery.LinearDropout(model, "blocks.1.*", start=0.0, end=0.2, steps=2)
    with pytest.raises(surgery.SelectionError, match=r"only saved: \['blocks\.0"):
        other.load_state_dict(state)


def test_load_state_dict_with_bad_options_changes_nothing() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
    schedule = surgery.StepDropout(model, milestones=[2], values=[0.1, 0.2])
    state = schedule.state_dict()
    state["config"]["values"] = [0.1, 0.2, 0.3]

    with pytest.raises(ValueError, match="values needs one entry more"):
        schedule.load_state_dict(state)
    assert schedule.values == [0.1, 0.2]
    assert schedule.last_step == 0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda m: surgery.ConstantDropout(m, p=1.5), "p must be in"),
        (lambda m: surgery.ConstantDropout(m, p=0.1, mode="always"), "mode must be"),
        (lambda m: surgery.LinearDropout(m, start=0, end=0.1, steps=0), "steps"),
        (lambda m: surgery.CosineDropout(m, start=0.1, end=-1, steps=3), "end"),
        (
            lambda m: surgery.StepDropout(m, milestones=[3, 2], values=[0, 0, 0]),
            "increase strictly",
        ),
        (lambda m: surgery.EarlyDropout(m, p=0.1, until=-1), "until"),
        (lambda m: surgery.LateDropout(m, p=0.1, start=2.5), "start"),
        (lambda m: surgery.DepthDropout(m, max_p="0.1"), "max_p"),
    ],
)
def test_bad_options_raise_and_leave_the_model_alone(
    build: Build, message: str
) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
    with pytest.raises(ValueError, match=message):
        build(model)
    assert isinstance(model[1], nn.Dropout)
    surgery.ConstantDropout(model, p=0.2)  # the sites were not claimed


def test_selection_that_matches_nothing_names_the_sites() -> None:
    model = build_demo_model()
    with pytest.raises(surgery.SelectionError, match="Closest paths"):
        surgery.ConstantDropout(model, "encoder.*", p=0.1)


def test_seek_rejects_negative_steps() -> None:
    schedule = surgery.ConstantDropout(nn.Sequential(nn.Dropout(0.1)), p=0.1)
    with pytest.raises(ValueError, match="step must be"):
        schedule.seek(-1)


def _module_sites_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, 16),
        nn.Dropout(0.1),
        nn.AlphaDropout(0.1),
        DemoDropPath(0.1),
        nn.Linear(16, 16),
    )


@pytest.mark.slow
def test_stepping_a_compiled_model_never_recompiles() -> None:
    model = _module_sites_model().train()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    schedule = surgery.LinearDropout(model, start=0.0, end=0.45, steps=9)
    x = torch.randn(8, 16)

    for _ in range(10):
        compiled(x)
        schedule.step()
    assert counter.frame_count == 1


@pytest.mark.slow
def test_a_compiled_graph_reads_the_new_rate() -> None:
    model = nn.Sequential(nn.Dropout(0.0)).train()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    schedule = surgery.StepDropout(model, milestones=[1], values=[0.0, 0.5])
    x = torch.ones(4000)

    assert torch.equal(compiled(x), x)
    schedule.step()
    dropped = (compiled(x) == 0).float().mean().item()
    assert abs(dropped - 0.5) < 0.05  # about 6 standard deviations
    assert counter.frame_count == 1


@pytest.mark.slow
def test_a_schedule_that_switches_mode_compiles_once_per_mode() -> None:
    model = _module_sites_model().train()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    schedule = surgery.EarlyDropout(model, p=0.2, until=2)
    x = torch.randn(8, 16)

    for _ in range(5):
        compiled(x)
        schedule.step()
    assert counter.frame_count == 2


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="a float attribute site (nn.MultiheadAttention.dropout) is a Python "
    "constant in traced code, so every new value recompiles; goes away if "
    "attribute sites get a tensor-backed value",
)
def test_stepping_a_float_attribute_site_never_recompiles() -> None:
    model = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True).train()
    wrapper = nn.Sequential()
    wrapper.add_module("attn", model)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    schedule = surgery.LinearDropout(wrapper, start=0.1, end=0.3, steps=2)
    x = torch.randn(2, 3, 8)

    for _ in range(2):
        compiled(x, x, x)
        schedule.step()
    assert counter.frame_count == 1


def test_transformers_callback_follows_the_trainer_state() -> None:
    transformers = pytest.importorskip("transformers")
    from surgery.integrations.transformers import DropoutScheduleCallback

    model = build_demo_model()
    steps = surgery.LinearDropout(model, "blocks.*", start=0.0, end=0.4, steps=4)
    epochs = surgery.LateDropout(model, exclude="blocks.*", p=0.3, start=1)
    by_step = DropoutScheduleCallback(steps)
    by_epoch = DropoutScheduleCallback(epochs, every="epoch")
    state = transformers.TrainerState()
    control = transformers.TrainerControl()

    # The calls a Trainer makes: two epochs of two optimizer steps.
    for callback in (by_step, by_epoch):
        callback.on_train_begin(None, state, control)
    for epoch in range(2):
        for batch in range(2):
            state.global_step += 1
            state.epoch = epoch + (batch + 1) / 2
            for callback in (by_step, by_epoch):
                callback.on_step_end(None, state, control)
        for callback in (by_step, by_epoch):
            callback.on_epoch_end(None, state, control)
        assert epochs.last_step == epoch + 1
    assert steps.last_step == 4
    assert set(steps.get_last_p().values()) == {0.4}

    # A run resumed from a checkpoint at step 3, halfway into epoch 1.
    resumed = transformers.TrainerState(global_step=3, epoch=1.5)
    by_step.on_train_begin(None, resumed, control)
    by_epoch.on_train_begin(None, resumed, control)
    assert (steps.last_step, epochs.last_step) == (3, 1)
    assert list(set(steps.get_last_p().values())) == [pytest.approx(0.3)]


def test_transformers_callback_rejects_what_is_not_a_schedule() -> None:
    pytest.importorskip("transformers")
    from surgery.integrations.transformers import DropoutScheduleCallback

    with pytest.raises(TypeError, match="argument 0 is a Sequential"):
        DropoutScheduleCallback(nn.Sequential())
    schedule = surgery.ConstantDropout(nn.Sequential(nn.Dropout(0.1)), p=0.1)
    with pytest.raises(ValueError, match="every must be"):
        DropoutScheduleCallback(schedule, every="batch")  # type: ignore[arg-type]


class _Regression(nn.Module):
    """A model the transformers Trainer can train: returns a dict with a loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": (self.net(x).squeeze(-1) - labels).square().mean()}


@pytest.mark.slow
def test_transformers_trainer_resumes_the_schedule(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="the transformers Trainer needs it")
    from surgery.integrations.transformers import DropoutScheduleCallback

    generator = torch.Generator().manual_seed(0)
    rows = [
        {
            "x": torch.randn(4, generator=generator),
            "labels": torch.randn((), generator=generator),
        }
        for _ in range(24)
    ]

    def run(resume: str | None) -> tuple[list[float], surgery.DropoutSchedule]:
        torch.manual_seed(0)
        model = _Regression()
        schedule = surgery.LinearDropout(model, start=0.2, end=0.0, steps=6)
        seen: list[float] = []

        class Probe(transformers.TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
                seen.append(surgery.find(model)[0].p)

        args = transformers.TrainingArguments(
            output_dir=str(tmp_path),
            max_steps=6,
            per_device_train_batch_size=4,
            save_strategy="steps",
            save_steps=3,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            logging_strategy="no",
        )
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=rows,
            callbacks=[DropoutScheduleCallback(schedule), Probe()],
        )
        trainer.train(resume_from_checkpoint=resume)
        schedule.detach()
        return seen, schedule

    full, schedule = run(None)
    assert full == pytest.approx([0.2 * (1 - k / 6) for k in range(1, 7)])
    assert schedule.last_step == 6
    resumed, schedule = run(str(tmp_path / "checkpoint-3"))
    assert resumed == pytest.approx(full[3:])
    assert schedule.last_step == 6


def _lightning() -> Any:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    pytest.skip("Lightning is not installed (lightning or pytorch_lightning)")


@pytest.mark.slow
# Lightning itself trips torch deprecations and warns about data loader workers.
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")
def test_lightning_callback_follows_global_step() -> None:
    pl = _lightning()
    from surgery.integrations.lightning import DropoutScheduleCallback

    class Module(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
            self.seen: list[float] = []

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            self.seen.append(surgery.find(self.net)[0].p)
            (x,) = batch
            return self.net(x).square().mean()

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(self.parameters(), lr=0.01)

    module = Module()
    schedule = surgery.LinearDropout(module.net, start=0.3, end=0.0, steps=3)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(16, 4)), batch_size=2
    )
    trainer = pl.Trainer(
        max_steps=4,
        accumulate_grad_batches=2,
        callbacks=[DropoutScheduleCallback(schedule)],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)

    # Two batches per optimizer step: the rate changes every other batch.
    assert module.seen == pytest.approx([0.3, 0.3, 0.2, 0.2, 0.1, 0.1, 0.0, 0.0])
    assert schedule.last_step == 4


@pytest.mark.parametrize(
    "module", ["surgery._schedule", "surgery.integrations.transformers"]
)
def test_docstring_examples_run(module: str) -> None:
    if module.endswith("transformers"):
        pytest.importorskip("transformers")
    results = doctest.testmod(importlib.import_module(module), extraglobs={"nn": nn})
    assert results.attempted > 0
    assert results.failed == 0


def test_branch_schedule_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "branch_schedule.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "same weights as the uninterrupted one: True" in done.stdout
