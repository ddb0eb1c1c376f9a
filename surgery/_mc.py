"""Monte Carlo dropout: many stochastic forward passes of an eval-mode model.

:func:`mc_sample` puts the model in eval mode, switches the selected sites on
(mode ``"on"``), runs the forwards without autograd, and puts back every
training flag, site and random number generator state it touched. Because
the generators are put back, two calls with the same global RNG state return
the same samples; pass ``seed=`` to draw other ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor, nn

from ._api import dropout_off, dropout_on, find
from ._errors import SelectionError, SurgeryError
from ._select import Selector
from ._tree import ModuleIndex, replace_module

__all__ = ["Inputs", "mc_mean", "mc_sample", "mc_variance"]

logger = logging.getLogger("surgery")

Inputs: TypeAlias = Tensor | Sequence[Any] | Mapping[str, Any]
"""One tensor (``model(x)``), positional arguments, or keyword arguments."""

_OOM_MESSAGES = ("out of memory", "can't allocate memory")


def mc_sample(
    model: nn.Module,
    inputs: Inputs,
    n: int,
    *,
    select: Selector | None = None,
    exclude: Selector | None = None,
    batched: bool | Literal["auto"] = False,
    seed: int | None = None,
    output: Callable[[Any], Tensor] | None = None,
) -> Tensor:
    """Run ``n`` stochastic forwards with only the selected sites dropping.

    Every module is in eval mode during the forwards and the selected sites
    are in mode ``"on"``; all other sites drop nothing. Nothing is recorded
    for autograd. On return the model's training flags, sites (state, mode,
    probability) and the CPU and accelerator random generators are as they
    were, so the same call twice gives the same samples: pass ``seed`` to
    draw different ones. A selected site that was stripped drops with its
    original probability while sampling, and is stripped again afterwards.

    Args:
        model: The model; it is changed only while the call runs.
        inputs: A tensor, a sequence of positional arguments, or a mapping of
            keyword arguments for ``model``.
        n: How many samples to draw.
        select: Sites to switch on (the selector language of
            :func:`surgery.find`); ``None`` means every site.
        exclude: Sites to leave off; wins over ``select``.
        batched: ``False`` loops ``n`` forwards. ``True`` repeats the batch
            ``n`` times along dimension 0 and runs one forward; this needs
            every tensor input and the output batched along dimension 0 and
            a model that treats samples of a batch independently.
            ``"auto"`` batches where the inputs allow it and halves the
            repeat count whenever a forward runs out of memory, down to
            looping.
        seed: Seeds the generators for the call; ``None`` draws from their
            current state (which is then put back).
        output: Turns the model's output into one tensor, e.g.
            ``lambda out: out.logits``; needed when the model does not
            return a tensor.

    Returns:
        The samples stacked along a new first dimension, shape
        ``(n, *output.shape)``.

    Raises:
        SelectionError: ``select`` matched no site, or ``exclude`` left none.
        SurgeryError: the inputs or output cannot be batched (with
            ``batched=True``), or the output is not a tensor.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).eval()
        >>> samples = mc_sample(model, torch.ones(2, 4), 8, seed=0)
        >>> samples.shape
        torch.Size([8, 2, 4])
        >>> model.training, torch.equal(model(torch.ones(2, 4)), samples[0])
        (False, False)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if batched not in (True, False, "auto"):
        raise ValueError(f"batched must be True, False or 'auto'; got {batched!r}")
    to_tensor = output or _require_tensor
    chosen = find(model, select, exclude=exclude)
    if not chosen:
        raise SelectionError(
            "select and exclude left no dropout site to sample with; "
            "list the sites with surgery.find(model)"
        )

    call = _Call(model, inputs, to_tensor)
    with _sampling(model, chosen, seed, _devices(model, inputs)):
        if batched is False:
            return call.looped(n)
        if batched is True:
            call.check_batchable()
            return call.batched(n, n)
        if not call.batchable():
            logger.debug("mc_sample: inputs cannot be batched; looping")
            return call.looped(n)
        return call.batched(n, n, adapt=True)


def mc_mean(samples: Tensor) -> Tensor:
    """The mean over the samples of :func:`mc_sample` (dimension 0).

    Example:
        >>> mc_mean(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor([2., 3.])
    """
    _check_samples(samples, needed=1)
    return samples.mean(dim=0)


def mc_variance(samples: Tensor, *, correction: int = 1) -> Tensor:
    """The variance over the samples of :func:`mc_sample` (dimension 0).

    Args:
        samples: The stacked samples.
        correction: Bessel's correction; ``1`` (default) is the unbiased
            estimate, ``0`` the population variance.

    Example:
        >>> mc_variance(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
        tensor([2., 8.])
    """
    _check_samples(samples, needed=correction + 1)
    return samples.var(dim=0, correction=correction)


