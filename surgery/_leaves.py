"""Model inputs and outputs as flat lists of named leaves.

Verification and export compare what two models return leaf by leaf, and a
person reading the result needs to know which leaf failed: ``output.logits``,
``output[1][0]``, ``output['loss']``. Outputs may nest tuples, lists, dicts,
dataclasses and transformers ``ModelOutput`` objects (an ordered dict that is
also a dataclass; only its non-``None`` fields count, as in its own
``to_tuple``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "ExampleInputs",
    "Leaf",
    "discovery_inputs",
    "flatten_output",
    "split_inputs",
    "tensor_leaves",
]

ExampleInputs = Any
"""A tensor, a tuple or list of positional arguments, or a dict of keywords."""

Leaf = tuple[str, Any]
"""A leaf's position (``output.logits``) and its value."""


def split_inputs(
    example_inputs: ExampleInputs, example_kwargs: Mapping[str, Any] | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments from ``example_inputs`` and ``example_kwargs``.

    A tensor is the only positional argument; a tuple or list holds the
    positional arguments; a dict holds keyword arguments (to pass one dict
    positionally, wrap it in a tuple). ``example_kwargs`` adds keywords.

    Example:
        >>> split_inputs(torch.zeros(1), {"mask": None})
        ((tensor([0.]),), {'mask': None})
        >>> split_inputs({"input_ids": 1})
        ((), {'input_ids': 1})
    """
    keywords = dict(example_kwargs or {})
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), keywords
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), keywords
    if isinstance(example_inputs, Mapping):
        if keywords:
            raise TypeError(
                "example_inputs is a dict of keywords already; pass positional "
                "arguments as a tuple to combine them with example_kwargs"
            )
        if not all(isinstance(key, str) for key in example_inputs):
            raise TypeError("example_inputs as a dict must have str keys (keywords)")
        return (), dict(example_inputs)
    raise TypeError(
        "example_inputs must be a tensor, a tuple or list of positional "
        "arguments, or a dict of keyword arguments; "
        f"got {type(example_inputs).__name__}"
    )


def discovery_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The inputs in the one-value form ``find(example_inputs=...)`` takes.

    ``None`` when there are both positional and keyword arguments, which that
    form cannot hold: sites seen only at run time are then not looked for.
    """
    if kwargs and args:
        return None
    return kwargs if kwargs else args


def flatten_output(value: Any, position: str = "output") -> list[Leaf]:
    """Every leaf of ``value`` with its position, depth first, in order.

    Example:
        >>> [position for position, _ in flatten_output((torch.ones(1), {"a": [2]}))]
        ['output[0]', "output[1]['a'][0]"]
    """
    if isinstance(value, torch.Tensor):
        return [(position, value)]
    if _is_model_output(value):
        # Fields left as None are not part of a ModelOutput's contents.
        return [
            leaf
            for key, item in value.items()
            for leaf in flatten_output(item, f"{position}.{key}")
        ]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [
            leaf
            for field in dataclasses.fields(value)
            for leaf in flatten_output(
                getattr(value, field.name), f"{position}.{field.name}"
            )
        ]
    if isinstance(value, Mapping):
        return [
            leaf
            for key, item in value.items()
            for leaf in flatten_output(item, f"{position}[{key!r}]")
        ]
    if isinstance(value, (tuple, list)):
        return [
            leaf
            for number, item in enumerate(value)
            for leaf in flatten_output(item, f"{position}[{number}]")
        ]
    return [(position, value)]


def tensor_leaves(value: Any) -> list[tuple[str, torch.Tensor]]:
    """The tensor leaves of ``value``, in the order an exporter flattens them."""
    return [
        (position, leaf)
        for position, leaf in flatten_output(value)
        if isinstance(leaf, torch.Tensor)
    ]


def _is_model_output(value: object) -> bool:
    # Recognised by its base class name so transformers need not be imported.
    return isinstance(value, Mapping) and any(
        klass.__name__ == "ModelOutput" for klass in type(value).__mro__
    )
