"""Tracing one module, not the model: the owner of a call, children left whole.

``symbolic_trace`` of a whole model inlines every custom child, replacing
their classes by one flat graph, and it fails on most current transformers
models anyway. Surgery traces only the module whose forward holds a dropout
call, with every child kept as an opaque call, so the rewritten module slots
back into its parent with the same children and ``state_dict`` keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn

from ._calls import call_name

__all__ = ["TraceResult", "trace_owner"]


class _OwnerTracer(fx.Tracer):
    """Traces the root's own code only: every submodule is a leaf."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return True


@dataclass(frozen=True)
class TraceResult:
    """A traced owner, or why it could not be traced faithfully."""

    module: fx.GraphModule | None
    reason: str


def _trace(owner: nn.Module, training: bool) -> fx.Graph:
    was_training = owner.training
    owner.training = training
    try:
        return _OwnerTracer().trace(owner)
    finally:
        owner.training = was_training


def trace_owner(owner: nn.Module) -> TraceResult:
    """Trace ``owner`` in train mode, checking the trace holds in eval mode too.

    Tracing bakes ``self.training`` into the graph. That is harmless for the
    dropout calls, which surgery replaces by gates following ``training``, but
    not for any other branch on ``self.training``: so the owner is traced in
    both modes and refused if the graphs differ anywhere else.
    """
    try:
        train_graph = _trace(owner, True)
        eval_graph = _trace(owner, False)
    except Exception as error:  # any tracing failure means: use the fallback
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return TraceResult(
            None, f"fx could not trace it ({type(error).__name__}: {first_line})"
        )
    if _shape(train_graph) != _shape(eval_graph):
        return TraceResult(None, "its forward branches on self.training beyond dropout")

    module = fx.GraphModule(owner, train_graph, class_name=type(owner).__name__)
    _carry_over(owner, module)
    return TraceResult(module, "")


def _shape(graph: fx.Graph) -> list[tuple[str, str, str]]:
    """The graph without the arguments that dropout calls take from training."""
    shape = []
    for node in graph.nodes:
        arguments = "" if call_name(node.target) else f"{node.args}{node.kwargs}"
        shape.append((node.op, str(node.target), arguments))
    return shape


def _carry_over(owner: nn.Module, module: fx.GraphModule) -> None:
    """Give the GraphModule everything the owner had that the graph did not use.

    ``GraphModule`` keeps only the submodules and tensors its graph touches;
    the rest must stay so ``state_dict`` keys, plain attributes and hooks
    are those of the owner.
    """
    module.training = owner.training
    for name, child in owner._modules.items():
        module._modules.setdefault(name, child)
    for name, parameter in owner._parameters.items():
        module._parameters[name] = parameter
    for name, buffer in owner._buffers.items():
        module._buffers[name] = buffer
    module._non_persistent_buffers_set = set(owner._non_persistent_buffers_set)
    for name, value in vars(owner).items():
        # Plain attributes, and surgery's own records of the owner's other sites.
        public = not name.startswith("_") and name not in module.__dict__
        if public or name.startswith("_surgery_"):
            module.__dict__[name] = value
    for name in ("_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks"):
        if name in owner.__dict__:
            module.__dict__[name] = owner.__dict__[name]
