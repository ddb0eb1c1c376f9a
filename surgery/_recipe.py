"""Recipes: the steps of a dropout rewrite, written down in a TOML file.

A recipe makes a pipeline step reproducible and reviewable: which sites to
strip, which to gate with what mode and probability, whether to verify, and
what to export to. The same file runs from the command line
(``surgery apply RECIPE MODEL -o OUT``) and from Python
(:func:`surgery.apply_recipe`)::

    description = "Serve the classifier without dropout; keep MC dropout in the head"
    inputs = ["2x8:int64"]          # optional example inputs, SHAPE[:DTYPE]

    [[steps]]
    action = "strip"
    select = "blocks.*"             # a glob or "re:<regex>", or a list of them
    exclude = ["re:.*attn_dropout"]

    [[steps]]
    action = "gate"
    select = "classifier_dropout"
    mode = "on"                     # train | on | off
    # p = 0.2                       # a new probability; no verify step after it

    [[steps]]
    action = "verify"

    [[steps]]
    action = "export"               # last, at most once
    format = "pt2"                  # pt2 | torchscript | onnx
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from ._errors import RecipeError
from ._export import FORMATS, ExportFormat
from ._gate import check_mode, check_p
from ._inputs import InputSpec
from ._site import Mode

__all__ = ["ACTIONS", "FORMATS", "Action", "ExportFormat", "Recipe", "RecipeStep"]

Action = Literal["strip", "gate", "verify", "export"]
ACTIONS: tuple[Action, ...] = get_args(Action)

_KEYS: dict[str, tuple[str, ...]] = {
    "strip": ("select", "exclude"),
    "gate": ("select", "exclude", "mode", "p"),
    "verify": (),
    "export": ("format",),
}
_TOP_KEYS = ("description", "inputs", "steps", "version")
_VERSION = 1


@dataclass(frozen=True)
class RecipeStep:
    """One step of a recipe.

    Args:
        action: ``"strip"``, ``"gate"``, ``"verify"`` or ``"export"``.
        select: For strip and gate: the sites to act on (globs or
            ``"re:<regex>"``); ``None`` means every site.
        exclude: For strip and gate: sites to leave alone.
        mode: For gate: ``"train"``, ``"on"`` or ``"off"``; ``None`` follows
            training.
        p: For gate: the probability to set; ``None`` keeps each site's.
        format: For export: ``"pt2"``, ``"torchscript"`` or ``"onnx"``.

    Example:
        >>> RecipeStep("gate", select=("blocks.*",), mode="off").action
        'gate'
    """

    action: Action
    select: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    mode: Mode | None = None
    p: float | None = None
    format: ExportFormat | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise RecipeError(
                f"action must be one of {', '.join(ACTIONS)}; got {self.action!r}"
            )
        allowed = _KEYS[self.action]
        for name in ("select", "exclude", "mode", "p", "format"):
            if getattr(self, name) is not None and name not in allowed:
                raise RecipeError(
                    f"{self.action} takes no {name!r}; "
                    f"it takes {_listing(allowed) or 'no options'}"
                )
        for name in ("select", "exclude"):
            _check_selectors(getattr(self, name), name)
        try:
            if self.mode is not None:
                check_mode(self.mode)
            if self.p is not None:
                check_p(self.p)
        except ValueError as error:
            raise RecipeError(str(error)) from None
        if self.action == "export" and self.format not in FORMATS:
            raise RecipeError(
                f"export needs format = one of {', '.join(FORMATS)}; "
                f"got {self.format!r}"
            )


@dataclass(frozen=True)
class Recipe:
    """A checked list of steps, and optionally the example inputs they use.

    Build one from TOML with :meth:`from_toml` or :meth:`from_file`, or from
    :class:`RecipeStep` objects.

    Example:
        >>> recipe = Recipe.from_toml('''
        ... [[steps]]
        ... action = "strip"
        ... ''')
        >>> [step.action for step in recipe.steps]
        ['strip']
    """

    steps: tuple[RecipeStep, ...]
    inputs: tuple[str, ...] = ()
    description: str = ""
    source: str = "<recipe>"

    def __post_init__(self) -> None:
        if not self.steps:
            raise RecipeError(f"{self.source}: a recipe needs at least one step")
        exports = [i for i, step in enumerate(self.steps) if step.action == "export"]
        if exports and exports != [len(self.steps) - 1]:
            raise RecipeError(
                f"{self.source}: export must be the last step, and only one"
            )
        _check_verify_order(self.steps, self.source)
        for text in self.inputs:
            try:
                InputSpec.parse(text)
            except ValueError as error:
                raise RecipeError(f"{self.source}: inputs: {error}") from None

    @property
    def export_format(self) -> ExportFormat | None:
        """The format of the final export step, or ``None`` if there is none."""
        last = self.steps[-1]
        return last.format if last.action == "export" else None

    @property
    def verifies(self) -> bool:
        """Whether any step is a verify step."""
        return any(step.action == "verify" for step in self.steps)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read and check a recipe file.

        Raises:
            RecipeError: The file cannot be read, is not TOML, or breaks a rule;
                the message names the file, the step and the key.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or error
            raise RecipeError(f"recipe {os.fspath(path)}: {reason}") from None
        return cls.from_toml(text, source=os.fspath(path))

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<recipe>") -> Recipe:
        """Parse and check a recipe from TOML text."""
        tomllib = _toml_reader()
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise RecipeError(f"{source}: not valid TOML ({error})") from None
        return cls._from_table(table, source)

    @classmethod
    def _from_table(cls, table: Mapping[str, Any], source: str) -> Recipe:
        unknown = sorted(set(table) - set(_TOP_KEYS))
        if unknown:
            raise RecipeError(
                f"{source}: unknown key {unknown[0]!r}; a recipe has "
                f"{_listing(_TOP_KEYS)}"
            )
        version = table.get("version", _VERSION)
        if version != _VERSION:
            raise RecipeError(
                f"{source}: version {version!r} is not supported (only {_VERSION})"
            )
        inputs = table.get("inputs", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not _is_str_list(inputs):
            raise RecipeError(f"{source}: inputs must be a list of 'SHAPE[:DTYPE]'")
        description = table.get("description", "")
        if not isinstance(description, str):
            raise RecipeError(f"{source}: description must be a string")

        raw_steps = table.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise RecipeError(
                f"{source}: no steps; add at least one [[steps]] table with an action"
            )
        steps = tuple(
            _step_from_table(raw, f"{source}, step {number}")
            for number, raw in enumerate(raw_steps, start=1)
        )
        return cls(steps, tuple(inputs), description, source)


def _toml_reader() -> Any:
    """tomllib, or on Python 3.10 its backport tomli, imported when first needed."""
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    else:  # pragma: no cover - Python 3.10 only
        try:
            import tomli
        except ImportError:
            raise RecipeError(
                "reading a recipe on Python 3.10 needs tomli: "
                "pip install 'torch-surgery[cli]'"
            ) from None
        return tomli


def _step_from_table(raw: object, where: str) -> RecipeStep:
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{where}: a step must be a table with an action")
    action = raw.get("action")
    if action not in ACTIONS:
        raise RecipeError(
            f"{where}: action must be one of {', '.join(ACTIONS)}; got {action!r}"
        )
    allowed = _KEYS[action]
    for key in raw:
        if key != "action" and key not in allowed:
            raise RecipeError(
                f"{where}: unknown key {key!r}; {action} takes "
                f"{_listing(allowed) or 'no options'}"
            )
    values: dict[str, Any] = {}
    for key in ("select", "exclude"):
        if key in raw:
            value = raw[key]
            value = [value] if isinstance(value, str) else value
            if not _is_str_list(value) or not value:
                raise RecipeError(
                    f"{where}: {key} must be a pattern or a non-empty list of them"
                )
            values[key] = tuple(value)
    for key in ("mode", "p", "format"):
        if key in raw:
            values[key] = raw[key]
    if (
        "p" in values
        and isinstance(values["p"], int)
        and not isinstance(values["p"], bool)
    ):
        values["p"] = float(values["p"])
    try:
        return RecipeStep(action, **values)
    except RecipeError as error:
        raise RecipeError(f"{where}: {error}") from None


def _check_verify_order(steps: Sequence[RecipeStep], source: str) -> None:
    """Refuse a verify step that cannot pass: a gate step before it set ``p``."""
    new_p = None
    for number, step in enumerate(steps, start=1):
        if step.action == "gate" and step.p is not None and new_p is None:
            new_p = number
        if step.action == "verify" and new_p is not None:
            raise RecipeError(
                f"{source}, step {number} (verify): step {new_p} sets p, and verify "
                "checks that every site keeps its probability; verify before "
                "changing p, or leave p out"
            )


def _check_selectors(value: object, name: str) -> None:
    if value is None:
        return
    if not isinstance(value, tuple) or not value or not _is_str_list(list(value)):
        raise RecipeError(f"{name} must be a non-empty tuple of patterns")


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _listing(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)
