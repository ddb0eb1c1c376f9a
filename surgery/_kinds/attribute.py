"""Kind: a float attribute that the owner's code uses as a drop probability.

``nn.MultiheadAttention.dropout``, ``nn.LSTM.dropout`` and the
``attention_dropout`` floats of transformers attention modules are read by
forward code and passed on (to ``scaled_dot_product_attention``, to
``F.dropout``, to a fused RNN kernel). Llama-style models have no other
dropout. Gating rewrites the float; the original value is kept in a small
record on the owner, outside ``state_dict``.

Which float attributes are probabilities is decided by name
(:func:`register_dropout_attribute` adds patterns); ``layerdrop`` is not
dropout and is never taken.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from .._gate import kind_of
from .._site import Mode, Site, State
from .._tree import ModuleIndex, join, qualname
from .base import Hold, HoldAttribute, RecordKind, Undo

__all__ = ["FloatAttributeKind", "is_dropout_attribute", "register_dropout_attribute"]

_PATTERNS: list[re.Pattern[str]] = [
    re.compile(r".*dropout.*"),
    re.compile(r"(.*_)?drop(_.*)?"),
    re.compile(r"p_drop.*"),
]
_NEVER = re.compile(r".*layer_?drop.*")
_RECORDS = "_surgery_attrs"


def register_dropout_attribute(pattern: str) -> None:
    """Treat float attributes whose name fully matches ``pattern`` as dropout.

    Example:
        >>> register_dropout_attribute(r"noise_rate")
    """
    _PATTERNS.append(re.compile(pattern))


def _is_probability(value: object) -> bool:
    return type(value) is float and 0.0 <= value <= 1.0


def is_dropout_attribute(owner: nn.Module, name: str) -> bool:
    """True if ``owner.<name>`` is a float dropout site (or was one before surgery)."""
    if name in _records(owner):
        return True
    return _is_probability(owner.__dict__.get(name)) and _is_dropout_name(name)


def _is_dropout_name(name: str) -> bool:
    if name.startswith("_") or _NEVER.fullmatch(name):
        return False
    return any(pattern.fullmatch(name) for pattern in _PATTERNS)


@dataclass
class _Record:
    """What surgery did to one float attribute."""

    original: float
    state: State
    mode: Mode | None
    rate: float

    @property
    def value(self) -> float:
        """What the attribute holds while in this state."""
        if self.state == "stripped" or self.mode == "off":
            return 0.0
        return self.rate


class FloatAttributeKind(RecordKind):
    """Float drop probabilities held by any module and read by its forward."""

    name = "attribute"
    reads_through_owner = True
    mechanism = "attribute rewrite"

    def discover(self, index: ModuleIndex, claimed: set[int]) -> Iterator[Site]:
        for path, owner in index:
            if id(owner) in claimed or kind_of(owner) is not None:
                continue
            records = _records(owner)
            # Only float attributes can be sites: picking them out first keeps
            # the dozen dicts every module holds out of the per-name checks.
            names = [
                name
                for name, value in vars(owner).items()
                if type(value) is float or name in records
            ]
            for name in names:
                record = records.get(name)
                if record is not None:
                    yield self._site(index, path, owner, name, record)
                elif _is_probability(getattr(owner, name)) and _is_dropout_name(name):
                    yield self._site(index, path, owner, name, None)

    def _site(
        self,
        index: ModuleIndex,
        path: str,
        owner: nn.Module,
        name: str,
        record: _Record | None,
    ) -> Site:
        value = float(getattr(owner, name))
        return Site(
            path=join(path, name),
            kind=self.name,
            owner=path,
            cls=qualname(owner),
            p=record.rate if record and record.state == "gated" else value,
            original_p=record.original if record else value,
            state=record.state if record else "original",
            mode=record.mode if record else None,
            mechanism=self.mechanism,
            aliases=tuple(join(alias, name) for alias in index.aliases(owner)),
            module=owner,
        )

    def hold(self, index: ModuleIndex, site: Site) -> Hold | None:
        owner, name = _locate(index, site)
        return HoldAttribute(owner, name)

    def _write(
        self,
        index: ModuleIndex,
        site: Site,
        *,
        state: State,
        mode: Mode | None,
        rate: float,
    ) -> Undo:
        owner, name = _locate(index, site)
        records = _records(owner, create=True)
        before_value = getattr(owner, name)
        before_record = records.get(name)
        original = before_record.original if before_record else float(before_value)

        if state == "original":
            records.pop(name, None)
            setattr(owner, name, original)
        else:
            record = _Record(original, state, mode, rate)
            records[name] = record
            setattr(owner, name, record.value)

        def undo() -> None:
            if before_record is None:
                records.pop(name, None)
            else:
                records[name] = before_record
            setattr(owner, name, before_value)

        return undo


def _locate(index: ModuleIndex, site: Site) -> tuple[nn.Module, str]:
    return index.get(site.owner), site.path.rpartition(".")[2]


def _records(owner: nn.Module, *, create: bool = False) -> dict[str, _Record]:
    records: dict[str, _Record] | None = owner.__dict__.get(_RECORDS)
    if records is None:
        records = {}
        if create:
            # A plain attribute: never a state_dict key, copied by deepcopy.
            owner.__dict__[_RECORDS] = records
    return records
