"""The dropout functions, and how to read one call of them from source or at run time.

One table serves the three places functional dropout is met: the forward source
(``ast``), a traced graph (``torch.fx`` nodes) and a live call (a
``TorchFunctionMode``). Each call is named by its function's short name
(``dropout``, ``dropout2d``, ``alpha_dropout``, ``feature_dropout``,
``scaled_dot_product_attention``, ``stochastic_depth``...): in-place forms and
``torch.`` / ``F.`` spellings share a name, so the k-th call of a name means
the same call in all three places for straight-line forward code.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["SourceCall", "call_name", "calls_in_forward", "read_probability"]

SDPA = "scaled_dot_product_attention"
STOCHASTIC_DEPTH = "stochastic_depth"

# name -> the GatedDropout kernel that reproduces the call draw for draw.
KERNEL_OF = {
    "dropout": "dropout",
    "dropout1d": "dropout1d",
    "dropout2d": "dropout2d",
    "dropout3d": "dropout3d",
    "feature_dropout": "feature_dropout",
    "alpha_dropout": "alpha_dropout",
    "feature_alpha_dropout": "feature_alpha_dropout",
    STOCHASTIC_DEPTH: "stochastic_depth",
    SDPA: "",
}
NAMES = frozenset(KERNEL_OF)

_FUNCTIONS: dict[Callable[..., Any], str] = {
    F.dropout: "dropout",
    F.dropout1d: "dropout1d",
    F.dropout2d: "dropout2d",
    F.dropout3d: "dropout3d",
    F.alpha_dropout: "alpha_dropout",
    F.feature_alpha_dropout: "feature_alpha_dropout",
    F.scaled_dot_product_attention: SDPA,
}
for _name in (
    "dropout",
    "feature_dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
):
    _FUNCTIONS[getattr(torch, _name)] = _name
    _FUNCTIONS[getattr(torch, _name + "_")] = _name


def call_name(func: object) -> str | None:
    """The short name of a dropout function, or ``None`` for anything else."""
    name: str | None = _FUNCTIONS.get(func)  # type: ignore[call-overload]
    if name is not None:
        return name
    qualified = f"{getattr(func, '__module__', '')}.{getattr(func, '__name__', '')}"
    if qualified == "torchvision.ops.stochastic_depth.stochastic_depth":
        return STOCHASTIC_DEPTH
    return None


def is_inplace(func: object, kwargs: dict[str, Any]) -> bool:
    """True for ``torch.dropout_`` and friends, or ``inplace=True``."""
    return str(getattr(func, "__name__", "")).endswith("_") or bool(
        kwargs.get("inplace", False)
    )


# Where each argument sits: (position, keyword).
_P = {SDPA: (4, "dropout_p"), STOCHASTIC_DEPTH: (1, "p")}
_TRAINING = {STOCHASTIC_DEPTH: (3, "training")}


def read_probability(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The probability a call passes, wherever it passes it."""
    position, keyword = _P.get(name, (1, "p"))
    if keyword in kwargs:
        return kwargs[keyword]
    if position < len(args):
        return args[position]
    return 0.0 if name == SDPA else 0.5


