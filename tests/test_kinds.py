"""Every kind of site surgery finds without running the model, seen from outside.

Containers, shared and reused modules, modules read only for ``.p``, float
attributes of torch's own layers, drop-path classes from the registry, and the
promises that hold for all of them: ``state_dict``, hooks, ``training`` and
the ``meta`` device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import surgery
from surgery import GatedDropout, StrippedDropout, count_random_ops
from surgery.demo import build_demo_model, demo_inputs


def _run(model: nn.Module, *args: Tensor, seed: int = 3) -> Tensor:
    # Grad stays enabled: under no_grad torch's eval fast paths compute the
    # same function with different kernels, which is not bitwise comparable.
    torch.manual_seed(seed)
    out = model(*args)
    return (out[0] if isinstance(out, tuple) else out).detach()


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _same_state(model: nn.Module, before: dict[str, Tensor]) -> bool:
    after = model.state_dict()
    return list(after) == list(before) and all(
        torch.equal(after[key], value) for key, value in before.items()
    )


def _paths(model: nn.Module) -> dict[str, str]:
    return {site.path: site.kind for site in surgery.find(model)}


# --- containers, sharing, reuse -------------------------------------------------


class _Containers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.3))
        self.layers = nn.ModuleList([nn.Dropout(0.2), nn.Linear(6, 6)])
        self.heads = nn.ModuleDict({"a": nn.Dropout1d(0.4), "b": nn.Linear(6, 6)})

    def forward(self, x: Tensor) -> Tensor:
        x = self.seq(x)
        x = self.layers[1](self.layers[0](x))
        return self.heads["b"](self.heads["a"](x))


def test_sites_inside_sequential_modulelist_and_moduledict() -> None:
    model = _Containers().train()
    x = torch.randn(2, 3, 6)
    assert _paths(model) == {
        "seq.1": "module",
        "layers.0": "module",
        "heads.a": "module",
    }
    assert count_random_ops(model, x).by_module() == {
        "seq.1": 1,
        "layers.0": 1,
        "heads.a": 1,
    }
    reference = _run(model.eval(), x)
    original = _run(model.train(), x)

    surgery.gate(model)
    assert all(isinstance(m, GatedDropout) for m in (model.seq[1], model.layers[0]))
    assert isinstance(model.heads["a"], GatedDropout)
    assert torch.equal(_run(model, x), original)

    surgery.strip(model)
    assert count_random_ops(model, x).count == 0
    assert torch.equal(_run(model, x), reference)


class _Shared(nn.Module):
    """One dropout object registered under two paths, and called three times."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.a = nn.Linear(6, 6)
        self.b = nn.Sequential(nn.Linear(6, 6))
        self.b.add_module("drop", self.drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.a(x))
        x = self.drop(self.b[0](x))
        return self.b.drop(x)


def test_shared_module_is_one_site_with_aliases_and_stays_shared() -> None:
    model = _Shared().train()
    shared = model.drop
    x = torch.randn(4, 6)
    assert count_random_ops(model, x).count == 3
    original = _run(model, x)

    (site,) = surgery.find(model)
    assert (site.path, site.aliases, site.kind) == ("drop", ("b.drop",), "module")

    surgery.gate(model)
    assert isinstance(model.drop, GatedDropout)
    assert model.b.drop is model.drop
    assert torch.equal(_run(model, x), original)

    surgery.set_dropout(model, "b.drop", mode="off")
    assert model.drop.mode == "off"
    assert count_random_ops(model, x).count == 0

    surgery.strip(model)
    assert model.b.drop is model.drop
    assert isinstance(model.drop, StrippedDropout)

    surgery.restore(model, "b.drop")
    assert model.drop is shared
    assert model.b.drop is shared
    assert torch.equal(_run(model, x), original)


def test_module_called_several_times_per_forward() -> None:
    model = _Shared().train()
    x = torch.randn(4, 6)
    original = _run(model, x)
    reference = _run(model.eval(), x)

    surgery.gate(model.train())
    counter = count_random_ops(model, x)
    # The counter names a shared module by its first path.
    assert counter.by_module() == {"drop": 3}
    assert torch.equal(_run(model, x), original)

    surgery.strip(model)
    assert count_random_ops(model, x).count == 0
    assert torch.equal(_run(model, x), reference)


