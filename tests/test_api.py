"""The verbs as a user calls them: modes, probabilities, context managers, errors.

Also the transaction promise: a rewrite that fails part-way leaves the model
exactly as it was, module objects, attributes, hooks and all.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import surgery
from surgery import GatedDropout, SiteError, count_random_ops
from surgery._kinds import kind_named
from surgery.demo import DemoTransformer, build_demo_model, demo_inputs


@pytest.fixture
def model() -> DemoTransformer:
    return build_demo_model()


@pytest.fixture
def x() -> Tensor:
    return demo_inputs()


def _run(model: nn.Module, x: Tensor, seed: int = 5) -> Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        out: Tensor = model(x)
    return out


def _snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a rewrite could touch, by identity and by value."""
    modules = model.named_modules(remove_duplicate=False)
    return {
        "modules": [(path, id(module), type(module)) for path, module in modules],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "floats": {
            (path, name): value
            for path, module in model.named_modules()
            for name, value in vars(module).items()
            if isinstance(value, float)
        },
        "hooks": [
            (path, len(m._forward_pre_hooks), len(m._forward_hooks))
            for path, m in model.named_modules()
        ],
        "sites": surgery.find(model),
    }


def _assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    assert after["modules"] == before["modules"]
    assert after["floats"] == before["floats"]
    assert after["hooks"] == before["hooks"]
    assert after["sites"] == before["sites"]
    assert list(after["state"]) == list(before["state"])
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())


def _modes(model: nn.Module) -> dict[str, tuple[str, str | None, float]]:
    return {s.path: (s.state, s.mode, s.p) for s in surgery.find(model)}


# --- set_dropout ----------------------------------------------------------------


def test_verbs_change_the_model_in_place_and_return_it(model: DemoTransformer) -> None:
    assert surgery.strip(model) is model
    assert surgery.gate(model) is model
    assert surgery.set_dropout(model, mode="off") is model
    assert surgery.restore(model) is model


@pytest.mark.parametrize("mode", ["train", "on", "off"])
def test_set_dropout_gates_every_site_in_the_mode(
    model: DemoTransformer, x: Tensor, mode: str
) -> None:
    surgery.set_dropout(model, mode=mode)  # type: ignore[arg-type]
    sites = surgery.find(model)
    assert {(s.state, s.mode) for s in sites} == {("gated", mode)}
    assert all(s.p == s.original_p for s in sites)

    train_ops = count_random_ops(model.train(), x).count
    eval_ops = count_random_ops(model.eval(), x).count
    # Each block calls its drop-path twice: 10 sites draw 12 times.
    every_site_once = 12
    expected = {
        "train": (every_site_once, 0),
        "on": (every_site_once, every_site_once),
        "off": (0, 0),
    }[mode]
    assert (train_ops, eval_ops) == expected


def test_original_model_draws_as_many_random_ops_as_counted(
    model: DemoTransformer, x: Tensor
) -> None:
    # Pins the number the mode test above relies on.
    assert count_random_ops(model, x).count == 12


def test_set_dropout_p_keeps_modes_and_mode_keeps_p(model: DemoTransformer) -> None:
    surgery.set_dropout(model, "blocks.0.*", mode="on")
    surgery.set_dropout(model, p=0.25)
    modes = _modes(model)
    assert modes["blocks.0.mlp.2"] == ("gated", "on", 0.25)
    assert modes["blocks.1.mlp.2"] == ("gated", "train", 0.25)
    assert modes["classifier_dropout"] == ("gated", "train", 0.25)

    surgery.set_dropout(model, mode="off")
    assert {(s.mode, s.p) for s in surgery.find(model)} == {("off", 0.25)}
    assert model.blocks[0].mlp[2].p == 0.0
    assert model.blocks[0].mlp[2].rate == 0.25
    assert model.classifier_dropout == 0.0

    surgery.set_dropout(model, mode="train")
    assert model.classifier_dropout == 0.25
    assert model.blocks[0].drop_path.drop_prob == 0.25


def test_set_dropout_gates_a_stripped_site(model: DemoTransformer) -> None:
    surgery.strip(model)
    surgery.set_dropout(model, "embed_dropout", p=0.3)
    assert isinstance(model.embed_dropout, GatedDropout)
    assert _modes(model)["embed_dropout"] == ("gated", "train", 0.3)
    assert _modes(model)["blocks.0.mlp.2"] == ("stripped", None, 0.0)


