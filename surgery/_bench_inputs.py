"""Checks and preparation of what :func:`surgery.compare_throughput` is given.

The options, the model and the inputs are checked before anything runs, and
the model and inputs are moved to the device and dtype measured there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._bench_report import BASELINE, VARIANTS, Variant
from ._errors import BenchmarkError

__all__ = [
    "batch_size_of",
    "check_model",
    "check_options",
    "check_variants",
    "map_tensors",
    "on_target",
    "param_dtype",
    "resolve_device",
    "share_parameters_copy",
    "to_target",
]


def check_variants(variants: Sequence[Variant]) -> list[Variant]:
    if isinstance(variants, str) or not variants:
        raise BenchmarkError(
            f"variants must be a non-empty list drawn from {', '.join(VARIANTS)}; "
            f"got {variants!r}"
        )
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise BenchmarkError(
            f"unknown variant(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(VARIANTS)}"
        )
    chosen = list(dict.fromkeys(variants))
    if BASELINE not in chosen:
        chosen.insert(0, BASELINE)
    return chosen


def check_options(*, seconds: float, rounds: int, warmup: int) -> None:
    if not seconds > 0:
        raise BenchmarkError(f"seconds must be positive, got {seconds!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise BenchmarkError(f"rounds must be an int >= 1, got {rounds!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise BenchmarkError(
            f"warmup must be an int >= 1 (the first forward is never timed), "
            f"got {warmup!r}"
        )


def check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise BenchmarkError(
            f"expected an nn.Module, got {type(model).__name__}; pass the model"
        )
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        raise BenchmarkError(
            "the model is already compiled; pass the original (its ._orig_mod) "
            "and compile=True to measure it compiled"
        )
    meta = next(
        (name for name, param in model.named_parameters() if param.is_meta), None
    )
    if meta is not None:
        raise BenchmarkError(
            f"parameter {meta!r} is on the meta device and holds no data; "
            "materialise the model (to_empty() and initialise it) first"
        )


def resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        first = next(model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise BenchmarkError(f"device {device!r} is not a device: {error}") from error
    if target.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(
            f"device {device!r} asked for, but CUDA is not available here; "
            "pass device='cpu' or run on a machine with a GPU"
        )
    if target.type == "cuda" and target.index is None:
        # Parameters say cuda:0, never cuda: name the device the same way, so
        # that a model already there is not copied for nothing.
        target = torch.device("cuda", torch.cuda.current_device())
    return target


def param_dtype(model: nn.Module) -> torch.dtype:
    first = next(model.parameters(), None)
    return first.dtype if first is not None else torch.get_default_dtype()


def on_target(
    model: nn.Module, device: torch.device, dtype: torch.dtype | None
) -> nn.Module:
    """``model`` itself if it is already there, else a converted full copy.

    ``Module.to`` changes parameters in place, so converting the caller's
    model (or a copy sharing its parameters) would change the caller's.
    """
    params = list(model.parameters())
    same_device = all(param.device == device for param in params)
    same_dtype = dtype is None or all(
        param.dtype == dtype for param in params if param.is_floating_point()
    )
    if same_device and same_dtype:
        return model
    converted = _deepcopy(model, {})
    return converted.to(device=device, dtype=dtype)


def share_parameters_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules and buffers that shares its parameters."""
    memo: dict[int, Any] = {id(param): param for param in model.parameters()}
    return _deepcopy(model, memo)


def _deepcopy(model: nn.Module, memo: dict[int, Any]) -> nn.Module:
    try:
        return copy.deepcopy(model, memo)
    except Exception as error:
        raise BenchmarkError(
            f"could not copy {type(model).__name__} to prepare a variant "
            f"(copy.deepcopy failed: {error}); each variant needs its own copy"
        ) from error


def to_target(
    tensor: Tensor, device: torch.device, dtype: torch.dtype | None
) -> Tensor:
    if dtype is not None and tensor.is_floating_point():
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device=device)


def map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(item, fn) for item in value)
    if isinstance(value, dict):
        return {key: map_tensors(item, fn) for key, item in value.items()}
    return value


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def batch_size_of(
    args: Sequence[Any], kwargs: Mapping[str, Any], batch_size: int | None
) -> int:
    tensors = [*_tensors(list(args)), *_tensors(dict(kwargs))]
    if not tensors:
        raise BenchmarkError(
            "example inputs hold no tensor; pass the inputs of one forward pass"
        )
    if not any(bool(tensor.any()) for tensor in tensors if tensor.numel()):
        # Zeros flatter kernels (and make every dropout mask irrelevant):
        # the timings would not be those of real data.
        raise BenchmarkError(
            "example inputs are all zeros; use realistic values "
            "(torch.randn for features, torch.randint for token ids)"
        )
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise BenchmarkError(f"batch_size must be an int, got {batch_size!r}")
        if batch_size < 1:
            raise BenchmarkError(f"batch_size must be >= 1, got {batch_size}")
        return batch_size
    first = tensors[0]
    if first.dim() == 0:
        raise BenchmarkError(
            "the first input tensor is a scalar, so the batch size is unknown; "
            "pass batch_size="
        )
    return int(first.shape[0])
