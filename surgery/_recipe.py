"""Recipes: the steps of a dropout rewrite, written down in a TOML file.

A recipe makes a pipeline step reproducible and reviewable: which sites to
strip, which to gate with what mode and probability, whether to verify, and
what to export to. The same file runs from the command line
(``surgery apply RECIPE MODEL -o OUT``) and from Python
(:func:`apply_recipe`)::

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

import copy
import importlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import torch
from torch import nn

from . import _api
from ._errors import RecipeError, SurgeryError, VerificationError
from ._gate import check_mode, check_p
from ._inputs import InputSpec, make_inputs, token_bound
from ._kinds.base import Undo
from ._site import Mode, Site
from ._tree import ModuleIndex

__all__ = ["Recipe", "RecipeResult", "RecipeStep", "StepOutcome", "apply_recipe"]

Action = Literal["strip", "gate", "verify", "export"]
ExportFormat = Literal["pt2", "torchscript", "onnx"]
ACTIONS: tuple[Action, ...] = get_args(Action)
FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)

_KEYS: dict[str, tuple[str, ...]] = {
    "strip": ("select", "exclude"),
    "gate": ("select", "exclude", "mode", "p"),
    "verify": (),
    "export": ("format",),
}
_TOP_KEYS = ("description", "inputs", "steps", "version")
_VERSION = 1

# A module, rewritten in place; or an exported program, rewritten in its graph.
M = TypeVar("M", bound=nn.Module | torch.export.ExportedProgram)


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


@dataclass(frozen=True)
class StepOutcome:
    """What one step did: the sites it changed, its report, the file it wrote."""

    step: RecipeStep
    sites: tuple[str, ...] = ()
    report: Any = None
    output: Path | None = None
    exported: Any = None

    @property
    def passed(self) -> bool:
        """``False`` only for a verify step whose report failed."""
        return self.report is None or bool(self.report.passed)


@dataclass(frozen=True)
class RecipeResult:
    """The outcome of :func:`apply_recipe`.

    Attributes:
        model: The rewritten model (the very object passed in, for a module).
        outcomes: One :class:`StepOutcome` per step that ran, in order.
    """

    model: Any
    outcomes: tuple[StepOutcome, ...] = field(default=())

    @property
    def passed(self) -> bool:
        """Whether every verify step passed."""
        return all(outcome.passed for outcome in self.outcomes)

    @property
    def reports(self) -> list[Any]:
        """The reports of the verify steps, in order."""
        return [o.report for o in self.outcomes if o.step.action == "verify"]


def apply_recipe(
    model: M,
    recipe: Recipe | str | os.PathLike[str],
    *,
    example_inputs: Sequence[Any] | None = None,
    example_kwargs: Mapping[str, Any] | None = None,
    output: str | os.PathLike[str] | None = None,
    check: bool = True,
) -> RecipeResult:
    """Run a recipe's steps on ``model``, in place, as one transaction.

    Strip and gate steps change ``model`` in place, as :func:`surgery.strip`
    and :func:`surgery.gate` do. A verify step compares the model with a copy
    taken before the first step. An export step writes ``output``.

    Args:
        model: The model to rewrite.
        recipe: A :class:`Recipe`, or the path of a recipe file.
        example_inputs: Positional inputs for verify and export; if ``None``
            (and no ``example_kwargs``), the recipe's ``inputs`` are used.
        example_kwargs: Keyword inputs for verify and export.
        output: Where an export step writes; required if the recipe exports.
        check: If true, a failed verify step raises :class:`VerificationError`.
            If false, the run stops at that step and the result says so.

    Returns:
        A :class:`RecipeResult` with the model and one outcome per step run.

    Raises:
        RecipeError: The recipe is malformed, or it needs example inputs or an
            output that were not given.
        SelectionError: A step's ``select`` matched nothing; the message
            names the step.
        VerificationError: With ``check=True``, a verify step failed.

    If any step raises, every site is put back the way it was before the
    first step, so the model is left as it came in.

    Example:
        >>> from surgery.demo import build_demo_model
        >>> model = build_demo_model()
        >>> steps = (RecipeStep("strip", select=("blocks.*",)),)
        >>> result = apply_recipe(model, Recipe(steps))
        >>> result.outcomes[0].sites[:2]
        ('blocks.0.attn.attn_dropout', 'blocks.0.attn.resid_dropout')
    """
    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_file(recipe)
    args, kwargs = _example_inputs(model, recipe, example_inputs, example_kwargs)
    if recipe.export_format is not None and output is None:
        raise RecipeError(
            f"{recipe.source}: the recipe exports to {recipe.export_format}; "
            "pass output="
        )

    before = _api.find(model) if isinstance(model, nn.Module) else None
    reference = copy.deepcopy(model) if recipe.verifies else model
    current: Any = model
    off: set[str] = set()
    outcomes: list[StepOutcome] = []
    try:
        for number, step in enumerate(recipe.steps, start=1):
            where = f"{recipe.source}, step {number} ({step.action})"
            outcome, current = _run_step(
                step, current, reference, (args, kwargs, off), output, where
            )
            _track_off(step, outcome, off)
            outcomes.append(outcome)
            if not outcome.passed:
                if check:
                    outcome.report.raise_for_failure()
                break
    except BaseException:
        if before is not None and isinstance(model, nn.Module):
            _put_back(model, before)
        raise
    return RecipeResult(current, tuple(outcomes))


def _run_step(
    step: RecipeStep,
    model: Any,
    reference: Any,
    inputs: tuple[tuple[Any, ...], dict[str, Any], set[str]],
    output: str | os.PathLike[str] | None,
    where: str,
) -> tuple[StepOutcome, Any]:
    """Run one step; return what it did and the model to carry on with."""
    args, kwargs, off = inputs
    select = list(step.select) if step.select else None
    exclude = list(step.exclude) if step.exclude else None
    try:
        if step.action == "strip":
            chosen = _api.find(model, select, exclude=exclude)
            model = _api.strip(model, select, exclude=exclude)
            return StepOutcome(step, _paths(chosen)), model
        if step.action == "gate":
            chosen = _api.find(model, select, exclude=exclude)
            if step.mode is None and step.p is None:
                model = _api.gate(model, select, exclude=exclude)
            else:
                # set_dropout gates what is not gated yet, then sets mode and p.
                model = _api.set_dropout(
                    model, select, exclude=exclude, mode=step.mode, p=step.p
                )
            return StepOutcome(step, _paths(chosen)), model
        if step.action == "verify":
            report = verify_step(
                reference, model, args, kwargs, require_off=sorted(off)
            )
            return StepOutcome(step, report=report), model
        # Recipe checks that an export is last and apply_recipe that it has an output.
        exported = export_step(model, args, kwargs, output or "", step.format or "pt2")
        return StepOutcome(step, output=Path(output or ""), exported=exported), model
    except VerificationError:
        raise
    except SurgeryError as error:
        raise type(error)(f"{where}: {error}") from error


def _track_off(step: RecipeStep, outcome: StepOutcome, off: set[str]) -> None:
    """Keep ``off`` as the set of sites the steps so far turned off."""
    if step.action == "strip" or (step.action == "gate" and step.mode == "off"):
        off.update(outcome.sites)
    elif step.action == "gate" and step.mode is not None:
        off.difference_update(outcome.sites)


def _paths(sites: Sequence[Site]) -> tuple[str, ...]:
    return tuple(site.path for site in sites)


def verify_step(
    reference: Any,
    candidate: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    require_off: Sequence[str] = (),
) -> Any:
    """Run :func:`surgery.verify`; the one place recipes and the CLI call it.

    ``require_off`` lists site paths the rewrite turned off: verify then
    also checks that each of them is off, not only that it claims to be.
    """
    from ._verify import verify

    if isinstance(reference, torch.export.ExportedProgram):
        raise SurgeryError(VERIFY_EXPORTED)
    # Exact paths as full-match regexes: sites of exported programs have no
    # module object for a predicate to look at.
    exact = [f"re:{re.escape(path)}" for path in dict.fromkeys(require_off)]
    return verify(
        reference,
        candidate,
        _one_input_value(args, kwargs),
        require_off=exact or None,
    )


VERIFY_EXPORTED = (
    "verify compares Python modules; an exported program's stripped ops leave "
    "no site behind to compare (check the result with surgery.check_export_ready)"
)


def _one_input_value(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The single ``example_inputs`` value verify and export take."""
    if args and kwargs:
        raise SurgeryError(
            "example inputs are positional or keyword, not both: "
            f"got {len(args)} positional and {', '.join(kwargs)}"
        )
    return dict(kwargs) if kwargs else tuple(args)


