"""Kind: a dropout function called in forward code (``F.dropout(x, 0.1, ...)``).

A call is a site of the module whose forward makes it, named
``<owner>:<function>#<k>`` (the k-th call of that function there, counting
from 0; ``:dropout#0`` for the root). Calls whose probability comes from a
float attribute or a dropout module's ``.p`` are left to those kinds.

Two mechanisms control calls, chosen per owner:

- ``fx rewrite``: the owner is traced (its children left whole) and each call
  becomes a gate submodule, so the result also scripts and exports cleanly;
- ``eager intercept``: when the owner cannot be traced faithfully, or is the
  model itself, its calls are rewritten as they happen. The site's mechanism
  says why fx was not used.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Iterator

from torch import fx, nn
from torch.nn.modules.dropout import _DropoutNd

from .. import _fxsites, _intercept
from .._calls import (
    STOCHASTIC_DEPTH,
    SourceCall,
    calls_in_forward,
    evaluate_probability,
)
from .._errors import SiteError
from .._fx import trace_owner
from .._gate import GatedDropout, StrippedDropout, kind_of
from .._site import Mode, Site, State
from .._tree import ModuleIndex, qualname, replace_module
from .attribute import is_dropout_attribute
from .base import Hold, RecordKind, Undo

__all__ = ["FunctionalKind", "call_path"]

FX = "fx rewrite"
EAGER = "eager intercept"

# Whether each owner traces is a property of its code: decide once per module.
_MECHANISM: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def call_path(owner: str, call: str) -> str:
    """The site path of call ``"dropout#0"`` made by the module at ``owner``."""
    return f"{owner}:{call}"


def _split(site: Site) -> str:
    return site.path.rpartition(":")[2]


class FunctionalKind(RecordKind):
    """Dropout functions called by a module's own forward code."""

    name = "functional"
    reads_through_owner = False

    def discover(self, index: ModuleIndex, claimed: set[int]) -> Iterator[Site]:
        for path, owner in index:
            if id(owner) in claimed or kind_of(owner) is not None:
                continue
            fx_record = _fxsites.record_of(owner)
            if fx_record is not None:
                yield from self._traced_sites(index, path, owner, fx_record)
                continue
            yield from self._source_sites(index, path, owner)

    def _traced_sites(
        self, index: ModuleIndex, path: str, owner: nn.Module, record: _fxsites.FxRecord
    ) -> Iterator[Site]:
        for call in record.calls:
            gate = _fxsites.gate_of(owner, call)  # type: ignore[arg-type]
            state: State = "original"
            mode: Mode | None = None
            if call in record.stripped:
                state = "stripped"
            elif not gate.__dict__.get("_surgery_untouched", False):
                state, mode = "gated", gate.mode  # type: ignore[assignment]
            yield self._site(
                index,
                path,
                record.original,
                call,
                FX,
                p=0.0 if state == "stripped" else gate.rate,
                original_p=gate.__dict__["_surgery_original_p"],
                state=state,
                mode=mode,
                module=owner,
            )

    def _source_sites(
        self, index: ModuleIndex, path: str, owner: nn.Module
    ) -> Iterator[Site]:
        record = _intercept.record_of(owner)
        states = dict(record.states) if record else {}
        seen: set[str] = set()
        for call in _own_calls(owner):
            key = f"{call.name}#{call.index}"
            seen.add(key)
            p = evaluate_probability(owner, call.p, call.name)
            yield self._from_state(index, path, owner, key, p, states.get(key))
        for key, state in states.items():
            if key not in seen:
                yield self._from_state(index, path, owner, key, state.original_p, state)

    def _from_state(
        self,
        index: ModuleIndex,
        path: str,
        owner: nn.Module,
        key: str,
        p: float,
        state: _intercept.CallState | None,
    ) -> Site:
        mechanism = mechanism_for(owner, path)
        if state is None:
            return self._site(
                index,
                path,
                owner,
                key,
                mechanism,
                p=p,
                original_p=p,
                state="original",
                mode=None,
                module=owner,
            )
        return self._site(
            index,
            path,
            owner,
            key,
            EAGER + mechanism.removeprefix(EAGER),
            p=0.0 if state.state == "stripped" else state.rate,
            original_p=state.original_p,
            state=state.state,
            mode=state.mode,
            module=owner,
        )

    def _site(
        self,
        index: ModuleIndex,
        path: str,
        original: nn.Module,
        call: str,
        mechanism: str,
        *,
        p: float,
        original_p: float,
        state: State,
        mode: Mode | None,
        module: nn.Module,
    ) -> Site:
        return Site(
            path=call_path(path, call),
            kind=self.name,
            owner=path,
            cls=f"{qualname(original)}.forward",
            p=p,
            original_p=original_p,
            state=state,
            mode=mode,
            mechanism=mechanism,
            aliases=tuple(call_path(a, call) for a in index.aliases(module)),
            module=original,
        )

    def observed_site(
        self, index: ModuleIndex, owner: str, call: str, p: float
    ) -> Site:
        """A call seen at run time that the forward source does not show."""
        module = index.get(owner)
        record = _intercept.record_of(module)
        state = record.states.get(call) if record else None
        site = self._from_state(index, owner, module, call, p, state)
        if state is None:
            mechanism = (
                f"{EAGER} (found at run time, outside {type(module).__name__}.forward)"
            )
            return dataclasses.replace(site, mechanism=mechanism)
        return site

    @staticmethod
    def call_of_gate(index: ModuleIndex, owner: str, gate: str) -> str | None:
        """The site path of the traced call that the gate at ``gate`` stands for."""
        record = _fxsites.record_of(index.get(owner))
        name = gate.rpartition(".")[2]
        for call, gate_name in record.calls.items() if record else ():
            if gate_name == name:
                return call_path(owner, call)
        return None

    def hold(self, index: ModuleIndex, site: Site) -> Hold | None:
        return None

    def _write(
        self,
        index: ModuleIndex,
        site: Site,
        *,
        state: State,
        mode: Mode | None,
        rate: float,
    ) -> Undo:
        if state != "original" and site.mechanism.startswith("unsupported"):
            raise SiteError(
                f"{site.path}: {site.mechanism}. Make {site.cls} traceable by "
                "torch.fx, or call stochastic depth through a module"
            )
        if state == "gated" and mode == "on" and math.isnan(rate):
            raise SiteError(
                f"{site.path}: cannot force it on, its probability is only known "
                "at run time; pass p= with mode='on', or example_inputs= so "
                "surgery can observe it"
            )
        owner = index.get(site.owner)
        if site.mechanism == FX:
            return _set_traced(index, site, owner, state=state, mode=mode, rate=rate)
        return _set_intercepted(site, owner, state=state, mode=mode, rate=rate)