class _Call:
    """Runs the model on the inputs, looped or on a repeated batch."""

    def __init__(
        self, model: nn.Module, inputs: Inputs, to_tensor: Callable[[Any], Tensor]
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.to_tensor = to_tensor

    def forward(self, repeat: int) -> Tensor:
        args, kwargs = _split(self.inputs)
        if repeat > 1:
            # (batch, ...) -> (repeat * batch, ...), sample-major.
            args = [_repeat(value, repeat) for value in args]
            kwargs = {key: _repeat(value, repeat) for key, value in kwargs.items()}
        return self.to_tensor(self.model(*args, **kwargs))

    def looped(self, n: int) -> Tensor:
        return torch.stack([self.forward(1) for _ in range(n)])

    def batched(self, n: int, per_forward: int, *, adapt: bool = False) -> Tensor:
        """``n`` samples, ``per_forward`` at a time; ``adapt`` halves on OOM."""
        parts: list[Tensor] = []
        done = 0
        while done < n:
            repeat = min(per_forward, n - done)
            try:
                out = self.forward(repeat)
            except Exception as error:
                if not (adapt and repeat > 1 and _is_out_of_memory(error)):
                    raise
                per_forward = repeat // 2
                logger.debug("mc_sample: out of memory; %d per forward", per_forward)
                continue
            parts.append(self._unfold(out, repeat))
            done += repeat
        return torch.cat(parts)

    def _unfold(self, out: Tensor, repeat: int) -> Tensor:
        batch = self.batch_size()
        if out.dim() == 0 or out.shape[0] != repeat * batch:
            raise SurgeryError(
                f"batched mc_sample repeated a batch of {batch} {repeat} times, "
                f"but the output has shape {tuple(out.shape)}, not "
                f"({repeat * batch}, ...): the output must be batched along "
                "dimension 0. Use batched=False."
            )
        # (repeat * batch, ...) -> (repeat, batch, ...)
        return out.reshape(repeat, batch, *out.shape[1:])

    def batch_size(self) -> int:
        sizes = {value.shape[0] for value in _tensors(self.inputs) if value.dim() > 0}
        return sizes.pop()

    def batchable(self) -> bool:
        tensors = list(_tensors(self.inputs))
        sizes = {value.shape[0] if value.dim() > 0 else None for value in tensors}
        return len(sizes) == 1 and None not in sizes

    def check_batchable(self) -> None:
        if not self.batchable():
            shapes = [tuple(value.shape) for value in _tensors(self.inputs)]
            raise SurgeryError(
                "batched mc_sample needs tensor inputs that share their first "
                f"(batch) dimension; got shapes {shapes}. Use batched=False."
            )


@contextmanager
def _sampling(
    model: nn.Module,
    chosen: Sequence[Any],
    seed: int | None,
    devices: tuple[str, list[int]],
) -> Iterator[None]:
    """Eval mode, chosen sites on, other sites off, no autograd, RNG forked."""
    flags = {path: module.training for path, module in model.named_modules()}
    stand_ins = {
        site.path: model.get_submodule(site.path)
        for site in chosen
        if site.state == "stripped" and site.kind != "attribute"
    }
    paths = {site.path for site in chosen}
    others = {
        site.path
        for site in find(model)
        if site.path not in paths and site.state == "gated" and site.mode == "on"
    }
    device_type, indices = devices
    try:
        with ExitStack() as stack:
            stack.enter_context(
                torch.random.fork_rng(devices=indices, device_type=device_type)
            )
            if seed is not None:
                _seed(seed, device_type, indices)
            stack.enter_context(torch.no_grad())
            model.eval()
            stack.enter_context(dropout_on(model, lambda path, _: path in paths))
            if others:
                stack.enter_context(dropout_off(model, lambda path, _: path in others))
            yield
    finally:
        _reinstall(model, stand_ins)
        # Last, after the sites are back: putting a site back copies the
        # eval-mode flag of its gate onto the module it restores.
        for path, module in model.named_modules():
            module.training = flags.get(path, module.training)


def _reinstall(model: nn.Module, stand_ins: Mapping[str, nn.Module]) -> None:
    """Put back the very stripped stand-ins that sampling replaced by new ones."""
    if not stand_ins:
        return
    index = ModuleIndex.build(model)
    for path, old in stand_ins.items():
        new = index.get(path)
        if new is not old and type(new) is type(old):
            replace_module(index, new, old)


def _devices(model: nn.Module, inputs: Inputs) -> tuple[str, list[int]]:
    """The accelerator whose generators the call may advance, and its indices."""
    tensors = [*model.parameters(), *model.buffers(), *_tensors(inputs)]
    found = {t.device for t in tensors if t.device.type not in ("cpu", "meta")}
    if not found:
        return "cuda", []
    device_type = sorted(d.type for d in found)[0]
    indices = sorted({d.index or 0 for d in found if d.type == device_type})
    return device_type, indices


def _seed(seed: int, device_type: str, indices: list[int]) -> None:
    torch.default_generator.manual_seed(seed)
    if not indices:
        return
    backend = getattr(torch, device_type)
    generators = getattr(backend, "default_generators", ())
    if generators:
        for index in indices:
            generators[index].manual_seed(seed)
    else:
        backend.manual_seed(seed)


def _split(inputs: Inputs) -> tuple[list[Any], dict[str, Any]]:
    if isinstance(inputs, Tensor):
        return [inputs], {}
    if isinstance(inputs, Mapping):
        return [], dict(inputs)
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        return list(inputs), {}
    raise TypeError(
        "inputs must be a tensor, a sequence of positional arguments or a "
        f"mapping of keyword arguments; got {type(inputs).__name__}"
    )


def _tensors(inputs: Inputs) -> Iterator[Tensor]:
    args, kwargs = _split(inputs)
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            yield value


def _repeat(value: Any, times: int) -> Any:
    if not isinstance(value, Tensor):
        return value
    return value.repeat(times, *([1] * (value.dim() - 1)))


def _require_tensor(out: Any) -> Tensor:
    if not isinstance(out, Tensor):
        raise SurgeryError(
            f"the model returned a {type(out).__name__}, not a tensor; pass "
            "output= to pick the tensor to sample, e.g. output=lambda out: out.logits"
        )
    return out


def _is_out_of_memory(error: Exception) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(
        text in str(error) for text in _OOM_MESSAGES
    )


def _check_samples(samples: object, *, needed: int) -> None:
    if not isinstance(samples, Tensor) or samples.dim() == 0:
        raise ValueError("samples must be the tensor mc_sample returns, shape (n, ...)")
    if samples.shape[0] < needed:
        raise ValueError(
            f"need at least {needed} sample(s) along dimension 0, "
            f"got {samples.shape[0]}"
        )
