"""Commands that read a model and change nothing: inspect, bench, demo."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import click

from .._bench import VARIANTS as BENCH_VARIANTS
from .._bench import Variant
from .._report import HEADERS, site_to_dict, sites_table_rows
from .app import screen_for
from .common import (
    MODEL_HELP,
    find_sites,
    graph_random_ops,
    load_for,
    random_op_dict,
    require_examples,
)
from .errors import UsageProblem
from .io import check_output
from .options import common_options, input_options, model_options, select_options
from .save import FORMAT_NAMES

__all__ = ["bench", "demo", "inspect"]


@click.command(
    epilog=MODEL_HELP
    + """
\b
Examples:
  surgery inspect surgery.demo:build_demo_model
  surgery inspect ./bert-folder --select 're:.*attention.*' --json
"""
)
@click.argument("model")
@select_options
@model_options
@common_options
def inspect(
    model: str,
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    weights: Path | None,
    trust_pickle: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """List the dropout sites of MODEL as a table (or JSON).

    For a .pt2 program or a TorchScript archive, also list the random ops
    left in its graph.
    """
    screen = screen_for(as_json)
    loaded = load_for(screen, model, weights, trust_pickle)
    sites = [] if loaded.kind == "torchscript" else find_sites(loaded, select, exclude)
    random_ops = graph_random_ops(loaded)
    if as_json:
        payload: dict[str, Any] = {
            "model": loaded.source,
            "kind": loaded.kind,
            "sites": [site_to_dict(site) for site in sites],
        }
        if random_ops is not None:
            payload["random_ops"] = [random_op_dict(op) for op in random_ops]
        screen.json(payload)
        return
    if loaded.kind != "torchscript":
        screen.table(
            HEADERS,
            sites_table_rows(sites),
            title=f"{len(sites)} dropout site(s) in {loaded.source}",
        )
    if random_ops is not None:
        screen.table(
            ("op", "module", "node", "detail"),
            [(op.op, op.location or "(root)", op.node, op.detail) for op in random_ops],
            title=f"{len(random_ops)} random op(s) in the graph of {loaded.source}",
        )


@click.command(
    epilog=MODEL_HELP
    + """
\b
Examples:
  surgery bench surgery.demo:build_demo_model --input-shape 8x64:int64
  surgery bench ./bert-folder --seq-len 128 --json
"""
)
@click.argument("model")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.01),
    default=5.0,
    show_default=True,
    help="About how long the timed rounds take in all.",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Interleaved timing rounds; the median is reported.",
)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    type=click.Choice(BENCH_VARIANTS),
    help="Measure only these variants (repeatable). Default: all.",
)
@click.option("--compile", is_flag=True, help="Also measure under torch.compile.")
@click.option("--device", help="Run on this device, e.g. cuda. Default: the model's.")
@input_options
@model_options
@common_options
def bench(
    model: str,
    seconds: float,
    rounds: int,
    variants: tuple[str, ...],
    compile: bool,
    device: str | None,
    input_shapes: tuple[str, ...],
    inputs_file: Path | None,
    seq_len: int,
    weights: Path | None,
    trust_pickle: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Compare forward throughput: original, eval, stripped, gated."""
    from .._bench import compare_throughput

    screen = screen_for(as_json)
    loaded = load_for(screen, model, weights, trust_pickle)
    if loaded.kind in ("pt2", "torchscript"):
        raise UsageProblem(
            f"bench needs a Python model (a factory, a transformers folder or a "
            f"pickled module); MODEL {model} is a "
            f"{FORMAT_NAMES[loaded.kind]}, whose mode is fixed"
        )
    examples = require_examples(
        loaded, "bench", shapes=input_shapes, inputs_file=inputs_file, seq_len=seq_len
    )
    with screen.progress(f"timing {model} for about {seconds:g} s"):
        report = compare_throughput(
            loaded.module,
            examples.args,
            example_kwargs=examples.kwargs,
            variants=cast("Sequence[Variant]", variants or BENCH_VARIANTS),
            compile=compile,
            device=device,
            seconds=seconds,
            rounds=rounds,
        )
    if as_json:
        screen.json(report.to_dict())
        return
    screen.line(report.to_text())


@click.command(
    epilog="""\b
Examples:
  surgery demo
  surgery demo --keep ./out --json
"""
)
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the exported demo model in this folder (default: a temporary one).",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="About how long the benchmark step times the model.",
)
@common_options
def demo(keep: Path | None, seconds: float, as_json: bool, debug: bool) -> None:
    """Inspect, strip, verify, export and time the built-in demo model."""
    from .demo import run_demo

    screen = screen_for(as_json)
    if keep is not None:
        try:
            keep.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageProblem(f"--keep {keep}: {error.strerror or error}") from None
        check_output(keep / "demo.pt2", inputs=[], overwrite=False, flag="--keep")
    summary = run_demo(None if as_json else screen.out, keep=keep, seconds=seconds)
    if as_json:
        screen.json(summary.to_dict())
