"""Turn one pytest-benchmark JSON run of benchmarks/ into results people can read.

Usage::

    python benchmarks/report.py RUN.json [--out benchmarks/results]

Writes ``<machine>-<date>.json`` (the figures, condensed, with the machine,
versions and targets), ``<machine>-<date>.md`` (tables) and
``<machine>-<date>.png`` (throughput relative to eval, per workload and
variant) into ``--out``, and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VARIANTS = ("train", "eval", "p0_loop", "strip", "gate_train", "gate_on", "gate_off")
SHOWN = tuple(variant for variant in VARIANTS if variant != "eval")
SITES_TARGET_S = 0.1
SITES_TARGET_AT = 10_000
META_TARGET_S = 1.0
# Below this growth the meta model allocated nothing for 6.7 B parameters
# (13 GB even in half precision): what remains is the module objects.
META_RSS_LIMIT = 256 * 2**20


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="pytest --benchmark-json output")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results", help="folder"
    )
    options = parser.parse_args(argv)

    run = json.loads(options.run.read_text())
    results = condense(run)
    stem = f"{results['machine']['slug']}-{results['date']}"
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results, plot_name=f"{stem}.png")
    (options.out / f"{stem}.md").write_text(text)
    plot(results, options.out / f"{stem}.png")
    sys.stdout.write(text)
    return 0


def condense(run: dict[str, Any]) -> dict[str, Any]:
    """The figures of a run, without pytest-benchmark's bookkeeping."""
    info = run["machine_info"]
    ours = info.get("surgery", {})
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for bench in run["benchmarks"]:
        extra = bench.get("extra_info", {})
        by_kind.setdefault(extra.get("kind", "other"), []).append(bench)

    throughput = [_throughput(bench) for bench in by_kind.get("throughput", [])]
    commit = run.get("commit_info", {})
    return {
        "machine": {
            "slug": machine_slug(info),
            "device": ours.get("device", "cpu"),
            "device_name": ours.get("device_name", info.get("processor", "")),
            "threads": ours.get("threads"),
            "system": f"{info.get('system', '')} {info.get('release', '')}".strip(),
        },
        "date": run["datetime"][:10],
        "datetime": run["datetime"],
        "versions": ours.get("versions", {"python": info.get("python_version")}),
        "commit": {"id": commit.get("id", "")[:12], "dirty": commit.get("dirty")},
        "settings": {
            key: ours.get(key)
            for key in (
                "models",
                "dtypes",
                "compiled_models",
                "seconds",
                "rounds",
                "budget",
            )
        },
        "throughput": throughput,
        "not_measured": _not_measured(ours, throughput),
        "targets": [
            {**target, "workload": entry["workload"], "dtype": entry["dtype"]}
            for entry in throughput
            for target in entry["targets"]
        ],
        "recompiles": [_recompiles(bench) for bench in by_kind.get("recompiles", [])],
        "find_strip": _find_strip(by_kind.get("find_strip", [])),
        "meta_llama": _meta(by_kind.get("meta_llama", [])),
    }


def _not_measured(ours: dict[str, Any], throughput: list[dict[str, Any]]) -> list[str]:
    """Cases the run asked for that left no figures (skipped for the budget)."""
    measured = {(entry["workload"], entry["dtype"]) for entry in throughput}
    return [
        f"{model} {dtype}"
        for dtype in ours.get("dtypes", [])
        for model in ours.get("models", [])
        if (model, dtype) not in measured
    ]


