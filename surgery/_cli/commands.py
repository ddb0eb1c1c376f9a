"""The commands: inspect, strip, gate, export, apply, bench, demo."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import click

from .. import _api
from .._bench import VARIANTS as BENCH_VARIANTS
from .._bench import Variant
from .._recipe import (
    VERIFY_EXPORTED,
    Recipe,
    apply_recipe,
    export_step,
    verify_step,
)
from .._report import HEADERS, site_to_dict, sites_table_rows
from .._site import MODES, Mode
from .app import SurgeryGroup, screen_for
from .errors import CliError, UsageProblem, VerificationFailed
from .examples import choose_examples
from .io import atomic_path, check_output, write_json
from .load import LoadedModel, load_model
from .options import (
    common_options,
    format_option,
    input_options,
    model_options,
    output_options,
    report_option,
    select_options,
    training_option,
)
from .render import Screen
from .save import FORMAT_NAMES, choose_format, write_model
from .verdicts import report_payload, report_rows

__all__ = ["cli"]

_MODEL_HELP = """\b
MODEL is a torch.export program (.pt2), a TorchScript archive, a
transformers model folder, or package.module:factory (with --weights
FILE for its state_dict or safetensors).
"""


@click.group(
    name="surgery",
    cls=SurgeryGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  surgery demo
  surgery inspect surgery.demo:build_demo_model
  surgery strip model.pt2 -o model.stripped.pt2 --verify
  surgery gate mypkg.nets:build --weights w.safetensors \\
      --select 'encoder.*' --mode off -o gated.onnx --input-shape 2x128:int64
  surgery apply recipe.toml ./bert-folder -o bert.onnx

\b
Exit codes: 0 success, 1 verification failed, 2 usage error,
3 MODEL could not be loaded, 4 any other failure.
""",
)
@click.version_option(package_name="torch-surgery", prog_name="surgery")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
def cli(debug: bool) -> None:
    """Find, gate, strip and restore every dropout site in a PyTorch model."""


