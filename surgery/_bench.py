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

import copy
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal, TypeVar, cast

import torch
from torch import Tensor, nn

from ._api import gate, set_dropout, strip
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

Variant = Literal[
    "train", "eval", "p0_loop", "strip", "gate_train", "gate_on", "gate_off"
]
"""One way of preparing the model before its forward pass is timed."""

VARIANTS: Final[tuple[Variant, ...]] = (
    "train",
    "eval",
    "p0_loop",
    "strip",
    "gate_train",
    "gate_on",
    "gate_off",
)
"""Every variant, in the order reports list them. ``"eval"`` is the baseline."""

_BASELINE: Final = "eval"


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


@dataclass(frozen=True)
class ThroughputRow:
    """The measured forward throughput of one variant.

    Attributes:
        variant: Which variant (one of :data:`VARIANTS`).
        description: How the variant was prepared, in words.
        compiled: True when measured under ``torch.compile``.
        training: The model's ``training`` flag while measured.
        samples_per_s: Batch size divided by :attr:`seconds_per_batch`.
        seconds_per_batch: Median over the rounds of the time of one forward.
        round_seconds: The time of one forward in each round.
        time_vs_eval: :attr:`seconds_per_batch` over eval mode's, measured
            in the same run with the same ``compiled`` setting; above 1 is
            slower than eval.
        random_ops: Random ops one eager forward of the variant runs, or
            ``None`` when not counted.
        graphs: Graphs compiled during warm-up (compiled rows only).
        recompiles: Graphs compiled while timed, after warm-up (compiled rows
            only); anything but 0 means the timing includes compilation.
    """

    variant: Variant
    description: str
    compiled: bool
    training: bool
    samples_per_s: float
    seconds_per_batch: float
    round_seconds: tuple[float, ...]
    time_vs_eval: float
    random_ops: int | None = None
    graphs: int | None = None
    recompiles: int | None = None

    @property
    def throughput_vs_eval(self) -> float:
        """Samples per second relative to eval mode; below 1 is slower."""
        return 1.0 / self.time_vs_eval

    @property
    def spread(self) -> float:
        """(slowest - fastest round) / median: how noisy the measurement was."""
        rounds = self.round_seconds
        return (max(rounds) - min(rounds)) / self.seconds_per_batch


@dataclass(frozen=True)
class ThroughputReport:
    """The rows of one :func:`compare_throughput` run and what they ran on."""

    model: str
    device: str
    dtype: str
    batch_size: int
    rounds: int
    torch_version: str
    threads: int
    rows: tuple[ThroughputRow, ...]

    def row(self, variant: Variant, *, compiled: bool = False) -> ThroughputRow:
        """The row of ``variant``, eager or compiled."""
        for row in self.rows:
            if row.variant == variant and row.compiled == compiled:
                return row
        measured = ", ".join(
            f"{row.variant}{' (compiled)' if row.compiled else ''}" for row in self.rows
        )
        raise KeyError(
            f"no {'compiled ' if compiled else ''}row for {variant!r}; "
            f"measured: {measured}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything in the report as plain JSON-ready values."""
        header = {name: value for name, value in asdict(self).items() if name != "rows"}
        rows = []
        for row in self.rows:
            fields = asdict(row)
            fields["round_seconds"] = list(row.round_seconds)
            fields["throughput_vs_eval"] = row.throughput_vs_eval
            fields["spread"] = row.spread
            rows.append(fields)
        return {**header, "rows": rows}

    def to_text(self) -> str:
        """A plain-text table, one line per row."""
        title = (
            f"{self.model} on {self.device} ({self.dtype}), batch {self.batch_size}, "
            f"torch {self.torch_version}, {self.threads} threads, "
            f"{self.rounds} rounds"
        )
        head = ("variant", "compiled", "mode", "samples/s", "x eval time", "spread")
        lines = [(*head, "random ops", "graphs")]
        for row in self.rows:
            lines.append(
                (
                    row.variant,
                    "yes" if row.compiled else "no",
                    "train" if row.training else "eval",
                    f"{row.samples_per_s:,.1f}",
                    f"{row.time_vs_eval:.3f}",
                    f"{100 * row.spread:.1f}%",
                    "-" if row.random_ops is None else str(row.random_ops),
                    _graphs_text(row),
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(head) + 2)]
        body = [
            "  ".join(
                cell.ljust(width) for cell, width in zip(line, widths, strict=True)
            ).rstrip()
            for line in lines
        ]
        return "\n".join([title, *body])

    def __str__(self) -> str:
        return self.to_text()


def _graphs_text(row: ThroughputRow) -> str:
    if row.graphs is None:
        return "-"
    if row.recompiles:
        return f"{row.graphs} (+{row.recompiles} while timed)"
    return str(row.graphs)


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
    chosen = _check_variants(variants)
    _check_options(seconds=seconds, rounds=rounds, warmup=warmup)
    _check_model(model)
    target = _resolve_device(model, device)
    args = (example_inputs,) if isinstance(example_inputs, Tensor) else example_inputs
    if not isinstance(args, Sequence) or isinstance(args, str):
        raise BenchmarkError(
            "example_inputs must be a tensor or a sequence of inputs, "
            f"got {type(example_inputs).__name__}"
        )
    kwargs = dict(example_kwargs or {})
    size = _batch_size(args, kwargs, batch_size)

    base = _on(model, target, dtype)
    args = _map_tensors(tuple(args), lambda t: _cast(t, target, dtype))
    kwargs = _map_tensors(kwargs, lambda t: _cast(t, target, dtype))
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
        dtype=str(dtype or _param_dtype(model)).removeprefix("torch."),
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
    variant = _share_parameters_copy(base)
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
        if other.name == _BASELINE and other.compiled == plan.compiled
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


def _check_variants(variants: Sequence[Variant]) -> list[Variant]:
    if isinstance(variants, str) or not variants:
        raise BenchmarkError(
            f"variants must be a non-empty list drawn from {', '.join(VARIANTS)}; "
            f"got {variants!r}"
        )
    unknown = [name for name in variants if name not in _RECIPES]
    if unknown:
        raise BenchmarkError(
            f"unknown variant(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(VARIANTS)}"
        )
    chosen = list(dict.fromkeys(variants))
    if _BASELINE not in chosen:
        chosen.insert(0, _BASELINE)
    return chosen


def _check_options(*, seconds: float, rounds: int, warmup: int) -> None:
    if not seconds > 0:
        raise BenchmarkError(f"seconds must be positive, got {seconds!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise BenchmarkError(f"rounds must be an int >= 1, got {rounds!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise BenchmarkError(
            f"warmup must be an int >= 1 (the first forward is never timed), "
            f"got {warmup!r}"
        )


def _check_model(model: object) -> None:
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


def _resolve_device(
    model: nn.Module, device: str | torch.device | None
) -> torch.device:
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


def _param_dtype(model: nn.Module) -> torch.dtype:
    first = next(model.parameters(), None)
    return first.dtype if first is not None else torch.get_default_dtype()


def _on(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
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


def _share_parameters_copy(model: nn.Module) -> nn.Module:
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


def _cast(tensor: Tensor, device: torch.device, dtype: torch.dtype | None) -> Tensor:
    if dtype is not None and tensor.is_floating_point():
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device=device)


def _map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(item, fn) for item in value)
    if isinstance(value, dict):
        return {key: _map_tensors(item, fn) for key, item in value.items()}
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


def _batch_size(
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
