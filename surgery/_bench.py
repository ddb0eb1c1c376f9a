"""Forward throughput of one model's dropout variants, measured side by side.

The toolkit promises that a stripped model runs as fast as the model in eval
mode and that gates cost nothing. :func:`compare_throughput` measures it for a
given model: each variant is a copy of the model that shares its parameters,
prepared one way (the original in train and eval mode, the common ``p = 0``
loop, :func:`surgery.strip`, :func:`surgery.gate` in each mode), and all of
them are timed in interleaved rounds, so that a slow moment of a shared
machine lands on every variant alike. Every figure is reported relative to
eval mode measured in the same run.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import torch
from torch import Tensor, nn

from ._api import gate, set_dropout, strip
from ._bench_inputs import (
    batch_size_of,
    check_model,
    check_options,
    check_variants,
    map_tensors,
    on_target,
    param_dtype,
    resolve_device,
    share_parameters_copy,
    to_target,
)
from ._bench_report import (
    BASELINE,
    VARIANTS,
    ThroughputReport,
    ThroughputRow,
    Variant,
)
from ._errors import BenchmarkError
from ._randomops import count_random_ops

__all__ = [
    "VARIANTS",
    "ThroughputReport",
    "ThroughputRow",
    "Variant",
    "compare_throughput",
]

logger = logging.getLogger("surgery")

T = TypeVar("T")


@dataclass(frozen=True)
class _Recipe:
    training: bool
    prepare: Callable[[nn.Module], object]
    description: str


def _p0_loop(model: nn.Module) -> None:
    # What training scripts commonly write to switch dropout off; it reaches
    # nn.Dropout modules only, which is what this variant is here to show.
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


_RECIPES: Final[dict[str, _Recipe]] = {
    "train": _Recipe(True, lambda model: model, "original, train mode"),
    "eval": _Recipe(False, lambda model: model, "original, eval mode"),
    "p0_loop": _Recipe(True, _p0_loop, "p = 0 on every nn.Dropout, train mode"),
    "strip": _Recipe(True, strip, "surgery.strip, train mode"),
    "gate_train": _Recipe(True, gate, "surgery.gate (mode train), train mode"),
    "gate_on": _Recipe(
        False,
        lambda model: set_dropout(model, mode="on"),
        "gates on, eval mode (Monte Carlo dropout)",
    ),
    "gate_off": _Recipe(
        True, lambda model: set_dropout(model, mode="off"), "gates off, train mode"
    ),
}


def compare_throughput(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Any],
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    variants: Sequence[Variant] = VARIANTS,
    compile: bool = False,
    backend: str = "inductor",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seconds: float = 10.0,
    rounds: int = 5,
    warmup: int = 2,
    batch_size: int | None = None,
    count_random: bool = True,
) -> ThroughputReport:
    """Measure forward throughput of ``model``'s dropout variants side by side.

    Each variant is a copy of ``model`` that shares its parameters (buffers
    are copied, so batch-norm statistics of train-mode variants stay theirs),
    prepared as :data:`VARIANTS` lists: ``"train"`` and ``"eval"`` (the
    original), ``"p0_loop"`` (``p = 0`` on every ``nn.Dropout``),
    ``"strip"``, and ``"gate_train"`` / ``"gate_on"`` / ``"gate_off"``. All
    run under ``torch.no_grad()``, in train mode except ``"eval"`` and
    ``"gate_on"`` (Monte Carlo dropout: eval mode with the gates on).

    Warm-up forwards are not timed; the variants are then timed in
    ``rounds`` interleaved rounds (their order rotates, and reverses every
    other round), at least one forward per variant per round, waiting for the
    device before and after each timing. ``"eval"`` is always measured, as
    the baseline. The model, its mode and the global random state are left
    as they were.

    Args:
        model: The model to measure. Not changed.
        example_inputs: Positional inputs of one forward (a tensor or a
            sequence); they must not be all zeros.
        example_kwargs: Keyword inputs of one forward.
        variants: Which variants to measure, in report order.
        compile: Also measure each variant under ``torch.compile``.
        backend: The ``torch.compile`` backend.
        device: Where to run; default: where the model's parameters are.
        dtype: Cast parameters and floating inputs to this dtype first.
        seconds: About how long the timed rounds take in all (every variant
            still runs at least once per round).
        rounds: How many interleaved rounds; the median is reported.
        warmup: Untimed forwards per variant first (compilation happens here).
        batch_size: Samples per forward; default: the first dimension of
            the first input tensor.
        count_random: Also count the random ops of one eager forward of
            each variant.

    Returns:
        One row per variant (eager rows first, then compiled rows).

    Raises:
        BenchmarkError: The options, inputs, device or model cannot give a
            measurement; the message says which and what to change.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.1))
        >>> report = compare_throughput(model, torch.randn(32, 16), seconds=0.1)
        >>> [row.variant for row in report.rows]
        ['train', 'eval', 'p0_loop', 'strip', 'gate_train', 'gate_on', 'gate_off']
        >>> report.row("eval").time_vs_eval
        1.0
        >>> report.row("strip").random_ops, report.row("train").random_ops
        (0, 1)
    """
    chosen = check_variants(variants)
    check_options(seconds=seconds, rounds=rounds, warmup=warmup)
    check_model(model)
    target = resolve_device(model, device)
    args = (example_inputs,) if isinstance(example_inputs, Tensor) else example_inputs
    if not isinstance(args, Sequence) or isinstance(args, str):
        raise BenchmarkError(
            "example_inputs must be a tensor or a sequence of inputs, "
            f"got {type(example_inputs).__name__}"
        )
    kwargs = dict(example_kwargs or {})
    size = batch_size_of(args, kwargs, batch_size)

    base = on_target(model, target, dtype)
    args = map_tensors(tuple(args), lambda t: to_target(t, target, dtype))
    kwargs = map_tensors(kwargs, lambda t: to_target(t, target, dtype))
    cuda = [target] if target.type == "cuda" else []
    random_ops: dict[str, int] | None = {} if count_random else None
    with torch.random.fork_rng(devices=cuda), torch.no_grad(), _room_to_compile():
        plans = [
            _plan(base, name, compiled, args, kwargs, random_ops, backend)
            for compiled in ((False, True) if compile else (False,))
            for name in chosen
        ]
        for plan in plans:
            plan.warm_up(warmup, target)
        _time_in_rounds(plans, target, seconds=seconds, rounds=rounds)

    rows = tuple(_row(plan, plans, size) for plan in plans)
    return ThroughputReport(
        model=type(model).__name__,
        device=str(target),
        dtype=str(dtype or param_dtype(model)).removeprefix("torch."),
        batch_size=size,
        rounds=rounds,
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        rows=rows,
    )


class _Plan:
    """One variant ready to run: its copy of the model, and its timings."""

    def __init__(
        self,
        name: Variant,
        compiled: bool,
        run: Callable[[], object],
        counter: _CountingBackend | None,
    ) -> None:
        self.name = name
        self.compiled = compiled
        self.run = run
        self.counter = counter
        self.random_ops: int | None = None
        self.graphs = 0
        self.estimate = 0.0
        self.times: list[float] = []

    def warm_up(self, count: int, device: torch.device) -> None:
        for _ in range(count - 1):
            self.call()
        # The last warm-up forward is timed, to size the chunks of the rounds.
        self.estimate = _timed(self, device, 1)
        if self.counter is None:
            return
        self.graphs = self.counter.graphs
        if self.graphs == 0:
            raise BenchmarkError(
                f"variant {self.name!r}: torch.compile produced no graph during "
                "warm-up, so the model ran eagerly; check for a graph break on "
                "its forward (TORCH_LOGS=graph_breaks)"
            )

    def call(self) -> None:
        """Run one forward."""
        self.guarded(self.run)

    def guarded(self, step: Callable[[], T]) -> T:
        """Run ``step``; if it fails, say which variant failed and how."""
        try:
            return step()
        except BenchmarkError:
            raise
        except Exception as error:
            where = " under torch.compile" if self.compiled else ""
            raise BenchmarkError(
                f"variant {self.name!r}: the forward pass failed{where}: {error}"
            ) from error

    @property
    def recompiles(self) -> int | None:
        if self.counter is None:
            return None
        return self.counter.graphs - self.graphs


def _plan(
    base: nn.Module,
    name: Variant,
    compiled: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    random_ops: dict[str, int] | None,
    backend: str,
) -> _Plan:
    recipe = _RECIPES[name]
    variant = share_parameters_copy(base)
    recipe.prepare(variant)
    variant.train(recipe.training)
    counter = _CountingBackend(backend) if compiled else None
    runner: Callable[..., object] = variant
    if counter is not None:
        runner = torch.compile(variant, backend=counter)

    def run() -> object:
        return runner(*args, **kwargs)

    plan = _Plan(name, compiled, run, counter)
    if random_ops is not None:
        # Counted eagerly, in the variant's own mode, once per variant: the
        # ground truth for what it really draws, whatever its modules claim.
        if name not in random_ops:
            random_ops[name] = plan.guarded(
                lambda: count_random_ops(variant, *args, **kwargs).count
            )
        plan.random_ops = random_ops[name]
    logger.debug("benchmark variant %s prepared (compiled=%s)", name, compiled)
    return plan


def _time_in_rounds(
    plans: list[_Plan], device: torch.device, *, seconds: float, rounds: int
) -> None:
    # A chunk of repeated forwards keeps timer and synchronisation overhead
    # out of fast models; its length comes from the last warm-up forward.
    chunk = seconds / (rounds * len(plans))
    repeats = [max(1, round(chunk / max(plan.estimate, 1e-9))) for plan in plans]

    for round_number in range(rounds):
        # Rotate the order, and reverse it every other round, so that no
        # variant always runs first or last, or always right after another:
        # a machine that slows down over the run then biases no ratio.
        shift = round_number % len(plans)
        order = [*range(shift, len(plans)), *range(shift)]
        if round_number % 2:
            order.reverse()
        for position in order:
            plan = plans[position]
            plan.times.append(_timed(plan, device, repeats[position]))


def _timed(plan: _Plan, device: torch.device, repeats: int) -> float:
    """Seconds per forward over ``repeats`` forwards, device work included."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        plan.call()
    _synchronize(device)
    return (time.perf_counter() - start) / repeats


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so the timer sees all of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        backend: Any = getattr(torch, device.type, None)
        if backend is not None and hasattr(backend, "synchronize"):
            backend.synchronize()