def export_step(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    output: str | os.PathLike[str],
    format: ExportFormat,
    *,
    strip: bool = False,
    script: bool = False,
    allow_random: bool | None = None,
) -> Any:
    """Run :func:`surgery.export` on a model the steps before have rewritten.

    By default the sites export as the steps left them (``strip=False``).
    Random ops in the artifact are refused when every site is stripped or
    off (one left would be a site surgery missed) and allowed otherwise
    (the steps chose to keep some dropout).
    """
    try:
        export = importlib.import_module("._export", __package__).export
    except ImportError:
        raise SurgeryError(
            "export is not available in this version of surgery"
        ) from None
    if allow_random is None:
        allow_random = not strip and _still_drops(model)
    return export(
        model,
        tuple(args),
        output,
        example_kwargs=kwargs or None,
        format=format,
        strip=strip,
        script=script,
        allow_random=allow_random,
    )


def _still_drops(model: nn.Module) -> bool:
    """Whether any site of ``model`` may still drop (not stripped, not off)."""
    return any(
        site.p > 0 and (site.state == "original" or site.mode in ("train", "on"))
        for site in _api.find(model)
    )


def _example_inputs(
    model: Any,
    recipe: Recipe,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args is not None or kwargs is not None:
        return tuple(args or ()), dict(kwargs or {})
    if recipe.inputs:
        specs = [InputSpec.parse(text) for text in recipe.inputs]
        if isinstance(model, nn.Module):
            return make_inputs(specs, int_bound=token_bound(model)), {}
        return make_inputs(specs), {}
    if recipe.verifies or recipe.export_format is not None:
        raise RecipeError(
            f"{recipe.source}: the recipe verifies or exports and needs example "
            "inputs; pass example_inputs= or list inputs = [...] in the recipe"
        )
    return (), {}


def _put_back(model: nn.Module, before: Sequence[Site]) -> None:
    """Return every site to the state, mode and rate it had in ``before``."""
    then = {site.path: site for site in before}

    def back(index: ModuleIndex, site: Site) -> list[Undo]:
        old = then[site.path]
        if old.state == "original":
            return _api._to_original(index, site)
        if old.state == "stripped":
            return _api._to_stripped(index, site)
        return _api._to_configured(index, site, old.mode, old.p)

    if then:
        _api._rewrite(model, lambda path, _: path in then, None, back)


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