# --- modules read only for .p ---------------------------------------------------


class _Attention(nn.Module):
    """SDPA attention that reads ``attn_dropout.p`` and a float attribute."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_dropout = nn.Dropout(0.5)
        self.hidden_dropout = 0.5

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        # (batch, length, 3 * dim) -> 3 x (batch, heads, length, dim / heads)
        q, k, v = (
            self.qkv(x)
            .view(batch, length, 3, self.heads, dim // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout.p if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(batch, length, dim)
        return F.dropout(out, self.hidden_dropout, self.training)


def _attention() -> tuple[nn.Module, Tensor]:
    return nn.Sequential(_Attention()).train(), torch.randn(2, 5, 8)


def test_read_p_module_is_found_as_such() -> None:
    model, _ = _attention()
    assert _paths(model) == {
        "0.attn_dropout": "read_p",
        "0.hidden_dropout": "attribute",
    }


@pytest.mark.parametrize("verb", ["strip", "off"])
def test_read_p_replacement_answers_zero_so_attention_stops_dropping(
    verb: str,
) -> None:
    model, x = _attention()
    assert count_random_ops(model, x).by_module() == {"0": 2}
    surgery.strip(model, "0.hidden_dropout")

    if verb == "strip":
        surgery.strip(model, "0.attn_dropout")
        assert isinstance(model[0].attn_dropout, nn.Identity)
    else:
        surgery.set_dropout(model, "0.attn_dropout", mode="off")
    assert model[0].attn_dropout.p == 0.0
    assert count_random_ops(model, x).count == 0
    assert torch.equal(_run(model, x), _run(model.eval(), x))


def test_read_p_gate_is_bitwise_equal_and_restores() -> None:
    model, x = _attention()
    original_module = model[0].attn_dropout
    original = _run(model, x)

    surgery.gate(model)
    assert model[0].attn_dropout.p == 0.5
    assert torch.equal(_run(model, x), original)

    surgery.set_dropout(model, "0.attn_dropout", p=0.25)
    assert model[0].attn_dropout.p == 0.25
    surgery.restore(model)
    assert model[0].attn_dropout is original_module
    assert original_module.p == 0.5
    assert torch.equal(_run(model, x), original)


def test_read_p_on_drops_in_eval_and_holds_its_sibling() -> None:
    model, x = _attention()
    model.eval()
    reference = _run(model, x)

    surgery.gate(model)
    surgery.set_dropout(model, "0.attn_dropout", mode="on")
    counter = count_random_ops(model, x)
    # Only the attention drops: the float sibling is "train" and the model is
    # in eval mode, although its owner sees training=True during the forward.
    assert counter.count == 1
    assert counter.by_module() == {"0": 1}
    assert not torch.equal(_run(model, x), reference)
    assert not model[0].training
    assert model[0].hidden_dropout == 0.5
    assert model[0].attn_dropout.p == 0.5

    surgery.set_dropout(model, "0.hidden_dropout", mode="on")
    assert count_random_ops(model, x).count == 2

    surgery.set_dropout(model, mode="train")
    assert count_random_ops(model, x).count == 0
    assert torch.equal(_run(model, x), reference)


def test_demo_attention_stops_dropping_when_stripped() -> None:
    model = build_demo_model()
    x = demo_inputs()
    attention = "blocks.0.attn"
    assert count_random_ops(model, x).by_module()[attention] == 1

    surgery.strip(model, "*.attn_dropout")
    counts = count_random_ops(model, x).by_module()
    assert attention not in counts
    assert counts["blocks.0.attn.resid_dropout"] == 1


# --- float attributes ----------------------------------------------------------


def _mha() -> tuple[nn.Module, tuple[Tensor, ...]]:
    x = torch.randn(2, 5, 8)
    return nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True), (x, x, x)


def _rnn(cls: type[nn.RNNBase]) -> Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]:
    def build() -> tuple[nn.Module, tuple[Tensor, ...]]:
        return cls(4, 4, num_layers=3, dropout=0.5, batch_first=True), (
            torch.randn(2, 5, 4),
        )

    return build


def _encoder_layer() -> tuple[nn.Module, tuple[Tensor, ...]]:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, batch_first=True)
    return layer, (torch.randn(2, 5, 8),)


def _decoder_layer() -> tuple[nn.Module, tuple[Tensor, ...]]:
    layer = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.5, batch_first=True)
    return layer, (torch.randn(2, 5, 8), torch.randn(2, 4, 8))


def _transformer() -> tuple[nn.Module, tuple[Tensor, ...]]:
    model = nn.Transformer(8, 2, 1, 1, 16, dropout=0.5, batch_first=True)
    return model, (torch.randn(2, 5, 8), torch.randn(2, 4, 8))


class OwnerCase(NamedTuple):
    build: Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]
    attributes: list[str]
    drops_when_on: int
    """Random ops per forward with only the attributes on, in eval mode."""


ATTRIBUTE_OWNERS = {
    "MultiheadAttention": OwnerCase(_mha, ["dropout"], 1),
    # Three layers: dropout runs between layers, twice.
    "LSTM": OwnerCase(_rnn(nn.LSTM), ["dropout"], 2),
    "GRU": OwnerCase(_rnn(nn.GRU), ["dropout"], 2),
    "RNN": OwnerCase(_rnn(nn.RNN), ["dropout"], 2),
    "TransformerEncoderLayer": OwnerCase(_encoder_layer, ["self_attn.dropout"], 1),
    "TransformerDecoderLayer": OwnerCase(
        _decoder_layer, ["self_attn.dropout", "multihead_attn.dropout"], 2
    ),
    "Transformer": OwnerCase(
        _transformer,
        [
            "encoder.layers.0.self_attn.dropout",
            "decoder.layers.0.self_attn.dropout",
            "decoder.layers.0.multihead_attn.dropout",
        ],
        3,
    ),
}


def _attribute_values(model: nn.Module) -> dict[str, object]:
    return {
        site.path: getattr(model.get_submodule(site.owner), site.path.split(".")[-1])
        for site in surgery.find(model)
        if site.kind == "attribute"
    }


@pytest.fixture(params=sorted(ATTRIBUTE_OWNERS))
def owner_case(request: pytest.FixtureRequest) -> OwnerCase:
    case: OwnerCase = ATTRIBUTE_OWNERS[request.param]
    return case


def test_float_attributes_are_found(owner_case: OwnerCase) -> None:
    model, _ = owner_case.build()
    sites = [site for site in surgery.find(model) if site.kind == "attribute"]
    assert [site.path for site in sites] == owner_case.attributes
    assert all(site.p == 0.5 and site.state == "original" for site in sites)


def test_float_attribute_strip_runs_no_random_op_and_restores(
    owner_case: OwnerCase,
) -> None:
    model, args = owner_case.build()
    attributes = owner_case.attributes
    assert count_random_ops(model.train(), *args).count > 0
    reference = _run(model.eval(), *args)
    original = _run(model.train(), *args)

    surgery.strip(model)
    assert _attribute_values(model) == dict.fromkeys(attributes, 0.0)
    assert count_random_ops(model, *args).count == 0
    assert torch.equal(_run(model, *args), reference)

    surgery.restore(model)
    values = _attribute_values(model)
    assert values == dict.fromkeys(attributes, 0.5)
    assert all(type(value) is float for value in values.values())
    assert torch.equal(_run(model, *args), original)


def test_float_attribute_gate_is_bitwise_equal_and_remembers(
    owner_case: OwnerCase,
) -> None:
    model, args = owner_case.build()
    attributes = owner_case.attributes
    original = _run(model.train(), *args)

    surgery.gate(model)
    assert torch.equal(_run(model, *args), original)

    surgery.set_dropout(model, attributes, p=0.2)
    assert _attribute_values(model) == dict.fromkeys(attributes, 0.2)
    for site in surgery.find(model, attributes):
        assert (site.p, site.original_p, site.state, site.mode) == (
            0.2,
            0.5,
            "gated",
            "train",
        )

    surgery.set_dropout(model, mode="off")
    assert _attribute_values(model) == dict.fromkeys(attributes, 0.0)
    assert count_random_ops(model, *args).count == 0

    surgery.restore(model)
    assert _attribute_values(model) == dict.fromkeys(attributes, 0.5)
    assert torch.equal(_run(model, *args), original)


def test_float_attribute_on_drops_in_eval(owner_case: OwnerCase) -> None:
    model, args = owner_case.build()
    attributes = owner_case.attributes
    model.eval()
    reference = _run(model, *args)

    surgery.set_dropout(model, attributes, mode="on")
    with torch.no_grad():
        counter = count_random_ops(model, *args)
    assert counter.count == owner_case.drops_when_on
    assert not torch.equal(_run(model, *args), reference)
    assert not any(module.training for module in model.modules())
    assert _attribute_values(model) == dict.fromkeys(attributes, 0.5)


def test_encoder_layer_on_drops_in_eval_under_no_grad_despite_fast_path() -> None:
    layer, (x,) = _encoder_layer()
    model = nn.Sequential(layer).eval()
    with torch.no_grad():
        reference = model(x)
        surgery.set_dropout(model, mode="on")
        counter = count_random_ops(model, x)
        dropped = model(x)

    assert counter.count == 4
    assert set(counter.by_module()) == {
        "0.self_attn",
        "0.dropout",
        "0.dropout1",
        "0.dropout2",
    }
    assert not torch.equal(dropped, reference)
    assert not layer.training

    surgery.restore(model)
    with torch.no_grad():
        assert count_random_ops(model, x).count == 0
        assert torch.equal(model(x), reference)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_encoder_with_padding_mask_on_drops_in_eval_instead_of_nesting() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    x = torch.randn(2, 5, 8)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        reference = model(x, src_key_padding_mask=padding)

        # Only the second layer's attention is on: the encoder must still
        # not hand nested tensors to a layer that is forced to train.
        surgery.set_dropout(model, "layers.1.self_attn.dropout", mode="on")
        counter = count_random_ops(model, x, src_key_padding_mask=padding)
        dropped = model(x, src_key_padding_mask=padding)
    assert counter.by_module() == {"layers.1.self_attn": 1}
    assert not dropped.is_nested
    assert not any(module.training for module in model.modules())

    surgery.restore(model)
    with torch.no_grad():
        again = model(x, src_key_padding_mask=padding)
    assert torch.equal(again, reference)


def test_encoder_layer_module_site_on_alone_drops_in_eval() -> None:
    layer, (x,) = _encoder_layer()
    model = nn.Sequential(layer).eval()
    surgery.set_dropout(model, "0.dropout1", mode="on")
    with torch.no_grad():
        counter = count_random_ops(model, x)
    assert counter.by_module() == {"0.dropout1": 1}


def test_layerdrop_is_not_taken_for_dropout() -> None:
    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layerdrop = 0.1
            self.dropout = 0.2

    assert _paths(nn.Sequential(Decoder())) == {"0.dropout": "attribute"}


# --- drop-path registry ---------------------------------------------------------


class TimmStyleDropPath(nn.Module):
    """Drops whole samples of a residual branch, rescaling the survivors."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        survive = 1.0 - self.drop_prob
        # One Bernoulli draw per sample, broadcast over the other dimensions.
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(survive)
        if survive > 0.0 and self.scale_by_keep:
            mask.div_(survive)
        return x * mask


