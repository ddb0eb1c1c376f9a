"""A small transformer-like model with dropout of every kind, for demos and tests.

It holds each kind of site surgery handles without running the model:

- called dropout modules (embedding, residual and MLP dropout);
- an attention dropout module that is only read for ``.p`` and handed to
  ``scaled_dot_product_attention``, as GPT-2 and BERT do;
- a float attribute used as a probability (the classifier head);
- a drop-path module, registered the way users register their own classes.

>>> from surgery.demo import build_demo_model, demo_inputs
>>> model = build_demo_model()
>>> model(demo_inputs()).shape
torch.Size([2, 4])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._kinds.drop_path import register_drop_path

__all__ = ["DemoDropPath", "DemoTransformer", "build_demo_model", "demo_inputs"]


class DemoDropPath(nn.Module):
    """Per-sample drop-path: drops a whole residual branch for some samples."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


register_drop_path(DemoDropPath, p_attr="drop_prob", kernel="drop_path")


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # Never called: its p is handed to the fused attention kernel.
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        # (batch, length, 3 * dim) -> 3 x (batch, heads, length, dim / heads)
        q, k, v = (
            self.qkv(x)
            .view(batch, length, 3, self.heads, dim // self.heads)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout.p if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(batch, length, dim)
        projected: Tensor = self.resid_dropout(self.proj(out))
        return projected


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * dim, dim),
        )
        self.drop_path = DemoDropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        out: Tensor = x + self.drop_path(self.mlp(self.norm2(x)))
        return out


class DemoTransformer(nn.Module):
    """A token classifier: embedding, pre-norm blocks, mean pooling, a head."""

    def __init__(
        self,
        vocab: int = 64,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        classes: int = 4,
        dropout: float = 0.1,
        drop_path: float = 0.1,
        classifier_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            _Block(dim, heads, dropout, drop_path * (i + 1) / depth)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.classifier_dropout = classifier_dropout

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed_dropout(self.embed(tokens))
        for block in self.blocks:
            x = block(x)
        pooled = self.norm(x).mean(dim=1)
        pooled = F.dropout(pooled, p=self.classifier_dropout, training=self.training)
        logits: Tensor = self.head(pooled)
        return logits


def build_demo_model(seed: int = 0) -> DemoTransformer:
    """The demo model with weights drawn from ``seed``, in train mode."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return DemoTransformer().train()
    finally:
        torch.random.set_rng_state(generator_state)


def demo_inputs(batch: int = 2, length: int = 8, seed: int = 0) -> Tensor:
    """A batch of token ids for :func:`build_demo_model`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 64, (batch, length), generator=generator)