def test_gate_keeps_the_settings_of_sites_already_gated(
    model: DemoTransformer,
) -> None:
    surgery.set_dropout(model, "blocks.*", mode="off", p=0.4)
    gates = {
        path: m for path, m in model.named_modules() if isinstance(m, GatedDropout)
    }
    surgery.gate(model)
    assert _modes(model)["blocks.1.mlp.2"] == ("gated", "off", 0.4)
    assert _modes(model)["embed_dropout"] == ("gated", "train", 0.1)
    assert all(model.get_submodule(path) is gate for path, gate in gates.items())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"p": 1.5}, "p must be in"),
        ({"p": -0.01}, "p must be in"),
        ({"p": float("nan")}, "p must be in"),
        ({"p": "0.1"}, "p must be a float"),
        ({"p": True}, "p must be a float"),
        ({"mode": "sometimes"}, "mode must be one of train, on, off; got 'sometimes'"),
        ({"mode": "ON"}, "mode must be one of"),
    ],
)
def test_set_dropout_rejects_bad_options_and_changes_nothing(
    model: DemoTransformer, options: dict[str, object], message: str
) -> None:
    surgery.set_dropout(model, "blocks.0.*", mode="on")
    before = _snapshot(model)
    with pytest.raises(ValueError, match=message):
        surgery.set_dropout(model, **options)  # type: ignore[arg-type]
    _assert_unchanged(model, before)


def test_bad_options_are_option_errors(model: DemoTransformer) -> None:
    with pytest.raises(surgery.OptionError, match="p must be in"):
        surgery.set_dropout(model, p=2.0)
    with pytest.raises(surgery.OptionError, match="mode must be one of"):
        surgery.set_dropout(model, mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(surgery.OptionError, match="p must be in"):
        GatedDropout(2.0)


def test_set_dropout_without_options_is_an_option_error(
    model: DemoTransformer,
) -> None:
    before = _snapshot(model)
    with pytest.raises(surgery.OptionError, match="needs mode=, p= or both"):
        surgery.set_dropout(model)
    _assert_unchanged(model, before)


def test_set_dropout_extreme_probabilities() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)).train()
    inputs = torch.randn(8, 4)
    surgery.set_dropout(model, p=1.0)
    assert torch.equal(model(inputs), torch.zeros(8, 4))
    surgery.set_dropout(model, p=0.0)
    assert torch.equal(model(inputs), model.eval()(inputs))


