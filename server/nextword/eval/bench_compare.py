"""`nextword bench compare`: nextword against its peers, one run, one machine, same client.

Each server (nextword, naive, llamacpp: see eval/peers/) is started as a language server on stdio
and driven by `bench lsp`'s client over the same texts: didOpen of ~1.5k tokens, then typing at
a fast typist's pace (120 ms per keystroke unless told otherwise) and back to back. Latencies are
pooled over the texts per server; the report has p50/p90/p99 for word-start and in-word
requests, didOpen to first answer, peak RSS, the ratios of each peer's numbers to nextword's,
and (bench_model) the machine's memory bandwidth and the model's decode step against its floor.
Written as JSON, a markdown table and a latency CDF (PNG).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nextword.eval.bench_lsp import PACE_MS, percentiles, run_bench

SERVERS = ("nextword", "naive", "llamacpp")
MODES = ("paced", "back_to_back")
KINDS = ("word_start", "in_word")


def server_command(name: str, device: str = "cpu", model: Path | None = None, n: int = 3) -> list[str]:
    """The command line that starts server `name` on stdio."""
    if name == "nextword":
        command = [sys.executable, "-m", "nextword", "serve", "--log-level", "WARNING", "--device", device]
    elif name in ("naive", "llamacpp"):
        command = [sys.executable, "-m", "nextword.eval.peers", name, "--n", str(n)]
        if name == "naive":
            command += ["--device", device]
    else:
        raise ValueError(f"unknown server {name!r} (expected one of {', '.join(SERVERS)})")
    if model and name != "llamacpp":
        command += ["--model", str(model)]
    return command


def llamacpp_missing() -> str | None:
    """Why the llama.cpp peer cannot run here, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (scripts/setup-bench.sh builds and installs it)"
    return None


