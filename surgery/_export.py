"""``surgery.export``: strip, export, prove it, and only then write the file.

The steps, on a deep copy of the model (the caller's model is never
changed, so a failed export leaves nothing behind, not even a half-stripped
model):

1. strip every dropout site (unless ``strip=False``);
2. export to ``pt2`` (``torch.export``, non-strict), ``torchscript`` (trace,
   or script) or ``onnx`` (torch's default exporter);
3. save to a temporary file in the target's directory and load it back;
4. check the loaded artifact for random operations;
5. run it on the example inputs and compare with the eager copy;
6. ``os.replace`` the temporary file onto the target.

Any failure raises :class:`~surgery.ExportError` and removes the temporary
file. The artifact is exported in the model's current mode: a stripped model
in train mode exports deterministic too (batch norm still uses batch
statistics there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._api import find
from ._api import strip as strip_sites
from ._compare import (
    LeafResult,
    Tolerance,
    ToleranceSpec,
    compare_leaf,
    resolve_tolerances,
)
from ._errors import ExportError, SurgeryError
from ._leaves import ExampleInputs, discovery_inputs, split_inputs, tensor_leaves
from ._ready import RandomOp, check_export_ready
from ._savers import FORMATS, ExportFormat, Saver
from ._verify import preserved_rng, scratch_copy, seed_all
from ._verify_report import Claim, format_results

__all__ = ["FORMATS", "ExportFormat", "ExportResult", "export"]

logger = logging.getLogger("surgery")

_CLAIM = "artifact outputs"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote and the proof that came with it.

    Attributes:
        path: The file written.
        format: ``"pt2"``, ``"torchscript"`` or ``"onnx"``.
        training: The mode the model was exported in.
        stripped: Paths of the sites stripped on the way.
        random_ops: Random operations in the artifact (empty unless
            ``allow_random=True`` let some through).
        check: The artifact's outputs compared with the eager model's.
    """

    path: Path
    format: ExportFormat
    training: bool
    stripped: tuple[str, ...]
    random_ops: tuple[RandomOp, ...]
    check: Claim

    def __str__(self) -> str:
        mode = "train" if self.training else "eval"
        lines = [
            f"exported {self.format} ({mode} mode) to {self.path}",
            f"stripped {len(self.stripped)} site(s)",
            "random ops left: "
            + (", ".join(map(str, self.random_ops)) if self.random_ops else "none"),
            f"[{'pass' if self.check.passed else 'FAIL'}] {self.check.name}: "
            f"{self.check.description}",
        ]
        lines.extend("  " + line for line in format_results(self.check.results))
        return "\n".join(lines)


def export(
    model: nn.Module,
    example_inputs: ExampleInputs,
    path: str | os.PathLike[str],
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    format: ExportFormat = "pt2",
    strip: bool = True,
    script: bool = False,
    allow_random: bool = False,
    tolerances: ToleranceSpec | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export a dropout-free copy of ``model`` to ``path``, checked, atomically.

    The model itself is not changed: stripping happens on a deep copy. The
    file appears only once the loaded artifact has no random operation left
    and reproduces the eager copy's outputs on ``example_inputs`` within
    tolerance; otherwise nothing is written.

    Args:
        model: The model to export, in the mode to export it in.
        example_inputs: A tensor, a tuple of positional arguments or a dict of
            keyword arguments.
        path: The file to write. Its directory must exist.
        example_kwargs: Keyword arguments in addition to positional ones.
        format: ``"pt2"`` (``torch.export``, saved by ``torch.export.save``),
            ``"torchscript"`` (``torch.jit.trace``; ``script=True`` for
            ``torch.jit.script``) or ``"onnx"`` (needs the ``onnx`` extra).
        strip: Strip every dropout site first. With ``False`` the sites
            export as they are set: gates that are off as nothing, gates that
            are on or follow training (in train mode) as dropout.
        script: For ``"torchscript"``: script instead of trace.
        allow_random: Write the file even if random operations are left
            (Monte Carlo dropout on purpose). ONNX still refuses when the
            exporter silently dropped some (attention ``dropout_p``).
        tolerances: Overrides per dtype for the output comparison.
        seed: The seed both the eager copy and the artifact run under.

    Returns:
        An :class:`ExportResult` saying what was written and checked.

    Raises:
        ExportError: Export failed, random operations are left, or the
            artifact's outputs differ from the eager model's. No file is
            written.

    Example:
        >>> import tempfile, pathlib
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> folder = tempfile.TemporaryDirectory()
        >>> path = pathlib.Path(folder.name) / "model.pt2"
        >>> result = export(model, torch.ones(2, 4), path)
        >>> result.stripped, result.random_ops, result.check.passed
        (('1',), (), True)
        >>> folder.cleanup()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export takes an nn.Module, got {type(model).__name__}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if script and format != "torchscript":
        raise ValueError("script=True only applies to format='torchscript'")
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"the directory of {target} does not exist")
    args, kwargs = split_inputs(example_inputs, example_kwargs)
    table = resolve_tolerances(tolerances)

    with preserved_rng(model, args, kwargs), _temporary_next_to(target) as temporary:
        working = scratch_copy(model, "model")
        stripped = _strip(working, discovery_inputs(args, kwargs)) if strip else ()
        saver = Saver(format, script=script, strip=strip)
        loaded, random_ops = _export_and_load(
            saver, working, args, kwargs, temporary, allow_random
        )
        check = _check_outputs(
            working, loaded, args, kwargs, format, temporary, seed, table, random_ops
        )
        if not check.passed:
            raise ExportError(
                f"the exported {format} artifact does not reproduce the model; "
                "nothing was written:\n" + "\n".join(format_results(check.results))
            )
        os.replace(temporary, target)

    logger.debug("export: %s to %s, %d site(s) stripped", format, target, len(stripped))
    return ExportResult(
        path=target,
        format=format,
        training=working.training,
        stripped=stripped,
        random_ops=tuple(random_ops),
        check=check,
    )


