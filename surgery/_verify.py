"""``surgery.verify``: check, leaf by leaf, that a rewrite does what it says.

The candidate's own sites say what the rewrite claims. The expected model is
a copy of the reference with the same sites configured the same way: sites
stripped or off in the candidate are turned off in the copy, sites forced on
are forced on. Both run on the same inputs under the same seed, in train mode
(with a backward pass) and in eval mode. Gates that follow ``training``
promise the very same draws as the original, so when nothing else was
changed the outputs must be bitwise equal.

Both models are copied before they run, so the caller's models (parameters,
buffers such as batch-norm statistics, ``.grad``, training flags) and the
global RNG state are exactly as they were afterwards.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ._api import find, set_dropout
from ._claims import (
    compare_outputs,
    covered_paths,
    gradient_results,
    is_forced_on,
    is_off,
    random_op_results,
    sites_claim,
    state_dict_claim,
)
from ._compare import (
    Tolerance,
    ToleranceSpec,
    resolve_tolerances,
)
from ._errors import SurgeryError
from ._leaves import ExampleInputs, discovery_inputs, flatten_output, split_inputs
from ._randomops import RandomOpCounter
from ._report import site_to_dict
from ._select import Selector
from ._site import Mode, Site
from ._verify_report import Claim, VerificationReport

__all__ = ["preserved_rng", "scratch_copy", "seed_all", "verify"]

logger = logging.getLogger("surgery")

_WORDS: dict[Mode, str] = {
    "off": "off",
    "on": "forced on",
    "train": "following training",
}


def verify(
    reference: nn.Module,
    candidate: nn.Module,
    example_inputs: ExampleInputs,
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    tolerances: ToleranceSpec | None = None,
    seed: int = 0,
    gradients: bool = True,
    require_off: Selector | None = None,
) -> VerificationReport:
    """Check that ``candidate`` is ``reference`` rewritten as its sites claim.

    Claims checked, each leaf reported by its position:

    - ``sites``: every site of the reference is found in the candidate, with
      the reference's probability (a stripped site with 0), and each site
      selected by ``require_off`` is stripped or off;
    - ``state_dict``: identical keys, and values equal by ``torch.equal``;
    - ``outputs (train)`` and ``gradients (train)``: the candidate in train
      mode against the expected model (see the module docstring), same seed;
    - ``random ops (train)``: the same random ops run in the same modules,
      and none inside a site required off;
    - ``outputs (eval)``: the same in eval mode.

    Outputs are compared bitwise (``torch.equal``) when the candidate only
    gates sites that follow ``training`` (nothing to configure in the
    reference), else within the named tolerance of their dtype. Gradients are
    always compared within tolerance.

    Args:
        reference: The original model. Not changed.
        candidate: The rewritten model (a deep copy of the reference after
            :func:`strip`, :func:`gate` or :func:`set_dropout`). Not changed.
        example_inputs: A tensor, a tuple of positional arguments or a dict of
            keyword arguments, on the models' device.
        example_kwargs: Keyword arguments in addition to positional ones.
        tolerances: Overrides per dtype, e.g. ``{"float16": (1e-2, 1e-3)}``
            as ``(rtol, atol)`` or :class:`Tolerance`.
        seed: The seed both models run under.
        gradients: Also run a backward pass and compare parameter gradients.
        require_off: Reference sites that must be off in the candidate (for
            example ``"*"`` after a full :func:`strip`). Without it, a site
            left on is only an error if it claims to be off.

    Returns:
        A :class:`VerificationReport`; call ``raise_for_failure()`` on it to
        turn a failed claim into a :class:`VerificationError`.

    Example:
        >>> import copy
        >>> from surgery import strip
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
        >>> stripped = strip(copy.deepcopy(model))
        >>> report = verify(model, stripped, torch.ones(2, 4), require_off="*")
        >>> report.passed
        True
    """
    for name, model in (("reference", reference), ("candidate", candidate)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(model).__name__}")
    args, kwargs = split_inputs(example_inputs, example_kwargs)
    table = resolve_tolerances(tolerances)
    # With the inputs, find also reports sites seen only at run time (dropout
    # in helper functions), which strip(example_inputs=...) may have stripped.
    seen = discovery_inputs(args, kwargs)
    reference_sites = find(reference, example_inputs=seen)
    candidate_sites = find(candidate, example_inputs=seen)
    required = (
        {site.path for site in find(reference, require_off, example_inputs=seen)}
        if (require_off is not None)
        else set()
    )

    claims = [
        sites_claim(reference_sites, candidate_sites, required),
        state_dict_claim(reference, candidate),
    ]
    with preserved_rng(reference, candidate, args, kwargs):
        expected, exact, summary = _expected_model(
            reference, reference_sites, candidate_sites, seen
        )
        actual = scratch_copy(candidate, "candidate")
        claims += _train_claims(
            actual,
            expected,
            args,
            kwargs,
            seed,
            exact,
            summary,
            table,
            gradients,
            covered_paths(candidate_sites, required),
        )
        claims.append(
            _eval_claim(actual, expected, args, kwargs, seed, exact, summary, table)
        )

    report = VerificationReport(
        claims=tuple(claims),
        seed=seed,
        device=_device_of(candidate, (args, kwargs)),
        tolerances=table,
        sites=tuple(site_to_dict(site) for site in candidate_sites),
    )
    logger.debug("verify: %s", report._summary())
    return report


@contextmanager
def preserved_rng(*holders: Any) -> Iterator[None]:
    """Put the CPU RNG, and that of every CUDA device in use, back after the block.

    ``holders`` are the models and inputs involved: only the CUDA devices
    they use are saved, so a CPU-only run never initialises CUDA.
    """
    with torch.random.fork_rng(devices=_cuda_devices(holders)):
        yield


def seed_all(seed: int, *holders: Any) -> None:
    """Seed the CPU generator and the generators of the CUDA devices in use."""
    torch.default_generator.manual_seed(seed)
    for index in _cuda_devices(holders):
        with torch.cuda.device(index):
            torch.cuda.manual_seed(seed)


def _cuda_devices(holders: Sequence[Any]) -> list[int]:
    devices: set[int] = set()
    for holder in holders:
        tensors: Iterator[torch.Tensor]
        if isinstance(holder, nn.Module):
            tensors = iter([*holder.parameters(), *holder.buffers()])
        else:
            tensors = (
                leaf
                for _, leaf in flatten_output(holder)
                if isinstance(leaf, torch.Tensor)
            )
        for tensor in tensors:
            if tensor.device.type == "cuda":
                devices.add(tensor.device.index or 0)
    return sorted(devices)


def _device_of(model: nn.Module, inputs: Any) -> str:
    for tensor in [*model.parameters(), *model.buffers()]:
        return str(tensor.device)
    for _, leaf in flatten_output(inputs):
        if isinstance(leaf, torch.Tensor):
            return str(leaf.device)
    return "cpu"


def scratch_copy(model: nn.Module, name: str) -> nn.Module:
    """A deep copy to run on, without the caller's gradients."""
    try:
        scratch = copy.deepcopy(model)
    except Exception as error:
        raise SurgeryError(
            f"verify runs on a copy of the {name} and could not copy it: {error}. "
            "Make the model deep-copyable (copy.deepcopy) to verify it."
        ) from error
    for parameter in scratch.parameters():
        parameter.grad = None
    return scratch


