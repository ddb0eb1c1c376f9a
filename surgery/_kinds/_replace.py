"""Shared machinery of the kinds whose site is a module that gets replaced."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from .._gate import GatedDropout, StrippedDropout, adopt, kind_of, original_of
from .._site import Mode, Site, State
from .._tree import ModuleIndex, parent_path, qualname, replace_module
from .base import Hold, HoldAttribute, Undo

__all__ = ["ModuleSwapKind"]


class ModuleSwapKind:
    """A kind whose sites are modules, gated or stripped by replacing them.

    Subclasses say which modules they claim, how to build the gate for one,
    and what mechanism to report; discovery, the swaps and restore are here.
    """

    name = "module"
    reads_through_owner = False
    mechanism = "module swap"

    def claims(self, index: ModuleIndex, path: str, module: nn.Module) -> bool:
        raise NotImplementedError

    def probability(self, module: nn.Module) -> float:
        return float(module.p)  # type: ignore[arg-type]  # _DropoutNd.p is a float

    def build_gate(self, module: nn.Module, *, mode: Mode, p: float) -> GatedDropout:
        raise NotImplementedError

    def discover(self, index: ModuleIndex, claimed: set[int]) -> Iterator[Site]:
        for path, module in index:
            if id(module) in claimed:
                continue
            made_by = kind_of(module)
            if made_by == self.name:
                claimed.add(id(module))
                yield self._record(index, path, module, original_of(module))
            elif made_by is None and self.claims(index, path, module):
                claimed.add(id(module))
                yield self._record(index, path, module, module)

    def _record(
        self, index: ModuleIndex, path: str, current: nn.Module, original: nn.Module
    ) -> Site:
        state: State = "original"
        mode: Mode | None = None
        original_p = self.probability(original)
        p = original_p
        if isinstance(current, GatedDropout):
            state, mode, p = "gated", current.mode, current.rate  # type: ignore[assignment]
            original_p = current.__dict__["_surgery_original_p"]
        elif isinstance(current, StrippedDropout):
            state, p = "stripped", 0.0
        return Site(
            path=path,
            kind=self.name,
            owner=parent_path(path),
            cls=qualname(original),
            p=p,
            original_p=original_p,
            state=state,
            mode=mode,
            mechanism=self.mechanism,
            aliases=index.aliases(current),
            module=original,
        )

    def strip(self, index: ModuleIndex, site: Site) -> Undo:
        original = index.get(site.path)
        # One stand-in per original, so stripping again (after a context
        # manager, say) puts back the very object that was there.
        stripped = original.__dict__.get("_surgery_stand_in")
        if not isinstance(stripped, StrippedDropout):
            stripped = StrippedDropout()
            original.__dict__["_surgery_stand_in"] = stripped
        adopt(stripped, original, self.name)
        return self._swap(index, original, stripped)

    def gate(self, index: ModuleIndex, site: Site, *, mode: Mode, p: float) -> Undo:
        original = index.get(site.path)
        original_p = self.probability(original)
        gate = self.build_gate(original, mode=mode, p=p)
        adopt(gate, original, self.name)
        gate.__dict__["_surgery_original_p"] = original_p
        undo_swap = self._swap(index, original, gate)

        def undo() -> None:
            undo_swap()
            if gate.kernel == "module":
                # The gate wrote its rate into the module it calls.
                setattr(original, gate.p_attr, original_p)

        return undo

    def configure(
        self, index: ModuleIndex, site: Site, *, mode: Mode, p: float
    ) -> Undo:
        gate = index.get(site.path)
        if not isinstance(gate, GatedDropout):
            raise TypeError(f"{site.path} is not gated")
        before_mode, before_rate = gate.mode, gate.rate
        gate.mode, gate.rate = mode, p

        def undo() -> None:
            gate.mode, gate.rate = before_mode, before_rate

        return undo

    def restore(self, index: ModuleIndex, site: Site) -> Undo:
        replacement = index.get(site.path)
        original = original_of(replacement)
        original.training = replacement.training
        if isinstance(replacement, GatedDropout) and replacement.kernel == "module":
            setattr(
                original,
                replacement.p_attr,
                replacement.__dict__["_surgery_original_p"],
            )
        return self._swap(index, replacement, original)

    def hold(self, index: ModuleIndex, site: Site) -> Hold | None:
        current = index.get(site.path)
        if isinstance(current, StrippedDropout):
            return None
        if isinstance(current, GatedDropout):
            return _HoldGate(current)
        return HoldAttribute(current, "p")

    @staticmethod
    def _swap(index: ModuleIndex, old: nn.Module, new: nn.Module) -> Undo:
        replace_module(index, old, new)

        def undo() -> None:
            replace_module(index, new, old)

        return undo


@dataclass
class _HoldGate:
    gate: GatedDropout

    def apply(self) -> None:
        self.gate._held = True

    def release(self) -> None:
        self.gate._held = False