def machine_slug(info: dict[str, Any]) -> str:
    """``cuda-nvidia-h200`` or ``cpu-amd-epyc-2c``: a name for result files."""
    ours = info.get("surgery", {})
    device = str(ours.get("device", "cpu"))
    if device.startswith("cuda"):
        name = str(ours.get("device_name", "gpu"))
        return _slug(f"cuda {name}")
    brand = info.get("cpu", {}).get("brand_raw") or info.get("processor") or "cpu"
    count = info.get("cpu", {}).get("count", "")
    return _slug(f"cpu {brand} {count}c")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _throughput(bench: dict[str, Any]) -> dict[str, Any]:
    extra = bench["extra_info"]
    report = extra["report"]
    rows = report["rows"]
    eval_rounds = {
        row["compiled"]: row["round_seconds"]
        for row in rows
        if row["variant"] == "eval"
    }
    condensed = []
    for row in rows:
        # Throughput relative to eval in each round, paired round by round.
        paired = [
            theirs / mine
            for mine, theirs in zip(
                row["round_seconds"], eval_rounds[row["compiled"]], strict=True
            )
        ]
        condensed.append(
            {
                "variant": row["variant"],
                "compiled": row["compiled"],
                "training": row["training"],
                "samples_per_s": row["samples_per_s"],
                "time_vs_eval": row["time_vs_eval"],
                "throughput_vs_eval": row["throughput_vs_eval"],
                "throughput_vs_eval_rounds": [min(paired), max(paired)],
                "spread": row["spread"],
                "random_ops": row["random_ops"],
                "graphs": row["graphs"],
                "recompiles": row["recompiles"],
            }
        )
    return {
        "workload": extra["workload"],
        "shape": extra["shape"],
        "model": report["model"],
        "device": report["device"],
        "dtype": report["dtype"],
        "batch_size": report["batch_size"],
        "threads": report["threads"],
        "rounds": report["rounds"],
        "wall_s": bench["stats"]["median"],
        "rows": condensed,
        "targets": extra["targets"],
    }


def _recompiles(bench: dict[str, Any]) -> dict[str, Any]:
    extra = dict(bench["extra_info"])
    extra.pop("kind")
    extra["met"] = (
        extra["recompiles_p"] == 0
        and extra["recompiles_modes"] == 0
        and not extra["fell_back_to_eager"]
    )
    extra["wall_s"] = bench["stats"]["median"]
    return extra


def _find_strip(benches: list[dict[str, Any]]) -> dict[str, Any]:
    curve = sorted(
        (
            {
                "sites": bench["extra_info"]["sites"],
                "modules": bench["extra_info"]["modules"],
                "median_s": bench["stats"]["median"],
                "min_s": bench["stats"]["min"],
                "find_s": bench["extra_info"]["find_s"],
                "strip_s": bench["extra_info"]["strip_s"],
                "us_per_site": 1e6
                * bench["stats"]["median"]
                / bench["extra_info"]["sites"],
            }
            for bench in benches
        ),
        key=lambda point: point["sites"],
    )
    if not curve:
        return {}
    at_target = next((p for p in curve if p["sites"] == SITES_TARGET_AT), None)
    return {
        "curve": curve,
        "target_s": SITES_TARGET_S,
        "target_sites": SITES_TARGET_AT,
        "at_target_s": at_target["median_s"] if at_target else None,
        "met": bool(at_target and at_target["median_s"] < SITES_TARGET_S),
        "growth_exponent": _exponent(curve),
    }


def _exponent(curve: list[dict[str, Any]]) -> float | None:
    """Slope of log(time) over log(sites) from 100 sites up: 1.0 is linear.

    The smallest size is left out: a fixed cost per call dominates it.
    """
    points = [(math.log(p["sites"]), math.log(p["median_s"])) for p in curve]
    points = [
        point for point, p in zip(points, curve, strict=True) if p["sites"] >= 100
    ]
    if len(points) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def _meta(benches: list[dict[str, Any]]) -> dict[str, Any]:
    if not benches:
        return {}
    bench = benches[0]
    extra = dict(bench["extra_info"])
    extra.pop("kind")
    extra["median_s"] = bench["stats"]["median"]
    extra["target_s"] = META_TARGET_S
    extra["rss_limit_bytes"] = META_RSS_LIMIT
    extra["met"] = (
        extra["median_s"] < META_TARGET_S
        and extra["all_parameters_on_meta"]
        and extra["rss_growth_bytes"] < META_RSS_LIMIT
    )
    return extra


