"""Gate, strip and restore every built-in dropout module class, as a user sees it.

Each case wraps one dropout module between two linear layers and checks what a
user relies on: the gate following ``training`` draws the very same numbers
as the original, strip and ``mode="off"`` run no random op at all, ``"on"``
drops in eval mode, and restore puts back the same object with the same
outputs and ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import surgery
from surgery import GatedDropout, StrippedDropout, count_random_ops

# (class, input shape): each class gets the input rank it documents.
DROPOUT_CASES = [
    (nn.Dropout, (4, 6)),
    (nn.Dropout1d, (4, 3, 6)),
    (nn.Dropout2d, (4, 3, 5, 6)),
    (nn.Dropout3d, (4, 3, 2, 5, 6)),
    (nn.AlphaDropout, (4, 6)),
    (nn.FeatureAlphaDropout, (4, 3, 5, 6)),
]
CASE_IDS = [cls.__name__ for cls, _ in DROPOUT_CASES]


def _model(cls: type[nn.Module], shape: tuple[int, ...], inplace: bool) -> nn.Module:
    width = shape[-1]
    return nn.Sequential(
        nn.Linear(width, width), cls(0.4, inplace=inplace), nn.Linear(width, width)
    ).train()


def _run(model: nn.Module, x: Tensor, seed: int = 7) -> Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(x.clone())


def _clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _assert_same_state(model: nn.Module, before: dict[str, Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.fixture(params=[False, True], ids=["copy", "inplace"])
def inplace(request: pytest.FixtureRequest) -> bool:
    flag: bool = request.param
    return flag


@pytest.mark.parametrize(("cls", "shape"), DROPOUT_CASES, ids=CASE_IDS)
def test_gate_in_train_mode_draws_what_the_original_draws(
    cls: type[nn.Module], shape: tuple[int, ...], inplace: bool
) -> None:
    model = _model(cls, shape, inplace)
    x = torch.randn(shape)
    train_before, eval_before = _run(model, x), _run(model.eval(), x)

    surgery.gate(model.train())

    assert isinstance(model[1], GatedDropout)
    assert torch.equal(_run(model, x), train_before)
    assert not torch.equal(train_before, eval_before), "the case must really drop"
    assert torch.equal(_run(model.eval(), x), eval_before)


@pytest.mark.parametrize(("cls", "shape"), DROPOUT_CASES, ids=CASE_IDS)
def test_strip_runs_no_random_op_and_matches_eval(
    cls: type[nn.Module], shape: tuple[int, ...], inplace: bool
) -> None:
    model = _model(cls, shape, inplace)
    x = torch.randn(shape)
    assert count_random_ops(model, x.clone()).count > 0
    reference = _run(model.eval(), x)

    surgery.strip(model.train())

    assert isinstance(model[1], StrippedDropout)
    assert isinstance(model[1], nn.Identity)
    assert model[1].p == 0.0
    assert count_random_ops(model, x.clone()).count == 0
    assert torch.equal(_run(model, x), reference)


@pytest.mark.parametrize(("cls", "shape"), DROPOUT_CASES, ids=CASE_IDS)
def test_off_runs_no_random_op_in_train_mode(
    cls: type[nn.Module], shape: tuple[int, ...], inplace: bool
) -> None:
    model = _model(cls, shape, inplace)
    x = torch.randn(shape)
    reference = _run(model.eval(), x)

    surgery.set_dropout(model.train(), mode="off")

    assert count_random_ops(model, x.clone()).count == 0
    assert torch.equal(_run(model, x), reference)
    assert model[1].p == 0.0
    assert model[1].rate == pytest.approx(0.4)


@pytest.mark.parametrize(("cls", "shape"), DROPOUT_CASES, ids=CASE_IDS)
def test_on_drops_in_eval_mode(
    cls: type[nn.Module], shape: tuple[int, ...], inplace: bool
) -> None:
    model = _model(cls, shape, inplace).eval()
    x = torch.randn(shape)
    reference = _run(model, x)
    assert count_random_ops(model, x.clone()).count == 0

    surgery.set_dropout(model, mode="on")

    assert not model.training
    assert count_random_ops(model, x.clone()).count == 1
    assert not torch.equal(_run(model, x), reference)


@pytest.mark.parametrize(("cls", "shape"), DROPOUT_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("verb", [surgery.gate, surgery.strip], ids=["gate", "strip"])
def test_restore_brings_back_the_same_object_outputs_and_state(
    cls: type[nn.Module],
    shape: tuple[int, ...],
    inplace: bool,
    verb: Callable[[nn.Module], nn.Module],
) -> None:
    model = _model(cls, shape, inplace)
    original = model[1]
    x = torch.randn(shape)
    before_train, before_eval = _run(model, x), _run(model.eval(), x)
    state = _clone_state(model)

    verb(model.train())
    _assert_same_state(model, state)
    surgery.restore(model)

    assert model[1] is original
    assert type(original) is cls
    assert original.p == pytest.approx(0.4)
    assert original.inplace is inplace
    assert torch.equal(_run(model, x), before_train)
    assert torch.equal(_run(model.eval(), x), before_eval)
    _assert_same_state(model, state)
    assert [site.state for site in surgery.find(model)] == ["original"]


class LockedDropout(nn.Dropout):
    """Variational dropout: one mask per sequence, shared over the time axis."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        # (batch, time, features) -> mask of shape (batch, 1, features)
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - self.p)
        return x * mask / (1 - self.p)