def read_training(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``training`` flag a call passes (SDPA has none: it always drops)."""
    if name == SDPA:
        return True
    position, keyword = _TRAINING.get(name, (2, "training"))
    if keyword in kwargs:
        return kwargs[keyword]
    if position < len(args):
        return args[position]
    # F.dropout and friends default to training=True; torch.dropout has no default.
    return True


def with_arguments(
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    p: float | None = None,
    training: bool | None = None,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The same call's arguments with ``p`` and/or ``training`` replaced."""
    new_args, new_kwargs = list(args), dict(kwargs)
    for value, (position, keyword) in (
        (p, _P.get(name, (1, "p"))),
        (training, _TRAINING.get(name, (2, "training"))),
    ):
        if value is None:
            continue
        if position < len(new_args):
            new_args[position] = value
        else:
            new_kwargs[keyword] = value
    return tuple(new_args), new_kwargs


@dataclass(frozen=True)
class SourceCall:
    """A dropout call written in a forward method.

    Attributes:
        name: The function's short name.
        index: Its position among calls of the same name, in source order.
        p: The probability if it is a literal or a ``self.a.b`` chain, as
            source text; ``None`` when the call passes none (the default).
        covered_by: Names of ``self`` attributes the probability comes from
            (``self.dropout``, ``self.attn_dropout.p``): such a call is
            controlled through those sites, not as a call of its own.
    """

    name: str
    index: int
    p: str | None
    covered_by: tuple[str, ...]


def calls_in_forward(cls: type) -> tuple[SourceCall, ...]:
    """The dropout calls written in ``cls.forward``, in source order."""
    return _calls_in(cls.forward) if hasattr(cls, "forward") else ()


@functools.lru_cache(maxsize=1024)
def _calls_in(function: Callable[..., Any]) -> tuple[SourceCall, ...]:
    try:
        source = textwrap.dedent(inspect.getsource(function))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return ()
    found: list[SourceCall] = []
    counts: dict[str, int] = {}
    assigned = _assignments(tree)
    for node in sorted(
        (n for n in ast.walk(tree) if isinstance(n, ast.Call)),
        key=lambda n: (n.lineno, n.col_offset),
    ):
        name = _function_name(node.func)
        if name is None:
            continue
        p_node = _argument(node, *_P.get(name, (1, "p")))
        if name == SDPA and p_node is None:
            continue
        index = counts.get(name, 0)
        counts[name] = index + 1
        # `p = self.drop.p if self.training else 0.0` then `dropout_p=p`.
        if isinstance(p_node, ast.Name) and len(assigned.get(p_node.id, [])) == 1:
            p_node = assigned[p_node.id][0]
        text = ast.unparse(p_node) if p_node is not None else None
        covered = _self_attributes(p_node, assigned, set())
        found.append(SourceCall(name, index, text, covered))
    return tuple(found)


def _assignments(tree: ast.AST) -> dict[str, list[ast.expr]]:
    """The expressions assigned to each local name in a function."""
    assigned: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
        elif (
            isinstance(node, ast.AnnAssign)
            and node.value is not None
            and isinstance(node.target, ast.Name)
        ):
            assigned.setdefault(node.target.id, []).append(node.value)
    return assigned


def _function_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        name = func.id
    elif isinstance(func, ast.Attribute):
        root = func.value
        while isinstance(root, ast.Attribute):
            root = root.value
        # self.dropout(x) calls a module, not a function.
        if isinstance(root, ast.Name) and root.id == "self":
            return None
        name = func.attr
    else:
        return None
    name = name.rstrip("_")
    return name if name in NAMES else None


def _argument(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    if position < len(call.args):
        return call.args[position]
    return None


def _self_attributes(
    node: ast.expr | None, assigned: dict[str, list[ast.expr]], seen: set[str]
) -> tuple[str, ...]:
    """``self.x`` and ``self.x.p`` references in an expression, through locals."""
    if node is None:
        return ()
    names: list[str] = []
    for sub in ast.walk(node):
        if (
            isinstance(sub, ast.Attribute)
            and isinstance(sub.value, ast.Name)
            and sub.value.id == "self"
            and sub.attr != "training"
        ):
            names.append(sub.attr)
        elif isinstance(sub, ast.Name) and sub.id not in seen and sub.id != "self":
            seen.add(sub.id)
            for value in assigned.get(sub.id, []):
                names.extend(_self_attributes(value, assigned, seen))
    return tuple(names)


def evaluate_probability(owner: object, text: str | None, name: str) -> float:
    """The value of a probability written as source text; NaN if not knowable.

    Handles literals, ``self.a.b`` chains, and ``x if <cond> else y`` where
    one branch is zero (the usual ``p if self.training else 0.0``).
    """
    if text is None:
        return 0.0 if name == SDPA else 0.5
    try:
        return _evaluate(owner, ast.parse(text, mode="eval").body)
    except SyntaxError:
        return float("nan")


def _evaluate(owner: object, node: ast.expr) -> float:
    if isinstance(node, ast.IfExp):
        values = {_evaluate(owner, node.body), _evaluate(owner, node.orelse)} - {0.0}
        return values.pop() if len(values) == 1 else float("nan")
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    chain: list[str] = []
    while isinstance(node, ast.Attribute):
        chain.insert(0, node.attr)
        node = node.value
    if not (isinstance(node, ast.Name) and node.id == "self" and chain):
        return float("nan")
    value: Any = owner
    try:
        for part in chain:
            value = getattr(value, part)
        return float(value)
    except (AttributeError, TypeError, ValueError):
        return float("nan")