def run_compare(texts: list[Path], servers: list[str], chars: int, naive_chars: int, n: int = 3,
                device: str = "cpu", model: Path | None = None, pace_ms: float = PACE_MS) -> dict:
    runs: dict[str, list[dict]] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, list[str]] = {}
    for name in servers:
        if name == "llamacpp" and (why := llamacpp_missing()):
            skipped[name] = why
            print(f"skipping llamacpp: {why}", file=sys.stderr)
            continue
        typed = naive_chars if name == "naive" else chars
        runs[name] = []
        for path in texts:
            print(f"{name}: {path.name}, typing {typed} characters", file=sys.stderr, flush=True)
            started = time.perf_counter()
            try:
                runs[name].append(run_bench(path, server_command(name, device, model, n), typed, n, pace_ms=pace_ms))
            except (ConnectionError, TimeoutError, OSError) as e:  # one broken server must not lose the others
                failed.setdefault(name, []).append(f"{path.name}: {e}")
                print(f"{name}: {path.name} failed: {e}", file=sys.stderr)
                continue
            print(f"{name}: {path.name} done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if not runs[name]:
            del runs[name]
    report = {"machine": machine(), "device": device, "n": n, "pace_ms": pace_ms, "texts": [str(p) for p in texts],
              "servers": {name: summarize(name_runs) for name, name_runs in runs.items()},
              "skipped": skipped, "failed": failed, "runs": runs}
    report["ratios_to_nextword"] = ratios(report["servers"])
    return report


def summarize(runs: list[dict]) -> dict:
    """One server's numbers over all texts: latencies pooled, open time median, RSS max."""
    out: dict = {"typed_chars": sum(r["typed_chars"] for r in runs)}
    for mode in MODES:
        out[mode] = {}
        for kind in KINDS:
            samples = [ms for r in runs for ms in r[mode]["samples_ms"][kind]]
            out[mode][kind] = {**percentiles(samples), "samples_ms": samples}
        out[mode]["all"] = percentiles(out[mode]["word_start"]["samples_ms"] + out[mode]["in_word"]["samples_ms"])
        out[mode]["ksr"] = round(statistics.mean(r[mode]["ksr"] for r in runs), 4)
        out[mode]["empty_answers"] = sum(r[mode]["empty_answers"] for r in runs)
        out[mode]["requests"] = sum(r[mode]["requests"] for r in runs)
    out["open_to_first_answer_ms"] = round(statistics.median(r["open_to_first_answer_ms"] for r in runs), 1)
    rss = [r["peak_rss_mb"] for r in runs if r.get("peak_rss_mb") is not None]
    out["peak_rss_mb"] = round(max(rss), 1) if rss else None
    return out


def metrics(summary: dict) -> dict[str, float | None]:
    """The headline numbers of one server, by name (the table's columns)."""
    out: dict[str, float | None] = {}
    for mode, short in (("paced", "paced"), ("back_to_back", "b2b")):
        for kind in KINDS:
            p = summary[mode][kind]
            for q in ("p50", "p90", "p99"):
                out[f"{short} {kind.replace('_', '-')} {q}"] = p.get(q)
        out[f"{short} all p50"] = summary[mode]["all"].get("p50")
        # superseded requests are answered empty: a paced p50 over mostly empty answers is waiting time
        requests = summary[mode]["requests"]
        out[f"{short} answered %"] = round(100 * (requests - summary[mode]["empty_answers"]) / requests, 1) \
            if requests else None
        out[f"{short} KSR"] = summary[mode]["ksr"]
    out["open to first answer"] = summary["open_to_first_answer_ms"]
    out["peak RSS MB"] = summary["peak_rss_mb"]
    return out


def ratios(servers: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """Each peer's metric divided by nextword's (above 1: nextword is faster / smaller)."""
    if "nextword" not in servers:
        return {}
    ours = metrics(servers["nextword"])
    out = {}
    for name, summary in servers.items():
        if name == "nextword":
            continue
        theirs = metrics(summary)
        out[name] = {key: (round(theirs[key] / ours[key], 1) if theirs[key] is not None and ours[key] else None)
                     for key in ours if not key.endswith(NOT_RATIOS)}
    return out


NOT_RATIOS = ("answered %", "KSR")  # shares, not costs: shown, not divided
TABLE_COLUMNS = ("paced word-start p50", "paced word-start p99", "paced in-word p50", "paced in-word p99",
                 "paced answered %", "b2b word-start p50", "b2b word-start p99", "b2b in-word p50", "b2b KSR",
                 "open to first answer", "peak RSS MB")


def markdown_table(report: dict) -> str:
    """Servers x metrics (ms unless MB), with each peer's ratio to nextword under its numbers."""
    header = "| server | typed | " + " | ".join(TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for name, summary in report["servers"].items():
        m = metrics(summary)
        lines.append(f"| {name} | {summary['typed_chars']} | " + " | ".join(_fmt(m[c], column=c) for c in TABLE_COLUMNS) + " |")
        if name in report["ratios_to_nextword"]:
            r = report["ratios_to_nextword"][name]
            lines.append(f"| {name} / nextword | | " + " | ".join(_fmt(r.get(c), "×") for c in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def _fmt(value: float | None, unit: str = "", column: str = "") -> str:
    if value is None:
        return "–"
    if column.endswith("KSR"):
        return f"{value:.2f}"
    return f"{value:.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}"


def plot_cdf(report: dict, path: Path) -> None:
    """Latency CDFs (log scale), one panel per typing mode, one line per server and request kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, mode, title in zip(axes, MODES, (f"typed at {report['pace_ms']:g} ms per keystroke", "back to back")):
        for color, (name, summary) in enumerate(report["servers"].items()):
            for kind, style in (("word_start", "-"), ("in_word", ":")):
                xs = sorted(summary[mode][kind]["samples_ms"])
                if xs:
                    ys = [(i + 1) / len(xs) for i in range(len(xs))]
                    ax.step([xs[0]] + xs, [0.0] + ys, style, color=f"C{color}", where="post",
                            label=f"{name} {kind.replace('_', '-')}")
        ax.set_xscale("log")
        ax.set_xlabel("completion latency (ms, log scale)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("fraction of requests")
    axes[0].set_ylim(0, 1.02)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"nextword vs peers, {report['machine']['cpu']}, device {report['device']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0))}
    try:
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_report(report: dict, out: Path) -> None:
    """The JSON report; the per-text runs without their samples (the pooled summaries keep them)."""
    def without_samples(run: dict) -> dict:
        return {**run, **{mode: {k: v for k, v in run[mode].items() if k != "samples_ms"} for mode in MODES}}
    slim = {**report, "runs": {name: [without_samples(run) for run in runs] for name, runs in report["runs"].items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(slim, indent=2))
