"""The search benchmark behind `retrieval bench search` and benchmarks/search.py.

For each vector set (a seeded synthetic family at a size, or the vectors of an existing index) it builds
every index kind through `ann.build` (the library's own code path), then measures build time, memory,
single-query latency (one thread, p50 and p99) of the raw FAISS call and of the project's own search path
(normalize, search, scores, rows mapped to paths), batch throughput (all threads) and recall@10 against
exact search, beside the time one BLAS matrix-vector product over the same vectors takes. Results go to
JSON, a markdown table and a latency/recall plot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.analysis.synthetic import feature_vectors
from retrieval.ann.indexes import IndexChoice, VectorIndex, describe, omp_threads
from retrieval.ann.kinds import KINDS
from retrieval.ann.tuning import overlap
from retrieval.config import FAMILIES
from retrieval.errors import EmptyIndex, UsageError
from retrieval.index.manifest import Entry, Manifest
from retrieval.index.record import IndexRecord
from retrieval.index.segments import Segment
from retrieval.index.store import Store
from retrieval.io.durable import write_atomically, write_text_atomically
from retrieval.io.system import machine, memory_bytes

MIN_INDEX_ROWS = 100  # as --sizes: every kind can be built and measured on as few
QUERIES = 1000  # fresh draws from each family; the first LATENCY_QUERIES are timed one by one
LATENCY_QUERIES = 300
WARM_UP = 50  # queries run before each timed sweep value, so that the first value is not penalised
Log = Callable[[str], None]
Progress = Callable[[str], Callable[[int, int], None]]  # label -> progress(done, total)


@dataclass(frozen=True)
class Sweep:
    """An index kind and the search parameter values to try on one build of it."""

    label: str
    choice: IndexChoice
    parameter: str = ""  # the kind's tuned parameter (Kind.parameter); "" for flat
    values: tuple[int, ...] = ()


SWEPT_VALUES = 5  # of each kind's tuning values, the first ones: past them recall is saturated on these sets
# every registered kind's swept configurations (kinds/): a new kind is measured with no edit here
SWEEPS = tuple(
    Sweep(label, IndexChoice(kind.name, **fields), kind.parameter or "", kind.values[:SWEPT_VALUES])
    for kind in KINDS.values()
    for label, fields in kind.swept.items()
)


@dataclass(frozen=True)
class VectorSet:
    """What one block of the benchmark searches: `vectors` (n, d) and `queries` (q, d), unit length."""

    family: str  # a synthetic family, or "index:NAME" for the vectors of an existing index
    vectors: np.ndarray
    queries: np.ndarray


def synthetic_sets(families: list[str], sizes: list[int]) -> Any:
    """Seeded synthetic vector sets, generated one at a time (a 1M set takes 8 GB)."""
    for family in families:
        for size in sizes:
            yield VectorSet(family, *feature_vectors(family, size, queries=QUERIES, seed=size))


def search(
    out: Path,
    *,
    sizes: str = "10000,100000",
    families: str = "clustered,hard,cone",
    from_index: Path | None = None,
    kinds: str | None = None,
    log: Log = print,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """`retrieval bench search`: the sets its arguments name (comma-separated sizes and families of synthetic
    vectors, or the vectors of the index in `from_index`), measured for every swept kind or those `kinds`
    names; UsageError, naming the flag, for arguments that cannot work. Writes and returns as `run`."""
    known = {s.label for s in SWEEPS}
    wanted = kinds.split(",") if kinds else None
    if wanted and not set(wanted) <= known:
        raise UsageError(f"--kinds: choose from {', '.join(sorted(known))}")
    if from_index is not None:
        return run([index_set(from_index)], wanted, out, log, progress)
    try:
        counts = [int(n) for n in sizes.split(",")]
    except ValueError:
        raise UsageError(f"--sizes takes comma-separated whole numbers, not {sizes!r}") from None
    if min(counts) < MIN_INDEX_ROWS or not set(families.split(",")) <= set(FAMILIES):
        raise UsageError(f"--sizes must be at least {MIN_INDEX_ROWS} and --families among {', '.join(FAMILIES)}")
    return run(synthetic_sets(families.split(","), counts), wanted, out, log, progress)


def index_set(folder: Path) -> VectorSet:
    """The vectors of the index in `folder`, with QUERIES of its rows (at most a tenth) held out as
    queries: they are removed from the searched set, so each is a new image to it, as a query would be."""
    store = Store.load(folder)
    if store.count == 0:
        raise EmptyIndex(f"the index in {folder} is empty: no vectors to measure (--from-index)")
    if store.count < MIN_INDEX_ROWS:
        raise UsageError(
            f"the index in {folder} holds {store.count} rows; --from-index needs at least {MIN_INDEX_ROWS} "
            "(a tenth of them are held out as queries)"
        )
    vectors = store.vectors()
    held = np.random.default_rng(0).choice(len(vectors), min(QUERIES, len(vectors) // 10), replace=False)
    kept = np.setdiff1d(np.arange(len(vectors)), held)
    return VectorSet(f"index:{folder.resolve().name}", np.ascontiguousarray(vectors[kept]), vectors[held])


def run(
    sets: Any,
    kinds: list[str] | None,
    out: Path,
    log: Log = print,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure every VectorSet of `sets`, write out/search.json, out/search.md and out/search.png, and
    return the results."""
    host = machine()
    log(f"{host['cpu']}, {host['cores']} cores")
    rows: list[dict[str, Any]] = []
    for vector_set in sets:
        sweeps = [s for s in SWEEPS if not kinds or s.label in kinds]
        rows += measure_set(vector_set, sweeps, log, progress)
    result = {"machine": host, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "search.json", json.dumps(result, indent=2) + "\n")
    write_text_atomically(out / "search.md", markdown(result))
    plot(rows, out / "search.png")
    return result