def _expected_model(
    reference: nn.Module,
    reference_sites: list[Site],
    candidate_sites: list[Site],
    seen: Any,
) -> tuple[nn.Module, bool, str]:
    """A copy of the reference with each site set as the candidate's is.

    Returns the copy, whether it is the reference unchanged (outputs must then
    match bitwise), and a phrase describing it.
    """
    before = {site.path: site for site in reference_sites}
    plan: dict[Mode, set[str]] = {"off": set(), "on": set(), "train": set()}
    for site in candidate_sites:
        then = before.get(site.path)
        if then is None:
            continue
        if is_off(site) and not is_off(then):
            plan["off"].add(site.path)
        elif is_forced_on(site) and not is_forced_on(then):
            plan["on"].add(site.path)
        elif not (is_off(site) or is_forced_on(site)) and (
            is_off(then) or is_forced_on(then)
        ):
            plan["train"].add(site.path)

    expected = scratch_copy(reference, "reference")
    for mode, paths in plan.items():
        if paths:
            set_dropout(expected, _paths_in(paths), mode=mode, example_inputs=seen)
    changes = [
        f"{len(paths)} site(s) {_WORDS[mode]}" for mode, paths in plan.items() if paths
    ]
    if not changes:
        return expected, True, "the reference itself"
    return expected, False, "the reference with " + ", ".join(changes)


def _paths_in(paths: set[str]) -> Callable[[str, nn.Module], bool]:
    def chosen(path: str, module: nn.Module) -> bool:
        return path in paths

    return chosen


def _train_claims(
    actual: nn.Module,
    expected: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seed: int,
    exact: bool,
    summary: str,
    table: Mapping[torch.dtype, Tolerance],
    gradients: bool,
    covered: set[str],
) -> list[Claim]:
    actual.train()
    expected.train()
    with RandomOpCounter(actual) as actual_ops:
        seed_all(seed, actual, args, kwargs)
        ours = actual(*args, **kwargs)
    with RandomOpCounter(expected) as expected_ops:
        seed_all(seed, expected, args, kwargs)
        theirs = expected(*args, **kwargs)

    how = "bitwise" if exact else "within tolerance"
    claims = [
        Claim(
            "outputs (train)",
            f"the candidate in train mode against {summary}, same seed, {how}",
            compare_outputs("outputs (train)", ours, theirs, exact, table),
        ),
        Claim(
            "random ops (train)",
            "the same random ops run in the same modules"
            + ("; none inside a site required off" if covered else ""),
            random_op_results(actual_ops, expected_ops, covered),
        ),
    ]
    if gradients:
        claims.append(
            Claim(
                "gradients (train)",
                f"parameter gradients of a backward pass against {summary}",
                gradient_results(actual, expected, ours, theirs, seed, table),
            )
        )
    return claims


def _eval_claim(
    actual: nn.Module,
    expected: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    seed: int,
    exact: bool,
    summary: str,
    table: Mapping[torch.dtype, Tolerance],
) -> Claim:
    actual.eval()
    expected.eval()
    with torch.no_grad():
        seed_all(seed, actual, args, kwargs)
        ours = actual(*args, **kwargs)
        seed_all(seed, expected, args, kwargs)
        theirs = expected(*args, **kwargs)
    how = "bitwise" if exact else "within tolerance"
    return Claim(
        "outputs (eval)",
        f"the candidate in eval mode against {summary}, same seed, {how}",
        compare_outputs("outputs (eval)", ours, theirs, exact, table),
    )