class AlwaysDropout(nn.Dropout):
    """Monte Carlo dropout written as a subclass: it drops in eval mode too."""

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, training=True)


@pytest.mark.parametrize("cls", [LockedDropout, AlwaysDropout])
def test_subclass_with_own_forward_keeps_its_behaviour_when_gated(
    cls: type[nn.Dropout],
) -> None:
    model = nn.Sequential(nn.Linear(6, 6), cls(0.5)).train()
    x = torch.randn(3, 5, 6)
    before_train, before_eval = _run(model, x), _run(model.eval(), x)

    surgery.gate(model.train())

    assert isinstance(model[1], GatedDropout)
    assert torch.equal(_run(model, x), before_train)
    assert torch.equal(_run(model.eval(), x), before_eval)


def test_subclass_gate_honours_modes_and_rate() -> None:
    model = nn.Sequential(nn.Linear(6, 6), LockedDropout(0.5)).eval()
    x = torch.randn(3, 5, 6)
    reference = _run(model, x)

    surgery.set_dropout(model, mode="on", p=0.25)
    dropped = _run(model, x)
    # The subclass's own forward ran: one mask per sequence, shared over time.
    zeros = (dropped == 0) & (reference != 0)
    assert zeros.any()
    assert torch.equal(zeros, zeros[:, :1, :].expand_as(zeros))
    assert torch.allclose(dropped[~zeros], reference[~zeros] / 0.75)

    surgery.set_dropout(model.train(), mode="off")
    assert count_random_ops(model, x).count == 0

    surgery.restore(model)
    assert type(model[1]) is LockedDropout
    assert model[1].p == 0.5


def test_gated_dropout_p_answers_zero_when_off_and_keeps_the_rate() -> None:
    gate = GatedDropout(0.3)
    assert (gate.p, gate.rate, gate.mode) == (0.3, 0.3, "train")

    gate.mode = "off"
    assert (gate.p, gate.drop_prob, gate.rate) == (0.0, 0.0, 0.3)

    gate.mode = "on"
    gate.p = 0.6
    assert (gate.p, gate.rate) == (0.6, 0.6)


def test_gated_dropout_off_returns_its_input_object() -> None:
    x = torch.ones(10)
    assert GatedDropout(0.5, mode="off").train()(x) is x
    assert GatedDropout(0.5, mode="train").eval()(x) is x


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.1", True, None])
def test_gated_dropout_rejects_a_bad_probability(bad: object) -> None:
    with pytest.raises(ValueError, match="p must"):
        GatedDropout(bad)  # type: ignore[arg-type]
    gate = GatedDropout(0.1)
    with pytest.raises(ValueError, match="p must"):
        gate.p = bad  # type: ignore[assignment]
    assert gate.rate == 0.1


def test_gated_dropout_rejects_bad_mode_and_kernel() -> None:
    with pytest.raises(ValueError, match="mode must be one of train, on, off"):
        GatedDropout(0.1, mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kernel must be one of"):
        GatedDropout(0.1, kernel="gaussian")
    with pytest.raises(ValueError, match="inner="):
        GatedDropout(0.1, kernel="module")


def test_stripped_dropout_answers_zero_and_refuses_a_new_p() -> None:
    stripped = StrippedDropout()
    assert (stripped.p, stripped.drop_prob) == (0.0, 0.0)
    with pytest.raises(surgery.SiteError, match="set_dropout"):
        stripped.p = 0.2


def test_gated_dropout_and_stripped_have_no_state_dict_keys() -> None:
    assert GatedDropout(0.2).state_dict() == {}
    assert StrippedDropout().state_dict() == {}
