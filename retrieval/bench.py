"""The search benchmark behind `retrieval bench search` and benchmarks/search.py.

For each vector family and size it builds every index kind through `ann.build` (the library's own code
path), then measures build time, memory, single-query latency (one thread, p50 and p99), batch
throughput (all threads) and recall@10 against exact search, beside the memory-bandwidth bound of a
flat scan measured in the same run. Results go to JSON, a markdown table and a latency/recall plot.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from .ann import IndexChoice, apply_search_parameters, build
from .embedders import package_version
from .synthetic import feature_vectors

QUERIES = 1000  # fresh draws from each family; the first LATENCY_QUERIES are timed one by one
LATENCY_QUERIES = 300
Log = Callable[[str], None]
Progress = Callable[[str], Callable[[int, int], None]]  # label -> progress(done, total)


@dataclass(frozen=True)
class Sweep:
    """An index kind and the search parameter values to try on one build of it."""

    label: str
    choice: IndexChoice
    parameter: str = ""  # "ef_search" or "nprobe"; "" for flat
    values: tuple[int, ...] = ()


SWEEPS = (
    Sweep("flat", IndexChoice("flat")),
    Sweep("HNSW32", IndexChoice("hnsw"), "ef_search", (16, 32, 64, 128, 256)),
    Sweep("PCA256+HNSW32+rerank", IndexChoice("hnsw", pca=256), "ef_search", (16, 32, 64, 128, 256)),
    Sweep("IVF+SQ8+rerank", IndexChoice("ivf"), "nprobe", (4, 16, 64)),
    Sweep("IVF+PQ64+rerank", IndexChoice("ivf", pq_bytes=64, rerank=8), "nprobe", (4, 16, 64)),
)


def run(
    sizes: list[int],
    families: list[str],
    kinds: list[str] | None,
    out: Path,
    log: Log = print,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure, write out/search.json, out/search.md and out/search.png, and return the results."""
    host = machine()
    bandwidth = read_bandwidth()
    log(f"{host['cpu']}, {host['cores']} cores; single-thread read bandwidth {bandwidth / 1e9:.1f} GB/s")
    rows: list[dict[str, Any]] = []
    for family in families:
        for size in sizes:
            sweeps = [s for s in SWEEPS if not kinds or s.label in kinds]
            rows += measure_size(family, size, bandwidth, sweeps, log, progress)
    result = {"machine": host, "bandwidth_gb_s": bandwidth / 1e9, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "search.md").write_text(markdown(result))
    plot(rows, out / "search.png")
    return result


def measure_size(
    family: str, size: int, bandwidth: float, sweeps: list[Sweep], log: Log, progress: Progress | None
) -> list[dict[str, Any]]:
    log(f"{family}, {size:,} vectors: generating ...")
    vectors, queries = feature_vectors(family, size, queries=QUERIES, seed=size)
    metric = faiss.METRIC_INNER_PRODUCT
    truth = faiss.knn(queries, vectors, 10, metric=metric)[1]
    bound_ms = vectors.nbytes / bandwidth * 1000
    rows = []
    for sweep in sweeps:
        rss_before = memory_bytes()
        started = time.perf_counter()
        report = progress(f"building {sweep.label}") if progress else None
        index = build(sweep.choice, vectors.shape[1], metric, vectors, progress=report)
        build_s = time.perf_counter() - started
        memory_mb = max(memory_bytes() - rss_before, 0) / 2**20
        for value in sweep.values or (0,):
            choice = replace(sweep.choice, **{sweep.parameter: value}) if sweep.parameter else sweep.choice
            apply_search_parameters(index, choice)
            row = {
                "family": family,
                "n": size,
                "kind": sweep.label,
                "factory": choice.factory(vectors.shape[1], size),
                "parameter": f"{sweep.parameter}={value}" if sweep.parameter else "",
                "build_s": build_s,
                "memory_mb": memory_mb,
                "bound_ms": bound_ms,
                **_latency(index, queries),
                "recall_at_10": _recall(index, queries, truth),
            }
            rows.append(row)
            log(
                f"  {row['kind']:<22} {row['parameter']:<14} p50 {row['p50_ms']:8.3f} ms  p99 {row['p99_ms']:8.3f} ms  "
                f"{row['qps']:9.0f} q/s  recall@10 {row['recall_at_10']:.3f}  build {build_s:6.1f} s"
            )
        del index
    return rows


def _latency(index: faiss.Index, queries: np.ndarray) -> dict[str, float]:
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.search(queries[:5], 10)  # warm caches
        times = []
        for q in queries[:LATENCY_QUERIES]:
            started = time.perf_counter()
            index.search(q[np.newaxis], 10)
            times.append(time.perf_counter() - started)
    finally:
        faiss.omp_set_num_threads(threads)
    started = time.perf_counter()
    index.search(queries, 10)
    batch_s = time.perf_counter() - started
    ms = np.array(times) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "qps": len(queries) / batch_s}


def _recall(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> float:
    found = index.search(queries, 10)[1]
    return float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)]))


def read_bandwidth(megabytes: int = 1024) -> float:
    """Bytes per second one thread reads (numpy sum over an array larger than the caches)."""
    data = np.ones(megabytes * 2**20 // 4, np.float32)
    data.sum()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best


def memory_bytes(field: str = "VmRSS") -> int:
    """A memory figure of this process from /proc/self/status: VmRSS now, VmHWM its peak. (Not getrusage:
    on Linux its ru_maxrss carries the parent's peak across fork and exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def machine() -> dict[str, Any]:
    """The machine a benchmark ran on, as its results record it: CPU, cores, native bf16, versions, date."""
    cpu, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line.split()
    except OSError:
        pass
    names = ("faiss-cpu", "numpy", "openvino", "tensorflow-cpu", "tensorflow", "keras", "pillow")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "bf16": [f for f in ("amx_bf16", "avx512_bf16") if f in flags],
        "python": platform.python_version(),
        "versions": {name: version for name in names if (version := package_version(name))},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def markdown(result: dict[str, Any]) -> str:
    host = result["machine"]
    lines = [
        "# Search benchmark",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores; faiss {host['versions'].get('faiss-cpu')}; run {host['date']}. "
        f"Single-thread read bandwidth {result['bandwidth_gb_s']:.1f} GB/s (numpy sum).",
        f"d = 2048, top-10, {QUERIES} fresh queries per family; latency: one query at a time on one thread "
        f"({LATENCY_QUERIES} queries); q/s: all queries in one batch on every thread; recall@10 against exact search.",
        "The bound is the time to read every vector once at that bandwidth: no exact scan can beat it.",
        "",
        "| family | N | kind | parameter | p50 ms | p99 ms | bound ms | q/s | recall@10 | build s | memory MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['family']} | {r['n']:,} | {r['kind']} | {r['parameter']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['bound_ms']:.2f} | {r['qps']:.0f} | {r['recall_at_10']:.3f} | {r['build_s']:.1f} | {r['memory_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Latency against recall, one curve per kind, one panel per family and size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["family"], r["n"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (family, n) in zip(axes[0], panels):
        here = [r for r in rows if (r["family"], r["n"]) == (family, n)]
        for kind in dict.fromkeys(r["kind"] for r in here):
            points = [r for r in here if r["kind"] == kind]
            ax.plot([r["p50_ms"] for r in points], [r["recall_at_10"] for r in points], "o-", label=kind)
        ax.axvline(here[0]["bound_ms"], color="grey", linestyle=":", label="flat scan bound")
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency, one query, one thread (ms)")
        ax.set_ylabel("recall@10")
        ax.set_title(f"{family}, N = {n:,}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
