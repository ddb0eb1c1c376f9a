"""Example inputs described in words: ``"2x8:int64"`` becomes a tensor.

Verification, export and benchmarks need example inputs. A recipe file and
the command line describe them as ``SHAPE[:DTYPE]``: sizes joined by ``x``
and an optional torch dtype name (``float32`` when left out). The tensors are
drawn from a fixed seed, so the same description gives the same tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["InputSpec", "make_inputs", "token_bound"]

_SHAPE = re.compile(r"\d+(x\d+)*")

# Integer inputs are usually indices; without an embedding to bound them,
# two values keep them valid for any index-taking op on a non-empty axis.
_DEFAULT_INT_BOUND = 2


@dataclass(frozen=True)
class InputSpec:
    """The shape and dtype of one example input tensor.

    Example:
        >>> InputSpec.parse("2x8:int64")
        InputSpec(shape=(2, 8), dtype=torch.int64)
    """

    shape: tuple[int, ...]
    dtype: torch.dtype

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """Read ``SHAPE[:DTYPE]``, e.g. ``"2x8:int64"`` or ``"4x3x32x32"``.

        Raises:
            ValueError: ``text`` is not of that form, naming the bad part.
        """
        shape_text, _, dtype_text = text.strip().partition(":")
        if not _SHAPE.fullmatch(shape_text):
            raise ValueError(
                f"input shape {text!r}: expected sizes joined by 'x' and an "
                "optional dtype, like '2x8:int64' or '4x3x32x32'"
            )
        dtype = getattr(torch, dtype_text or "float32", None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(
                f"input shape {text!r}: {dtype_text!r} is not a torch dtype "
                "(try float32, float16, bfloat16, int64, bool)"
            )
        return cls(tuple(int(size) for size in shape_text.split("x")), dtype)

    def __str__(self) -> str:
        return "x".join(map(str, self.shape)) + ":" + str(self.dtype).split(".")[1]


def token_bound(model: nn.Module) -> int:
    """The exclusive upper bound for integer example inputs of ``model``.

    The smallest vocabulary among its ``nn.Embedding`` modules, so random ids
    are valid for every embedding; two when it has none.
    """
    sizes = [
        module.num_embeddings
        for module in model.modules()
        if isinstance(module, nn.Embedding)
    ]
    return min(sizes, default=_DEFAULT_INT_BOUND)


def make_inputs(
    specs: list[InputSpec], *, int_bound: int = _DEFAULT_INT_BOUND, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """One tensor per spec, drawn from ``seed`` without touching the global RNG.

    Floating and complex tensors are standard normal; integer tensors are
    uniform in ``[0, int_bound)``; boolean tensors are all ``True`` (a mask
    that hides nothing).

    Example:
        >>> x, = make_inputs([InputSpec.parse("2x8:int64")], int_bound=64)
        >>> x.shape, x.dtype, bool((x >= 0).all() and (x < 64).all())
        (torch.Size([2, 8]), torch.int64, True)
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        if spec.dtype == torch.bool:
            tensor = torch.ones(spec.shape, dtype=torch.bool)
        elif spec.dtype.is_floating_point or spec.dtype.is_complex:
            tensor = torch.randn(spec.shape, generator=generator, dtype=spec.dtype)
        else:
            tensor = torch.randint(
                0, int_bound, spec.shape, generator=generator, dtype=spec.dtype
            )
        tensors.append(tensor)
    return tuple(tensors)
