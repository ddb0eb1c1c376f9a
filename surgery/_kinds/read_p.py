"""Kind: a dropout module whose owner reads its ``.p`` (and may never call it).

GPT-2 and BERT attention pass ``self.attn_dropout.p if self.training else 0.0``
to ``scaled_dot_product_attention``. The replacement must keep answering
``.p``, answer ``0.0`` when off or stripped, and forcing it on in eval mode
means letting the owner see ``training=True`` for the length of its forward.

Whether an owner reads ``.p`` is decided from its class source
(``.<name>.p``); a class without source is assumed not to.
"""

from __future__ import annotations

import functools
import inspect
import re

from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from .._gate import GatedDropout
from .._site import Mode
from .._tree import ModuleIndex
from ._replace import ModuleSwapKind

__all__ = ["ReadForPKind", "owner_reads_p"]


def owner_reads_p(index: ModuleIndex, path: str) -> bool:
    """True if the code of the module holding ``path`` reads ``<name>.p``."""
    for alias in index.paths.get(id(index.get(path)), [path]):
        owner_path, _, name = alias.rpartition(".")
        owner_cls: type = type(index.get(owner_path))
        if name and _class_reads_p(owner_cls, name):
            return True
    return False


@functools.lru_cache(maxsize=4096)
def _class_reads_p(cls: type, name: str) -> bool:
    pattern = re.compile(rf"\.{re.escape(name)}\.p\b")
    for klass in cls.__mro__:
        if klass.__module__.startswith("torch.nn.") or klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


class ReadForPKind(ModuleSwapKind):
    """Dropout modules whose owner reads ``.p`` to pass on to attention."""

    name = "read_p"
    reads_through_owner = True
    mechanism = "module swap; owner reads .p"

    def claims(self, index: ModuleIndex, path: str, module: nn.Module) -> bool:
        return isinstance(module, _DropoutNd) and owner_reads_p(index, path)

    def build_gate(self, module: nn.Module, *, mode: Mode, p: float) -> GatedDropout:
        # Imported here: module.py imports this file for owner_reads_p.
        from .module import build_dropout_gate

        return build_dropout_gate(module, mode=mode, p=p)
