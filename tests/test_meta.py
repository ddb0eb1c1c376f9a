"""Large models: rewrite and schedule on the meta device, then materialise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import surgery
from surgery.demo import DemoTransformer, build_demo_model, demo_inputs

Rewrite = Callable[[nn.Module], Any]


def _stepped(schedule: surgery.DropoutSchedule, steps: int) -> surgery.DropoutSchedule:
    for _ in range(steps):
        schedule.step()
    return schedule


REWRITES: dict[str, Rewrite] = {
    "strip": lambda m: surgery.strip(m, "blocks.*"),
    "gate": surgery.gate,
    "gate then restore": lambda m: surgery.restore(surgery.gate(m)),
    "set p": lambda m: surgery.set_dropout(m, p=0.3),
    "blocks off": lambda m: surgery.set_dropout(m, "blocks.*", mode="off"),
    "on in eval": lambda m: surgery.set_dropout(m.eval(), mode="on"),
    "linear schedule": lambda m: _stepped(
        surgery.LinearDropout(m, start=0.0, end=0.4, steps=4), 2
    ),
    "cosine schedule": lambda m: _stepped(
        surgery.CosineDropout(m, "blocks.*", start=0.4, end=0.0, steps=4), 1
    ),
    "step schedule": lambda m: _stepped(
        surgery.StepDropout(m, milestones=[1], values=[0.1, 0.25]), 1
    ),
    "early schedule": lambda m: _stepped(surgery.EarlyDropout(m, p=0.2, until=1), 1),
    "late schedule": lambda m: surgery.LateDropout(m, p=0.2, start=3),
    "depth schedule": lambda m: surgery.DepthDropout(m, "*drop_path", max_p=0.3),
}


def _materialise(model: nn.Module, weights: dict[str, torch.Tensor], how: str) -> None:
    if how == "to_empty":
        model.to_empty(device="cpu")
        model.load_state_dict(weights)
    else:
        model.load_state_dict(weights, assign=True)


@pytest.mark.parametrize("how", ["to_empty", "assign"])
@pytest.mark.parametrize("name", list(REWRITES))
def test_rewrite_on_meta_then_materialise_matches_the_cpu_model(
    name: str, how: str
) -> None:
    rewrite = REWRITES[name]
    reference = build_demo_model()
    kept = rewrite(reference)  # a schedule must stay alive to keep its claim
    weights = reference.state_dict()

    with torch.device("meta"):
        model = DemoTransformer().train()
    kept_too = rewrite(model)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.is_meta for t in tensors), "a rewrite allocated real memory"
    assert surgery.find(model) == surgery.find(reference)

    _materialise(model, weights, how)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert surgery.find(model) == surgery.find(reference)

    tokens = demo_inputs()
    torch.manual_seed(5)
    expected = reference(tokens)
    torch.manual_seed(5)
    assert torch.equal(model(tokens), expected)
    del kept, kept_too


def test_a_schedule_built_on_meta_keeps_driving_after_materialising() -> None:
    reference = build_demo_model()
    with torch.device("meta"):
        model = DemoTransformer().train()
    schedule = surgery.LinearDropout(model, start=0.0, end=0.3, steps=3)
    model.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())

    schedule.step()
    assert [site.p for site in surgery.find(model)] == pytest.approx([0.1] * 10)
    tokens = demo_inputs()
    assert surgery.count_random_ops(model, tokens).count > 0
    schedule.detach()
    surgery.LinearDropout(reference, start=0.0, end=0.3, steps=3).step()
    torch.manual_seed(1)
    expected = reference(tokens)
    torch.manual_seed(1)
    assert torch.equal(model(tokens), expected)


def test_mc_sampling_after_materialising_matches_the_cpu_model() -> None:
    reference = build_demo_model().eval()
    with torch.device("meta"):
        model = DemoTransformer()
    surgery.gate(model)
    model.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())
    model.eval()

    tokens = demo_inputs()
    assert torch.equal(
        surgery.mc_sample(model, tokens, 4, seed=0),
        surgery.mc_sample(reference, tokens, 4, seed=0),
    )


@pytest.mark.slow
def test_a_transformers_model_built_on_meta() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    reference = transformers.BertModel(config).train()
    with torch.device("meta"):
        model = transformers.BertModel(config).train()

    kinds = {site.kind for site in surgery.find(model)}
    assert "read_p" in kinds  # attention hands its dropout's p to SDPA
    for rewritten in (reference, model):
        surgery.gate(rewritten)
        surgery.set_dropout(rewritten, "*attention.self.*", mode="off")
    schedules = [
        surgery.LinearDropout(
            m, exclude="*attention.self.*", start=0.3, end=0.1, steps=2
        )
        for m in (reference, model)
    ]
    for schedule in schedules:
        schedule.step()
    assert all(t.is_meta for t in model.parameters())

    model.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())
    # BERT's position ids are buffers kept out of state_dict: refill them.
    for name, buffer in reference.named_buffers():
        model.get_buffer(name).copy_(buffer)
    tokens = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    expected = reference(tokens).last_hidden_state
    torch.manual_seed(3)
    assert torch.equal(model(tokens).last_hidden_state, expected)