TimmStyleDropPath.__module__ = "timm.layers.drop"
TimmStyleDropPath.__qualname__ = "DropPath"


class VisionStyleStochasticDepth(nn.Module):
    """Randomly zeroes a residual branch per row, or for the whole batch."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        survive = 1.0 - self.p
        rows = self.mode == "row"
        shape = [x.shape[0] if rows else 1] + [1] * (x.ndim - 1)
        noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(survive)
        if survive > 0.0:
            noise.div_(survive)
        return x * noise


VisionStyleStochasticDepth.__module__ = "torchvision.ops.stochastic_depth"
VisionStyleStochasticDepth.__qualname__ = "StochasticDepth"


class _Residual(nn.Module):
    def __init__(self, drop: nn.Module) -> None:
        super().__init__()
        self.body = nn.Linear(6, 6)
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.body(x))


DROP_PATHS = {
    "timm": lambda: TimmStyleDropPath(0.5),
    "timm-unscaled": lambda: TimmStyleDropPath(0.5, scale_by_keep=False),
    "torchvision-row": lambda: VisionStyleStochasticDepth(0.5, "row"),
    "torchvision-batch": lambda: VisionStyleStochasticDepth(0.5, "batch"),
}


@pytest.mark.parametrize("name", sorted(DROP_PATHS))
def test_drop_path_classes_recognised_by_name_and_gated_bitwise(name: str) -> None:
    drop = DROP_PATHS[name]()
    model = nn.Sequential(_Residual(drop), _Residual(DROP_PATHS[name]())).train()
    x = torch.randn(16, 3, 6)
    original = _run(model, x, seed=11)
    reference = _run(model.eval(), x)
    assert not torch.equal(original, reference)

    (site, _) = surgery.find(model.train())
    assert (site.path, site.kind, site.p) == ("0.drop", "drop_path", 0.5)
    assert site.cls == type(drop).__module__ + "." + type(drop).__qualname__

    surgery.gate(model)
    gate = model[0].drop
    assert isinstance(gate, GatedDropout)
    assert gate.kernel != "module", "the known classes are reproduced, not called"
    assert torch.equal(_run(model, x, seed=11), original)
    assert torch.equal(_run(model.eval(), x), reference)

    surgery.set_dropout(model, mode="on")
    assert count_random_ops(model, x).count == 2

    surgery.strip(model.train())
    assert model[0].drop.drop_prob == 0.0
    assert model[0].drop.p == 0.0
    assert count_random_ops(model, x).count == 0
    assert torch.equal(_run(model, x), reference)

    surgery.restore(model)
    assert model[0].drop is drop
    assert torch.equal(_run(model, x, seed=11), original)


class TimmStyleDropBlock(nn.Module):
    """Zeroes square blocks of feature maps, renormalising what is kept."""

    def __init__(self, drop_prob: float = 0.1, block_size: int = 3) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.block_size = block_size

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        # Block centres drawn so that about drop_prob of the map is covered.
        centres = (torch.rand_like(x) < self.drop_prob / self.block_size**2).to(x.dtype)
        covered = F.max_pool2d(
            centres, self.block_size, stride=1, padding=self.block_size // 2
        )
        keep = 1.0 - covered
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


TimmStyleDropBlock.__module__ = "timm.layers.drop"
TimmStyleDropBlock.__qualname__ = "DropBlock2d"


def test_drop_block_is_gated_by_calling_it() -> None:
    drop = TimmStyleDropBlock(0.3)
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), drop).train()
    x = torch.randn(2, 2, 8, 8)
    original = _run(model, x)
    reference = _run(model.eval(), x)
    assert not torch.equal(original, reference)

    (site,) = surgery.find(model.train())
    assert (site.path, site.kind, site.p) == ("1", "drop_path", 0.3)

    surgery.gate(model)
    assert torch.equal(_run(model, x), original)
    assert torch.equal(_run(model.eval(), x), reference)

    surgery.set_dropout(model, mode="on", p=0.5)
    assert drop.drop_prob == 0.5
    assert count_random_ops(model, x).count == 1
    assert not drop.training

    surgery.strip(model.train())
    assert count_random_ops(model, x).count == 0
    assert torch.equal(_run(model, x), reference)

    surgery.restore(model)
    assert model[1] is drop
    assert drop.drop_prob == 0.3
    assert torch.equal(_run(model, x), original)


class SkipBranch(nn.Module):
    """A user's own stochastic depth: skips the branch for the whole batch."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if self.training and torch.rand(()) < self.rate:
            return torch.zeros_like(x)
        return x


