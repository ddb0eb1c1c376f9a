"""ONNX: random nodes in a graph, export with the default exporter, onnxruntime.

onnx, onnxscript and onnxruntime are an optional extra
(``pip install 'torch-surgery[onnx]'``), imported only here and only when used.

An ONNX file's outputs prove little about randomness: the exporter drops the
``dropout_p`` of attention silently and onnxruntime's graph optimisation may
remove ``Dropout`` nodes. So the graph itself is inspected, functions and the
subgraphs of ``If``/``Loop``/``Scan`` included.
"""

from __future__ import annotations

import ast
import inspect
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import torch
from torch import nn

from ._leaves import flatten_output
from ._ready import RandomOp

__all__ = ["RANDOM_ONNX_OPS", "export_onnx", "onnx_random_ops", "require", "run_onnx"]

RANDOM_ONNX_OPS: Final = frozenset(
    {
        "Dropout",
        "RandomUniform",
        "RandomUniformLike",
        "RandomNormal",
        "RandomNormalLike",
        "Bernoulli",
        "Multinomial",
    }
)

# Exporter messages that say nothing new to someone who exports on purpose:
# a stripped model may well be exported in train mode.
_EXPECTED_WARNINGS: Final = (
    (UserWarning, r"Exporting a model while it is in training mode"),
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)


def require(name: str) -> ModuleType:
    """Import ``onnx``, ``onnxscript`` or ``onnxruntime``, or say how to get it."""
    try:
        return __import__(name)
    except ImportError as error:
        raise ImportError(
            f"{name} is needed for ONNX export and checks; install the extra: "
            "pip install 'torch-surgery[onnx]'"
        ) from error


def onnx_random_ops(model: Any) -> list[RandomOp]:
    """Random nodes of an ONNX ``ModelProto`` or file, wherever they sit."""
    onnx = require("onnx")
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model), load_external_data=False)
    found = list(_graph_ops(model.graph, onnx, "graph"))
    for function in model.functions:
        name = (
            f"{function.domain}.{function.name}" if function.domain else function.name
        )
        found.extend(_graph_ops(function, onnx, f"function {name}", location=name))
    return found


def _graph_ops(
    graph: Any, onnx: ModuleType, where: str, location: str | None = None
) -> Iterator[RandomOp]:
    for node in graph.node:
        if node.op_type in RANDOM_ONNX_OPS:
            place = location if location is not None else _module_path(node)
            yield RandomOp(node.op_type, place, node.name, f"in {where}")
        for attribute in node.attribute:
            inner = f"{where} > {node.op_type} {node.name}.{attribute.name}"
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graph_ops(attribute.g, onnx, inner, location)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _graph_ops(subgraph, onnx, inner, location)


def _module_path(node: Any) -> str:
    """The torch module a node came from, as the exporter recorded it."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            # [..., 'blocks.1.mlp', 'blocks.1.mlp.2', 'native_dropout_2']
            if isinstance(scopes, list) and len(scopes) >= 2:
                return str(scopes[-2])
    return ""


def export_onnx(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Export with torch's default (dynamo) ONNX exporter; an ``ONNXProgram``."""
    require("onnx")
    require("onnxscript")
    with warnings.catch_warnings():
        for category, message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message, category)
        # verbose=False keeps the exporter's progress lines off stdout.
        return torch.onnx.export(
            model, args, kwargs=kwargs or None, dynamo=True, verbose=False
        )


def save_onnx(program: Any, path: Path) -> None:
    """Write an ``ONNXProgram`` as one self-contained file."""
    program.save(str(path), external_data=False)


def run_onnx(
    path: Path, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[torch.Tensor]:
    """Run an ONNX file on onnxruntime's CPU provider; its outputs, in order."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )
    feeds = _feeds(session.get_inputs(), model, args, kwargs)
    return [torch.from_numpy(value) for value in session.run(None, feeds)]


def _feeds(
    inputs: list[Any], model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Match onnxruntime inputs to the example tensors, by name or else by order."""
    named = _tensors_by_parameter(model, args, kwargs)
    names = [entry.name for entry in inputs]
    if all(name in named for name in names):
        return {name: named[name].detach().cpu().numpy() for name in names}
    tensors = list(named.values())
    if len(tensors) != len(names):
        raise ValueError(
            f"the ONNX model takes {len(names)} input(s) ({', '.join(names)}) "
            f"but the example inputs hold {len(tensors)} tensor(s)"
        )
    return {
        name: tensor.detach().cpu().numpy()
        for name, tensor in zip(names, tensors, strict=True)
    }


def _tensors_by_parameter(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Example tensors in the order of ``forward``'s parameters, keyed by name."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {
            f"input_{i}": value for i, value in enumerate((*args, *kwargs.values()))
        }
    tensors: dict[str, torch.Tensor] = {}
    for name, value in bound.items():
        leaves = [
            leaf for _, leaf in flatten_output(value) if isinstance(leaf, torch.Tensor)
        ]
        if len(leaves) == 1:
            tensors[name] = leaves[0]
        else:
            tensors.update({f"{name}_{i}": leaf for i, leaf in enumerate(leaves)})
    return tensors


def lost_random_ops(program: Any, proto: Any) -> list[str]:
    """Module paths whose random ops the exporter dropped on the way to ONNX.

    Compares the torch program the exporter started from with the ONNX graph,
    module by module.
    """
    from ._ready import graph_random_ops

    before: dict[str, int] = {}
    for op in graph_random_ops(program.exported_program.graph_module):
        before[op.location] = before.get(op.location, 0) + 1
    after: dict[str, int] = {}
    for op in onnx_random_ops(proto):
        after[op.location] = after.get(op.location, 0) + 1
    return sorted(path for path, count in before.items() if after.get(path, 0) < count)
