"""Real architectures from tiny configs: one call leaves nothing stochastic.

Each model is built from a tiny transformers config (no weights are
downloaded). For each: strip gives zero random ops in a train-mode forward
and the dropout-free output; gate draws exactly what the original draws;
mode "off" runs no random op; mode "on" drops in eval mode.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import surgery
from surgery import count_random_ops

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

_IDS = torch.randint(3, 99, (2, 8), generator=torch.Generator().manual_seed(0))
_TOKENS = {"input_ids": _IDS}
_SEQ2SEQ = {"input_ids": _IDS, "decoder_input_ids": _IDS}
_SMALL = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
_TOKEN_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def _bart() -> nn.Module:
    # Every dropout is a float attribute passed to F.dropout or attention.
    config = transformers.BartConfig(
        vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.1,
        attention_dropout=0.1, activation_dropout=0.1, **_TOKEN_IDS,
    )  # fmt: skip
    return transformers.BartModel(config)


def _t5() -> nn.Module:
    config = transformers.T5Config(
        vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        dropout_rate=0.1, decoder_start_token_id=0,
    )  # fmt: skip
    return transformers.T5Model(config)


def _vit() -> nn.Module:
    config = transformers.ViTConfig(
        image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )  # fmt: skip
    return transformers.ViTModel(config)


def _mistral() -> nn.Module:
    # Llama-style: no dropout module at all, only attention_dropout.
    config = transformers.MistralConfig(
        **_SMALL, num_key_value_heads=1, attention_dropout=0.1
    )
    return transformers.MistralModel(config)


def _distilbert() -> nn.Module:
    config = transformers.DistilBertConfig(
        vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64
    )
    return transformers.DistilBertModel(config)


def _whisper() -> nn.Module:
    config = transformers.WhisperConfig(
        vocab_size=100, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=8,
        max_target_positions=16, dropout=0.1, attention_dropout=0.1,
        activation_dropout=0.1, decoder_start_token_id=1, **_TOKEN_IDS,
    )  # fmt: skip
    return transformers.WhisperModel(config)


def _gpt_neox() -> nn.Module:
    config = transformers.GPTNeoXConfig(
        **_SMALL, hidden_dropout=0.1, attention_dropout=0.1
    )
    return transformers.GPTNeoXModel(config)


def _torch_transformer() -> nn.Module:
    return nn.Transformer(
        d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
        dim_feedforward=32, dropout=0.1, batch_first=True,
    )  # fmt: skip


_SOURCE = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
MODELS: dict[str, tuple[Callable[[], nn.Module], dict[str, Any]]] = {
    "bart": (_bart, _SEQ2SEQ),
    "t5": (_t5, _SEQ2SEQ),
    "vit": (_vit, {"pixel_values": torch.randn(2, 3, 16, 16)}),
    "mistral": (_mistral, _TOKENS),
    "distilbert": (_distilbert, _TOKENS),
    "whisper": (
        _whisper,
        {"input_features": torch.randn(2, 8, 16), "decoder_input_ids": _IDS},
    ),
    "gpt_neox": (_gpt_neox, _TOKENS),
    "nn.Transformer": (_torch_transformer, {"src": _SOURCE, "tgt": _SOURCE[:, :3]}),
}


def _first(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    return output[0]


@pytest.fixture(params=list(MODELS))
def case(request: pytest.FixtureRequest) -> tuple[nn.Module, dict[str, Any]]:
    build, inputs = MODELS[request.param]
    with warnings.catch_warnings():
        # Tiny configs trip transformers' advice on sizes and token ids.
        warnings.simplefilter("ignore")
        model = build()
    return model.train(), inputs


def test_strip_leaves_nothing_random(case: tuple[nn.Module, dict[str, Any]]) -> None:
    model, inputs = case
    reference = copy.deepcopy(model).eval()
    assert count_random_ops(model, **inputs).count > 0
    sites = surgery.find(model, example_inputs=inputs)
    assert not [site for site in sites if site.kind == "unclassified"]

    surgery.strip(model, example_inputs=inputs)

    assert model.training
    assert count_random_ops(model, **inputs).count == 0
    # Gradients stay enabled: under no_grad nn.Transformer's eval mode takes a
    # fused kernel whose rounding differs from its own train-mode path.
    assert torch.equal(_first(model(**inputs)), _first(reference(**inputs)))


def test_gate_draws_what_the_original_draws(
    case: tuple[nn.Module, dict[str, Any]],
) -> None:
    model, inputs = case
    reference = copy.deepcopy(model)

    surgery.gate(model, example_inputs=inputs)

    assert all(site.state == "gated" for site in surgery.find(model))
    torch.manual_seed(11)
    expected = _first(reference(**inputs))
    torch.manual_seed(11)
    assert torch.equal(_first(model(**inputs)), expected)


def test_off_is_deterministic_and_on_drops_in_eval(
    case: tuple[nn.Module, dict[str, Any]],
) -> None:
    model, inputs = case
    drawn = count_random_ops(model, **inputs).count

    surgery.set_dropout(model, mode="off", example_inputs=inputs)
    assert count_random_ops(model, **inputs).count == 0

    model.eval()
    assert count_random_ops(model, **inputs).count == 0
    surgery.set_dropout(model, mode="on")
    with torch.no_grad():
        assert count_random_ops(model, **inputs).count == drawn