def test_user_drop_path_class_via_register_drop_path() -> None:
    model = nn.Sequential(_Residual(SkipBranch(0.5))).train()
    x = torch.randn(4, 6)
    assert surgery.find(model) == []

    surgery.register_drop_path(SkipBranch, p_attr="rate")
    (site,) = surgery.find(model)
    assert (site.path, site.kind, site.p) == ("0.drop", "drop_path", 0.5)
    original = [_run(model, x, seed=seed) for seed in range(6)]

    surgery.gate(model)
    assert all(
        torch.equal(_run(model, x, seed=seed), out) for seed, out in enumerate(original)
    )
    surgery.set_dropout(model, p=0.0)
    assert model[0].drop.inner.rate == 0.0

    surgery.strip(model)
    assert model[0].drop.drop_prob == 0.0
    assert count_random_ops(model, x).count == 0

    surgery.restore(model)
    assert isinstance(model[0].drop, SkipBranch)
    assert model[0].drop.rate == 0.5


def test_register_drop_path_rejects_unknown_kernel() -> None:
    with pytest.raises(ValueError, match="kernel must be one of"):
        surgery.register_drop_path("mypkg.Drop", kernel="gaussian")


# --- state_dict, hooks, training, meta ----------------------------------------


VERBS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "strip": surgery.strip,
    "gate": surgery.gate,
    "on": lambda model: surgery.set_dropout(model, mode="on", p=0.3),
    "off": lambda model: surgery.set_dropout(model, mode="off"),
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_state_dict_is_unchanged_and_checkpoints_load_both_ways(verb: str) -> None:
    model = build_demo_model()
    before = _state(model)

    VERBS[verb](model)
    assert _same_state(model, before)

    fresh = build_demo_model(seed=1)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert _same_state(fresh, before)

    other = build_demo_model(seed=2)
    model.load_state_dict(other.state_dict(), strict=True)
    assert _same_state(model, other.state_dict())

    surgery.restore(model)
    assert _same_state(model, other.state_dict())


