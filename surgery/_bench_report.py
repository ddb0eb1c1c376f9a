"""What :func:`surgery.compare_throughput` reports: the variants and the rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

__all__ = ["BASELINE", "VARIANTS", "ThroughputReport", "ThroughputRow", "Variant"]

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

BASELINE: Final = "eval"
"""The variant every figure is relative to; always measured."""


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
