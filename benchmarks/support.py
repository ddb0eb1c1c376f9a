"""Records shared by the benchmark conftest and the benchmark files."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Settings:
    """What the command line asked of this run."""

    device: torch.device
    dtypes: tuple[torch.dtype, ...]
    models: tuple[str, ...]
    compiled: frozenset[str]
    seconds: float
    rounds: int
    budget: float | None

    @property
    def size(self) -> str:
        """Workload size: ``"cpu"`` or ``"gpu"``."""
        return "cpu" if self.device.type == "cpu" else "gpu"


@dataclass(frozen=True)
class Case:
    """One throughput comparison: a model in a dtype, eager and maybe compiled."""

    model: str
    dtype: torch.dtype
    compiled: bool

    @property
    def id(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.model}-{dtype}{'-compiled' if self.compiled else ''}"


def rss_bytes() -> int:
    """Resident memory of this process now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if platform.system() == "Darwin" else peak * 1024
