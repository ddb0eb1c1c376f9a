"""Dropout written as function calls: found, gated, stripped, restored.

Owners that fx can trace are rewritten as graphs; the others (the model
itself, data-dependent control flow) are controlled by eager interception.
Both must behave the same from the user's side.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import surgery
from surgery import count_random_ops


class Traceable(nn.Module):
    """Literal probabilities, two functions, one applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(self.lin(x), 0.1, self.training)
        x = torch.dropout(x, 0.2, self.training)
        return F.alpha_dropout(x, 0.3, self.training)


class DataDependent(nn.Module):
    """Cannot be traced: a branch on a tensor value."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 1e9:
            x = x * 2
        q = self.lin(x).unsqueeze(1)
        q = F.scaled_dot_product_attention(
            q, q, q, dropout_p=0.25 if self.training else 0.0
        )
        return F.dropout(q.squeeze(1), p=0.3, training=self.training)


class Calls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.traceable = Traceable()
        self.untraceable = DataDependent()

    def forward(self, x: Tensor) -> Tensor:
        x = self.untraceable(self.traceable(x))
        return F.dropout(x, 0.05, self.training)


@pytest.fixture
def model() -> Calls:
    return Calls().train()


@pytest.fixture
def x() -> Tensor:
    return torch.randn(4, 3, 8)


def _paths(model: nn.Module) -> dict[str, str]:
    return {site.path: site.mechanism for site in surgery.find(model)}


def test_every_call_is_a_site_named_by_owner_function_and_index(model: Calls) -> None:
    sites = {site.path: site for site in surgery.find(model)}

    assert set(sites) == {
        ":dropout#0",
        "traceable:dropout#0",
        "traceable:dropout#1",
        "traceable:alpha_dropout#0",
        "untraceable:scaled_dot_product_attention#0",
        "untraceable:dropout#0",
    }
    assert sites["traceable:dropout#1"].p == 0.2
    assert sites["untraceable:scaled_dot_product_attention#0"].p == 0.25
    assert all(site.kind == "functional" for site in sites.values())


def test_each_site_names_its_mechanism_and_why(model: Calls) -> None:
    mechanisms = _paths(model)

    assert mechanisms["traceable:dropout#0"] == "fx rewrite"
    assert mechanisms["untraceable:dropout#0"].startswith(
        "eager intercept (fx could not"
    )
    assert "TraceError" in mechanisms["untraceable:dropout#0"]
    assert "the model itself" in mechanisms[":dropout#0"]


def test_gate_draws_exactly_what_the_original_draws(model: Calls, x: Tensor) -> None:
    reference = copy.deepcopy(model)

    surgery.gate(model)

    for mode in ("train", "eval"):
        getattr(model, mode)()
        getattr(reference, mode)()
        torch.manual_seed(7)
        expected = reference(x)
        torch.manual_seed(7)
        assert torch.equal(model(x), expected), mode


def test_strip_leaves_no_random_op_and_equals_eval(model: Calls, x: Tensor) -> None:
    reference = copy.deepcopy(model).eval()

    surgery.strip(model)

    assert model.training
    assert count_random_ops(model, x).count == 0
    assert torch.equal(model(x), reference(x))


def test_fx_rewrite_keeps_parent_class_and_state_dict(model: Calls) -> None:
    keys = list(model.state_dict())
    owner = model.traceable

    surgery.strip(model, "traceable:*")

    assert isinstance(model, Calls)
    assert isinstance(model.traceable, torch.fx.GraphModule)
    assert model.traceable.lin is owner.lin
    assert list(model.state_dict()) == keys
    assert "dropout" not in model.traceable.code


def test_traced_call_follows_training_not_the_baked_constant(
    model: Calls, x: Tensor
) -> None:
    surgery.gate(model, "traceable:*")

    model.eval()
    assert count_random_ops(model.traceable, x).count == 0
    model.train()
    assert count_random_ops(model.traceable, x).count == 3


@pytest.mark.parametrize("select", ["traceable:*", "untraceable:*", ":dropout#0"])
def test_modes_on_and_off(model: Calls, x: Tensor, select: str) -> None:
    chosen = surgery.find(model, select)
    owners = {site.owner for site in chosen}

    surgery.set_dropout(model, select, mode="off")
    counted = count_random_ops(model, x).by_module()
    assert not any(_owned(path, owners) for path in counted), counted

    model.eval()
    surgery.set_dropout(model, select, mode="on")
    counted = count_random_ops(model, x).by_module()
    drawn = sum(n for path, n in counted.items() if _owned(path, owners))
    assert drawn == len(chosen)


def _owned(path: str, owners: set[str]) -> bool:
    return any(
        path == owner or (owner and path.startswith(owner + ".")) for owner in owners
    )


def test_interception_is_scoped_to_the_owner(model: Calls, x: Tensor) -> None:
    # The root's own call is stripped; the calls inside its children are not.
    surgery.strip(model, ":dropout#0")

    counted = count_random_ops(model, x).by_module()

    assert "" not in counted
    assert counted["untraceable"] == 2


def test_p_change_reaches_the_call(model: Calls, x: Tensor) -> None:
    model.eval()
    surgery.set_dropout(model, "untraceable:dropout#0", mode="on", p=1.0)
    model.untraceable.lin.bias.data.fill_(1.0)

    out = model.untraceable(x.abs())

    assert torch.equal(out, torch.zeros_like(out))


def test_restore_puts_back_the_same_owner_and_behaviour(
    model: Calls, x: Tensor
) -> None:
    owner = model.traceable
    reference = copy.deepcopy(model)

    surgery.strip(model)
    surgery.restore(model)

    assert model.traceable is owner
    assert all(site.state == "original" for site in surgery.find(model))
    torch.manual_seed(3)
    expected = reference(x)
    torch.manual_seed(3)
    assert torch.equal(model(x), expected)


def test_unknown_probability_cannot_be_forced_on() -> None:
    class Computed(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > 1e9:
                x = x * 2
            return F.dropout(x, x.abs().mean().item() / 10, self.training)

    model = nn.Sequential(Computed())

    with pytest.raises(surgery.SiteError, match=r"0:dropout#0.*pass p="):
        surgery.set_dropout(model, mode="on")
    surgery.set_dropout(model, mode="on", p=0.5)
    assert count_random_ops(model.eval(), torch.ones(8)).count == 1


_CALLS = {
    "dropout1d": (lambda x, t: F.dropout1d(x, 0.5, t), (2, 3, 8)),
    "dropout2d": (lambda x, t: F.dropout2d(x, 0.5, t), (2, 3, 4, 4)),
    "dropout3d": (lambda x, t: F.dropout3d(x, 0.5, t), (2, 3, 2, 4, 4)),
    "F.feature_alpha_dropout": (
        lambda x, t: F.feature_alpha_dropout(x, 0.5, t),
        (2, 3, 4, 4),
    ),
    "torch.feature_dropout": (lambda x, t: torch.feature_dropout(x, 0.5, t), (2, 3, 4)),
    "torch.alpha_dropout": (lambda x, t: torch.alpha_dropout(x, 0.5, t), (2, 8)),
    "torch.feature_alpha_dropout": (
        lambda x, t: torch.feature_alpha_dropout(x, 0.5, t),
        (2, 3, 4),
    ),
    "torch.dropout_": (lambda x, t: torch.dropout_(x.clone(), 0.5, t), (2, 8)),
    "inplace": (lambda x, t: F.dropout(x.clone(), 0.5, t, inplace=True), (2, 8)),
}


@pytest.mark.parametrize("name", list(_CALLS))
@pytest.mark.parametrize("traceable", [True, False])
def test_every_dropout_function(name: str, traceable: bool) -> None:
    call, shape = _CALLS[name]

    class Owner(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            if not traceable and x.sum() > 1e9:
                x = x * 2
            return call(x, self.training)

    # The call is written through a lambda: only a forward pass reveals it.
    model = nn.Sequential(Owner()).train()
    x = torch.randn(shape)
    reference = copy.deepcopy(model)
    assert surgery.find(model) == []

    sites = surgery.find(model, example_inputs=x)
    assert len(sites) == 1
    assert sites[0].kind == "functional"

    surgery.gate(model, example_inputs=x)
    torch.manual_seed(1)
    expected = reference(x)
    torch.manual_seed(1)
    assert torch.equal(model(x), expected)

    surgery.set_dropout(model, mode="off")
    assert count_random_ops(model, x).count == 0
    assert torch.equal(model(x), reference.eval()(x))


@pytest.mark.parametrize("manager", [surgery.dropout_off, surgery.dropout_on])
def test_context_managers_put_call_sites_back(
    model: Calls, x: Tensor, manager: object
) -> None:
    surgery.set_dropout(model, "traceable:dropout#1", mode="on", p=0.4)
    before = surgery.find(model)
    model.eval()

    def body() -> None:
        with manager(model):  # type: ignore[operator]
            drawn = count_random_ops(model, x).count
            assert drawn == (0 if manager is surgery.dropout_off else 6)
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        body()

    assert surgery.find(model) == before
    assert count_random_ops(model, x).count == 1


def test_a_probability_passed_through_a_local_is_not_counted_twice() -> None:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_dropout = nn.Dropout(0.1)

        def forward(self, x: Tensor) -> Tensor:
            p = self.attn_dropout.p if self.training else 0.0
            return F.scaled_dot_product_attention(x, x, x, dropout_p=p)

    model = nn.Sequential(Attention())

    assert [(site.path, site.kind) for site in surgery.find(model)] == [
        ("0.attn_dropout", "read_p")
    ]


def test_a_compiled_model_is_rewritten_through_its_wrapper() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    compiled = torch.compile(model, backend="eager")

    assert [site.path for site in surgery.find(compiled)] == ["1"]
    assert surgery.strip(compiled) is compiled
    assert isinstance(model[1], surgery.StrippedDropout)
    assert count_random_ops(compiled, torch.ones(2, 4)).count == 0
