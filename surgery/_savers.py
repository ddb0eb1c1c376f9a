"""Exporting a model to one format, saving it, and loading the file back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from ._api import find
from ._api import strip as strip_sites
from ._errors import ExportError
from ._torchscript import load_torchscript

__all__ = ["FORMATS", "ExportFormat", "Saver"]

ExportFormat = Literal["pt2", "torchscript", "onnx"]
FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)


@dataclass(frozen=True)
class Saver:
    """Exports a model to one format, saves it, and loads the file back."""

    format: ExportFormat
    script: bool
    strip: bool

    def save(
        self,
        model: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        temporary: Path,
    ) -> Any:
        """The artifact as loaded from ``temporary`` (an ``ONNXProgram`` for onnx)."""
        method = {"pt2": self._pt2, "torchscript": self._torchscript}.get(
            self.format, self._onnx
        )
        return method(model, args, kwargs, temporary)

    def _pt2(
        self,
        model: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        temporary: Path,
    ) -> Any:
        program = torch.export.export(model, args, kwargs, strict=False)
        # find and strip take exported programs as well as modules.
        if self.strip and find(program):
            # Dropout ops that draw nothing (p == 0) can survive tracing; a
            # stripped model's program should not hold any dropout op at all.
            strip_sites(program)
        torch.export.save(program, temporary)
        return torch.export.load(temporary)

    def _torchscript(
        self,
        model: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        temporary: Path,
    ) -> Any:
        if self.script:
            compiled = torch.jit.script(model)
        else:
            if args and kwargs:
                raise ExportError(
                    "torch.jit.trace takes positional or keyword example inputs, "
                    "not both; pass one kind, or use format='pt2'"
                )
            # A train-mode trace runs the model: keep batch-norm statistics as
            # they were, so the file holds the model's own state.
            buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
            compiled = torch.jit.trace(  # type: ignore[no-untyped-call]
                model,
                args or None,
                example_kwarg_inputs=kwargs or None,
                strict=False,
                check_trace=False,
            )
            with torch.no_grad():
                for name, buffer in compiled.named_buffers():
                    if name in buffers:
                        buffer.copy_(buffers[name])
        torch.jit.save(compiled, str(temporary))
        return load_torchscript(temporary)

    def _onnx(
        self,
        model: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        temporary: Path,
    ) -> Any:
        from ._onnx import export_onnx, lost_random_ops, save_onnx

        program = export_onnx(model, args, kwargs)
        save_onnx(program, temporary)
        lost = lost_random_ops(program, temporary)
        if lost:
            raise ExportError(
                "the ONNX exporter dropped random operations without a word in "
                f"{', '.join(repr(path) or '(root)' for path in lost)} (attention "
                "dropout_p is not exported); the file would not behave like the "
                "model. Strip those sites, or export to pt2."
            )
        return program
