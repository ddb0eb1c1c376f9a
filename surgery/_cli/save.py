"""Writing a rewritten model: the format of ``-o``, and the writer for each kind.

A module is exported (``surgery.export``, without a second strip) to the
format asked for; a ``torch.export`` program stays a program and is saved
as ``.pt2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .._pipeline import export_step
from .._recipe import FORMATS, ExportFormat
from .errors import UsageProblem
from .examples import Examples

__all__ = ["FORMAT_NAMES", "choose_format", "write_model"]

_BY_SUFFIX: dict[str, ExportFormat] = {
    ".pt2": "pt2",
    ".onnx": "onnx",
    ".ts": "torchscript",
    ".torchscript": "torchscript",
    ".jit": "torchscript",
}
FORMAT_NAMES: dict[str, str] = {
    "pt2": "torch.export program",
    "torchscript": "TorchScript archive",
    "onnx": "ONNX model",
}


def choose_format(output: Path, given: str | None) -> ExportFormat:
    """The format named by ``--format``, else by the suffix of ``-o``."""
    if given is not None:
        if given not in FORMATS:
            raise UsageProblem(
                f"--format {given}: unknown format; use one of {', '.join(FORMATS)}"
            )
        return _as_format(given)
    suffix = output.suffix.lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    raise UsageProblem(
        f"-o {output}: cannot tell the format from {suffix or 'a name without suffix'};"
        f" pass --format {'|'.join(FORMATS)} or use .pt2, .ts or .onnx"
    )


def write_model(
    model: Any, examples: Examples | None, path: Path, format: ExportFormat
) -> Any:
    """Write ``model`` to ``path`` (a temporary file the caller renames).

    Returns:
        The :class:`surgery.ExportResult` for a module; ``None`` for an
        exported program or TorchScript, which are saved as they are.
    """
    if isinstance(model, torch.export.ExportedProgram):
        if format != "pt2":
            raise UsageProblem(
                f"a torch.export program is written as pt2, not {format}; "
                "name -o with .pt2 or pass --format pt2"
            )
        torch.export.save(model, str(path))
        return None
    if isinstance(model, torch.jit.ScriptModule):
        if format != "torchscript":
            raise UsageProblem(
                f"a TorchScript model is written as torchscript, not {format}"
            )
        torch.jit.save(model, str(path))
        return None
    if examples is None:
        raise UsageProblem(
            f"writing a {format} file needs example inputs: pass --input-shape "
            "(e.g. 2x8:int64) or --inputs FILE"
        )
    return export_step(model, examples.args, examples.kwargs, path, format)


def _as_format(name: str) -> ExportFormat:
    for known in FORMATS:
        if known == name:
            return known
    raise UsageProblem(f"unknown format {name}")