@cli.command(
    epilog=_MODEL_HELP
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
    loaded = _load(screen, model, weights, trust_pickle)
    sites = [] if loaded.kind == "torchscript" else _find(loaded, select, exclude)
    random_ops = _graph_random_ops(loaded)
    if as_json:
        payload: dict[str, Any] = {
            "model": loaded.source,
            "kind": loaded.kind,
            "sites": [site_to_dict(site) for site in sites],
        }
        if random_ops is not None:
            payload["random_ops"] = [_random_op_dict(op) for op in random_ops]
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


@cli.command(
    epilog=_MODEL_HELP
    + """
\b
Examples:
  surgery strip model.pt2 -o model.stripped.pt2 --verify
  surgery strip surgery.demo:build_demo_model --select 'blocks.*' \\
      --input-shape 2x8:int64 -o demo.onnx --report verify.json
"""
)
@click.argument("model")
@output_options
@format_option
@select_options
@report_option
@training_option
@input_options
@model_options
@common_options
def strip(model: str, **options: Any) -> None:
    """Strip the selected dropout sites of MODEL, and write the result.

    Stripped sites run no random op in train mode as well as in eval mode.
    """
    _rewrite_command("strip", model, mode=None, p=None, **options)


@cli.command(
    epilog=_MODEL_HELP
    + """
\b
Examples:
  surgery gate model.pt2 --mode off -o model.gated.pt2
  surgery gate surgery.demo:build_demo_model --select 'blocks.*' --mode on \\
      --p 0.2 --input-shape 2x8:int64 -o mc.ts --verify
"""
)
@click.argument("model")
@output_options
@format_option
@click.option(
    "--mode",
    type=click.Choice(MODES),
    help="train: drop while training (as before); on: always drop (Monte Carlo "
    "dropout); off: never drop. Default: train.",
)
@click.option(
    "--p",
    type=click.FloatRange(0.0, 1.0),
    help="Set this drop probability on the gated sites. Default: keep each site's.",
)
@select_options
@report_option
@training_option
@input_options
@model_options
@common_options
def gate(model: str, mode: Mode | None, p: float | None, **options: Any) -> None:
    """Gate the selected dropout sites of MODEL, and write the result.

    An exported file freezes each gate as it is set: off exports as no
    dropout, on and train as the dropout they stand for.
    """
    _rewrite_command("gate", model, mode=mode, p=p, **options)


@cli.command(
    epilog=_MODEL_HELP
    + """
\b
Examples:
  surgery export surgery.demo:build_demo_model --input-shape 2x8:int64 -o demo.onnx
  surgery export ./bert-folder --seq-len 16 --format pt2 -o bert.pt2
"""
)
@click.argument("model")
@output_options
@format_option
@click.option(
    "--no-strip",
    is_flag=True,
    help="Export the sites as they are set instead of stripping every one.",
)
@click.option(
    "--script", is_flag=True, help="For torchscript: script instead of trace."
)
@click.option(
    "--allow-random",
    is_flag=True,
    help="Write the file even if random ops are left (dropout kept on purpose).",
)
@training_option
@input_options
@model_options
@common_options
def export(
    model: str,
    output: Path,
    overwrite: bool,
    format_name: str | None,
    no_strip: bool,
    script: bool,
    allow_random: bool,
    training: bool | None,
    input_shapes: tuple[str, ...],
    inputs_file: Path | None,
    seq_len: int,
    weights: Path | None,
    trust_pickle: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Strip MODEL and export it, checked free of random ops.

    The file is loaded back, checked for random ops and run on the example
    inputs against the model before it is written.
    """
    screen = screen_for(as_json)
    inputs = [Path(model), *_paths(weights, inputs_file)]
    target = check_output(output, inputs=inputs, overwrite=overwrite)
    format = choose_format(output, format_name)
    if script and format != "torchscript":
        raise UsageProblem(f"--script applies to --format torchscript, not {format}")

    loaded = _load(screen, model, weights, trust_pickle)
    if loaded.kind in ("pt2", "torchscript"):
        raise UsageProblem(
            f"MODEL {model} is already a {FORMAT_NAMES[loaded.kind]}; export "
            "takes a Python model (a factory, a transformers folder, a pickle)"
        )
    _set_training(loaded, training)
    examples = choose_examples(
        loaded, shapes=input_shapes, inputs_file=inputs_file, seq_len=seq_len
    )
    if examples is None:
        raise _needs_inputs("export")

    with screen.progress(f"exporting to {format}"), atomic_path(target) as temporary:
        result = export_step(
            loaded.module,
            examples.args,
            examples.kwargs,
            temporary,
            format,
            strip=not no_strip,
            script=script,
            allow_random=allow_random,
        )
    if as_json:
        screen.json({"model": loaded.source, **_export_payload(result, output)})
        return
    screen.line(_export_summary(result))
    screen.line(f"wrote {output} ({FORMAT_NAMES[format]}, {_size(target)})")


@cli.command(
    epilog=_MODEL_HELP
    + """
\b
A recipe is a TOML file of steps:
  inputs = ["2x8:int64"]        # optional example inputs
  [[steps]]
  action = "strip"              # strip | gate | verify | export
  select = ["blocks.*"]         # optional, also exclude = [...]
  [[steps]]
  action = "gate"
  select = "classifier_dropout"
  mode = "on"                   # train | on | off
  p = 0.2
  [[steps]]
  action = "verify"
  [[steps]]
  action = "export"             # last, at most once
  format = "onnx"               # pt2 | torchscript | onnx

\b
Examples:
  surgery apply recipe.toml surgery.demo:build_demo_model -o demo.onnx
  surgery apply recipe.toml model.pt2 -o out.pt2 --report verify.json
"""
)
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("model")
@output_options
@format_option
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the verify steps' reports as JSON to this file.",
)
@training_option
@input_options
@model_options
@common_options
def apply(
    recipe: Path,
    model: str,
    output: Path,
    overwrite: bool,
    format_name: str | None,
    report_path: Path | None,
    training: bool | None,
    input_shapes: tuple[str, ...],
    inputs_file: Path | None,
    seq_len: int,
    weights: Path | None,
    trust_pickle: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Run the steps of the RECIPE file on MODEL and write the result."""
    screen = screen_for(as_json)
    inputs = [recipe, Path(model), *_paths(weights, inputs_file)]
    target = check_output(output, inputs=inputs, overwrite=overwrite)
    report_target = _check_report(report_path, target, inputs)
    steps = Recipe.from_file(recipe)
    format = steps.export_format or choose_format(output, format_name)
    if steps.export_format is not None and format_name not in (None, format):
        raise UsageProblem(
            f"--format {format_name} disagrees with the recipe, which exports to "
            f"{format}"
        )

    loaded = _load(screen, model, weights, trust_pickle)
    _set_training(loaded, training)
    examples = choose_examples(
        loaded,
        shapes=input_shapes,
        inputs_file=inputs_file,
        seq_len=seq_len,
        recipe_shapes=steps.inputs,
    )
    if steps.verifies:
        _check_verifiable(loaded, f"{recipe}: the verify step")
    if examples is None and steps.verifies:
        raise _needs_inputs("the recipe's verify step")
    if steps.export_format is not None and loaded.kind in ("pt2", "torchscript"):
        raise UsageProblem(
            f"{recipe}: the export step takes a Python model, and MODEL {model} is "
            f"a {FORMAT_NAMES[loaded.kind]}; leave the step out to write a "
            f"{loaded.kind} again"
        )

    with atomic_path(target) as temporary:
        with screen.progress(f"applying {recipe}"):
            result = apply_recipe(
                loaded.model,
                steps,
                example_inputs=examples.args if examples else None,
                example_kwargs=examples.kwargs if examples else None,
                output=temporary if steps.export_format else None,
                check=False,
            )
        reports = result.reports
        if report_target is not None:
            write_json(report_target, [report_payload(r) for r in reports])
        if not result.passed:
            _show_failure(screen, reports[-1], output)
        if steps.export_format is None:
            with screen.progress(f"writing {format}"):
                write_model(result.model, examples, temporary, format)

    outcomes = [
        {
            "action": outcome.step.action,
            "sites": list(outcome.sites),
            "passed": outcome.passed,
        }
        for outcome in result.outcomes
    ]
    if as_json:
        screen.json(
            {
                "recipe": str(recipe),
                "model": loaded.source,
                "output": str(output),
                "format": format,
                "steps": outcomes,
                "verification": [report_payload(r) for r in reports],
            }
        )
        return
    for number, outcome in enumerate(result.outcomes, start=1):
        screen.line(f"step {number}: {_describe(outcome)}")
    screen.line(f"wrote {output} ({FORMAT_NAMES[format]}, {_size(target)})")


@cli.command(
    epilog=_MODEL_HELP
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
    loaded = _load(screen, model, weights, trust_pickle)
    if loaded.kind in ("pt2", "torchscript"):
        raise UsageProblem(
            f"bench needs a Python model (a factory, a transformers folder or a "
            f"pickled module); MODEL {model} is a "
            f"{FORMAT_NAMES[loaded.kind]}, whose mode is fixed"
        )
    examples = choose_examples(
        loaded, shapes=input_shapes, inputs_file=inputs_file, seq_len=seq_len
    )
    if examples is None:
        raise _needs_inputs("bench")
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


@cli.command(
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
    from .._mainjob import run_demo

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


def _rewrite_command(
    action: str,
    model: str,
    *,
    mode: Mode | None,
    p: float | None,
    output: Path,
    overwrite: bool,
    format_name: str | None,
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    verify: bool,
    report_path: Path | None,
    training: bool | None,
    input_shapes: tuple[str, ...],
    inputs_file: Path | None,
    seq_len: int,
    weights: Path | None,
    trust_pickle: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """strip and gate: check the output, load, rewrite, verify, write."""
    screen = screen_for(as_json)
    inputs = [Path(model), *_paths(weights, inputs_file)]
    target = check_output(output, inputs=inputs, overwrite=overwrite)
    report_target = _check_report(report_path, target, inputs)
    verify = verify or report_target is not None
    if verify and p is not None:
        raise UsageProblem(
            "--verify checks that every site keeps its probability, and --p "
            "changes it; leave out one of them"
        )
    format = choose_format(output, format_name)

    loaded = _load(screen, model, weights, trust_pickle)
    _set_training(loaded, training)
    examples = choose_examples(
        loaded, shapes=input_shapes, inputs_file=inputs_file, seq_len=seq_len
    )
    if verify:
        _check_verifiable(loaded, "--verify")
    if examples is None and verify:
        raise _needs_inputs("--verify")
    reference = copy.deepcopy(loaded.model) if verify else None

    chosen = _find(loaded, select, exclude)
    turns_off = action == "strip" or mode == "off"
    rewritten = _apply_verb(loaded, action, select, exclude, mode, p)

    report = None
    if reference is not None and examples is not None:
        with screen.progress("verifying"):
            report = verify_step(
                reference,
                rewritten,
                examples.args,
                examples.kwargs,
                require_off=[site.path for site in chosen] if turns_off else [],
            )
        if report_target is not None:
            write_json(report_target, report_payload(report))
        if not report.passed:
            _show_failure(screen, report, output)

    with screen.progress(f"writing {format}"), atomic_path(target) as temporary:
        exported = write_model(rewritten, examples, temporary, format)

    if as_json:
        screen.json(
            {
                "command": action,
                "model": loaded.source,
                "output": str(output),
                "format": format,
                "sites": [site.path for site in chosen],
                "mode": mode,
                "p": p,
                "verification": None if report is None else report_payload(report),
                "export": None
                if exported is None
                else _export_payload(exported, output),
            }
        )
        return
    setting = ", ".join(
        part
        for part in (
            f"mode {mode}" if mode else "",
            f"p {p:g}" if p is not None else "",
        )
        if part
    )
    done = "stripped" if action == "strip" else "gated"
    screen.line(
        f"{done} {len(chosen)} dropout site(s) of {loaded.source}"
        + (f" ({setting})" if setting else "")
    )
    if report is not None:
        screen.table(("claim", "result", "detail"), report_rows(report))
    if exported is not None:
        screen.line(_export_summary(exported))
    screen.line(f"wrote {output} ({FORMAT_NAMES[format]}, {_size(target)})")


def _apply_verb(
    loaded: LoadedModel,
    action: str,
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    mode: Mode | None,
    p: float | None,
) -> Any:
    chosen = list(select) or None
    left_out = list(exclude) or None
    model: Any = loaded.model
    _check_rewritable(loaded)
    if action == "strip":
        return _api.strip(model, chosen, exclude=left_out)
    if mode is None and p is None:
        return _api.gate(model, chosen, exclude=left_out)
    # set_dropout gates what is not gated yet, then sets mode and p.
    return _api.set_dropout(model, chosen, exclude=left_out, mode=mode, p=p)


def _check_rewritable(loaded: LoadedModel) -> None:
    if loaded.kind == "torchscript":
        raise CliError(
            f"MODEL {loaded.source} is TorchScript, which surgery cannot rewrite; "
            "rewrite the Python model and script it again"
        )


def _graph_random_ops(loaded: LoadedModel) -> list[Any] | None:
    """The random ops left in a .pt2 or TorchScript graph; ``None`` for a module."""
    if loaded.kind not in ("pt2", "torchscript"):
        return None
    from .._ready import check_export_ready

    return list(check_export_ready(loaded.model))


def _random_op_dict(op: Any) -> dict[str, str]:
    return {"op": op.op, "module": op.location, "node": op.node, "detail": op.detail}


def _check_verifiable(loaded: LoadedModel, what: str) -> None:
    if loaded.kind in ("pt2", "torchscript"):
        raise UsageProblem(
            f"{what} needs a Python model, and MODEL {loaded.source} is a "
            f"{FORMAT_NAMES[loaded.kind]}: {VERIFY_EXPORTED}"
        )


def _set_training(loaded: LoadedModel, training: bool | None) -> None:
    if training is None:
        return
    if loaded.kind in ("pt2", "torchscript"):
        raise UsageProblem(
            f"--{'train' if training else 'eval'}: the mode of a "
            f"{FORMAT_NAMES[loaded.kind]} is fixed when it is made"
        )
    loaded.module.train(training)


def _export_payload(result: Any, output: Path) -> dict[str, Any]:
    """What an export wrote and checked, for ``--json``."""
    return {
        "output": str(output),
        "format": result.format,
        "training": result.training,
        "stripped": list(result.stripped),
        "random_ops": [str(op) for op in result.random_ops],
        "check": result.check.to_dict(),
    }


def _export_summary(result: Any) -> str:
    mode = "train" if result.training else "eval"
    left = len(result.random_ops)
    check = "match" if result.check.passed else "DO NOT match"
    stripped = f"{len(result.stripped)} site(s) stripped, " if result.stripped else ""
    return (
        f"exported {result.format} in {mode} mode: {stripped}{left or 'no'} random "
        f"op(s) left, outputs {check} the model's"
    )


def _find(
    loaded: LoadedModel, select: tuple[str, ...], exclude: tuple[str, ...]
) -> Any:
    model: Any = loaded.model
    try:
        return _api.find(model, list(select) or None, exclude=list(exclude) or None)
    except TypeError as error:
        if loaded.kind in ("pt2", "torchscript"):
            raise CliError(
                f"MODEL {loaded.source}: this version of surgery cannot find sites "
                f"in a {FORMAT_NAMES.get(loaded.kind, loaded.kind)} ({error})"
            ) from None
        raise


def _load(
    screen: Screen, source: str, weights: Path | None, trust_pickle: bool
) -> LoadedModel:
    with screen.progress(f"loading {source}"):
        return load_model(source, weights=weights, trust_pickle=trust_pickle)


def _check_report(
    report_path: Path | None, output: Path, inputs: list[Path]
) -> Path | None:
    if report_path is None:
        return None
    target = check_output(
        report_path, inputs=[*inputs, output], overwrite=False, flag="--report"
    )
    return target


def _show_failure(screen: Screen, report: Any, output: Path) -> None:
    failed = [row for row in report_rows(report) if row[1] != "pass"]
    for claim, _, detail in failed:
        screen.note(f"  failed: {claim}: {detail}")
    raise VerificationFailed(
        f"verification failed ({len(failed)} claim(s)); nothing written to {output}"
    )


def _needs_inputs(what: str) -> UsageProblem:
    return UsageProblem(
        f"{what} needs example inputs: pass --input-shape (e.g. 2x8:int64) or "
        "--inputs FILE"
    )


def _describe(outcome: Any) -> str:
    action = outcome.step.action
    if action in ("strip", "gate"):
        done = "stripped" if action == "strip" else "gated"
        return f"{done} {len(outcome.sites)} site(s)"
    if action == "verify":
        return "verified: every claim holds" if outcome.passed else "verify FAILED"
    if outcome.exported is not None:
        return _export_summary(outcome.exported)
    return f"exported to {outcome.step.format}"


def _paths(*paths: Path | None) -> list[Path]:
    return [path for path in paths if path is not None]


def _size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"