def test_hooks_and_training_flag_carry_over_to_the_replacement() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Dropout(0.5)).train()
    model[2].eval()
    calls: list[str] = []
    pre = model[1].register_forward_pre_hook(lambda m, a: calls.append("pre"))
    model[1].register_forward_hook(lambda m, a, o: calls.append("post"))
    x = torch.randn(2, 4)

    surgery.gate(model)
    assert model[1].training
    assert not model[2].training
    model(x)
    assert calls == ["pre", "post"]

    pre.remove()
    surgery.strip(model)
    assert not model[2].training
    model(x)
    assert calls == ["pre", "post", "post"]

    surgery.restore(model)
    assert not model[2].training
    assert type(model[2]) is nn.Dropout
    model(x)
    assert calls == ["pre", "post", "post", "post"]


def test_meta_model_without_allocating_then_to_empty_and_load() -> None:
    reference = build_demo_model()
    checkpoint = reference.state_dict()
    x = demo_inputs()
    with torch.device("meta"):
        model = build_demo_model()
    assert all(t.is_meta for t in model.state_dict().values())

    assert [s.path for s in surgery.find(model)] == [
        s.path for s in surgery.find(reference)
    ]
    surgery.strip(model)
    surgery.restore(model)
    surgery.gate(model)
    surgery.set_dropout(model, "blocks.*", mode="off")
    assert all(t.is_meta for t in model.state_dict().values())
    assert list(model.state_dict()) == list(checkpoint)

    model.to_empty(device="cpu")
    model.load_state_dict(checkpoint, strict=True)
    surgery.set_dropout(model, mode="off")
    surgery.restore(model)
    assert torch.equal(_run(model.eval(), x), _run(reference.eval(), x))
    model.train()
    assert torch.equal(_run(model, x), _run(reference.train(), x))