def measure_set(
    vector_set: VectorSet, sweeps: list[Sweep], log: Log, progress: Progress | None
) -> list[dict[str, Any]]:
    vectors, queries = vector_set.vectors, vector_set.queries
    size = len(vectors)
    log(f"{vector_set.family}, {size:,} vectors, {len(queries)} queries")
    metric = faiss.METRIC_INNER_PRODUCT
    truth = faiss.knn(queries, vectors, 10, metric=metric)[1]
    sgemv_ms = sgemv_time(vectors, queries) * 1000
    entries = Manifest.of([Entry(f"{i}.jpg", 0, 0) for i in range(size)])
    rows = []
    for sweep in sweeps:
        rss_before = memory_bytes()
        started = time.perf_counter()
        report = progress(f"building {sweep.label}") if progress else None
        index = VectorIndex.build(sweep.choice, metric, vectors, progress=report)
        build_s = time.perf_counter() - started
        memory_mb = max(memory_bytes() - rss_before, 0) / 2**20
        store = searchable(index, entries, describe(sweep.choice, vectors.shape[1], size))
        for value in sweep.values or (0,):
            choice = replace(sweep.choice, **{sweep.parameter: value}) if sweep.parameter else sweep.choice
            index.tune(choice)
            row = {
                "family": vector_set.family,
                "n": size,
                "kind": sweep.label,
                "factory": choice.factory(vectors.shape[1], size),
                "parameter": f"{sweep.parameter}={value}" if sweep.parameter else "",
                "build_s": build_s,
                "memory_mb": memory_mb,
                "sgemv_ms": sgemv_ms,
                **_latency(index.faiss, store, queries),
                "recall_at_10": _recall(index.faiss, queries, truth),
            }
            rows.append(row)
            log(
                f"  {row['kind']:<22} {row['parameter']:<14} p50 {row['p50_ms']:8.3f} ms (search path "
                f"{row['path_p50_ms']:8.3f})  p99 {row['p99_ms']:8.3f} ms  {row['qps']:9.0f} q/s  "
                f"recall@10 {row['recall_at_10']:.3f}  build {build_s:6.1f} s"
            )
        del index, store
    return rows


