"""Turn the MODEL argument into a model, without running code it was not asked to.

MODEL is one of:

- a ``torch.export`` program (``.pt2``), read with ``torch.export.load``;
- a TorchScript archive, read with ``torch.jit.load``;
- a transformers model folder (``config.json`` and weights), built with
  ``from_pretrained(local_files_only=True)``: no network, no remote code;
- ``package.module:factory``: the factory is imported and called, then the
  weights of ``--weights`` (a ``state_dict`` read with ``weights_only=True``,
  or safetensors) are loaded into it;
- a whole pickled module, only with ``--trust-pickle``: unpickling runs any
  code the file holds.

The kind is read from the file's contents, not from its name.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .errors import LoadProblem, UsageProblem

__all__ = ["LoadedModel", "ModelKind", "load_model"]

logger = logging.getLogger("surgery")

ModelKind = Literal["pt2", "torchscript", "transformers", "factory", "pickle"]

_FACTORY = re.compile(r"(?P<module>[A-Za-z_][\w.]*):(?P<name>[A-Za-z_][\w.]*)")
_PICKLE_HINT = "loading it runs whatever code the file holds"


@dataclass
class LoadedModel:
    """A loaded MODEL and what the rest of the command needs to know about it."""

    model: nn.Module | torch.export.ExportedProgram
    kind: ModelKind
    source: str
    files: tuple[Path, ...]
    """Files and folders the model was read from: an output must not replace them."""

    @property
    def module(self) -> nn.Module:
        """The model as a module (an exported program's ``.module()``)."""
        if isinstance(self.model, torch.export.ExportedProgram):
            return self.model.module()
        return self.model


def load_model(
    source: str, *, weights: Path | None = None, trust_pickle: bool = False
) -> LoadedModel:
    """Load MODEL as the module docstring describes, or raise :class:`LoadProblem`."""
    path = Path(source).expanduser()
    if path.exists():
        if weights is not None:
            raise UsageProblem(
                f"--weights {weights} goes with a package.module:factory MODEL; "
                f"{source} is a file or folder that holds its own weights"
            )
        if path.is_dir():
            return _load_folder(path, source)
        return _load_file(path, source, trust_pickle=trust_pickle)

    match = _FACTORY.fullmatch(source)
    if match is not None:
        return _load_factory(match["module"], match["name"], source, weights)
    raise LoadProblem(
        f"MODEL {source}: no such file or folder, and not a package.module:factory"
    )


def _load_file(path: Path, source: str, *, trust_pickle: bool) -> LoadedModel:
    kind = _sniff(path)
    logger.debug("MODEL %s looks like %s", path, kind)
    if kind == "safetensors":
        raise LoadProblem(
            f"MODEL {source} is a safetensors weights file; pass the model's "
            f"factory as MODEL and this file as --weights {source}"
        )
    if kind == "pt2":
        program = _guarded(path, "a torch.export program", torch.export.load, path)
        return LoadedModel(program, "pt2", source, (path,))
    if kind == "torchscript":
        script = _guarded(
            path, "a TorchScript archive", torch.jit.load, path, map_location="cpu"
        )
        return LoadedModel(script, "torchscript", source, (path,))
    if kind == "pickle":
        return _load_pickled_module(path, source, trust_pickle=trust_pickle)
    raise LoadProblem(
        f"MODEL {source} is neither a torch.export program, a TorchScript "
        "archive, a torch.save file nor a transformers folder (unreadable or "
        "corrupt)"
    )


def _sniff(path: Path) -> str:
    """Guess what a file holds from its first bytes and, for zips, its entries."""
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise LoadProblem(f"MODEL {path}: {error.strerror or error}") from error

    if zipfile.is_zipfile(path):
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError):
            return "unknown"
        tails = {name.split("/", 1)[-1] for name in names}
        if "archive_format" in tails:
            return "pt2"
        if any(tail.startswith("code/") for tail in tails) or "constants.pkl" in tails:
            return "torchscript"
        if "data.pkl" in tails:
            return "pickle"
        return "unknown"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    # torch.save's legacy format is a plain pickle stream (protocol 2+).
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _load_pickled_module(path: Path, source: str, *, trust_pickle: bool) -> LoadedModel:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refused an object that is not a tensor or container.
        if not trust_pickle:
            raise LoadProblem(
                f"MODEL {source} is a pickled Python object and {_PICKLE_HINT}; "
                "if you trust its source, pass --trust-pickle"
            ) from None
        content = _guarded(
            path, "a pickled module", torch.load, path, map_location="cpu",
            weights_only=False,
        )  # fmt: skip
    except Exception as error:
        raise LoadProblem(f"MODEL {source}: cannot read it ({_brief(error)})") from None

    if isinstance(content, nn.Module):
        return LoadedModel(content, "pickle", source, (path,))
    if isinstance(content, Mapping):
        raise LoadProblem(
            f"MODEL {source} holds weights only (a state_dict); pass the model's "
            f"factory as MODEL and this file as --weights {source}"
        )
    raise LoadProblem(
        f"MODEL {source} holds a {type(content).__name__}, not an nn.Module"
    )


