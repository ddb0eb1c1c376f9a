"""Options shared by several commands, declared once so they read the same."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .._recipe import FORMATS

__all__ = [
    "common_options",
    "format_option",
    "input_options",
    "model_options",
    "output_options",
    "report_option",
    "select_options",
    "training_option",
]

F = TypeVar("F", bound=Callable[..., Any])


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def common_options(function: F) -> F:
    """``--json`` and ``--debug``, on every command."""
    return _stack(
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="Print the result as JSON on stdout (progress stays on stderr).",
        ),
        click.option(
            "--debug",
            is_flag=True,
            help="Show tracebacks and debug logging on stderr.",
        ),
    )(function)


def model_options(function: F) -> F:
    """How MODEL is loaded: weights for a factory, and the pickle opt-in."""
    return _stack(
        click.option(
            "--weights",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Weights for a package.module:factory MODEL: a state_dict saved "
            "with torch.save (read with weights_only=True) or a .safetensors file.",
        ),
        click.option(
            "--trust-pickle",
            is_flag=True,
            help="Allow MODEL to be a whole pickled module. Unpickling runs any "
            "code the file holds: use it only for files you trust.",
        ),
    )(function)


def select_options(function: F) -> F:
    """``--select`` and ``--exclude``, repeatable, in the Python selector grammar."""
    return _stack(
        click.option(
            "--select",
            "-s",
            multiple=True,
            metavar="PATTERN",
            help="Sites to act on: a glob on the site path, or 're:<regex>' "
            "(full match). Repeat to select more. Default: every site.",
        ),
        click.option(
            "--exclude",
            "-x",
            multiple=True,
            metavar="PATTERN",
            help="Sites to leave alone, same grammar; wins over --select.",
        ),
    )(function)


def input_options(function: F) -> F:
    """Where example inputs come from, for verify, export and bench."""
    return _stack(
        click.option(
            "--input-shape",
            "input_shapes",
            multiple=True,
            metavar="SHAPE[:DTYPE]",
            help="An example input tensor, e.g. 2x8:int64 or 4x3x32x32 (float32 "
            "when no dtype). Repeat for several positional inputs. Integers are "
            "drawn below the smallest embedding vocabulary of the model.",
        ),
        click.option(
            "--inputs",
            "inputs_file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="A file of example inputs saved with torch.save (a tensor, a "
            "list of tensors, or a dict of keyword tensors) or safetensors.",
        ),
        click.option(
            "--seq-len",
            type=click.IntRange(min=1),
            default=8,
            show_default=True,
            help="Length of the input_ids made up for a transformers MODEL.",
        ),
    )(function)


def output_options(function: F) -> F:
    """``-o`` and ``--overwrite``."""
    return _stack(
        click.option(
            "-o",
            "--output",
            type=click.Path(path_type=Path),
            required=True,
            help="The file to write. Written atomically; never the input "
            "unless --overwrite.",
        ),
        click.option(
            "--overwrite",
            is_flag=True,
            help="Allow -o to replace an input file.",
        ),
    )(function)


def format_option(function: F) -> F:
    """``--format``; when left out, the suffix of ``-o`` decides."""
    return click.option(
        "--format",
        "format_name",
        type=click.Choice(FORMATS),
        help="Format of -o: pt2 (torch.export), torchscript or onnx. Default: "
        "from the suffix of -o (.pt2, .ts/.torchscript, .onnx).",
    )(function)


def training_option(function: F) -> F:
    """``--train/--eval``: the mode a module is rewritten and exported in."""
    return click.option(
        "--train/--eval",
        "training",
        default=None,
        help="Put a Python MODEL in train or eval mode before writing it; the "
        "file freezes that mode. Default: as loaded (a factory's model is "
        "usually in train mode, a transformers folder in eval mode).",
    )(function)


def report_option(function: F) -> F:
    """``--verify`` and ``--report``."""
    return _stack(
        click.option(
            "--verify",
            is_flag=True,
            help="Verify the rewrite with surgery.verify; exit 1 and write no "
            "model if any claim fails.",
        ),
        click.option(
            "--report",
            "report_path",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Write the verification report as JSON to this file (implies "
            "--verify; written whether or not it passes).",
        ),
    )(function)
