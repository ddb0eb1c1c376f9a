"""Dropout in exported programs: the same sites, found and rewritten in aten graphs.

An ``ExportedProgram`` (or the ``GraphModule`` that ``ExportedProgram.module()``
returns) has its mode frozen at export time: a train-mode export holds
``aten.dropout(x, p, True)``, SDPA with ``dropout_p``, and drop-path written as
``bernoulli`` arithmetic; after ``run_decompositions()`` dropout shows as
``aten.native_dropout``. Each node names its module through
``meta["nn_module_stack"]``, so sites get the paths they have in eager code:
a node inside a dropout or drop-path module is that module's site
(``encoder.layer.0.output.dropout``); any other is ``<module>:<op>#<k>``.

Rewrites change the graph in place, lint it, recompile it, and for an
``ExportedProgram`` run its verifier.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from ._errors import SiteError
from ._kinds.drop_path import is_drop_path_class
from ._site import Mode, Site

__all__ = ["exported_graph", "find_exported", "is_exported", "rewrite_exported"]

_aten = torch.ops.aten
_DROPOUT_OPS = {
    _aten.dropout,
    _aten.dropout_,
    _aten.feature_dropout,
    _aten.feature_dropout_,
    _aten.alpha_dropout,
    _aten.alpha_dropout_,
    _aten.feature_alpha_dropout,
    _aten.feature_alpha_dropout_,
}
_ATTENTION_OPS = {
    _aten.scaled_dot_product_attention,
    _aten._scaled_dot_product_flash_attention_for_cpu,
    _aten._scaled_dot_product_flash_attention,
    _aten._scaled_dot_product_efficient_attention,
    _aten._scaled_dot_product_cudnn_attention,
}
_BERNOULLI_OPS = {_aten.bernoulli, _aten.bernoulli_}
MECHANISM = "aten graph rewrite"
_DROPOUT_CLASS = re.compile(r"torch\.nn\.modules\.dropout\.\w+|.*\.GatedDropout")


def is_exported(obj: object) -> bool:
    """True for an ExportedProgram or a GraphModule of aten ops."""
    if isinstance(obj, torch.export.ExportedProgram):
        return True
    if isinstance(obj, fx.GraphModule):
        return any(isinstance(n.target, torch._ops.OpOverload) for n in obj.graph.nodes)
    return False


def exported_graph(obj: Any) -> fx.GraphModule:
    if isinstance(obj, torch.export.ExportedProgram):
        module: fx.GraphModule = obj.graph_module
        return module
    if isinstance(obj, fx.GraphModule):
        return obj
    raise TypeError(
        f"expected an ExportedProgram or GraphModule, got {type(obj).__name__}"
    )


@dataclass(frozen=True)
class _Node:
    site: Site
    node: fx.Node


def _packet(node: fx.Node) -> Any:
    return getattr(node.target, "overloadpacket", None)


def _module_of(node: fx.Node) -> tuple[str, str]:
    """The innermost module path and class name a node came from."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    cls_name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    return _normalise(str(path)), cls_name


def _normalise(path: str) -> str:
    """``L['self'].layers[0].attn`` (strict export) -> ``layers.0.attn``."""
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    return re.sub(r"\['([^']+)'\]", r".\1", path).lstrip(".")


def _probability(node: fx.Node) -> float:
    packet = _packet(node)
    if packet in _BERNOULLI_OPS:
        # Drop-path draws the mask with the keep probability.
        keep = _argument(node, 1, "p", float("nan"))
        return round(1.0 - keep, 12) if isinstance(keep, (int, float)) else float("nan")
    if packet in _ATTENTION_OPS:
        value = _argument(node, 4, "dropout_p", 0.0)
    else:
        value = _argument(node, 1, "p", 0.5)
    return float(value) if isinstance(value, (int, float)) else float("nan")


def _argument(node: fx.Node, position: int, name: str, default: Any) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[position] if position < len(node.args) else default


def _is_random(node: fx.Node) -> bool:
    packet = _packet(node)
    if (
        packet in _DROPOUT_OPS
        or packet in _BERNOULLI_OPS
        or packet is _aten.native_dropout
    ):
        return True
    return packet in _ATTENTION_OPS and bool(_probability(node))


def _sites(graph_module: fx.GraphModule) -> list[_Node]:
    found: list[_Node] = []
    counts: dict[tuple[str, str], int] = {}
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or not _is_random(node):
            continue
        module, cls = _module_of(node)
        op = str(_packet(node)).rpartition(".")[2].rstrip("_")
        if _DROPOUT_CLASS.fullmatch(cls) or is_drop_path_class(cls):
            path = module
        else:
            index = counts.get((module, op), 0)
            counts[(module, op)] = index + 1
            path = f"{module}:{op}#{index}"
        p = _probability(node)
        site = Site(
            path=path,
            kind="exported",
            owner=module,
            cls=str(node.target),
            p=p,
            original_p=p,
            state="original",
            mode=None,
            mechanism=MECHANISM,
        )
        found.append(_Node(site, node))
    return found


