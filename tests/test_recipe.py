"""Recipes: parsing and checking TOML, and running the steps from Python."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest
import torch

import surgery
from surgery import Recipe, RecipeError, RecipeStep, SelectionError, apply_recipe
from surgery._api import state_of
from surgery.demo import build_demo_model, demo_inputs

FULL = """
description = "serve without dropout, keep MC dropout in the head"
inputs = ["2x8:int64"]

[[steps]]
action = "strip"
select = "blocks.*"
exclude = ["re:.*attn_dropout"]

[[steps]]
action = "verify"

[[steps]]
action = "gate"
select = "classifier_dropout"
mode = "on"
p = 0.5

[[steps]]
action = "export"
format = "pt2"
"""


def test_a_full_recipe_reads_as_written() -> None:
    recipe = Recipe.from_toml(FULL, source="serve.toml")

    assert [step.action for step in recipe.steps] == [
        "strip",
        "verify",
        "gate",
        "export",
    ]
    strip_step, _, gate_step = recipe.steps[:3]
    assert strip_step.select == ("blocks.*",)
    assert strip_step.exclude == ("re:.*attn_dropout",)
    assert (gate_step.select, gate_step.mode, gate_step.p) == (
        ("classifier_dropout",),
        "on",
        0.5,
    )
    assert recipe.export_format == "pt2"
    assert recipe.verifies
    assert recipe.inputs == ("2x8:int64",)
    assert recipe.source == "serve.toml"


_STEP = '[[steps]]\naction = "strip"\n'

BAD = [
    ("steps = 3", r"no steps"),
    ("", r"no steps"),
    ("steps = []", r"no steps"),
    ('colour = "red"\n' + _STEP, r"unknown key 'colour'"),
    ("version = 2\n" + _STEP, r"version 2 is not supported"),
    ("inputs = [3]\n" + _STEP, r"inputs must be a list"),
    ('inputs = ["2y8"]\n' + _STEP, r"inputs: input shape '2y8'"),
    ('inputs = ["2x8:int65"]\n' + _STEP, r"'int65' is not a torch dtype"),
    ('[[steps]]\naction = "prune"', r"step 1: action must be one of strip"),
    ("[[steps]]\nselect = 'a'", r"step 1: action must be one of"),
    (_STEP + "pp = 0.1", r"step 1: unknown key 'pp'; strip takes 'select', 'exclude'"),
    (_STEP + 'mode = "off"', r"step 1: unknown key 'mode'; strip takes"),
    (_STEP + "select = []", r"step 1: select must be a pattern or a non-empty list"),
    (_STEP + "exclude = [1]", r"step 1: exclude must be a pattern"),
    (_STEP + '[[steps]]\naction = "gate"\nmode = "maybe"', r"step 2: mode must be"),
    (_STEP + '[[steps]]\naction = "gate"\np = 1.5', r"step 2: p must be in \[0, 1\]"),
    (_STEP + '[[steps]]\naction = "gate"\np = "0.1"', r"step 2: p must be a float"),
    ('[[steps]]\naction = "export"', r"step 1: export needs format = one of pt2"),
    ('[[steps]]\naction = "export"\nformat = "tflite"', r"export needs format"),
    ('[[steps]]\naction = "verify"\nstrict = true', r"verify takes no options"),
    (
        '[[steps]]\naction = "export"\nformat = "pt2"\n' + _STEP,
        r"export must be the last step",
    ),
    ("[[steps", r"not valid TOML"),
    (
        '[[steps]]\naction = "gate"\np = 0.2\n[[steps]]\naction = "verify"',
        r"step 2 \(verify\): step 1 sets p",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_malformed_recipe_names_the_file_step_and_key(
    text: str, message: str
) -> None:
    with pytest.raises(RecipeError, match=message) as caught:
        Recipe.from_toml(text, source="bad.toml")
    assert str(caught.value).startswith("bad.toml")
    assert isinstance(caught.value, ValueError)


def test_steps_built_in_python_are_checked_too() -> None:
    with pytest.raises(RecipeError, match="gate takes no 'format'"):
        RecipeStep("gate", format="onnx")
    with pytest.raises(RecipeError, match="mode must be one of"):
        RecipeStep("gate", mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match="at least one step"):
        Recipe(())


def test_a_whole_number_p_is_read_as_a_probability() -> None:
    recipe = Recipe.from_toml('[[steps]]\naction = "gate"\np = 0')
    assert recipe.steps[0].p == 0.0


def test_from_file_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(RecipeError, match=r"nope\.toml: No such file"):
        Recipe.from_file(missing)


def test_apply_runs_strip_and_gate_in_place_and_reports_the_sites() -> None:
    model = build_demo_model()
    recipe = Recipe(
        (
            RecipeStep("strip", select=("blocks.*", "embed_dropout")),
            RecipeStep("gate", select=("classifier_dropout",), mode="off"),
        )
    )

    result = apply_recipe(model, recipe)

    assert result.model is model
    stripped, gated = result.outcomes
    assert "embed_dropout" in stripped.sites
    assert len(stripped.sites) == 9
    assert gated.sites == ("classifier_dropout",)
    # Every site is stripped or off: a train-mode forward draws nothing.
    assert model.training
    assert surgery.count_random_ops(model, demo_inputs()).count == 0


def test_a_gate_step_sets_mode_and_p() -> None:
    model = build_demo_model().eval()
    recipe = Recipe(
        (RecipeStep("gate", select=("classifier_dropout",), mode="on", p=0.5),)
    )

    apply_recipe(model, recipe)

    (site,) = surgery.find(model, "classifier_dropout")
    assert (site.state, site.mode, site.p) == ("gated", "on", 0.5)
    # Monte Carlo dropout: eval mode, and the head still drops.
    assert surgery.count_random_ops(model, demo_inputs()).count > 0


def test_apply_reads_a_recipe_file(tmp_path: Path) -> None:
    path = tmp_path / "strip.toml"
    path.write_text('[[steps]]\naction = "strip"\n')
    model = build_demo_model()

    apply_recipe(model, path)

    assert set(state_of(surgery.find(model)).values()) == {"stripped"}


def test_a_failing_step_leaves_the_model_as_it_came() -> None:
    model = build_demo_model()
    surgery.set_dropout(model, "embed_dropout", mode="on", p=0.3)
    before = surgery.find(model)
    x = demo_inputs()
    torch.manual_seed(1)
    expected = model(x)
    recipe = Recipe(
        (
            RecipeStep("strip", select=("blocks.*",)),
            RecipeStep("gate", select=("embed_dropout",), mode="off"),
            RecipeStep("strip", select=("decoder.*",)),
        ),
        source="r.toml",
    )

    with pytest.raises(SelectionError, match=r"r\.toml, step 3 \(strip\): select"):
        apply_recipe(model, recipe)

    assert surgery.find(model) == before
    torch.manual_seed(1)
    assert torch.equal(model(x), expected)


def test_verify_or_export_without_inputs_or_output_is_refused() -> None:
    model = build_demo_model()
    verify = Recipe((RecipeStep("strip"), RecipeStep("verify")))
    with pytest.raises(RecipeError, match="needs example inputs"):
        apply_recipe(model, verify)
    export = Recipe((RecipeStep("export", format="pt2"),), inputs=("2x8:int64",))
    with pytest.raises(RecipeError, match="pass output="):
        apply_recipe(model, export)
    assert set(state_of(surgery.find(model)).values()) == {"original"}


def test_the_readme_recipe_is_a_valid_recipe_for_the_demo_model() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("<!-- section:cli start -->")[1]
    text = section.split("```toml")[1].split("```")[0]

    recipe = Recipe.from_toml(text, source="README")
    without_export = Recipe(recipe.steps[:-1], inputs=recipe.inputs)
    result = apply_recipe(build_demo_model(), without_export)

    assert [step.action for step in recipe.steps] == [
        "strip",
        "gate",
        "verify",
        "export",
    ]
    assert result.passed


@pytest.mark.parametrize(
    "module", ["surgery._recipe", "surgery._pipeline", "surgery._inputs"]
)
def test_docstring_examples_run(module: str) -> None:
    results = doctest.testmod(importlib.import_module(module))
    assert results.attempted > 0
    assert results.failed == 0
