"""surgery: find, gate, strip and restore every dropout site in a PyTorch model.

>>> import surgery
>>> from torch import nn
>>> model = nn.Sequential(
...     nn.Linear(8, 8), nn.Dropout(0.1), nn.LSTM(8, 8, 2, dropout=0.2)
... )
>>> [site.path for site in surgery.find(model)]
['1', '2.dropout']
>>> model = surgery.strip(model)   # in place; returns the model

The verbs change the model in place and return it. ``select`` and
``exclude`` take a glob (matched against the whole site path), ``"re:<regex>"``
(``fullmatch``), a class or tuple of classes, a predicate ``(path, module) ->
bool``, or a list of these.
"""

from __future__ import annotations

from ._api import dropout_off, dropout_on, find, gate, restore, set_dropout, strip
from ._bench import ThroughputReport, ThroughputRow, compare_throughput
from ._compare import DEFAULT_TOLERANCES, LeafResult, Tolerance
from ._errors import (
    BenchmarkError,
    ExportError,
    OptionError,
    RecipeError,
    SelectionError,
    SiteError,
    SurgeryError,
    SurgeryWarning,
    VerificationError,
)
from ._export import ExportResult, export
from ._force import register_eval_fast_path
from ._gate import GatedDropout, StrippedDropout
from ._kinds.attribute import register_dropout_attribute
from ._kinds.drop_path import register_drop_path
from ._mc import mc_mean, mc_sample, mc_variance
from ._pipeline import RecipeResult, StepOutcome, apply_recipe
from ._randomops import RandomOpCounter, count_random_ops
from ._ready import RandomOp, check_export_ready
from ._recipe import Recipe, RecipeStep
from ._schedule import (
    ConstantDropout,
    CosineDropout,
    DepthDropout,
    DropoutSchedule,
    EarlyDropout,
    LateDropout,
    LinearDropout,
    StepDropout,
)
from ._select import Selector
from ._site import Mode, Site, State
from ._verify import verify
from ._verify_report import Claim, VerificationReport

__all__ = [
    "DEFAULT_TOLERANCES",
    "BenchmarkError",
    "Claim",
    "ConstantDropout",
    "CosineDropout",
    "DepthDropout",
    "DropoutSchedule",
    "EarlyDropout",
    "ExportError",
    "ExportResult",
    "GatedDropout",
    "LateDropout",
    "LeafResult",
    "LinearDropout",
    "Mode",
    "OptionError",
    "RandomOp",
    "RandomOpCounter",
    "Recipe",
    "RecipeError",
    "RecipeResult",
    "RecipeStep",
    "SelectionError",
    "Selector",
    "Site",
    "SiteError",
    "State",
    "StepDropout",
    "StepOutcome",
    "StrippedDropout",
    "SurgeryError",
    "SurgeryWarning",
    "ThroughputReport",
    "ThroughputRow",
    "Tolerance",
    "VerificationError",
    "VerificationReport",
    "apply_recipe",
    "check_export_ready",
    "compare_throughput",
    "count_random_ops",
    "dropout_off",
    "dropout_on",
    "export",
    "find",
    "gate",
    "mc_mean",
    "mc_sample",
    "mc_variance",
    "register_drop_path",
    "register_dropout_attribute",
    "register_eval_fast_path",
    "restore",
    "set_dropout",
    "strip",
    "verify",
]
__version__ = "0.1.0"