def find_exported(obj: Any) -> list[Site]:
    """One site per random node; a module called twice gives two equal paths."""
    return _merge(entry.site for entry in _sites(exported_graph(obj)))


def _merge(sites: Iterable[Site]) -> list[Site]:
    merged: dict[str, Site] = {}
    for site in sites:
        merged.setdefault(site.path, site)
    return list(merged.values())


def rewrite_exported(
    obj: Any, paths: set[str], *, mode: Mode | None, p: float | None
) -> None:
    """Strip (``mode="off"``) or set the selected random nodes, in place."""
    graph_module = exported_graph(obj)
    graph = graph_module.graph
    for entry in _sites(graph_module):
        if entry.site.path not in paths:
            continue
        if mode == "off":
            _silence(graph, entry)
        elif mode == "on" or p is not None:
            _configure(entry, mode=mode, p=p)

    graph.eliminate_dead_code()
    graph.lint()
    graph_module.recompile()
    if isinstance(obj, torch.export.ExportedProgram):
        obj.validate()  # type: ignore[no-untyped-call]  # untyped in torch


def _silence(graph: fx.Graph, entry: _Node) -> None:
    node = entry.node
    packet = _packet(node)
    if packet in _ATTENTION_OPS:
        _set_argument(node, 4, "dropout_p", 0.0)
    elif packet in _DROPOUT_OPS:
        node.replace_all_uses_with(_input(node))
        graph.erase_node(node)
    elif packet is _aten.native_dropout:
        _silence_native(graph, node)
    else:
        _silence_bernoulli(graph, entry)


def _input(node: fx.Node) -> fx.Node:
    source = node.args[0]
    if not isinstance(source, fx.Node):
        raise SiteError(f"{node.name}: its input is a constant, not a graph value")
    return source


def _silence_native(graph: fx.Graph, node: fx.Node) -> None:
    """``native_dropout`` returns (output, mask): the input, and a mask of ones."""
    source = _input(node)
    for user in list(node.users):
        if user.target is not operator.getitem:
            raise SiteError(
                f"{node.name}: unexpected use of native_dropout by {user.name}"
            )
        if user.args[1] == 0:
            user.replace_all_uses_with(source)
        else:
            with graph.inserting_before(user):
                ones = graph.call_function(
                    _aten.ones_like.default, (source,), {"dtype": torch.bool}
                )
            user.replace_all_uses_with(ones)
        graph.erase_node(user)
    graph.erase_node(node)


def _silence_bernoulli(graph: fx.Graph, entry: _Node) -> None:
    """Drop-path: ``x * (bernoulli(keep) [/ keep])`` becomes ``x``."""
    chain = [entry.node]
    current = entry.node
    while True:
        users = list(current.users)
        if len(users) != 1:
            break
        user = users[0]
        target = str(user.target)
        if "div" in target and user.args[0] is current:
            chain.append(user)
            current = user
            continue
        if "mul" in target and current in user.args and len(user.args) == 2:
            other = user.args[0] if user.args[1] is current else user.args[1]
            user.replace_all_uses_with(other)  # type: ignore[arg-type]
            graph.erase_node(user)
            for node in reversed(chain):
                source = node.args[0]
                graph.erase_node(node)
                if (
                    isinstance(source, fx.Node)
                    and not source.users
                    and "empty" in str(source.target)
                ):
                    graph.erase_node(source)
            return
        break
    raise SiteError(
        f"{entry.site.path}: random op {entry.node.name} ({entry.node.target}) is not "
        "a drop-path pattern surgery recognises (bernoulli, optional division, "
        "multiplication); strip the eager model before exporting instead"
    )


def _configure(entry: _Node, *, mode: Mode | None, p: float | None) -> None:
    node = entry.node
    packet = _packet(node)
    if packet in _BERNOULLI_OPS:
        raise SiteError(
            f"{entry.site.path}: the probability of exported drop-path is spread over "
            "several ops; it can be stripped here, or changed in the eager model"
        )
    if packet in _ATTENTION_OPS:
        if p is None and mode == "on" and not _probability(node):
            raise SiteError(
                f"{entry.site.path}: attention exported with dropout_p=0 has no "
                "probability to turn on; pass p="
            )
        if p is not None or mode == "on":
            value = p if p is not None else _probability(node)
            _set_argument(node, 4, "dropout_p", value)
        return
    if p is not None:
        _set_argument(node, 1, "p", p)
    if mode == "on":
        _set_argument(node, 2, "train", True)


def _set_argument(node: fx.Node, position: int, name: str, value: Any) -> None:
    if name in node.kwargs or position >= len(node.args):
        node.kwargs = {**node.kwargs, name: value}
    else:
        args = list(node.args)
        args[position] = value
        node.args = tuple(args)