def _row(plan: _Plan, plans: list[_Plan], batch_size: int) -> ThroughputRow:
    median = statistics.median(plan.times)
    baseline = next(
        other
        for other in plans
        if other.name == BASELINE and other.compiled == plan.compiled
    )
    return ThroughputRow(
        variant=plan.name,
        description=_RECIPES[plan.name].description,
        compiled=plan.compiled,
        training=_RECIPES[plan.name].training,
        samples_per_s=batch_size / median,
        seconds_per_batch=median,
        round_seconds=tuple(plan.times),
        time_vs_eval=median / statistics.median(baseline.times),
        random_ops=plan.random_ops,
        graphs=plan.graphs if plan.compiled else None,
        recompiles=plan.recompiles,
    )


class _CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it is handed."""

    def __init__(self, name: str) -> None:
        from torch._dynamo import lookup_backend

        try:
            self._inner = lookup_backend(name)
        except Exception as error:
            raise BenchmarkError(
                f"unknown torch.compile backend {name!r}: {error}"
            ) from error
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, inputs: list[Tensor]) -> Any:
        self.graphs += 1
        return self._inner(graph, inputs)


def _room_to_compile() -> AbstractContextManager[object]:
    """Raise dynamo's per-function graph limit while the variants compile.

    Every variant is a new module object whose ``forward`` is the same code
    as the others', and past the limit (8 by default) dynamo falls back to
    eager without an error: the compiled rows would silently be eager ones.
    """
    config: Any = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            limit = max(int(getattr(config, name)), 64)
            return cast(AbstractContextManager[object], config.patch(name, limit))
    return nullcontext()