def _load_folder(path: Path, source: str) -> LoadedModel:
    if not (path / "config.json").is_file():
        raise LoadProblem(
            f"MODEL {source} is a folder without config.json; a folder must be a "
            "transformers model saved with save_pretrained"
        )
    try:
        import transformers
    except ImportError:
        raise LoadProblem(
            f"MODEL {source} is a transformers folder; install transformers to read it"
        ) from None

    try:
        with _quiet_progress(transformers):
            config = transformers.AutoConfig.from_pretrained(
                path, local_files_only=True
            )
            model_class = _architecture(transformers, config)
            model = model_class.from_pretrained(path, local_files_only=True)
    except Exception as error:
        raise LoadProblem(f"MODEL {source}: {_brief(error)}") from None

    # Caches are outputs export and verification cannot compare; a pipeline
    # step rewriting dropout never wants them.
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return LoadedModel(model, "transformers", source, (path,))


@contextmanager
def _quiet_progress(transformers: Any) -> Iterator[None]:
    """No loading bars from transformers: the command draws its own."""
    bars = transformers.utils.logging
    enabled = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            bars.enable_progress_bar()


def _architecture(transformers: Any, config: Any) -> Any:
    """The class named by ``config.architectures``, else ``AutoModel``'s choice."""
    for name in getattr(config, "architectures", None) or ():
        model_class = getattr(transformers, name, None)
        if model_class is not None:
            return model_class
    return transformers.AutoModel


def _load_factory(
    module_name: str, attribute: str, source: str, weights: Path | None
) -> LoadedModel:
    # Like ``python -m``, find packages in the working folder.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise LoadProblem(
            f"MODEL {source}: cannot import {module_name} ({_brief(error)})"
        ) from None
    except Exception as error:
        raise LoadProblem(
            f"MODEL {source}: importing {module_name} raised {_brief(error)}"
        ) from None

    for part in attribute.split("."):
        if not hasattr(target, part):
            raise LoadProblem(f"MODEL {source}: {module_name} has no {attribute}")
        target = getattr(target, part)
    if not callable(target):
        raise LoadProblem(f"MODEL {source}: {attribute} is not callable")
    try:
        model = target()
    except Exception as error:
        raise LoadProblem(
            f"MODEL {source}: calling {attribute}() raised {_brief(error)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise LoadProblem(
            f"MODEL {source}: {attribute}() returned a {type(model).__name__}, "
            "not an nn.Module"
        )

    files: tuple[Path, ...] = ()
    if weights is not None:
        _load_weights(model, weights)
        files = (weights,)
    return LoadedModel(model, "factory", source, files)


def _load_weights(model: nn.Module, weights: Path) -> None:
    if not weights.is_file():
        raise LoadProblem(f"--weights {weights}: no such file")
    state = _read_state_dict(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise LoadProblem(
            f"--weights {weights} does not fit the model: {_brief(error)}"
        ) from None


def _read_state_dict(weights: Path) -> Mapping[str, Any]:
    if _sniff(weights) == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise LoadProblem(
                f"--weights {weights} is safetensors; install safetensors to read it"
            ) from None
        state: Mapping[str, Any] = _guarded(
            weights, "a safetensors file", load_file, str(weights)
        )
        return state

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LoadProblem(
            f"--weights {weights} holds more than tensors and {_PICKLE_HINT}; "
            "save model.state_dict() instead"
        ) from None
    except Exception as error:
        raise LoadProblem(
            f"--weights {weights}: cannot read it ({_brief(error)})"
        ) from None
    if not isinstance(state, Mapping):
        raise LoadProblem(
            f"--weights {weights} holds a {type(state).__name__}, not a state_dict"
        )
    return state


def _guarded(path: Path, what: str, reader: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``reader``; turn any failure into a one-line :class:`LoadProblem`."""
    try:
        return reader(*args, **kwargs)
    except Exception as error:
        raise LoadProblem(
            f"{path}: cannot read it as {what} ({_brief(error)})"
        ) from error


def _brief(error: BaseException) -> str:
    """The first line of an error message, prefixed by its type."""
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
