"""Properties that hold for any module tree, checked on random ones by Hypothesis.

A tree nests ``Sequential``, ``ModuleList`` and residual blocks around leaves:
linear layers, activations, every built-in dropout class (in place or not),
a dropout module called twice, ``nn.MultiheadAttention`` and ``nn.LSTM`` with
float dropout attributes, and a registered drop-path. For every such tree:

- strip runs no random op in train mode and computes the dropout-free
  function (the original in eval mode: the trees hold no batch norm);
- gate draws the same numbers as the original, so outputs are bitwise equal
  under a seed;
- restore brings back the same modules, outputs and ``state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import surgery
from surgery import count_random_ops

WIDTH = 6
SHAPE = (4, 3, WIDTH)  # (batch, time, features)

DROPOUTS = {
    "Dropout": nn.Dropout,
    "Dropout1d": nn.Dropout1d,
    "Dropout2d": nn.Dropout2d,
    "Dropout3d": nn.Dropout3d,
    "AlphaDropout": nn.AlphaDropout,
    "FeatureAlphaDropout": nn.FeatureAlphaDropout,
}
# The input rank each class expects; inputs are reshaped to it and back.
VIEWS: dict[str, tuple[int, ...]] = {
    "Dropout2d": (SHAPE[0], SHAPE[1], 2, 3),
    "Dropout3d": (SHAPE[0], SHAPE[1], 1, 2, 3),
}


class PerSampleDropPath(nn.Module):
    """Drops a whole sample's branch, scaling the survivors by ``1 / keep``."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        if keep > 0.0:
            mask.div_(keep)
        return x * mask


surgery.register_drop_path(PerSampleDropPath, p_attr="drop_prob", kernel="drop_path")


class Shaped(nn.Module):
    """Runs a dropout module on the input rank its class documents."""

    def __init__(self, name: str, p: float, inplace: bool) -> None:
        super().__init__()
        self.view = VIEWS.get(name, SHAPE)
        self.drop = DROPOUTS[name](p, inplace=inplace)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(x.reshape(self.view)).reshape(x.shape)


