"""TorchScript: the random operations in a scripted or traced module's graphs.

Each module that runs is inspected on its own: the graph of each of its
methods, with function calls (``F.dropout``) inlined, keeping only the nodes
of the module's own code (calls into children are inspected as those
children). Scripting compiles every submodule, even one the model only reads
for ``.p``; only modules some running code calls are inspected.

Arguments are resolved where they are fixed: constants, attributes of the
module, compiled property getters, and ``if`` branches that agree.
``training`` stays unknown: a scripted model keeps ``train()``/``eval()``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import torch

from ._ready import UNKNOWN, RandomOp, judge

__all__ = ["load_torchscript", "script_random_ops"]

# Inlined from the module's own code or from plain functions, not a child.
_OWN_CODE: Final = re.compile(r"(\.?UNKNOWN_INSTANCE\(UNKNOWN_TYPE\))*")
_GETTER: Final = re.compile(r"__\w+_getter")


def load_torchscript(path: Path) -> Any:
    """Load a TorchScript archive onto the CPU."""
    return torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]


def script_random_ops(script: Any) -> list[RandomOp]:
    if isinstance(script, torch.jit.ScriptFunction):
        return list(_jit_graph_ops(_inlined(script.graph), "", None))
    modules = dict(script.named_modules())
    found: list[RandomOp] = []
    for path in _called_modules(modules):
        module = modules[path]
        for name in module._c._method_names():
            graph = _inlined(module._c._get_method(name).graph)
            found.extend(_jit_graph_ops(graph, path, module))
    return found


def _called_modules(modules: Mapping[str, Any]) -> list[str]:
    """The root and every submodule some called module's code calls.

    Scripting compiles every submodule, even one the model only reads (a
    dropout module whose ``.p`` goes to attention): its graph never runs.
    """
    called, queue = [""], [""]
    while queue:
        path = queue.pop()
        module = modules[path]
        for name in module._c._method_names():
            graph = module._c._get_method(name).graph
            owner = next(iter(graph.inputs()), None)
            for node in _jit_nodes(graph.nodes()):
                if node.kind() != "prim::CallMethod":
                    continue
                relative = _attribute_path(next(iter(node.inputs())), owner)
                child = f"{path}.{relative}" if path and relative else path or relative
                if relative and child in modules and child not in called:
                    called.append(child)
                    queue.append(child)
    return [path for path in modules if path in called]


def _attribute_path(value: Any, owner: Any) -> str:
    """``blocks.0.attn`` for a value read from ``self`` by a GetAttr chain."""
    names = []
    while value is not owner:
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return ""
        names.append(node.s("name"))
        value = node.input()
    return ".".join(reversed(names))


def _inlined(graph: Any) -> Any:
    """A copy of ``graph`` with every function and method call inlined.

    Functions such as ``F.dropout`` are separate graphs until inlined; calls
    into child modules get inlined too, and are told apart by their module
    hierarchy (each child is inspected as its own module).
    """
    copied = graph.copy()
    torch._C._jit_pass_inline(copied)
    return copied


def _jit_graph_ops(graph: Any, path: str, module: Any) -> Iterator[RandomOp]:
    resolve = _Resolver(graph, module)
    for node in _jit_nodes(graph.nodes(), resolve):
        namespace, _, name = node.kind().partition("::")
        if namespace != "aten" or not _OWN_CODE.fullmatch(node.getModuleHierarchy()):
            continue
        why = judge(name, tuple(resolve(value) for value in node.inputs()), {})
        if why:
            output = next(iter(node.outputs()), None)
            label = output.debugName() if output is not None else ""
            yield RandomOp(node.kind(), path, label, why)


def _jit_nodes(nodes: Any, resolve: _Resolver | None = None) -> Iterator[Any]:
    """Every node, into blocks; an ``if`` on a fixed condition only where it goes."""
    for node in nodes:
        yield node
        blocks = list(node.blocks())
        if node.kind() == "prim::If" and resolve is not None:
            condition = resolve(node.input())
            if isinstance(condition, bool):
                blocks = [blocks[0 if condition else 1]]
        for block in blocks:
            yield from _jit_nodes(block.nodes(), resolve)


class _Resolver:
    """The Python value of a TorchScript graph value, where it is fixed.

    Constants, attributes read from the module (except ``training``, which
    scripting keeps switchable), compiled property getters, and an ``if``
    whose branches agree. Each value is resolved once per graph.
    """

    def __init__(self, graph: Any, module: Any) -> None:
        inputs = list(graph.inputs())
        self._owner = inputs[0].unique() if inputs and module is not None else None
        self._module = module
        self._known: dict[int, Any] = {}

    def __call__(self, value: Any) -> Any:
        key = value.unique()
        if key not in self._known:
            self._known[key] = UNKNOWN  # a value defined in a loop may refer back
            self._known[key] = self._resolve(value)
        return self._known[key]

    def _resolve(self, value: Any) -> Any:
        if value.unique() == self._owner:
            return self._module
        node = value.node()
        kind = node.kind()
        if kind == "prim::Constant":
            return value.toIValue()
        if kind == "prim::GetAttr":
            holder = self(node.input())
            if node.s("name") == "training" or holder is UNKNOWN:
                return UNKNOWN
            return getattr(holder, node.s("name"), UNKNOWN)
        if kind == "prim::CallMethod" and _GETTER.fullmatch(node.s("name")):
            # A compiled property getter (StrippedDropout.p): ask the module.
            holder = self(next(iter(node.inputs())))
            if isinstance(holder, torch.jit.ScriptModule):
                return holder._c._get_method(node.s("name"))()
            return UNKNOWN
        if kind == "prim::If":
            # ``p if self.training else 0.0`` is fixed once p is 0.0.
            position = list(node.outputs()).index(value)
            results = [self(list(b.outputs())[position]) for b in node.blocks()]
            plain = all(isinstance(r, (bool, int, float)) for r in results)
            if plain and all(r == results[0] for r in results):
                return results[0]
        return UNKNOWN
