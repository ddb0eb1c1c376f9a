"""The public names of ``surgery``: exactly these, all importable, all documented.

Adding a public name means adding it to ``surgery/__init__.py`` (its imports
and ``__all__``) and to ``EXPECTED`` below, in the group it belongs to. A name
that disappears or appears without being listed here fails this test on
purpose: the public API changes only deliberately.
"""

from __future__ import annotations

import inspect
import types

import pytest

import surgery

EXPECTED = {
    # Finding and rewriting sites.
    "find",
    "strip",
    "gate",
    "restore",
    "set_dropout",
    "dropout_off",
    "dropout_on",
    "Site",
    "Mode",
    "State",
    "Selector",
    "GatedDropout",
    "StrippedDropout",
    "register_drop_path",
    "register_dropout_attribute",
    "register_eval_fast_path",
    # Errors and warnings.
    "SurgeryError",
    "SelectionError",
    "OptionError",
    "SiteError",
    "VerificationError",
    "SurgeryWarning",
    # Counting random operations.
    "RandomOpCounter",
    "RandomOp",
    "count_random_ops",
    # Verification.
    "verify",
    "Claim",
    "LeafResult",
    "Tolerance",
    "DEFAULT_TOLERANCES",
    "VerificationReport",
    # Export.
    "export",
    "check_export_ready",
    "ExportError",
    "ExportResult",
    # Schedules.
    "DropoutSchedule",
    "ConstantDropout",
    "CosineDropout",
    "DepthDropout",
    "EarlyDropout",
    "LateDropout",
    "LinearDropout",
    "StepDropout",
    # Monte Carlo dropout.
    "mc_mean",
    "mc_sample",
    "mc_variance",
    # Recipes.
    "apply_recipe",
    "Recipe",
    "RecipeError",
    "RecipeResult",
    "RecipeStep",
    "StepOutcome",
    # Benchmarks.
    "compare_throughput",
    "BenchmarkError",
    "ThroughputReport",
    "ThroughputRow",
}


def test_all_is_exactly_the_expected_names() -> None:
    assert sorted(surgery.__all__) == sorted(EXPECTED)
    assert len(surgery.__all__) == len(set(surgery.__all__)), "a name is listed twice"


def test_every_listed_name_is_importable() -> None:
    for name in surgery.__all__:
        assert getattr(surgery, name, None) is not None, name


def test_no_public_name_outside_all() -> None:
    public = {
        name
        for name, value in vars(surgery).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert public <= set(surgery.__all__)


# Constants and type aliases carry no docstring of their own.
DOCUMENTED = [
    name
    for name in sorted(EXPECTED)
    if inspect.isclass(getattr(surgery, name, None))
    or inspect.isfunction(getattr(surgery, name, None))
]


@pytest.mark.parametrize("name", DOCUMENTED)
def test_public_classes_and_functions_are_documented(name: str) -> None:
    assert inspect.getdoc(getattr(surgery, name)), f"{name} has no docstring"


def test_errors_refine_the_builtins_callers_catch() -> None:
    assert issubclass(surgery.SelectionError, surgery.SurgeryError)
    assert issubclass(surgery.SelectionError, ValueError)
    assert issubclass(surgery.OptionError, surgery.SurgeryError)
    assert issubclass(surgery.OptionError, ValueError)
    assert issubclass(surgery.SiteError, surgery.SurgeryError)
    assert issubclass(surgery.SiteError, TypeError)
    assert issubclass(surgery.VerificationError, AssertionError)
    assert issubclass(surgery.SurgeryWarning, UserWarning)


def test_verbs_take_options_by_keyword_only() -> None:
    for verb in (surgery.find, surgery.strip, surgery.gate, surgery.set_dropout):
        parameters = inspect.signature(verb).parameters
        assert list(parameters)[:2] == ["model", "select"], verb.__name__
        for name, parameter in list(parameters.items())[2:]:
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, (verb, name)
