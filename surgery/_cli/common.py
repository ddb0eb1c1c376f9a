"""Helpers the commands share: loading, checks, and how results are described."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .. import _api
from .._errors import SurgeryWarning
from .._pipeline import VERIFY_EXPORTED
from .._ready import check_export_ready
from .._site import Site
from .errors import CliError, UsageProblem, VerificationFailed
from .examples import Examples, choose_examples
from .io import check_output
from .load import LoadedModel, load_model
from .render import Screen
from .save import FORMAT_NAMES
from .verdicts import report_rows

__all__ = [
    "MODEL_HELP",
    "check_report",
    "check_rewritable",
    "check_verifiable",
    "export_payload",
    "export_summary",
    "fail_verification",
    "file_size",
    "find_sites",
    "given_paths",
    "graph_random_ops",
    "load_for",
    "random_op_dict",
    "require_examples",
    "set_training",
    "wrote_line",
]

MODEL_HELP = """\b
MODEL is a torch.export program (.pt2), a TorchScript archive, a
transformers model folder, or package.module:factory (with --weights
FILE for its state_dict or safetensors).
"""


def load_for(
    screen: Screen, source: str, weights: Path | None, trust_pickle: bool
) -> LoadedModel:
    with screen.progress(f"loading {source}"):
        return load_model(source, weights=weights, trust_pickle=trust_pickle)


def find_sites(
    loaded: LoadedModel,
    select: tuple[str, ...],
    exclude: tuple[str, ...],
    *,
    quiet: bool = False,
) -> list[Site]:
    """The selected sites; ``quiet`` for a look ahead of a verb that will warn."""
    model: Any = loaded.model
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", SurgeryWarning)
        return _api.find(model, list(select) or None, exclude=list(exclude) or None)


def set_training(loaded: LoadedModel, training: bool | None) -> None:
    if training is None:
        return
    if loaded.kind in ("pt2", "torchscript"):
        raise UsageProblem(
            f"--{'train' if training else 'eval'}: the mode of a "
            f"{FORMAT_NAMES[loaded.kind]} is fixed when it is made"
        )
    loaded.module.train(training)


def check_rewritable(loaded: LoadedModel) -> None:
    if loaded.kind == "torchscript":
        raise CliError(
            f"MODEL {loaded.source} is TorchScript, which surgery cannot rewrite; "
            "rewrite the Python model and script it again"
        )


def check_verifiable(
    loaded: LoadedModel, examples: Examples | None, *, what: str, needs: str
) -> None:
    """Refuse to verify a fixed program (``what`` names the step) or no inputs."""
    if loaded.kind in ("pt2", "torchscript"):
        raise UsageProblem(
            f"{what} needs a Python model, and MODEL {loaded.source} is a "
            f"{FORMAT_NAMES[loaded.kind]}: {VERIFY_EXPORTED}"
        )
    if examples is None:
        raise _needs_inputs(needs)


def check_report(
    report_path: Path | None, output: Path, inputs: list[Path]
) -> Path | None:
    """Refuse a ``--report`` path that is an input or the ``-o`` file itself."""
    if report_path is None:
        return None
    if report_path.expanduser().absolute() == output:
        raise UsageProblem(f"--report {report_path} is the -o file; give it its own")
    return check_output(report_path, inputs=inputs, overwrite=False, flag="--report")


def require_examples(
    loaded: LoadedModel,
    what: str,
    *,
    shapes: tuple[str, ...],
    inputs_file: Path | None,
    seq_len: int,
) -> Examples:
    """The example inputs the flags ask for; a usage error naming ``what`` if none."""
    examples = choose_examples(
        loaded, shapes=shapes, inputs_file=inputs_file, seq_len=seq_len
    )
    if examples is None:
        raise _needs_inputs(what)
    return examples


def _needs_inputs(what: str) -> UsageProblem:
    return UsageProblem(
        f"{what} needs example inputs: pass --input-shape (e.g. 2x8:int64) or "
        "--inputs FILE"
    )


def fail_verification(screen: Screen, report: Any, output: Path) -> None:
    failed = [row for row in report_rows(report) if row[1] != "pass"]
    for claim, _, detail in failed:
        screen.note(f"  failed: {claim}: {detail}")
    raise VerificationFailed(
        f"verification failed ({len(failed)} claim(s)); nothing written to {output}"
    )


def graph_random_ops(loaded: LoadedModel) -> list[Any] | None:
    """The random ops left in a .pt2 or TorchScript graph; ``None`` for a module."""
    if loaded.kind not in ("pt2", "torchscript"):
        return None
    return list(check_export_ready(loaded.model))


def random_op_dict(op: Any) -> dict[str, str]:
    return {"op": op.op, "module": op.location, "node": op.node, "detail": op.detail}


def export_payload(result: Any, output: Path) -> dict[str, Any]:
    """What an export wrote and checked, for ``--json``."""
    return {
        "output": str(output),
        "format": result.format,
        "training": result.training,
        "stripped": list(result.stripped),
        "random_ops": [str(op) for op in result.random_ops],
        "check": result.check.to_dict(),
    }


def export_summary(result: Any) -> str:
    mode = "train" if result.training else "eval"
    left = len(result.random_ops)
    check = "match" if result.check.passed else "DO NOT match"
    stripped = f"{len(result.stripped)} site(s) stripped, " if result.stripped else ""
    return (
        f"exported {result.format} in {mode} mode: {stripped}{left or 'no'} random "
        f"op(s) left, outputs {check} the model's"
    )


def given_paths(*paths: Path | None) -> list[Path]:
    return [path for path in paths if path is not None]


def wrote_line(output: Path, target: Path, format: str) -> str:
    """The closing line of a command that wrote ``output`` (now at ``target``)."""
    return f"wrote {output} ({FORMAT_NAMES[format]}, {file_size(target)})"


def file_size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"