def test_meta_model_with_float_attributes_and_read_p() -> None:
    with torch.device("meta"):
        model = nn.Sequential(_Attention(), nn.LSTM(8, 8, 2, dropout=0.3))
    surgery.set_dropout(model, mode="on", p=0.1)
    assert {site.p for site in surgery.find(model)} == {0.1}
    surgery.strip(model)
    surgery.restore(model)
    assert model[1].dropout == 0.3
    assert model[0].attn_dropout.p == 0.5


class ScheduledDropPath(nn.Module):
    """A user's drop-path that keeps a step counter as a persistent buffer."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.register_buffer("step", torch.zeros((), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.step += 1
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = x.new_empty(x.shape[0], 1).bernoulli_(1 - self.drop_prob)
        return x * keep / (1 - self.drop_prob)


surgery.register_drop_path(ScheduledDropPath)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_state_of_a_replaced_stateful_module_is_kept_and_moves(verb: str) -> None:
    model = nn.Sequential(nn.Linear(4, 4), ScheduledDropPath(0.5)).train()
    original = model[1]
    model(torch.randn(3, 4))
    before = _state(model)
    assert list(before) == ["0.weight", "0.bias", "1.step"]

    VERBS[verb](model)
    assert _same_state(model, before)
    fresh = nn.Sequential(nn.Linear(4, 4), ScheduledDropPath(0.5))
    fresh.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(fresh.state_dict(), strict=True)

    model.to(torch.float64)
    surgery.restore(model)
    assert model[1] is original
    assert original.step.dtype == torch.float64
    assert original.step.item() == 1.0
    assert list(model.state_dict()) == list(before)
