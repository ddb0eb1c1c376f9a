"""Running a recipe: its steps on a model, as one transaction.

Strip and gate steps go through the same verbs as Python code; verify and
export steps through :func:`surgery.verify` and :func:`surgery.export`. The
command line calls the same two helpers, :func:`verify_step` and
:func:`export_step`, so a recipe and a command check and write alike.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from . import _api
from ._errors import RecipeError, SurgeryError, SurgeryWarning, VerificationError
from ._export import ExportResult, export
from ._inputs import InputSpec, make_inputs, token_bound
from ._kinds.base import Undo
from ._recipe import ExportFormat, Recipe, RecipeStep
from ._site import Site
from ._tree import ModuleIndex
from ._verify import verify
from ._verify_report import VerificationReport

__all__ = [
    "VERIFY_EXPORTED",
    "RecipeResult",
    "StepOutcome",
    "apply_recipe",
    "export_step",
    "verify_step",
]

# A module, rewritten in place; or an exported program, rewritten in its graph.
M = TypeVar("M", bound=nn.Module | torch.export.ExportedProgram)


@dataclass(frozen=True)
class StepOutcome:
    """What one step did.

    Attributes:
        step: The step.
        sites: For strip and gate: the paths of the sites it acted on.
        report: For verify: the :class:`~surgery.VerificationReport`.
        output: For export: the file written.
        exported: For export: the :class:`~surgery.ExportResult`.
    """

    step: RecipeStep
    sites: tuple[str, ...] = ()
    report: VerificationReport | None = None
    output: Path | None = None
    exported: ExportResult | None = None

    @property
    def passed(self) -> bool:
        """``False`` only for a verify step whose report failed."""
        return self.report is None or self.report.passed


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
    def reports(self) -> list[VerificationReport]:
        """The reports of the verify steps, in order."""
        return [o.report for o in self.outcomes if o.report is not None]


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
            if outcome.report is not None and not outcome.report.passed:
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
            chosen = _chosen(model, select, exclude)
            model = _api.strip(model, select, exclude=exclude)
            return StepOutcome(step, _paths(chosen)), model
        if step.action == "gate":
            chosen = _chosen(model, select, exclude)
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


def _chosen(model: Any, select: Any, exclude: Any) -> list[Site]:
    """The sites a verb is about to act on; the verb itself warns, not this look."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SurgeryWarning)
        return _api.find(model, select, exclude=exclude)


def _paths(sites: Sequence[Site]) -> tuple[str, ...]:
    return tuple(site.path for site in sites)


def verify_step(
    reference: Any,
    candidate: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    require_off: Sequence[str] = (),
) -> VerificationReport:
    """Run :func:`surgery.verify`; the one place recipes and the CLI call it.

    ``require_off`` lists site paths the rewrite turned off: verify then
    also checks that each of them is off, not only that it claims to be.
    """
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
) -> ExportResult:
    """Run :func:`surgery.export` on a model the steps before have rewritten.

    By default the sites export as the steps left them (``strip=False``).
    Random ops in the artifact are refused when every site is stripped or
    off (one left would be a site surgery missed) and allowed otherwise
    (the steps chose to keep some dropout).
    """
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