def searchable(index: VectorIndex, entries: Manifest, description: dict[str, Any]) -> Store:
    """A Store around a benchmark's index, so that the project's own search path can be timed on it."""
    record = IndexRecord(index.dim, "cosine", "/", embedding={}, runtime={}, index=description)
    return Store([Segment("bench", index, entries, description)], record)


def _latency(index: faiss.Index, store: Store, queries: np.ndarray) -> dict[str, float]:
    """One query at a time on one thread: the raw FAISS call, and Store.search plus the path lookup that
    a query makes; then every query in one batch on all threads."""

    def raw(q: np.ndarray) -> None:
        index.search(q[np.newaxis], 10)

    def project(q: np.ndarray) -> None:
        [store.entry(row).path for row, _ in store.search(q, 10)[0]]

    with omp_threads(1):
        timings = {}
        for name, call in (("raw", raw), ("path", project)):
            for q in queries[:WARM_UP]:
                call(q)
            times = []
            for q in queries[:LATENCY_QUERIES]:
                started = time.perf_counter()
                call(q)
                times.append(time.perf_counter() - started)
            timings[name] = np.array(times) * 1000
    started = time.perf_counter()
    index.search(queries, 10)
    batch_s = time.perf_counter() - started
    return {
        "p50_ms": float(np.percentile(timings["raw"], 50)),
        "p99_ms": float(np.percentile(timings["raw"], 99)),
        "path_p50_ms": float(np.percentile(timings["path"], 50)),
        "path_p99_ms": float(np.percentile(timings["path"], 99)),
        "qps": len(queries) / batch_s,
    }


def _recall(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> float:
    return overlap(index.search(queries, 10)[1], truth)


def sgemv_time(vectors: np.ndarray, queries: np.ndarray, repeats: int = 5) -> float:
    """Seconds one BLAS matrix-vector product (`vectors @ q`, one thread) takes, best of `repeats`: the
    cost of reading every vector once with a tuned kernel, as a reference beside the flat scan (which,
    with its own SIMD code, can be faster: it is no lower bound)."""
    from threadpoolctl import threadpool_limits

    best = float("inf")
    with threadpool_limits(limits=1, user_api="blas"):
        vectors @ queries[0]  # page in
        for q in queries[1 : repeats + 1]:
            started = time.perf_counter()
            vectors @ q
            best = min(best, time.perf_counter() - started)
    return best


def markdown(result: dict[str, Any]) -> str:
    host = result["machine"]
    lines = [
        "# Search benchmark",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores; faiss {host['versions'].get('faiss-cpu')}; "
        f"run {host['date']}.",
        f"Top-10; {QUERIES} fresh queries per synthetic family, or up to {QUERIES} held-out rows of an index. "
        f"Latency: one query at a time on one thread ({LATENCY_QUERIES} queries, after {WARM_UP} to warm up), "
        "as the raw FAISS call (p50, p99) and through the project's search path (normalize, search, scores, "
        "paths: path p50); q/s: all queries in one batch on every thread; recall@10 against exact search.",
        "sgemv: one BLAS matrix-vector product (numpy) over the same vectors on one thread: a reference for what "
        "reading them once costs, not a bound (FAISS's own flat scan can beat it).",
        "",
        "| family | N | kind | parameter | p50 ms | p99 ms | path p50 ms | sgemv ms | q/s | recall@10 | build s "
        "| memory MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['family']} | {r['n']:,} | {r['kind']} | {r['parameter']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['path_p50_ms']:.3f} | {r['sgemv_ms']:.2f} | {r['qps']:.0f} | {r['recall_at_10']:.3f} "
            f"| {r['build_s']:.1f} | {r['memory_mb']:.0f} |"
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
        ax.axvline(here[0]["sgemv_ms"], color="grey", linestyle=":", label="one sgemv over the vectors")
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency, one query, one thread (ms)")
        ax.set_ylabel("recall@10")
        ax.set_title(f"{family}, N = {n:,}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
