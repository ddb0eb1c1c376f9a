"""The selector language: globs, regexes, classes, predicates, lists, excludes."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import surgery
from surgery import SelectionError, SurgeryWarning
from surgery.demo import DemoDropPath, DemoTransformer, build_demo_model

ALL = [
    "classifier_dropout",
    "embed_dropout",
    "blocks.0.attn.attn_dropout",
    "blocks.0.attn.resid_dropout",
    "blocks.0.mlp.2",
    "blocks.0.drop_path",
    "blocks.1.attn.attn_dropout",
    "blocks.1.attn.resid_dropout",
    "blocks.1.mlp.2",
    "blocks.1.drop_path",
]


def _found(model: nn.Module, select: object = None, **options: object) -> list[str]:
    return [site.path for site in surgery.find(model, select, **options)]  # type: ignore[arg-type]


@pytest.fixture
def model() -> DemoTransformer:
    return build_demo_model()


def test_every_site_has_one_stable_path(model: DemoTransformer) -> None:
    assert _found(model) == ALL
    surgery.gate(model, "blocks.0.*")
    surgery.strip(model, "blocks.1.*")
    assert _found(model) == ALL


CASES: dict[str, tuple[object, list[str]]] = {
    "exact path": ("blocks.0.mlp.2", ["blocks.0.mlp.2"]),
    "glob over the whole path": (
        "blocks.*.attn_dropout",
        ["blocks.0.attn.attn_dropout", "blocks.1.attn.attn_dropout"],
    ),
    "glob star crosses dots": (
        "*drop_path",
        ["blocks.0.drop_path", "blocks.1.drop_path"],
    ),
    "glob with class of characters": ("blocks.[1].mlp.?", ["blocks.1.mlp.2"]),
    "regex fullmatch": (
        r"re:blocks\.\d\.(mlp\.2|drop_path)",
        [
            "blocks.0.mlp.2",
            "blocks.0.drop_path",
            "blocks.1.mlp.2",
            "blocks.1.drop_path",
        ],
    ),
    "class of the dropout module": (
        DemoDropPath,
        ["blocks.0.drop_path", "blocks.1.drop_path"],
    ),
    "class of an attribute's owner": (DemoTransformer, ["classifier_dropout"]),
    "tuple of classes": (
        (DemoDropPath, DemoTransformer),
        ["classifier_dropout", "blocks.0.drop_path", "blocks.1.drop_path"],
    ),
    "predicate": (
        lambda path, module: path.startswith("blocks.1"),
        [p for p in ALL if p.startswith("blocks.1")],
    ),
    "list: any may match": (
        ["embed_dropout", DemoTransformer, r"re:.*\.mlp\.2"],
        ["classifier_dropout", "embed_dropout", "blocks.0.mlp.2", "blocks.1.mlp.2"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_select(model: DemoTransformer, case: str) -> None:
    select, expected = CASES[case]
    assert _found(model, select) == expected


def test_select_by_class_matches_the_original_class_after_gating(
    model: DemoTransformer,
) -> None:
    surgery.gate(model)
    assert len(_found(model, nn.Dropout)) == 7
    surgery.strip(model, "blocks.*")
    assert len(_found(model, nn.Dropout)) == 7


def test_predicate_sees_each_path_and_the_sites_module(model: DemoTransformer) -> None:
    seen: dict[str, type] = {}

    def record(path: str, module: nn.Module) -> bool:
        seen[path] = type(module)
        return path == "embed_dropout"

    assert _found(model, exclude=record) == [p for p in ALL if p != "embed_dropout"]
    assert seen["classifier_dropout"] is DemoTransformer
    assert seen["blocks.0.drop_path"] is DemoDropPath
    assert seen["blocks.0.attn.attn_dropout"] is nn.Dropout
    assert list(seen) == ALL


def test_exclude_wins_over_select(model: DemoTransformer) -> None:
    chosen = _found(model, "blocks.0.*", exclude=["*drop_path", nn.Dropout])
    assert chosen == []
    chosen = _found(model, "blocks.*", exclude=r"re:blocks\.1\..*")
    assert chosen == [p for p in ALL if p.startswith("blocks.0")]
    assert _found(model, exclude=lambda path, m: "attn" not in path) == [
        p for p in ALL if "attn" in p
    ]


def test_rewrites_touch_only_the_selected_sites(model: DemoTransformer) -> None:
    surgery.strip(model, "blocks.1.*", exclude="*.mlp.2")
    states = {site.path: site.state for site in surgery.find(model)}
    stripped = {p for p, state in states.items() if state == "stripped"}
    assert stripped == {
        "blocks.1.attn.attn_dropout",
        "blocks.1.attn.resid_dropout",
        "blocks.1.drop_path",
    }
    surgery.restore(model, "blocks.1.attn.*")
    states = {site.path: site.state for site in surgery.find(model)}
    assert [p for p, state in states.items() if state != "original"] == [
        "blocks.1.drop_path"
    ]


def test_aliases_of_a_shared_module_match() -> None:
    drop = nn.Dropout(0.2)
    model = nn.Sequential(drop, nn.Sequential(nn.Linear(2, 2), drop))
    assert _found(model, "1.1") == ["0"]
    assert _found(model, lambda path, module: path == "1.1") == ["0"]
    surgery.strip(model, "re:1\\.1")
    assert isinstance(model[0], nn.Identity)


def test_select_matching_nothing_names_close_paths_and_the_count(
    model: DemoTransformer,
) -> None:
    before = [type(m) for m in model.modules()]
    with pytest.raises(SelectionError) as raised:
        surgery.strip(model, "blocks.0.atn.attn_dropout")
    message = str(raised.value)
    assert "'blocks.0.atn.attn_dropout'" in message
    assert "blocks.0.attn.attn_dropout" in message.split("Closest paths:")[1]
    assert "10 dropout sites" in message
    assert isinstance(raised.value, ValueError)
    assert [type(m) for m in model.modules()] == before


def test_regex_must_match_the_whole_path(model: DemoTransformer) -> None:
    with pytest.raises(SelectionError, match="'re:blocks' matched none of the 10"):
        surgery.find(model, "re:blocks")


def test_every_entry_of_a_select_list_must_match(model: DemoTransformer) -> None:
    with pytest.raises(SelectionError, match=r"of type LSTM matched none"):
        surgery.gate(model, ["embed_dropout", nn.LSTM])
    assert all(site.state == "original" for site in surgery.find(model))


def test_select_on_a_model_without_sites_says_so() -> None:
    with pytest.raises(SelectionError, match="has no dropout site"):
        surgery.strip(nn.Linear(3, 3), "dropout")


def test_exclude_matching_nothing_warns_at_the_callers_line(
    model: DemoTransformer,
) -> None:
    with pytest.warns(SurgeryWarning, match="'drop_paht' matched no dropout site") as w:
        surgery.strip(model, exclude="drop_paht")
    assert {record.filename for record in w} == {__file__}


def test_exclude_warning_from_a_context_manager_points_at_the_with_line(
    model: DemoTransformer,
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with surgery.dropout_off(model, exclude=nn.LSTM):
            pass
    assert caught
    assert all(issubclass(record.category, SurgeryWarning) for record in caught)
    assert {record.filename for record in caught} == {__file__}


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (42, "select must be a glob.*got int"),
        ([], "select is empty"),
        (["embed_dropout", 3.5], "got float"),
        ("re:(", r"'re:\(' is not a valid regex"),
    ],
)
def test_malformed_selectors_raise(
    model: DemoTransformer, selector: object, message: str
) -> None:
    with pytest.raises(SelectionError, match=message):
        surgery.strip(model, selector)  # type: ignore[arg-type]
    assert all(site.state == "original" for site in surgery.find(model))


def test_malformed_exclude_raises_naming_exclude(model: DemoTransformer) -> None:
    with pytest.raises(SelectionError, match="exclude must be a glob"):
        surgery.find(model, exclude=object())  # type: ignore[arg-type]


def test_predicate_errors_propagate(model: DemoTransformer) -> None:
    def broken(path: str, module: nn.Module) -> bool:
        raise RuntimeError("bad predicate")

    with pytest.raises(RuntimeError, match="bad predicate"):
        surgery.strip(model, broken)
    assert all(site.state == "original" for site in surgery.find(model))


def test_select_changes_nothing_on_the_model(model: DemoTransformer) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    surgery.find(model, "blocks.*", exclude=nn.Dropout)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
