"""Example inputs for verify, export and bench, from flags, a file or conventions.

In order of precedence: ``--inputs FILE`` (saved tensors), ``--input-shape``
(one tensor per flag), the shapes a recipe lists, and last the model's own
conventions: the inputs a ``.pt2`` program was exported with, or for a
transformers model, ``input_ids`` (or ``pixel_values``) of a given length.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._inputs import InputSpec, make_inputs, token_bound
from .errors import UsageProblem
from .load import LoadedModel

__all__ = ["Examples", "choose_examples"]

_BATCH = 2


@dataclass(frozen=True)
class Examples:
    """Positional and keyword inputs for one forward call, and where they came from."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    origin: str = ""


def choose_examples(
    loaded: LoadedModel,
    *,
    shapes: Sequence[str] = (),
    inputs_file: Path | None = None,
    seq_len: int = 8,
    recipe_shapes: Sequence[str] = (),
) -> Examples | None:
    """The example inputs the flags ask for, or the model's own; ``None`` if none."""
    if inputs_file is not None and shapes:
        raise UsageProblem("pass either --inputs or --input-shape, not both")
    if inputs_file is not None:
        return _read_inputs(inputs_file)
    if shapes:
        return _from_shapes(loaded, shapes, "--input-shape")
    if recipe_shapes:
        return _from_shapes(loaded, recipe_shapes, "the recipe's inputs")
    return _conventional(loaded, seq_len)


def _from_shapes(loaded: LoadedModel, texts: Sequence[str], origin: str) -> Examples:
    try:
        specs = [InputSpec.parse(text) for text in texts]
    except ValueError as error:
        raise UsageProblem(f"{origin}: {error}") from None
    bound = _vocabulary(loaded) or token_bound(loaded.module)
    tensors = make_inputs(specs, int_bound=bound)
    return Examples(tensors, {}, f"{origin} {' '.join(map(str, specs))}")


def _read_inputs(path: Path) -> Examples:
    if not path.is_file():
        raise UsageProblem(f"--inputs {path}: no such file")
    content = _load_tensors(path)
    origin = f"--inputs {path}"
    if isinstance(content, torch.Tensor):
        return Examples((content,), {}, origin)
    if isinstance(content, (tuple, list)):
        return Examples(tuple(content), {}, origin)
    if isinstance(content, Mapping) and all(isinstance(k, str) for k in content):
        return Examples((), dict(content), origin)
    raise UsageProblem(
        f"--inputs {path} holds a {type(content).__name__}; expected a tensor, "
        "a list of tensors (positional inputs) or a dict of them (keyword inputs)"
    )


def _load_tensors(path: Path) -> Any:
    with path.open("rb") as handle:
        head = handle.read(9)
    if head[8:9] == b"{":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UsageProblem(
                f"--inputs {path} is safetensors; install safetensors to read it"
            ) from None
        try:
            return load_file(str(path))
        except Exception as error:
            raise UsageProblem(f"--inputs {path}: cannot read it ({error})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UsageProblem(
            f"--inputs {path} holds more than tensors; save a tensor, a list or a "
            "dict of tensors with torch.save"
        ) from None
    except Exception as error:
        first = str(error).strip().splitlines()[:1]
        raise UsageProblem(
            f"--inputs {path}: cannot read it ({type(error).__name__}"
            f"{': ' + first[0] if first else ''})"
        ) from None


def _conventional(loaded: LoadedModel, seq_len: int) -> Examples | None:
    if isinstance(loaded.model, torch.export.ExportedProgram):
        saved = getattr(loaded.model, "example_inputs", None)
        if saved is not None:
            args, kwargs = saved
            return Examples(tuple(args), dict(kwargs), "the program's own inputs")
        return None
    if loaded.kind == "transformers":
        return _transformers_inputs(loaded, seq_len)
    return None


def _transformers_inputs(loaded: LoadedModel, seq_len: int) -> Examples | None:
    model = loaded.module
    config = getattr(model, "config", None)
    name = getattr(model, "main_input_name", "input_ids")
    generator = torch.Generator().manual_seed(0)
    if name == "input_ids":
        vocabulary = _vocabulary(loaded) or token_bound(model)
        ids = torch.randint(0, vocabulary, (_BATCH, seq_len), generator=generator)
        return Examples((), {"input_ids": ids}, f"input_ids of length {seq_len}")
    if name == "pixel_values" and config is not None:
        channels = getattr(config, "num_channels", 3)
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else int(size[0])
        pixels = torch.randn(_BATCH, channels, size, size, generator=generator)
        return Examples((), {"pixel_values": pixels}, f"pixel_values {size}x{size}")
    return None


def _vocabulary(loaded: LoadedModel) -> int | None:
    if loaded.kind != "transformers":
        return None
    size = getattr(getattr(loaded.module, "config", None), "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else None
