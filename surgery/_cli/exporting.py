"""Commands that produce a file for the next step: export, apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .._pipeline import apply_recipe, export_step
from .._recipe import Recipe
from .app import screen_for
from .common import (
    MODEL_HELP,
    check_report,
    check_verifiable,
    export_payload,
    export_summary,
    fail_verification,
    given_paths,
    load_for,
    require_examples,
    set_training,
    wrote_line,
)
from .errors import UsageProblem
from .examples import choose_examples
from .io import atomic_path, check_output, write_json
from .options import (
    common_options,
    format_option,
    input_options,
    model_options,
    output_options,
    training_option,
)
from .save import FORMAT_NAMES, choose_format, write_model
from .verdicts import report_payload

__all__ = ["apply", "export"]


@click.command(
    epilog=MODEL_HELP
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
    inputs = [Path(model), *given_paths(weights, inputs_file)]
    target = check_output(output, inputs=inputs, overwrite=overwrite)
    format = choose_format(output, format_name)
    if script and format != "torchscript":
        raise UsageProblem(f"--script applies to --format torchscript, not {format}")

    loaded = load_for(screen, model, weights, trust_pickle)
    if loaded.kind in ("pt2", "torchscript"):
        raise UsageProblem(
            f"MODEL {model} is already a {FORMAT_NAMES[loaded.kind]}; export "
            "takes a Python model (a factory, a transformers folder, a pickle)"
        )
    set_training(loaded, training)
    examples = require_examples(
        loaded, "export", shapes=input_shapes, inputs_file=inputs_file, seq_len=seq_len
    )

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
        screen.json({"model": loaded.source, **export_payload(result, output)})
        return
    screen.line(export_summary(result))
    screen.line(wrote_line(output, target, format))


@click.command(
    epilog=MODEL_HELP
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
    inputs = [recipe, Path(model), *given_paths(weights, inputs_file)]
    target = check_output(output, inputs=inputs, overwrite=overwrite)
    report_target = check_report(report_path, target, inputs)
    steps = Recipe.from_file(recipe)
    format = steps.export_format or choose_format(output, format_name)
    if steps.export_format is not None and format_name not in (None, format):
        raise UsageProblem(
            f"--format {format_name} disagrees with the recipe, which exports to "
            f"{format}"
        )

    loaded = load_for(screen, model, weights, trust_pickle)
    set_training(loaded, training)
    examples = choose_examples(
        loaded,
        shapes=input_shapes,
        inputs_file=inputs_file,
        seq_len=seq_len,
        recipe_shapes=steps.inputs,
    )
    if steps.verifies:
        check_verifiable(
            loaded,
            examples,
            what=f"{recipe}: the verify step",
            needs="the recipe's verify step",
        )
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
            fail_verification(screen, reports[-1], output)
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
    screen.line(wrote_line(output, target, format))


def _describe(outcome: Any) -> str:
    action = outcome.step.action
    if action in ("strip", "gate"):
        done = "stripped" if action == "strip" else "gated"
        return f"{done} {len(outcome.sites)} site(s)"
    if action == "verify":
        return "verified: every claim holds" if outcome.passed else "verify FAILED"
    if outcome.exported is not None:
        return export_summary(outcome.exported)
    return f"exported to {outcome.step.format}"
