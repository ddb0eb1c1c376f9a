"""Commands that rewrite a model's sites and write the result: strip, gate."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import click

from .. import _api
from .._pipeline import verify_step
from .._site import MODES, Mode
from .app import screen_for
from .common import (
    MODEL_HELP,
    check_report,
    check_rewritable,
    check_verifiable,
    export_payload,
    export_summary,
    fail_verification,
    find_sites,
    given_paths,
    load_for,
    set_training,
    wrote_line,
)
from .errors import UsageProblem
from .examples import choose_examples
from .io import atomic_path, check_output, write_json
from .load import LoadedModel
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
from .save import choose_format, write_model
from .verdicts import report_payload, report_rows

__all__ = ["gate", "strip"]


@click.command(
    epilog=MODEL_HELP
    + """
\b
Examples:
  surgery strip model.pt2 -o model.stripped.pt2
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


@click.command(
    epilog=MODEL_HELP
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
    inputs = [Path(model), *given_paths(weights, inputs_file)]
    target = check_output(output, inputs=inputs, overwrite=overwrite)
    report_target = check_report(report_path, target, inputs)
    verify = verify or report_target is not None
    if verify and p is not None:
        raise UsageProblem(
            "--verify checks that every site keeps its probability, and --p "
            "changes it; leave out one of them"
        )
    format = choose_format(output, format_name)

    loaded = load_for(screen, model, weights, trust_pickle)
    check_rewritable(loaded)
    set_training(loaded, training)
    examples = choose_examples(
        loaded, shapes=input_shapes, inputs_file=inputs_file, seq_len=seq_len
    )
    if verify:
        check_verifiable(loaded, examples, what="--verify", needs="--verify")
    reference = copy.deepcopy(loaded.model) if verify else None

    chosen = find_sites(loaded, select, exclude, quiet=True)
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
            fail_verification(screen, report, output)

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
                else export_payload(exported, output),
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
        screen.line(export_summary(exported))
    screen.line(wrote_line(output, target, format))


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
    check_rewritable(loaded)
    if action == "strip":
        return _api.strip(model, chosen, exclude=left_out)
    if mode is None and p is None:
        return _api.gate(model, chosen, exclude=left_out)
    # set_dropout gates what is not gated yet, then sets mode and p.
    return _api.set_dropout(model, chosen, exclude=left_out, mode=mode, p=p)