@contextlib.contextmanager
def _temporary_next_to(target: Path) -> Iterator[Path]:
    """A temporary file in the target's directory, removed unless renamed."""
    handle, name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix or ".tmp"
    )
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def _strip(model: nn.Module, seen: Any) -> tuple[str, ...]:
    """Strip every site, those seen only when the model runs included."""
    # Randomness that is not dropout ("unclassified") is not a site to strip:
    # it stays, and the readiness check reports it.
    try:
        sites = find(model, example_inputs=seen)
    except SurgeryError:
        raise
    except Exception as error:
        raise ExportError(
            f"could not export {type(model).__name__}: it fails on the example "
            f"inputs ({error}). Nothing was written."
        ) from error
    chosen = {site.path for site in sites if site.kind != "unclassified"}
    if chosen:
        strip_sites(model, lambda path, _: path in chosen, example_inputs=seen)
    return tuple(
        site.path for site in sites if site.path in chosen and site.state != "stripped"
    )


def _export_and_load(
    saver: Saver,
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    temporary: Path,
    allow_random: bool,
) -> tuple[Any, list[RandomOp]]:
    """Export, save to ``temporary``, load back; the loaded artifact and its ops."""
    format = saver.format
    try:
        loaded = saver.save(model, args, kwargs, temporary)
    except SurgeryError:
        raise
    except Exception as error:
        raise ExportError(
            f"could not export {type(model).__name__} to {format}: {error}. "
            "Nothing was written."
        ) from error

    random_ops = check_export_ready(temporary if format == "onnx" else loaded)
    if random_ops and not allow_random:
        listed = "\n".join(f"  {op}" for op in random_ops)
        raise ExportError(
            f"the exported {format} artifact still holds {len(random_ops)} random "
            f"operation(s); nothing was written:\n{listed}\n"
            "Export with strip=True, or pass allow_random=True to keep them."
        )
    return loaded, random_ops


def _check_outputs(
    model: nn.Module,
    loaded: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    format: ExportFormat,
    temporary: Path,
    seed: int,
    table: Mapping[torch.dtype, Tolerance],
    random_ops: list[RandomOp],
) -> Claim:
    """Run the loaded artifact and the eager model on the inputs; compare.

    Tensors are paired in order and named by their place in the eager
    output: exporters keep the tensors but not always their containers (a
    traced ``ModelOutput`` comes back a dict, ONNX returns a flat list).
    """
    description = f"the loaded {format} file against the eager model, same seed"
    if format == "onnx":
        description += " (onnxruntime, CPU)"
    with torch.no_grad():
        seed_all(seed, model, args, kwargs)
        leaves = tensor_leaves(model(*args, **kwargs))
        if format == "onnx" and random_ops:
            # onnxruntime draws its own numbers: nothing to compare draw for draw.
            note = "not compared: the artifact is random (allow_random=True)"
            results = [
                LeafResult(_CLAIM, position, True, note=note) for position, _ in leaves
            ]
            return Claim(_CLAIM, description, tuple(results))
        seed_all(seed, model, args, kwargs)
        outputs = _run_artifact(loaded, format, temporary, model, args, kwargs)

    if len(outputs) != len(leaves):
        note = f"the artifact returns {len(outputs)} tensor(s), the model {len(leaves)}"
        return Claim(
            _CLAIM, description, (LeafResult(_CLAIM, "output", False, note=note),)
        )
    return Claim(
        _CLAIM,
        description,
        tuple(
            compare_leaf(_CLAIM, position, output, value, exact=False, tolerances=table)
            for (position, value), output in zip(leaves, outputs, strict=True)
        ),
    )


def _run_artifact(
    loaded: Any,
    format: ExportFormat,
    temporary: Path,
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> list[torch.Tensor]:
    try:
        if format == "onnx":
            from ._onnx import run_onnx

            return run_onnx(temporary, model, args, kwargs)
        runnable = loaded.module() if format == "pt2" else loaded
        return [leaf for _, leaf in tensor_leaves(runnable(*args, **kwargs))]
    except Exception as error:
        raise ExportError(
            f"the exported {format} file could not run on the example inputs: "
            f"{error}. Nothing was written."
        ) from error
