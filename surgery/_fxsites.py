"""Controlling functional dropout calls by rewriting the owner's traced graph.

Each dropout call node of the traced owner becomes a call of a
:class:`GatedDropout` submodule, which follows ``training`` and its gate
instead of the ``training=True`` that tracing baked in. Attention calls keep
their node; their ``dropout_p`` becomes the gate's ``effective_rate()``. A
stripped call is removed from the graph: its users read its input.

The graph with every call gated is kept pristine in a record on the
GraphModule, with the original owner, so any mix of states is rebuilt from it
and :func:`restore` puts the very owner object back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from ._calls import (
    KERNEL_OF,
    SDPA,
    STOCHASTIC_DEPTH,
    call_name,
    is_inplace,
    read_probability,
)
from ._errors import SiteError
from ._fx import trace_owner
from ._gate import GatedDropout

__all__ = ["FxRecord", "convert", "gate_of", "rebuild", "record_of"]

_RECORD = "_surgery_fx"


@dataclass
class FxRecord:
    """The owner a GraphModule replaced, and which of its calls are stripped."""

    original: nn.Module
    pristine: fx.Graph
    calls: dict[str, str] = field(default_factory=dict)  # "dropout#0" -> gate name
    stripped: set[str] = field(default_factory=set)


def record_of(module: nn.Module) -> FxRecord | None:
    record = module.__dict__.get(_RECORD)
    return record if isinstance(record, FxRecord) else None


def gate_of(module: fx.GraphModule, call: str) -> GatedDropout:
    record = record_of(module)
    if record is None or call not in record.calls:
        raise SiteError(f"no traced dropout call {call!r} in {type(module).__name__}")
    gate = module.get_submodule(record.calls[call])
    if not isinstance(gate, GatedDropout):
        raise SiteError(f"{record.calls[call]} is not a gate")
    return gate


def traced_calls(module: fx.GraphModule) -> dict[str, float]:
    """The dropout calls of a traced graph and the probability each passes."""
    found: dict[str, float] = {}
    counts: dict[str, int] = {}
    for node in module.graph.nodes:
        name = call_name(node.target) if node.op == "call_function" else None
        if name is None:
            continue
        index = counts.get(name, 0)
        counts[name] = index + 1
        p = read_probability(name, tuple(node.args), dict(node.kwargs))
        found[f"{name}#{index}"] = (
            float(p) if isinstance(p, (int, float)) else float("nan")
        )
    return found


def convert(owner: nn.Module) -> fx.GraphModule:
    """Trace ``owner`` and put every dropout call of its graph under a gate."""
    traced = trace_owner(owner)
    if traced.module is None:
        raise SiteError(f"{type(owner).__name__} cannot be traced: {traced.reason}")
    module = traced.module
    graph = module.graph
    calls: dict[str, str] = {}
    counts: dict[str, int] = {}

    for node in list(graph.nodes):
        name = call_name(node.target) if node.op == "call_function" else None
        if name is None:
            continue
        index = counts.get(name, 0)
        counts[name] = index + 1
        call = f"{name}#{index}"
        gate_name = f"_surgery_{name}_{index}"
        gate = _gate_for(node, name)
        module.add_submodule(gate_name, gate)
        calls[call] = gate_name
        _route_through_gate(graph, node, name, gate_name)

    graph.lint()
    module.recompile()
    pristine = fx.Graph()
    pristine.output(pristine.graph_copy(graph, {}))
    module.__dict__[_RECORD] = FxRecord(owner, pristine, calls)
    return module


def _gate_for(node: fx.Node, name: str) -> GatedDropout:
    args, kwargs = tuple(node.args), dict(node.kwargs)
    p = read_probability(name, args, kwargs)
    if not isinstance(p, (int, float)):
        raise SiteError(f"the probability of {name} is computed in the graph ({p})")
    if name == SDPA:
        gate = GatedDropout(float(p))
    elif name == STOCHASTIC_DEPTH:
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "row")
        gate = GatedDropout(
            float(p), kernel="stochastic_depth", batchwise=mode == "batch"
        )
    else:
        gate = GatedDropout(
            float(p), kernel=KERNEL_OF[name], inplace=is_inplace(node.target, kwargs)
        )
    gate.__dict__["_surgery_kind"] = "functional"
    gate.__dict__["_surgery_original_p"] = float(p)
    gate.__dict__["_surgery_untouched"] = True
    return gate


def _route_through_gate(
    graph: fx.Graph, node: fx.Node, name: str, gate_name: str
) -> None:
    with graph.inserting_before(node):
        if name == SDPA:
            gate_node = graph.get_attr(gate_name)
            rate = graph.call_method("effective_rate", (gate_node,))
            kwargs = dict(node.kwargs)
            args = list(node.args)
            if len(args) > 4:
                args[4] = rate
            else:
                kwargs["dropout_p"] = rate
            node.args, node.kwargs = tuple(args), kwargs
            return
        source = node.args[0] if node.args else node.kwargs["input"]
        replacement = graph.call_module(gate_name, (source,))
    node.replace_all_uses_with(replacement)
    graph.erase_node(node)


def rebuild(module: fx.GraphModule) -> None:
    """Regenerate the graph from the pristine one, leaving out stripped calls."""
    record = record_of(module)
    if record is None:
        raise SiteError(f"{type(module).__name__} was not traced by surgery")
    graph = fx.Graph()
    graph.output(graph.graph_copy(record.pristine, {}))
    stripped = {record.calls[call] for call in record.stripped}

    for node in list(graph.nodes):
        if node.op == "call_module" and node.target in stripped:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        elif node.op == "get_attr" and node.target in stripped:
            for method in list(node.users):
                for user in list(method.users):
                    user.args = _replace(user.args, method)
                    user.kwargs = _replace(user.kwargs, method)
                graph.erase_node(method)
            graph.erase_node(node)

    graph.lint()
    module.graph = graph
    module.recompile()


def _replace(value: Any, node: fx.Node) -> Any:
    return fx.node.map_arg(value, lambda arg: 0.0 if arg is node else arg)
