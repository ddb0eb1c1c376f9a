"""``surgery.check_export_ready``: list every random operation left, with its place.

One question, asked of whatever form a model is in:

- an ``nn.Module``: one train-mode forward on a copy, under a
  :class:`~surgery.RandomOpCounter` (what runs is the ground truth);
- an ``fx.GraphModule`` or a ``torch.export.ExportedProgram``: graph nodes,
  placed by their ``nn_module_stack``;
- a TorchScript module (scripted or traced): see :mod:`surgery._torchscript`;
- an ONNX model or file: see :mod:`surgery._onnx`.

A dropout op whose probability is a literal zero or whose ``training`` is a
literal ``False`` draws nothing and is not listed.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from torch import fx, nn

from ._api import find
from ._calls import SDPA, call_name, read_probability, read_training
from ._errors import SurgeryError
from ._leaves import ExampleInputs, split_inputs
from ._randomops import RandomOpCounter, is_random_op
from ._site import Site

__all__ = ["UNKNOWN", "RandomOp", "check_export_ready", "graph_random_ops", "judge"]

UNKNOWN: Final = object()
"""An argument whose value is not fixed until the model runs."""

# Dropout-like ops: random unless their p is 0 or their training flag False.
_DROPOUT_NAMES: Final = frozenset(
    {
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "feature_dropout",
        "alpha_dropout",
        "feature_alpha_dropout",
        "native_dropout",
        "stochastic_depth",
    }
)
_TORCHSCRIPT_SUFFIXES: Final = (".pt", ".ts", ".jit", ".torchscript")


@dataclass(frozen=True)
class RandomOp:
    """One random operation left in a model or an exported artifact.

    Attributes:
        op: The operation as its format names it (``aten.native_dropout``,
            ``aten.dropout.default``, ``aten::dropout``, ONNX ``Dropout``).
        location: Path of the module it belongs to (``""`` is the root), or
            for an ONNX function, the function's name.
        node: The graph node's name, where there is a graph.
        detail: Its arguments or where in the graph it sits, in words.
    """

    op: str
    location: str
    node: str = ""
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.op} in {self.location or '(root)'}"
        if self.node:
            text += f" (node {self.node})"
        return f"{text}: {self.detail}" if self.detail else text


def check_export_ready(
    obj: Any,
    example_inputs: ExampleInputs | None = None,
    *,
    example_kwargs: Mapping[str, Any] | None = None,
) -> list[RandomOp]:
    """List the random operations left in ``obj``; empty means ready to export.

    Args:
        obj: An ``nn.Module``, an ``fx.GraphModule``, an ``ExportedProgram``,
            a TorchScript module, an ONNX ``ModelProto``, or a file path
            (``.onnx``, ``.pt2``, or a TorchScript archive: ``.pt``, ``.ts``).
        example_inputs: Needed for an ``nn.Module``, which is run once in
            train mode on a copy (the model itself is not touched); a
            tensor, a tuple of positional arguments or a dict of keywords.
        example_kwargs: Keyword arguments in addition to positional ones.

    Returns:
        One :class:`RandomOp` per random operation, in graph or run order.

    Raises:
        TypeError: ``obj`` is none of the above, or a module came without
            example inputs.

    Example:
        >>> from surgery import strip
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
        >>> [(op.op, op.location) for op in check_export_ready(model, torch.ones(1, 4))]
        [('aten.bernoulli_', '1')]
        >>> check_export_ready(strip(model), torch.ones(1, 4))
        []
    """
    if isinstance(obj, (str, os.PathLike)):
        return _check_file(Path(obj))
    if _is_onnx_model(obj):
        from ._onnx import onnx_random_ops

        return onnx_random_ops(obj)
    if isinstance(obj, torch.export.ExportedProgram):
        return graph_random_ops(obj.graph_module)
    if isinstance(obj, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        from ._torchscript import script_random_ops

        return script_random_ops(obj)
    if isinstance(obj, fx.GraphModule):
        return graph_random_ops(obj)
    if isinstance(obj, nn.Module):
        if example_inputs is None and not example_kwargs:
            raise TypeError(
                "check_export_ready runs an nn.Module once to see what it draws: "
                "pass example_inputs (a tensor, a tuple or a dict of keywords)"
            )
        return _eager_random_ops(obj, example_inputs, example_kwargs)
    raise TypeError(
        "check_export_ready takes an nn.Module, fx.GraphModule, ExportedProgram, "
        f"TorchScript module, ONNX model or file path; got {type(obj).__name__}"
    )


def _check_file(path: Path) -> list[RandomOp]:
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from ._onnx import onnx_random_ops

        return onnx_random_ops(path)
    if suffix == ".pt2":
        return graph_random_ops(torch.export.load(path).graph_module)
    if suffix in _TORCHSCRIPT_SUFFIXES:
        from ._torchscript import load_torchscript, script_random_ops

        return script_random_ops(load_torchscript(path))
    raise SurgeryError(
        f"{path}: cannot tell the format from the suffix {suffix!r}; "
        f"use .onnx, .pt2 or a TorchScript suffix ({', '.join(_TORCHSCRIPT_SUFFIXES)})"
    )


def _is_onnx_model(obj: object) -> bool:
    # Recognised by class so that onnx is imported only when one is passed.
    cls = type(obj)
    return cls.__name__ == "ModelProto" and cls.__module__.startswith("onnx")


def judge(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    """Why a call of op ``name`` is random (its arguments), or ``None`` if not.

    ``name`` is a short op name (``dropout``, ``native_dropout``,
    ``bernoulli_``, ``scaled_dot_product_attention``); arguments that are
    not known until run time are ``UNKNOWN``.
    """
    base = name.rstrip("_")
    if base in _DROPOUT_NAMES or base == SDPA:
        p = read_probability(base, args, dict(kwargs))
        training = read_training(base, args, dict(kwargs))
        if _known(p) and not p:
            return None
        if _known(training) and training is False:
            return None
        if base == SDPA:
            return f"dropout_p={_show(p)}"
        return f"p={_show(p)}, train={_show(training)}"
    return "draws random numbers" if _draws(name) else None


@functools.lru_cache(maxsize=1024)
def _draws(name: str) -> bool:
    """True for an ATen op that always draws (``bernoulli_``, ``rand_like``)."""
    packet = getattr(torch.ops.aten, name, None)
    return packet is not None and is_random_op(packet)


def _known(value: object) -> bool:
    return value is not UNKNOWN and not isinstance(value, fx.Node)


def _show(value: object) -> str:
    if not _known(value):
        return "?"
    return f"{value:g}" if isinstance(value, float) else repr(value)


def graph_random_ops(graph_module: fx.GraphModule) -> list[RandomOp]:
    """Random nodes of an fx graph and of the graphs nested in it."""
    live = _live_module_sites(graph_module)
    found = []
    for module in _graph_modules(graph_module):
        for node in module.graph.nodes:
            op = _fx_random_op(node, live)
            if op is not None:
                found.append(op)
    return found


def _graph_modules(root: fx.GraphModule) -> Iterator[fx.GraphModule]:
    """The root and every graph held inside it (branches of cond, map...)."""
    for module in root.modules():
        if isinstance(module, fx.GraphModule):
            yield module


def _live_module_sites(graph_module: fx.GraphModule) -> dict[str, Site]:
    """Sites that a ``call_module`` node can run and that may drop."""
    try:
        sites = find(graph_module)
    except SurgeryError:
        return {}
    return {
        site.path: site
        for site in sites
        if site.state != "stripped" and site.mode != "off" and site.p > 0.0
    }


def _fx_random_op(node: fx.Node, live: Mapping[str, Site]) -> RandomOp | None:
    where = _node_module_path(node)
    if node.op == "call_module":
        target = str(node.target)
        for path, site in live.items():
            if path == target or path.startswith(target + "."):
                return RandomOp(
                    type(site.module).__name__,
                    path,
                    node.name,
                    f"p={site.p:g} ({site.cls})",
                )
        return None
    if node.op == "call_method":
        why = judge(str(node.target), node.args, node.kwargs)
        return RandomOp(f"Tensor.{node.target}", where, node.name, why) if why else None
    if node.op != "call_function":
        return None

    function = node.target
    if isinstance(function, torch._ops.OpOverload):
        name = str(function.overloadpacket).rpartition(".")[2]
        label = str(function)
    else:
        name = call_name(function) or str(getattr(function, "__name__", ""))
        label = f"{getattr(function, '__module__', '')}.{name}"
    why = judge(name, node.args, node.kwargs)
    return RandomOp(label, where, node.name, why) if why else None


def _node_module_path(node: fx.Node) -> str:
    """The innermost module path of a node (``blocks.0.mlp``), from export metadata."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return str(node.target) if node.op == "call_module" else ""
    path = str(list(stack.values())[-1][0])
    # Strict export spells paths as Python: L['self'].layers[0].attn
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    return re.sub(r"\['([^']+)'\]", r".\1", path).lstrip(".")


def _eager_random_ops(
    model: nn.Module,
    example_inputs: ExampleInputs | None,
    example_kwargs: Mapping[str, Any] | None,
) -> list[RandomOp]:
    from ._verify import preserved_rng

    args, kwargs = split_inputs(
        () if example_inputs is None else example_inputs, example_kwargs
    )
    with preserved_rng(model, args, kwargs):
        # A copy keeps the caller's batch-norm statistics and flags as they are.
        scratch = copy.deepcopy(model).train()
        with torch.no_grad(), RandomOpCounter(scratch) as counter:
            scratch(*args, **kwargs)
    return [
        RandomOp(event.op, event.module, detail="ran in a train-mode forward")
        for event in counter.events
    ]
