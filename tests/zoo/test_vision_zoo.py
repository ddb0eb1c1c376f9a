"""timm and torchvision models, built without weights: every site found and removed.

Run with the README's zoo command (it installs torch, torchvision and timm in a
virtual environment of its own).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import surgery
from surgery import count_random_ops

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

_RATES = {"drop_rate": 0.2, "drop_path_rate": 0.2}
_VIT_RATES = {
    **_RATES,
    "proj_drop_rate": 0.1,
    "attn_drop_rate": 0.1,
    "pos_drop_rate": 0.1,
}

MODELS: dict[str, Callable[[], nn.Module]] = {
    "timm vit (fused attention reads .p)": lambda: timm.create_model(
        "vit_tiny_patch16_224", img_size=64, patch_size=16, **_VIT_RATES
    ),
    "timm convnext (DropPath)": lambda: timm.create_model("convnext_atto", **_RATES),
    "timm efficientnet (DropPath, functional head dropout)": lambda: timm.create_model(
        "efficientnet_b0", **_RATES
    ),
    "timm resnet (DropBlock2d)": lambda: timm.create_model(
        "resnet18", drop_block_rate=0.2, **_RATES
    ),
    "torchvision efficientnet (StochasticDepth)": lambda: (
        torchvision.models.efficientnet_b0(weights=None, stochastic_depth_prob=0.2)
    ),
    "torchvision convnext (StochasticDepth)": lambda: torchvision.models.convnext_tiny(
        weights=None, stochastic_depth_prob=0.2
    ),
    "torchvision swin (float dropouts passed to a window-attention function)": lambda: (
        torchvision.models.swin_transformer.SwinTransformer(
            patch_size=[4, 4],
            embed_dim=24,
            depths=[2, 2],
            num_heads=[2, 2],
            window_size=[4, 4],
            stochastic_depth_prob=0.2,
            dropout=0.1,
            attention_dropout=0.1,
        )
    ),
}


def _train_with_frozen_norms(model: nn.Module) -> nn.Module:
    """Train mode for dropout, eval mode for batch norm: comparable to eval."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


@pytest.fixture(params=list(MODELS))
def model(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    return _train_with_frozen_norms(MODELS[request.param]())


@pytest.fixture
def x() -> Tensor:
    return torch.randn(2, 3, 64, 64)


def test_strip_leaves_nothing_random(model: nn.Module, x: Tensor) -> None:
    reference = copy.deepcopy(model).eval()
    assert count_random_ops(model, x).count > 0
    sites = surgery.find(model, example_inputs=x)
    assert not [site.path for site in sites if site.kind == "unclassified"]

    surgery.strip(model, example_inputs=x)

    assert count_random_ops(model, x).count == 0
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_gate_draws_what_the_original_draws(model: nn.Module, x: Tensor) -> None:
    reference = copy.deepcopy(model)

    surgery.gate(model, example_inputs=x)

    torch.manual_seed(5)
    expected = reference(x)
    torch.manual_seed(5)
    assert torch.equal(model(x), expected)


def test_off_and_on(model: nn.Module, x: Tensor) -> None:
    drawn = count_random_ops(model, x).count

    surgery.set_dropout(model, mode="off", example_inputs=x)
    assert count_random_ops(model, x).count == 0

    model.eval()
    surgery.set_dropout(model, mode="on")
    assert count_random_ops(model, x).count == drawn