def markdown(results: dict[str, Any], *, plot_name: str) -> str:
    """Every table of the run, in markdown."""
    machine = results["machine"]
    versions = ", ".join(f"{name} {v}" for name, v in results["versions"].items())
    lines = [
        f"Run of {results['date']} on {machine['device_name']} "
        f"({machine['device']}, {machine['threads']} torch threads); {versions}; "
        f"commit {results['commit']['id'] or 'unknown'}"
        f"{' (uncommitted changes)' if results['commit']['dirty'] else ''}.",
        "",
    ]
    lines += _throughput_tables(results["throughput"])
    if results["not_measured"]:
        lines += [
            "Not measured in this run (skipped for its time budget): "
            + ", ".join(results["not_measured"])
            + ".",
            "",
        ]
    lines += _targets_table(results)
    lines += _recompiles_table(results["recompiles"])
    lines += _sites_table(results["find_strip"], results["meta_llama"])
    lines += [f"![Throughput relative to eval mode]({plot_name})", ""]
    return "\n".join(lines)


def _throughput_tables(entries: list[dict[str, Any]]) -> list[str]:
    if not entries:
        return []
    head = (
        "| workload | dtype | compiled | eval samples/s | " + " | ".join(SHOWN) + " |"
    )
    lines = [
        "Forward time relative to eval mode in the same run (lower is faster; "
        "`strip` and the gates run in train mode, `gate_on` in eval mode):",
        "",
        head,
        "|" + " --- |" * (4 + len(SHOWN)),
    ]
    for entry in entries:
        for compiled in sorted({row["compiled"] for row in entry["rows"]}):
            rows = {r["variant"]: r for r in entry["rows"] if r["compiled"] == compiled}
            cells = [
                f"{rows[v]['time_vs_eval']:.3f}" if v in rows else "-" for v in SHOWN
            ]
            rate = rows["eval"]["samples_per_s"]
            lines.append(
                f"| {entry['workload']} | {entry['dtype']} | "
                f"{'yes' if compiled else 'no'} | {rate:,.1f} | "
                + " | ".join(cells)
                + " |"
            )
    lines += [
        "",
        "Random ops in one eager forward (the ground truth of what drops):",
        "",
    ]
    lines += [
        "| workload | " + " | ".join(VARIANTS) + " |",
        "|" + " --- |" * (1 + len(VARIANTS)),
    ]
    seen = set()
    for entry in entries:
        if entry["workload"] in seen:
            continue
        seen.add(entry["workload"])
        rows = {r["variant"]: r for r in entry["rows"] if not r["compiled"]}
        cells = [str(rows[v]["random_ops"]) if v in rows else "-" for v in VARIANTS]
        lines.append(f"| {entry['workload']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += ["Workloads:", ""]
    seen = set()
    for entry in entries:
        if entry["workload"] not in seen:
            seen.add(entry["workload"])
            lines.append(f"- `{entry['workload']}`: {entry['shape']}")
    return [*lines, ""]


def _targets_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "Targets: forward time of one variant over another's, both from the same "
        "run. The rounds column gives the same ratio round by round (the variants "
        "are interleaved, so rounds pair up): a miss whose rounds reach below the "
        "limit is within the noise of the run.",
        "",
        "| target | workload | dtype | compiled | value | limit | rounds (min-max) | |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for target in results["targets"]:
        ratios = target["round_ratios"]
        lines.append(
            f"| {target['target']} | {target['workload']} | {target['dtype']} | "
            f"{'yes' if target['compiled'] else 'no'} | {target['value']:.3f} | "
            f"<= {target['limit']:.2f} | {min(ratios):.3f}-{max(ratios):.3f} | "
            f"{_target_verdict(target)} |"
        )
    return [*lines, ""] if results["targets"] else []


def _recompiles_table(entries: list[dict[str, Any]]) -> list[str]:
    if not entries:
        return []
    lines = [
        "Graphs compiled after warm-up under `torch.compile` (100 mode toggles, "
        "then 100 values of p from a schedule; dynamo's default recompile limit):",
        "",
        "| workload | sites | kinds | graphs at warm-up | recompiles, modes | "
        "recompiles, p | then | |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in entries:
        then = "ran eagerly (limit hit)" if entry["fell_back_to_eager"] else "-"
        lines.append(
            f"| {entry['workload']} | {entry['sites']} {entry['group']} | "
            f"{', '.join(entry['site_kinds'])} | {entry['graphs_at_warm_up']} | "
            f"{entry['recompiles_modes']} | {entry['recompiles_p']} | {then} | "
            f"{_verdict(entry['met'])} |"
        )
    return [*lines, ""]


def _sites_table(curve: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if curve:
        exponent = curve["growth_exponent"]
        lines += [
            "`find` + `strip` on a synthetic model (blocks of Linear and Dropout; "
            f"median; growth exponent {exponent:.2f}, 1.00 is linear):",
            "",
            "| sites | modules | find ms | strip ms | find + strip ms | us per site |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for p in curve["curve"]:
            lines.append(
                f"| {p['sites']:,} | {p['modules']:,} | {1e3 * p['find_s']:.1f} | "
                f"{1e3 * p['strip_s']:.1f} | {1e3 * p['median_s']:.1f} | "
                f"{p['us_per_site']:.1f} |"
            )
        if curve["at_target_s"] is not None:
            lines += [
                "",
                f"{curve['target_sites']:,} sites: {1e3 * curve['at_target_s']:.0f} ms "
                f"against a target of {1e3 * curve['target_s']:.0f} ms: "
                f"{_verdict(curve['met'])}.",
            ]
        lines.append("")
    if meta:
        lines += [
            f"Llama-7B shaped on the meta device ({meta['parameters'] / 1e9:.2f} B "
            f"parameters, {meta['sites']} {', '.join(meta['site_kinds'])} sites): "
            f"find + strip {1e3 * meta['median_s']:.0f} ms (target < "
            f"{meta['target_s']:.0f} s), resident memory grew "
            f"{meta['rss_growth_bytes'] / 2**20:.1f} MiB, every parameter still on "
            f"meta: {_verdict(meta['met'])}.",
            "",
        ]
    return lines


def _target_verdict(target: dict[str, Any]) -> str:
    if target["met"]:
        return "met"
    if min(target["round_ratios"]) <= target["limit"]:
        return "**missed** (within noise)"
    return "**missed**"


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def plot(results: dict[str, Any], path: Path) -> None:
    """Bars of throughput relative to eval, per workload and variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(
        {
            (entry["dtype"], row["compiled"])
            for entry in results["throughput"]
            for row in entry["rows"]
        }
    )
    if not panels:
        return
    figure, axes = plt.subplots(
        1, len(panels), figsize=(max(8.0, 6.0 * len(panels)), 4.8), squeeze=False
    )
    width = 0.8 / len(SHOWN)
    for axis, (dtype, compiled) in zip(axes[0], panels, strict=True):
        entries = [
            entry
            for entry in results["throughput"]
            if entry["dtype"] == dtype
            and any(row["compiled"] == compiled for row in entry["rows"])
        ]
        for position, variant in enumerate(SHOWN):
            values, low, high = [], [], []
            for entry in entries:
                row = next(
                    r
                    for r in entry["rows"]
                    if r["variant"] == variant and r["compiled"] == compiled
                )
                values.append(row["throughput_vs_eval"])
                low.append(
                    row["throughput_vs_eval"] - row["throughput_vs_eval_rounds"][0]
                )
                high.append(
                    row["throughput_vs_eval_rounds"][1] - row["throughput_vs_eval"]
                )
            xs = [
                i + (position - (len(SHOWN) - 1) / 2) * width
                for i in range(len(entries))
            ]
            axis.bar(xs, values, width, label=variant)
            axis.errorbar(
                xs, values, yerr=[low, high], fmt="none", ecolor="black", elinewidth=0.6
            )
        axis.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        axis.set_xticks(range(len(entries)))
        axis.set_xticklabels([entry["workload"] for entry in entries])
        axis.set_ylabel("throughput / eval throughput")
        axis.set_title(f"{dtype}, {'compiled' if compiled else 'eager'}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(SHOWN), fontsize=8)
    machine = results["machine"]
    figure.suptitle(
        f"Throughput relative to eval mode: {machine['device_name']}, "
        f"torch {results['versions'].get('torch')}, {results['date']}\n"
        "bars: median over rounds; whiskers: slowest and fastest round",
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