def _set_traced(
    index: ModuleIndex,
    site: Site,
    owner: nn.Module,
    *,
    state: State,
    mode: Mode | None,
    rate: float,
) -> Undo:
    converted_here = _fxsites.record_of(owner) is None
    module = _fxsites.convert(owner) if converted_here else owner
    record = _fxsites.record_of(module)
    if record is None or not isinstance(module, fx.GraphModule):
        raise SiteError(f"{site.owner} holds no traced graph")
    if converted_here:
        replace_module(index, owner, module)
    call = _split(site)
    gate = _fxsites.gate_of(module, call)
    before = (gate.mode, gate.rate, dict(gate.__dict__), set(record.stripped))

    record.stripped.discard(call)
    if state == "stripped":
        record.stripped.add(call)
    elif state == "original":
        gate.mode, gate.rate = "train", site.original_p
        gate.__dict__["_surgery_untouched"] = True
    else:
        gate.mode, gate.rate = mode or "train", rate
        gate.__dict__["_surgery_untouched"] = False
    _fxsites.rebuild(module)

    # With every call back as it was, the owner itself goes back.
    back_to_owner = _untouched(module)
    if back_to_owner:
        replace_module(index, module, record.original)
        record.original.training = module.training

    def undo() -> None:
        if back_to_owner:
            replace_module(index, record.original, module)
        gate.mode, gate.rate = before[0], before[1]
        gate.__dict__.update(before[2])
        record.stripped.clear()
        record.stripped.update(before[3])
        _fxsites.rebuild(module)
        if converted_here:
            replace_module(index, module, owner)

    return undo


def _untouched(module: fx.GraphModule) -> bool:
    record = _fxsites.record_of(module)
    if record is None or record.stripped:
        return False
    return all(
        _fxsites.gate_of(module, call).__dict__.get("_surgery_untouched", False)
        for call in record.calls
    )


def _set_intercepted(
    site: Site, owner: nn.Module, *, state: State, mode: Mode | None, rate: float
) -> Undo:
    record = _intercept.ensure_record(owner)
    call = _split(site)
    before = record.states.get(call)
    if state == "original":
        record.states.pop(call, None)
    else:
        record.states[call] = _intercept.CallState(state, mode, rate, site.original_p)
    _intercept.uninstall_if_idle(owner)

    def undo() -> None:
        again = _intercept.ensure_record(owner)
        if before is None:
            again.states.pop(call, None)
        else:
            again.states[call] = before
        _intercept.uninstall_if_idle(owner)

    return undo


def _own_calls(owner: nn.Module) -> list[SourceCall]:
    """The calls of ``owner.forward`` that no other kind controls."""
    return [call for call in calls_in_forward(type(owner)) if not _covered(owner, call)]


def _covered(owner: nn.Module, call: SourceCall) -> bool:
    for name in call.covered_by:
        value = getattr(owner, name, None)
        if isinstance(value, (_DropoutNd, GatedDropout, StrippedDropout)):
            return True
        if is_dropout_attribute(owner, name):
            return True
    return False


def mechanism_for(owner: nn.Module, path: str) -> str:
    """How the calls of ``owner`` are controlled, and why when not by fx."""
    if path == "":
        return f"{EAGER} (the model itself makes the call; fx would replace the root)"
    cached = _MECHANISM.get(owner)
    if cached is not None:
        return cached
    mechanism = _decide(owner)
    _MECHANISM[owner] = mechanism
    return mechanism


def _decide(owner: nn.Module) -> str:
    source = calls_in_forward(type(owner))
    if any(call.name == STOCHASTIC_DEPTH for call in source):
        unsupported_reason = "stochastic_depth cannot be intercepted"
    else:
        unsupported_reason = ""
    if any(_covered(owner, call) for call in source):
        reason = "some calls take their p from attributes, which fx would freeze"
    else:
        traced = trace_owner(owner)
        if traced.module is None:
            reason = traced.reason
        else:
            found = _fxsites.traced_calls(traced.module)
            written = {f"{c.name}#{c.index}" for c in source}
            if set(found) != written:
                reason = "the traced graph calls dropout a different number of times"
            elif any(math.isnan(p) for p in found.values()):
                reason = "a probability is computed at run time"
            else:
                return FX
    if unsupported_reason:
        return f"unsupported: {unsupported_reason} and {reason}"
    return f"{EAGER} ({reason})"
