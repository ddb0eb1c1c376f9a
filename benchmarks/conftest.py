"""Options and fixtures of the benchmark suite, which runs apart from the tests.

CPU (the recorded run)::

    .venv/bin/python -m pytest benchmarks --bench-threads 1 \
        --benchmark-json=.benchmarks/run.json
    .venv/bin/python benchmarks/report.py .benchmarks/run.json

GPU: add ``--bench-device cuda --bench-dtypes float32,bfloat16 --bench-budget
200`` (the README has the one-line command). Every option is listed by
``pytest benchmarks --help`` under "surgery benchmarks".
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from support import Case, Settings
from workloads import BUILDERS

import surgery

_DEFAULT_COMPILE = {"cpu": "mlp", "cuda": "mlp,cnn"}
_DEFAULT_SECONDS = {"cpu": 4.0, "cuda": 3.0}
_START = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("surgery benchmarks")
    group.addoption(
        "--bench-device", default="cpu", help="cpu or cuda[:N] (default: cpu)"
    )
    group.addoption(
        "--bench-dtypes",
        default="float32",
        help="comma-separated dtypes, e.g. float32,bfloat16 (default: float32)",
    )
    group.addoption(
        "--bench-models",
        default="bert,gpt,cnn,mlp",
        help="comma-separated workloads (default: bert,gpt,cnn,mlp)",
    )
    group.addoption(
        "--bench-compile",
        default=None,
        help="workloads also measured under torch.compile: a comma list, "
        f"'all' or 'none' (default: {_DEFAULT_COMPILE['cpu']} on cpu, "
        f"{_DEFAULT_COMPILE['cuda']} on cuda)",
    )
    group.addoption(
        "--bench-seconds",
        type=float,
        default=None,
        help="timed seconds per comparison, warm-up excluded "
        f"(default: {_DEFAULT_SECONDS['cpu']} on cpu, {_DEFAULT_SECONDS['cuda']} "
        "on cuda; each variant still runs once per round)",
    )
    group.addoption(
        "--bench-rounds",
        type=int,
        default=4,
        help="interleaved rounds (default: 4; the mlp and cnn workloads get twice "
        "the rounds and seconds)",
    )
    group.addoption("--bench-threads", type=int, default=None, help="torch CPU threads")
    group.addoption(
        "--bench-budget",
        type=float,
        default=None,
        help="skip, with a reason in the report, throughput cases that would "
        "start after this many seconds of the run",
    )


def _settings(config: pytest.Config) -> Settings:
    device = torch.device(config.getoption("--bench-device"))
    kind = "cpu" if device.type == "cpu" else "cuda"
    models = _names(config.getoption("--bench-models"))
    compile_option = config.getoption("--bench-compile") or _DEFAULT_COMPILE[kind]
    if compile_option == "all":
        compiled = frozenset(models)
    elif compile_option == "none":
        compiled = frozenset()
    else:
        compiled = frozenset(_names(compile_option))
    unknown = sorted(set(models) - set(BUILDERS))
    if unknown:
        raise pytest.UsageError(
            f"--bench-models: no workload {', '.join(unknown)}; "
            f"choose from {', '.join(BUILDERS)}"
        )
    dtypes = tuple(_dtype(name) for name in _names(config.getoption("--bench-dtypes")))
    return Settings(
        device=device,
        dtypes=dtypes,
        models=models,
        compiled=compiled,
        seconds=config.getoption("--bench-seconds") or _DEFAULT_SECONDS[kind],
        rounds=config.getoption("--bench-rounds"),
        budget=config.getoption("--bench-budget"),
    )


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise pytest.UsageError(f"--bench-dtypes: {name!r} is not a torch dtype")
    return dtype


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_START] = time.monotonic()
    threads = config.getoption("--bench-threads", default=None)
    if threads:
        torch.set_num_threads(threads)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    settings = _settings(metafunc.config)
    # Eager-only cases first: under a time budget, what gets skipped is
    # the expensive compiled tail, never the basic figures.
    cases = [
        Case(model, dtype, model in settings.compiled)
        for with_compile in (False, True)
        for dtype in settings.dtypes
        for model in settings.models
        if (model in settings.compiled) == with_compile
    ]
    metafunc.parametrize("case", cases, ids=[case.id for case in cases])


@pytest.fixture(scope="session")
def settings(request: pytest.FixtureRequest) -> Settings:
    """The run's settings; fails early if the device is not there."""
    result = _settings(request.config)
    if result.device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("--bench-device cuda, but torch sees no CUDA device")
    return result


@pytest.fixture
def within_budget(request: pytest.FixtureRequest, settings: Settings) -> None:
    """Skip, visibly, a case that would start after the run's time budget."""
    if settings.budget is None:
        return
    elapsed = time.monotonic() - request.config.stash[_START]
    if elapsed > settings.budget:
        pytest.skip(
            f"time budget: {elapsed:.0f} s of --bench-budget "
            f"{settings.budget:.0f} spent before this case"
        )


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    """Each benchmark compiles from scratch and counts only its own graphs."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _versions() -> dict[str, str]:
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "surgery": surgery.__version__,
    }
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:
        versions["transformers"] = "not installed"
    return versions


def _device_name(config: pytest.Config) -> str:
    device = torch.device(config.getoption("--bench-device"))
    if device.type == "cuda" and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(device))
    brand = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    brand = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{brand}, {os.cpu_count()} cores"


def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    settings = _settings(config)
    machine_info["surgery"] = {
        "device": str(settings.device),
        "device_name": _device_name(config),
        "threads": torch.get_num_threads(),
        "models": list(settings.models),
        "dtypes": [str(dtype).removeprefix("torch.") for dtype in settings.dtypes],
        "compiled_models": sorted(settings.compiled),
        "seconds": settings.seconds,
        "rounds": settings.rounds,
        "budget": settings.budget,
        "versions": _versions(),
    }
