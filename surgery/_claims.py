"""The claims :func:`surgery.verify` checks, each as a list of compared leaves."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._compare import LeafResult, Tolerance, compare_leaf
from ._leaves import flatten_output
from ._randomops import RandomOpCounter
from ._site import Site
from ._verify_report import Claim

__all__ = [
    "compare_outputs",
    "covered_paths",
    "gradient_results",
    "is_forced_on",
    "is_off",
    "random_op_results",
    "sites_claim",
    "state_dict_claim",
]


def is_off(site: Site) -> bool:
    return site.state == "stripped" or (site.state == "gated" and site.mode == "off")


def is_forced_on(site: Site) -> bool:
    return site.state == "gated" and site.mode == "on"


def sites_claim(
    reference_sites: list[Site], candidate_sites: list[Site], required: set[str]
) -> Claim:
    now = {site.path: site for site in candidate_sites}
    results = []
    for then in reference_sites:
        site = now.get(then.path)
        if site is None:
            results.append(
                LeafResult(
                    "sites",
                    then.path,
                    False,
                    note="not found in the candidate: replaced by something "
                    "surgery does not recognise",
                )
            )
            continue
        results.append(_site_result(then, site, then.path in required))
    for path in now.keys() - {site.path for site in reference_sites}:
        results.append(
            LeafResult(
                "sites", path, False, note="in the candidate, not in the reference"
            )
        )
    description = "each reference site is in the candidate with the reference's p"
    if required:
        description += f"; {len(required)} site(s) required off"
    return Claim("sites", description, tuple(results))


def _site_result(then: Site, site: Site, required: bool) -> LeafResult:
    state = f"gated ({site.mode})" if site.state == "gated" else site.state
    note = f"{state}, p {site.p:g}"
    gap = abs(site.p - then.p)
    if required and not is_off(site):
        return LeafResult("sites", site.path, False, gap, None, note=f"left on: {note}")
    if site.state == "stripped" and site.p != 0.0:
        return LeafResult(
            "sites",
            site.path,
            False,
            site.p,
            None,
            note=f"stripped but p is {site.p:g}",
        )
    if site.state != "stripped" and gap != 0.0:
        return LeafResult(
            "sites",
            site.path,
            False,
            gap,
            None,
            note=f"{note} where the reference has p {then.p:g}",
        )
    return LeafResult(
        "sites",
        site.path,
        True,
        0.0 if site.state != "stripped" else None,
        None,
        note=note,
    )


def state_dict_claim(reference: nn.Module, candidate: nn.Module) -> Claim:
    ours, theirs = candidate.state_dict(), reference.state_dict()
    results = []
    for key, value in theirs.items():
        if key not in ours:
            results.append(
                LeafResult("state_dict", key, False, note="missing in the candidate")
            )
            continue
        results.append(
            compare_leaf("state_dict", key, ours[key], value, exact=True, tolerances={})
        )
    for key in ours.keys() - theirs.keys():
        results.append(
            LeafResult("state_dict", key, False, note="not in the reference")
        )
    return Claim("state_dict", "same keys, values equal by torch.equal", tuple(results))


def covered_paths(candidate_sites: list[Site], required: set[str]) -> set[str]:
    """Module paths where a random op means a site required off still drops.

    A required site's own module, and its owner when every site the owner
    holds is required off (owner code such as ``F.dropout(x, self.p)``
    draws in the owner itself).
    """
    covered = {path for path in required}
    owners: dict[str, list[Site]] = {}
    for site in candidate_sites:
        owners.setdefault(site.owner, []).append(site)
    for owner, sites in owners.items():
        if sites and all(site.path in required for site in sites):
            covered.add(owner)
    return covered


def compare_outputs(
    claim: str,
    ours: Any,
    theirs: Any,
    exact: bool,
    table: Mapping[torch.dtype, Tolerance],
) -> tuple[LeafResult, ...]:
    mine = dict(flatten_output(ours))
    results = []
    expected_leaves = flatten_output(theirs)
    for position, value in expected_leaves:
        if position not in mine:
            results.append(
                LeafResult(claim, position, False, note="missing in the candidate")
            )
            continue
        results.append(
            compare_leaf(
                claim, position, mine[position], value, exact=exact, tolerances=table
            )
        )
    for position in mine.keys() - {position for position, _ in expected_leaves}:
        results.append(LeafResult(claim, position, False, note="not in the reference"))
    return tuple(results)


def random_op_results(
    actual: RandomOpCounter, expected: RandomOpCounter, covered: set[str]
) -> tuple[LeafResult, ...]:
    ours = Counter(event.module for event in actual.events)
    theirs = Counter(event.module for event in expected.events)
    results = []
    for path in sorted(ours.keys() | theirs.keys()):
        ops = sorted({event.op for event in actual.events if event.module == path})
        note = f"{ours[path]} here, {theirs[path]} expected"
        if ops:
            note += f" ({', '.join(ops)})"
        passed = ours[path] == theirs[path]
        if ours[path] and path in covered:
            passed, note = False, f"random op in a site required off: {note}"
        results.append(
            LeafResult("random ops (train)", path or "(root)", passed, note=note)
        )
    if not results:
        results.append(
            LeafResult("random ops (train)", "(model)", True, note="none in either")
        )
    return tuple(results)


def gradient_results(
    actual: nn.Module,
    expected: nn.Module,
    ours: Any,
    theirs: Any,
    seed: int,
    table: Mapping[torch.dtype, Tolerance],
) -> tuple[LeafResult, ...]:
    claim = "gradients (train)"
    mine = _differentiable(ours)
    other = _differentiable(theirs)
    if not mine or [leaf.shape for leaf in mine] != [leaf.shape for leaf in other]:
        note = (
            "no output leaf requires grad; nothing to compare"
            if not mine and not other
            else "outputs differ in structure; gradients not compared"
        )
        return (LeafResult(claim, "(loss)", not mine and not other, note=note),)

    # Fixed random weights make every output element count in the loss,
    # drawn from a private generator so the global RNG is not touched.
    generator = torch.Generator().manual_seed(seed)
    weights = [
        torch.randn(leaf.shape, generator=generator).to(leaf.device, leaf.dtype)
        for leaf in mine
    ]
    for leaves in (mine, other):
        terms = [
            (leaf * weight).sum() for leaf, weight in zip(leaves, weights, strict=True)
        ]
        loss = terms[0]
        for term in terms[1:]:
            loss = loss + term.to(loss.device)
        torch.autograd.backward(loss)

    theirs_params = dict(expected.named_parameters())
    results = []
    for name, parameter in actual.named_parameters():
        counterpart = theirs_params.get(name)
        if counterpart is None:
            results.append(LeafResult(claim, name, False, note="not in the reference"))
        elif parameter.grad is None and counterpart.grad is None:
            results.append(LeafResult(claim, name, True, note="no gradient in either"))
        elif parameter.grad is None or counterpart.grad is None:
            side = "candidate" if parameter.grad is None else "reference"
            results.append(
                LeafResult(claim, name, False, note=f"no gradient in the {side}")
            )
        else:
            results.append(
                compare_leaf(
                    claim,
                    name,
                    parameter.grad,
                    counterpart.grad,
                    exact=False,
                    tolerances=table,
                )
            )
    return tuple(results)


def _differentiable(output: Any) -> list[torch.Tensor]:
    return [
        leaf
        for _, leaf in flatten_output(output)
        if isinstance(leaf, torch.Tensor) and leaf.requires_grad
    ]