class Twice(nn.Module):
    """One dropout object, called twice in one forward."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.linear = nn.Linear(WIDTH, WIDTH)
        self.drop = nn.Dropout(p)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.linear(self.drop(x)))


class SelfAttention(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(WIDTH, 2, dropout=p, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.attn(x, x, x, need_weights=False)[0]
        return out


class Recurrent(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.rnn = nn.LSTM(WIDTH, WIDTH, num_layers=2, dropout=p, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.rnn(x)[0]
        return out


class Residual(nn.Module):
    def __init__(self, body: nn.Module, drop_path: float | None) -> None:
        super().__init__()
        self.body = body
        if drop_path is not None:
            self.drop_path = PerSampleDropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        branch = self.body(x)
        if hasattr(self, "drop_path"):
            branch = self.drop_path(branch)
        return x + branch


class Stack(nn.Module):
    """Children held in a ModuleList, applied in order."""

    def __init__(self, children: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(children)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}

probabilities = st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0])
dropout_leaves = st.tuples(
    st.just("dropout"), st.sampled_from(sorted(DROPOUTS)), probabilities, st.booleans()
)
leaves = st.one_of(
    st.just(("linear",)),
    st.tuples(st.just("act"), st.sampled_from(sorted(ACTIVATIONS))),
    # Listed twice: dropout modules are what the properties are about.
    dropout_leaves,
    dropout_leaves,
    st.tuples(st.just("twice"), probabilities),
    st.tuples(st.just("mha"), probabilities),
    st.tuples(st.just("lstm"), probabilities),
)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.tuples(st.just("seq"), st.lists(children, min_size=1, max_size=3)),
        st.tuples(st.just("list"), st.lists(children, min_size=1, max_size=3)),
        st.tuples(st.just("residual"), children, st.none() | probabilities),
    ),
    max_leaves=8,
)


# One tree with every leaf, so each run covers every class at least once.
EVERY_LEAF: tuple[Any, ...] = (
    "seq",
    [
        ("residual", ("list", [("linear",), ("act", "gelu")]), 0.5),
        *(
            ("dropout", name, 0.5, index % 2 == 0)
            for index, name in enumerate(DROPOUTS)
        ),
        ("twice", 0.5),
        ("residual", ("mha", 0.5), None),
        ("lstm", 0.5),
        ("act", "tanh"),
    ],
)


def build(spec: tuple[Any, ...]) -> nn.Module:
    """The module a spec describes; weights come from the global seed."""
    match spec:
        case ("linear",):
            return nn.Linear(WIDTH, WIDTH)
        case ("act", name):
            return ACTIVATIONS[name]()
        case ("dropout", name, p, inplace):
            if name in VIEWS or inplace:
                # In-place dropout must not write into the caller's input.
                return nn.Sequential(nn.Linear(WIDTH, WIDTH), Shaped(name, p, inplace))
            return DROPOUTS[name](p)
        case ("twice", p):
            return Twice(p)
        case ("mha", p):
            return SelfAttention(p)
        case ("lstm", p):
            return Recurrent(p)
        case ("seq", children):
            return nn.Sequential(*(build(child) for child in children))
        case ("list", children):
            return Stack([build(child) for child in children])
        case ("residual", child, drop_path):
            return Residual(build(child), drop_path)
    raise AssertionError(f"unknown spec {spec!r}")


def _model(spec: tuple[Any, ...]) -> nn.Module:
    torch.manual_seed(0)
    # A leading linear layer: the input the test passes is never a leaf that
    # an in-place dropout could write into.
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), build(spec)).train()


def _run(model: nn.Module, x: Tensor, seed: int = 1) -> Tensor:
    # Grad stays enabled: under no_grad nn.MultiheadAttention takes a fused
    # eval path whose results are close to, not bitwise equal to, the plain one.
    torch.manual_seed(seed)
    return model(x.clone()).detach()


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _same_state(model: nn.Module, before: dict[str, Tensor]) -> bool:
    after = model.state_dict()
    return list(after) == list(before) and all(
        torch.equal(after[key], value) for key, value in before.items()
    )


PROPERTY = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(spec=trees)
@example(spec=EVERY_LEAF)
def test_strip_runs_no_random_op_and_equals_the_dropout_free_model(
    spec: tuple[Any, ...],
) -> None:
    model = _model(spec)
    x = torch.randn(SHAPE)
    reference = _run(model.eval(), x)

    surgery.strip(model.train())

    assert count_random_ops(model, x.clone()).count == 0
    assert torch.equal(_run(model, x), reference)
    assert all(site.state == "stripped" for site in surgery.find(model))


@PROPERTY
@given(spec=trees)
@example(spec=EVERY_LEAF)
def test_gate_is_bitwise_equal_under_a_seed(spec: tuple[Any, ...]) -> None:
    model = _model(spec)
    x = torch.randn(SHAPE)
    original_train, original_eval = _run(model, x), _run(model.eval(), x)
    draws = count_random_ops(model.train(), x.clone()).count

    surgery.gate(model)

    assert count_random_ops(model, x.clone()).count == draws
    assert torch.equal(_run(model, x), original_train)
    assert torch.equal(_run(model.eval(), x), original_eval)
    surgery.set_dropout(model.train(), mode="off")
    assert count_random_ops(model, x.clone()).count == 0
    assert torch.equal(_run(model, x), original_eval)


@PROPERTY
@given(spec=trees, strip_first=st.booleans())
@example(spec=EVERY_LEAF, strip_first=True)
def test_restore_brings_back_modules_outputs_and_state(
    spec: tuple[Any, ...], strip_first: bool
) -> None:
    model = _model(spec)
    x = torch.randn(SHAPE)
    original = _run(model, x)
    modules = [(path, id(m)) for path, m in model.named_modules()]
    state = _state(model)
    sites = surgery.find(model)

    if strip_first:
        surgery.strip(model)
    surgery.set_dropout(model, mode="on", p=0.3)
    assert _same_state(model, state)
    surgery.restore(model)

    assert [(path, id(m)) for path, m in model.named_modules()] == modules
    assert _same_state(model, state)
    assert surgery.find(model) == sites
    assert torch.equal(_run(model, x), original)