def test_find_and_verbs_reject_what_is_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"expected an nn\.Module, got function"):
        surgery.find(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got Tensor"):
        surgery.strip(torch.ones(2))  # type: ignore[type-var]


def test_model_that_is_itself_a_dropout_module_gets_a_clear_error() -> None:
    with pytest.raises(SiteError, match=r"wrap it in a container \(nn.Sequential\)"):
        surgery.strip(nn.Dropout(0.1))


# --- context managers -----------------------------------------------------------


def test_dropout_off_restores_the_very_same_modules(
    model: DemoTransformer, x: Tensor
) -> None:
    before = _snapshot(model)
    original = _run(model, x)

    with surgery.dropout_off(model) as inside:
        assert inside is model
        assert count_random_ops(model, x).count == 0

    _assert_unchanged(model, before)
    assert torch.equal(_run(model, x), original)


def test_dropout_on_drops_in_eval_then_restores(
    model: DemoTransformer, x: Tensor
) -> None:
    model.eval()
    reference = _run(model, x)
    before = _snapshot(model)

    with surgery.dropout_on(model, "blocks.*"):
        assert count_random_ops(model, x).count == 10
        assert not torch.equal(_run(model, x), reference)

    _assert_unchanged(model, before)
    assert count_random_ops(model, x).count == 0
    assert torch.equal(_run(model, x), reference)


def test_context_managers_put_back_stripped_and_gated_states(
    model: DemoTransformer, x: Tensor
) -> None:
    surgery.strip(model, "blocks.0.*")
    surgery.set_dropout(model, "blocks.1.*", mode="on", p=0.3)
    surgery.set_dropout(model, "embed_dropout", mode="off", p=0.2)
    before = _snapshot(model)

    with surgery.dropout_on(model):
        assert {s.mode for s in surgery.find(model)} == {"on"}
        with surgery.dropout_off(model, exclude="classifier_dropout"):
            modes = {s.path: s.mode for s in surgery.find(model)}
            assert modes["classifier_dropout"] == "on"
            assert {m for p, m in modes.items() if p != "classifier_dropout"} == {"off"}
        assert {s.mode for s in surgery.find(model)} == {"on"}

    _assert_unchanged(model, before)


def test_context_managers_put_back_the_same_stripped_stand_in(
    model: DemoTransformer,
) -> None:
    surgery.strip(model, "embed_dropout")
    stand_in = model.embed_dropout
    with surgery.dropout_off(model):
        pass
    assert model.embed_dropout is stand_in


def test_context_managers_restore_when_the_body_raises(
    model: DemoTransformer, x: Tensor
) -> None:
    surgery.set_dropout(model, "blocks.1.*", mode="on", p=0.3)
    before = _snapshot(model)

    with pytest.raises(KeyError, match="boom"), surgery.dropout_off(model):
        raise KeyError("boom")
    _assert_unchanged(model, before)

    def run_then_fail() -> None:
        with surgery.dropout_on(model):
            model(x)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_then_fail()
    _assert_unchanged(model, before)

    # The "on" sites still drop in eval, through their owner's forcing hooks.
    model.eval()
    assert count_random_ops(model, x).count == 5


# --- transactions ---------------------------------------------------------------


@pytest.fixture
def fail_third_module_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    kind = kind_named("module")
    real = kind.gate
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(kind, "gate", flaky)


@pytest.mark.usefixtures("fail_third_module_gate")
def test_a_rewrite_failing_part_way_leaves_the_model_as_it_was(
    model: DemoTransformer, x: Tensor
) -> None:
    original = _run(model, x)
    before = _snapshot(model)

    # Before the failure: an attribute, a module, a read-for-p module and a
    # module of the first block were gated; all must be put back.
    with pytest.raises(SiteError) as raised:
        surgery.set_dropout(model, mode="on", p=0.3)

    message = str(raised.value)
    assert "'blocks.0.mlp.2'" in message
    assert "injected failure" in message
    assert "left unchanged" in message
    assert isinstance(raised.value.__cause__, RuntimeError)
    _assert_unchanged(model, before)
    assert torch.equal(_run(model, x), original)
    model.eval()
    assert count_random_ops(model, x).count == 0


@pytest.mark.usefixtures("fail_third_module_gate")
def test_a_failed_rewrite_keeps_earlier_surgery_and_its_hooks(
    model: DemoTransformer, x: Tensor
) -> None:
    surgery.set_dropout(model, "blocks.0.attn.*", mode="on", p=0.2)
    surgery.strip(model, "blocks.1.*")
    before = _snapshot(model)

    with pytest.raises(SiteError, match=r"'blocks\.0\.mlp\.2'"):
        surgery.set_dropout(model, mode="off")

    _assert_unchanged(model, before)
    model.eval()
    assert count_random_ops(model, x).by_module() == {
        "blocks.0.attn": 1,
        "blocks.0.attn.resid_dropout": 1,
    }


def test_failure_in_strip_and_restore_is_rolled_back_too(
    model: DemoTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    surgery.gate(model, "blocks.*")
    before = _snapshot(model)
    kind = kind_named("drop_path")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no")

    monkeypatch.setattr(kind, "restore", refuse)
    with pytest.raises(SiteError, match=r"'blocks\.0\.drop_path'"):
        surgery.restore(model)
    _assert_unchanged(model, before)

    with pytest.raises(SiteError, match=r"'blocks\.0\.drop_path'"):
        surgery.strip(model)
    _assert_unchanged(model, before)


def test_a_rewritten_model_deep_copies_and_pickles_with_its_surgery(
    model: DemoTransformer, x: Tensor
) -> None:
    original = _run(model, x)
    surgery.set_dropout(model, "blocks.0.*", mode="on", p=0.3)
    surgery.strip(model, "blocks.1.*")

    copied = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)

    for clone in (copied, loaded):
        assert _modes(clone) == _modes(model)
        surgery.restore(clone)
        assert torch.equal(_run(clone, x), original)
        assert all(site.state == "original" for site in surgery.find(clone))
    assert _modes(model)["blocks.1.mlp.2"] == ("stripped", None, 0.0)
