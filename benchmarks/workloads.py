"""The models the benchmarks measure, built locally from configs (no downloads).

Each workload is a model and one batch of inputs for it, in two sizes: a
``cpu`` size that keeps the whole suite to a few minutes on two cores, and a
``gpu`` size that gives a modern GPU enough work per forward to time.

- ``bert``: a BERT-base shaped encoder (transformers ``BertModel`` with the
  default config: 12 layers, hidden 768, 12 heads), SDPA attention, whose
  attention dropout is a module read for ``.p``.
- ``gpt``: a GPT-2 style decoder with SDPA attention (transformers
  ``GPT2LMHeadModel``), the same kinds of site plus a language-model head.
- ``cnn``: a small residual network with ``Dropout2d`` inside each block and
  stochastic depth on each residual branch, and ``Dropout`` before the head.
- ``mlp``: a small multilayer perceptron with ``Dropout`` after each layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

import surgery

Size = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class Workload:
    """A model and the inputs of one forward pass."""

    name: str
    model: nn.Module
    inputs: tuple[Any, ...]
    kwargs: dict[str, Any]
    shape: str
    """The model's shape and the batch, in words, for reports."""
    timing_scale: int = 1
    """Multiplies the run's rounds and seconds: a fast forward on a busy CPU
    needs more rounds to settle, and they cost little."""


class StochasticDepth(nn.Module):
    """Drops a whole residual branch for a random subset of the batch.

    Written here rather than imported from torchvision, which does not import
    beside every torch build; it behaves as ``torchvision.ops.StochasticDepth``
    in ``"row"`` mode.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        # One draw per sample: (batch, 1, 1, ...).
        noise = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * noise.div_(keep)


surgery.register_drop_path(StochasticDepth, p_attr="p", kernel="stochastic_depth")


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, dropout: float, depth_p: float) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.depth = StochasticDepth(depth_p)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.depth(self.branch(x)))


class SmallResNet(nn.Module):
    """Three stages of two residual blocks each, then pooling and a classifier."""

    def __init__(
        self, width: int = 32, classes: int = 100, dropout: float = 0.1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        channels = width
        blocks = 6
        for stage in range(3):
            if stage:
                layers.append(nn.Conv2d(channels, 2 * channels, 1, stride=2))
                channels *= 2
            for block in range(2):
                # Stochastic depth grows linearly with depth, as in the paper.
                depth_p = 0.2 * (2 * stage + block + 1) / blocks
                layers.append(_ResidualBlock(channels, dropout, depth_p))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        # (batch, 3, H, W) -> (batch, channels, H / 4, W / 4) -> (batch, channels)
        pooled = self.features(x).mean(dim=(2, 3))
        return self.head(self.dropout(pooled))


class MLP(nn.Module):
    """Linear, GELU and Dropout, ``depth`` times, then a classifier."""

    def __init__(
        self, features: int, hidden: int, depth: int, classes: int, dropout: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _tokens(batch: int, length: int, vocab: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bert(size: Size) -> Workload:
    """BERT-base shaped encoder; batch 8 x 128 tokens on CPU, 64 x 128 on GPU."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(attn_implementation="sdpa")
    model = BertModel(config)
    batch = 8 if size == "cpu" else 64
    tokens = _tokens(batch, 128, config.vocab_size, seed=1)
    shape = f"BERT-base (12 x 768), batch {batch} x 128"
    return Workload("bert", model, (tokens,), {}, shape)


def gpt(size: Size) -> Workload:
    """GPT-2 style decoder: 6 x 512 on CPU, GPT-2 small (12 x 768) on GPU."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if size == "cpu":
        config = GPT2Config(
            n_layer=6,
            n_embd=512,
            n_head=8,
            vocab_size=8192,
            n_positions=256,
            bos_token_id=0,
            eos_token_id=0,
        )
        batch, length = 8, 128
    else:
        config = GPT2Config()
        batch, length = 16, 512
    config._attn_implementation = "sdpa"
    config.use_cache = False
    model = GPT2LMHeadModel(config)
    tokens = _tokens(batch, length, config.vocab_size, seed=2)
    shape = (
        f"GPT-2 style ({config.n_layer} x {config.n_embd}, vocab "
        f"{config.vocab_size}), batch {batch} x {length}"
    )
    return Workload("gpt", model, (tokens,), {"use_cache": False}, shape)


def cnn(size: Size) -> Workload:
    """Residual CNN with Dropout2d and stochastic depth, 64 x 64 images."""
    torch.manual_seed(0)
    model = SmallResNet()
    batch = 16 if size == "cpu" else 256
    images = torch.randn(batch, 3, 64, 64, generator=_seeded(3))
    shape = f"ResNet-style 3 x 2 blocks (32-128 ch), batch {batch} x 3 x 64 x 64"
    return Workload("cnn", model, (images,), {}, shape, timing_scale=2)


def mlp(size: Size) -> Workload:
    """Four hidden layers of 1024 on 256 features."""
    torch.manual_seed(0)
    model = MLP(features=256, hidden=1024, depth=4, classes=10, dropout=0.1)
    batch = 256 if size == "cpu" else 8192
    features = torch.randn(batch, 256, generator=_seeded(4))
    shape = f"MLP 256 -> 4 x 1024 -> 10, batch {batch}"
    return Workload("mlp", model, (features,), {}, shape, timing_scale=2)


BUILDERS: dict[str, Callable[[Size], Workload]] = {
    "bert": bert,
    "gpt": gpt,
    "cnn": cnn,
    "mlp": mlp,
}
"""Every workload by name, in the order reports list them."""


def synthetic(sites: int) -> nn.Module:
    """A model with ``sites`` dropout sites: blocks of Linear then Dropout.

    Each site comes with the two modules around it a real network has (its
    block and a layer), so the walk over the tree is part of the cost.
    """
    blocks = [nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)) for _ in range(sites)]
    return nn.Sequential(*blocks)


def llama_7b_on_meta() -> nn.Module:
    """A Llama-7B shaped model (32 x 4096, 6.7 B parameters) on the meta device.

    Llama has no dropout module: its sites are the ``attention_dropout``
    floats of its attention modules, set non-zero here so they matter.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        attention_dropout=0.1,
    )
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def tiny_gpt() -> Workload:
    """A two-layer GPT-2 for counting recompiles: the count does not need size."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=256,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    config._attn_implementation = "sdpa"
    config.use_cache = False
    tokens = _tokens(2, 16, config.vocab_size, seed=5)
    return Workload(
        "gpt-tiny", GPT2LMHeadModel(config), (tokens,), {"use_cache": False}, "tiny"
    )
