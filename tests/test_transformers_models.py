"""Real model code: transformers BERT, GPT-2 and Llama, built from tiny configs.

No weights are downloaded: each model is constructed from a config with a
handful of parameters. Their dropout lives in three different places (called
modules, a module read for ``.p`` and handed to SDPA, and Llama's float
``attention_dropout``), which is what makes them worth testing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import surgery
from surgery import count_random_ops

transformers = pytest.importorskip("transformers")

VOCAB = 64
DROP = 0.2


def _bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=DROP,
        attention_probs_dropout_prob=DROP,
    )
    return transformers.BertModel(config)


def _gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=32,
        resid_pdrop=DROP,
        embd_pdrop=DROP,
        attn_pdrop=DROP,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def _llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        attention_dropout=DROP,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.LlamaForCausalLM(config)


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    kinds: dict[str, int]
    example_sites: dict[str, str]
    random_ops: int
    """Random ops one train-mode forward runs: one per site."""
    kwargs: dict[str, Any]


CASES = {
    "bert": Case(
        _bert,
        {"module": 5, "read_p": 2},
        {
            "embeddings.dropout": "module",
            "encoder.layer.1.attention.self.dropout": "read_p",
            "encoder.layer.1.output.dropout": "module",
        },
        7,
        {},
    ),
    "gpt2": Case(
        _gpt2,
        {"module": 5, "read_p": 2},
        {
            "transformer.drop": "module",
            "transformer.h.0.attn.attn_dropout": "read_p",
            "transformer.h.0.attn.resid_dropout": "module",
            "transformer.h.1.mlp.dropout": "module",
        },
        7,
        {"use_cache": False},
    ),
    "llama": Case(
        _llama,
        {"attribute": 2},
        {"model.layers.0.self_attn.attention_dropout": "attribute"},
        2,
        {"use_cache": False},
    ),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[Case, nn.Module]:
    chosen = CASES[request.param]
    torch.manual_seed(0)
    return chosen, chosen.build().train()


@pytest.fixture
def ids() -> Tensor:
    return torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))


def _out(
    model: nn.Module, ids: Tensor, kwargs: dict[str, Any], seed: int = 9
) -> Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        result = model(input_ids=ids, **kwargs)
    out: Tensor = result[0]
    return out


def _ops(model: nn.Module, ids: Tensor, kwargs: dict[str, Any]) -> int:
    with torch.no_grad():
        return count_random_ops(model, input_ids=ids, **kwargs).count


def test_find_lists_the_expected_kinds(case: tuple[Case, nn.Module]) -> None:
    chosen, model = case
    sites = surgery.find(model)
    assert dict(Counter(site.kind for site in sites)) == chosen.kinds
    kinds = {site.path: site.kind for site in sites}
    assert {path: kinds.get(path) for path in chosen.example_sites} == (
        chosen.example_sites
    )
    assert {site.p for site in sites} == {DROP}


def test_strip_runs_no_random_op_and_equals_eval(
    case: tuple[Case, nn.Module], ids: Tensor
) -> None:
    chosen, model = case
    assert _ops(model, ids, chosen.kwargs) == chosen.random_ops
    reference = _out(model.eval(), ids, chosen.kwargs)

    surgery.strip(model.train())
    assert _ops(model, ids, chosen.kwargs) == 0
    assert torch.equal(_out(model, ids, chosen.kwargs), reference)


def test_gate_is_bitwise_equal_under_a_seed_and_restores(
    case: tuple[Case, nn.Module], ids: Tensor
) -> None:
    chosen, model = case
    original = _out(model, ids, chosen.kwargs)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    surgery.gate(model)
    assert torch.equal(_out(model, ids, chosen.kwargs), original)
    assert not torch.equal(_out(model, ids, chosen.kwargs, seed=10), original)

    surgery.restore(model)
    assert torch.equal(_out(model, ids, chosen.kwargs), original)
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], v) for k, v in state.items())


def test_off_is_deterministic_in_train_mode(
    case: tuple[Case, nn.Module], ids: Tensor
) -> None:
    chosen, model = case
    reference = _out(model.eval(), ids, chosen.kwargs)

    surgery.set_dropout(model.train(), mode="off")
    assert _ops(model, ids, chosen.kwargs) == 0
    first = _out(model, ids, chosen.kwargs, seed=1)
    assert torch.equal(first, _out(model, ids, chosen.kwargs, seed=2))
    assert torch.equal(first, reference)


def test_on_drops_in_eval_mode(case: tuple[Case, nn.Module], ids: Tensor) -> None:
    chosen, model = case
    model.eval()
    reference = _out(model, ids, chosen.kwargs)
    assert _ops(model, ids, chosen.kwargs) == 0

    surgery.set_dropout(model, mode="on")
    assert _ops(model, ids, chosen.kwargs) == chosen.random_ops
    assert not torch.equal(_out(model, ids, chosen.kwargs), reference)
    assert not any(module.training for module in model.modules())

    surgery.restore(model)
    assert _ops(model, ids, chosen.kwargs) == 0
    assert torch.equal(_out(model, ids, chosen.kwargs), reference)


def test_attention_site_alone_on_in_eval(
    case: tuple[Case, nn.Module], ids: Tensor
) -> None:
    chosen, model = case
    model.eval()
    attention = [p for p, k in chosen.example_sites.items() if k != "module"]

    surgery.set_dropout(model, attention, mode="on")
    with torch.no_grad():
        counter = count_random_ops(model, input_ids=ids, **chosen.kwargs)
    assert counter.count == 1
    (where,) = counter.by_module()
    assert attention[0].startswith(where)
