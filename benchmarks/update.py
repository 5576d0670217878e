"""Updating a large index through the library's own commit path (ingest.commit): time, bytes written and
peak memory of +1,000, -1,000 and +1,000/-1,000 commits into 1,000,000 vectors, then query latency and
recall@10 after 20 such commits, before and after `compact` merges them.

    .venv/bin/python benchmarks/update.py [--count 1000000] [--commits 20] [--change 1000]

Seeded "cone" vectors (synthetic.py: clustered, in the narrow cone of real CNN features) stand in for
embeddings; the index kind is `auto`, as by default (PCA-256 + HNSW32 + exact re-rank at this size). Each
commit runs in a fresh process, as an ingest does: it loads the live generation (memory-mapped), makes the
plan an ingest would make (every previous row kept but the deleted ones, the new vectors as embedded), and
calls ingest.commit. Reported per commit: the seconds of the commit itself and of loading + planning; the
bytes of the files the new generation does not share with the previous one, and the bytes the process wrote
(/proc/self/io); the peak anonymous memory of the process (what is not the memory-mapped index) and its
peak resident set. Queries: one at a time through Store.search (which searches the largest segment on a worker
thread while the caller's searches the others; FAISS's OpenMP threads set to 1), on a warm file cache (every file of the
generation read once first), p50/p99 over 1,000; recall@10 against exact search over the live vectors, for
200 of them. Last, the index after the commits (at the compacted index's efSearch) and the compacted index
are timed alternately, PAIRED_ROUNDS times each, for a ratio that this VM's drifting speed does not skew.
Cold query: `python -m retrieval query IMAGE --index ... -k 10 --json` run as a user runs it (from the
repository, which holds a config.yaml), by an indexed image, median wall time of 5 runs; the image is a
stand-in file written where the manifest row says, with the size and mtime it records, so that the query
uses the stored vector as it would for a real indexed photo. Writes benchmarks/results/update.json
and update.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
REPOSITORY = Path(__file__).resolve().parent.parent
QUERIES = 1_000
COLD_RUNS = 5
RECALL_QUERIES = 200
# Latency of the index after the commits against the compacted one, measured alternately this many times: this
# VM's speed drifts by up to 2x over minutes, so states measured minutes apart do not compare on their own.
PAIRED_ROUNDS = 5


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


class Peak:
    """Samples the process's anonymous and resident memory every 5 ms while it runs."""

    def __init__(self) -> None:
        self.anon = self.rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.anon = max(self.anon, status_kb("RssAnon"))
            self.rss = max(self.rss, status_kb("VmRSS"))
            time.sleep(0.005)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def settings_for(index: Path):
    from retrieval.config import Settings

    return Settings(index=index, index_type="auto", metric="cosine")


def new_files_bytes(generation: Path) -> int:
    """Bytes of the generation's files that no other generation links to: what this commit wrote."""
    return sum(p.stat().st_size for p in generation.rglob("*") if p.is_file() and p.stat().st_nlink == 1)


def commit_child(index: Path, pool: Path, start: int, add: int, delete: int, seed: int) -> dict:
    """One commit as an ingest makes it (run in its own process)."""
    from retrieval.index.manifest import Entry
    from retrieval.index.store import Store
    from retrieval.ingestion.job import IngestReport, Plan, commit

    with Peak() as peak:
        began, io_before = time.perf_counter(), written_bytes()
        store = Store.load(index)
        previous = store.entries()
        gone = set(np.random.default_rng(seed).choice(store.count, delete, replace=False).tolist()) if delete else set()
        kept_rows = [row for row in range(store.count) if row not in gone]
        entries = [previous[row] for row in kept_rows]
        kept = dict(enumerate(kept_rows))
        new = np.load(pool, mmap_mode="r")[start : start + add]
        first = len(entries)
        entries += [Entry(f"new/{start + i:07d}.jpg", 1000, 1) for i in range(add)]
        plan = Plan(store.root, entries, kept=kept, to_embed=list(range(first, first + add)))
        embedded = {first + i: np.array(v) for i, v in enumerate(new)}
        planned = time.perf_counter()
        saved = commit(
            store,
            plan,
            embedded,
            settings_for(index),
            embedding=store.record.embedding,
            runtime=store.record.runtime,
            listing_count=len(entries),
            report=IngestReport(index),
        )
        done = time.perf_counter()
    from retrieval.index.generations import current_generation

    return {
        "add": add,
        "delete": delete,
        "commit_s": done - planned,
        "load_and_plan_s": planned - began,
        "new_file_bytes": new_files_bytes(current_generation(index)),
        "io_write_bytes": written_bytes() - io_before,
        "peak_anon_mb": peak.anon / 1024,
        "peak_rss_mb": peak.rss / 1024,
        "segments": len(saved.segments),
        "count": saved.count,
    }


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compact_child(index: Path) -> dict:
    from retrieval.index.generations import current_generation
    from retrieval.maintenance.compact import compact

    with Peak() as peak:
        began = time.perf_counter()
        done = compact(index)
        seconds = time.perf_counter() - began
    store = done.store
    return {
        "compact_s": seconds,
        "merged": done.segments,
        "new_file_bytes": new_files_bytes(current_generation(index)),
        "peak_anon_mb": peak.anon / 1024,
        "recall_at_10_recorded": store.record.index.get("recall_at_10"),
    }


def warm(generation: Path) -> None:
    """Read every file of the generation once, so that queries are timed on a warm file cache (as a
    served index is), not on page faults of a freshly written one."""
    for path in generation.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def query_child(index: Path, queries: Path, ef_search: int = 0, with_recall: int = 1) -> dict:
    """Latency (one query at a time) and recall@10 against exact search over the live rows. `ef_search`: the
    graph segments' search parameter instead of the one auto chose (to compare at equal parameters);
    `with_recall` 0: latency only (the paired rounds)."""
    from retrieval.ann.indexes import omp_threads
    from retrieval.index.generations import current_generation
    from retrieval.index.store import Store

    store = Store.load(index)
    for segment in store._segments if ef_search else []:  # the benchmark's own override, before any search
        if segment.index.choice.kind == "hnsw":
            segment.index.tune(replace(segment.index.choice, ef_search=ef_search))
    q = np.load(queries)
    warm(current_generation(index))
    times = []
    with omp_threads(1):
        for query in q[:50]:
            store.search(query, 10)
        for query in q[:QUERIES]:
            began = time.perf_counter()
            store.search(query, 10)
            times.append(time.perf_counter() - began)
    latency = {"p50_ms": float(np.percentile(times, 50) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3)}
    if not with_recall:
        return latency
    sample = q[:RECALL_QUERIES]
    best = np.full((len(sample), 10), -np.inf, np.float32)
    rows = np.zeros((len(sample), 10), np.int64)
    for start in range(0, store.count, 50_000):
        chunk = np.arange(start, min(start + 50_000, store.count))
        scores = sample @ store.vectors_of(chunk).T
        scores = np.concatenate([best, scores], axis=1)
        candidates = np.concatenate([rows, np.broadcast_to(chunk, (len(sample), len(chunk)))], axis=1)
        top = np.argsort(-scores, axis=1)[:, :10]
        best, rows = np.take_along_axis(scores, top, 1), np.take_along_axis(candidates, top, 1)
    found = store.search(sample, 10)
    recall = np.mean([len({r for r, _ in hits} & set(truth.tolist())) / 10 for hits, truth in zip(found, rows)])
    return {
        **latency,
        "recall_at_10": float(recall),
        "segments": len(store.segments),
        "deleted": sum(s["deleted"] for s in store.segments),
        "ef_search": ef_search or max(store.segments, key=lambda s: s["rows"])["index"].get("ef_search"),
        "factories": sorted({s["index"]["factory"] for s in store.segments}),
    }


def cold_query(index: Path) -> dict:
    """Median wall seconds of a fresh `retrieval query` process by an indexed image (see the docstring)."""
    from retrieval.index.store import Store

    store = Store.load(index)
    entry = store.entry(store.count // 2)
    image = store.root / entry.path
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"\0" * entry.size)
    os.utime(image, ns=(entry.mtime_ns, entry.mtime_ns))
    del store
    command = [sys.executable, "-m", "retrieval", "query", str(image), "--index", str(index), "-k", "10", "--json"]
    times = []
    for _ in range(COLD_RUNS):
        began = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, cwd=REPOSITORY)
        times.append(time.perf_counter() - began)
        if out.returncode or json.loads(out.stdout)["embedded"]:
            raise SystemExit(f"the cold query did not answer from the stored vector: {out.stderr}")
    return {"cold_query_s": float(np.median(times))}


def build(index: Path, count: int, change: int, commits: int, work: Path) -> dict:
    """The base index, and the pool of vectors the commits add (drawn from the same distribution)."""
    from retrieval.analysis.synthetic import feature_vectors
    from retrieval.index.manifest import Entry
    from retrieval.index.store import Store
    from retrieval.ingestion.job import index_choice

    extra = change * (commits + 2) + QUERIES
    vectors, more = feature_vectors("cone", count, queries=extra, seed=0)
    np.save(work / "pool.npy", more[QUERIES:])
    np.save(work / "queries.npy", more[:QUERIES])
    del more
    entries = [Entry(f"base/{i // 1000:04d}/{i:07d}.jpg", 1000, 1) for i in range(count)]
    began = time.perf_counter()
    # a first ingest's commit, without its copy of the vectors (the benchmark holds them already)
    settings = settings_for(index)
    store = Store.create(
        dim=vectors.shape[1],
        metric=settings.metric,
        embedding={"model": "synthetic cone", "dim": vectors.shape[1]},
        root=work / "photos",
        runtime={},
        kind=index_choice(settings),
        recall_target=settings.recall_target,
    )
    store.add(vectors, entries)
    store.save(index)
    return {"build_s": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--change", type=int, default=1_000)
    parser.add_argument(
        "--keep",
        type=Path,
        help="work in this folder and keep it (the index after the commits stays there, as index-after-commits)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "commit":
            index, pool, start, add, delete, seed = rest
            result = commit_child(Path(index), Path(pool), int(start), int(add), int(delete), int(seed))
        elif kind == "compact":
            result = compact_child(Path(rest[0]))
        else:
            result = query_child(Path(rest[0]), Path(rest[1]), *map(int, rest[2:]))
        print(json.dumps(result))
        return
    from retrieval.io.system import machine

    n = args.change
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        index, pool, queries = work / "index", str(work / "pool.npy"), str(work / "queries.npy")
        result: dict = {"machine": machine(), "count": args.count, "change": n, "commits": args.commits}
        result["base"] = build(index, args.count, n, args.commits, work)
        print(f"base index of {args.count:,}: {result['base']['build_s']:.0f} s", flush=True)
        result["base"].update(run_child("query", str(index), queries), **cold_query(index))
        used = 0
        result["single"] = {}
        for name, (add, delete) in {"+": (n, 0), "-": (0, n), "+/-": (n, n)}.items():
            result["single"][name] = run_child("commit", str(index), pool, str(used), str(add), str(delete), str(used))
            used += add
            print(name, result["single"][name], flush=True)
        result["sequence"] = []
        for i in range(args.commits):
            step = run_child("commit", str(index), pool, str(used), str(n), str(n), str(1000 + i))
            used += n
            result["sequence"].append(step)
            print(i + 1, step, flush=True)
        result["after_commits"] = {**run_child("query", str(index), queries), **cold_query(index)}
        print("after commits", result["after_commits"], flush=True)
        after_commits = work / "index-after-commits"
        subprocess.run(["cp", "-al", str(index), str(after_commits)], check=True)  # links: no copy
        result["compact"] = run_child("compact", str(index))
        result["after_compact"] = {**run_child("query", str(index), queries), **cold_query(index)}
        print("after compact", result["compact"], result["after_compact"], flush=True)
        ef = result["after_compact"]["ef_search"]
        result["after_commits_at_compact_ef"] = run_child("query", str(after_commits), queries, str(ef))
        print("after commits at the compacted index's efSearch", result["after_commits_at_compact_ef"], flush=True)
        result["paired"] = [
            {
                "after_commits_p50_ms": run_child("query", str(after_commits), queries, str(ef), "0")["p50_ms"],
                "compacted_p50_ms": run_child("query", str(index), queries, "0", "0")["p50_ms"],
            }
            for _ in range(PAIRED_ROUNDS)
        ]
        print("paired rounds", result["paired"], flush=True)
    write(result)


def write(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "update.json").write_text(json.dumps(result, indent=2) + "\n")
    host, n, count = result["machine"], result["change"], result["count"]
    mb = 2**20
    sequence = result["sequence"]

    def median(key: str) -> float:
        return float(np.median([c[key] for c in sequence]))

    lines = [
        "# Updating an index",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores; run {host['date']}. {count:,} seeded cone vectors of 2048-d,",
        f"index kind auto; base build {result['base']['build_s']:.0f} s. Each commit in a fresh process through",
        "ingest.commit. `python benchmarks/update.py`",
        "",
        "| commit | commit s | load + plan s | new files MB | written MB (/proc) | peak anon MB | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {name} {n:,} | {c['commit_s']:.2f} | {c['load_and_plan_s']:.2f} | {c['new_file_bytes'] / mb:.1f} "
            f"| {c['io_write_bytes'] / mb:.1f} | {c['peak_anon_mb']:.0f} | {c['peak_rss_mb']:.0f} |"
            for name, c in result["single"].items()
        ),
        f"| {len(sequence)} × +/- {n:,}, median | {median('commit_s'):.2f} | {median('load_and_plan_s'):.2f} "
        f"| {median('new_file_bytes') / mb:.1f} | {median('io_write_bytes') / mb:.1f} "
        f"| {median('peak_anon_mb'):.0f} | {median('peak_rss_mb'):.0f} |",
        f"| {len(sequence)} × +/- {n:,}, slowest | {max(c['commit_s'] for c in sequence):.2f} | | "
        f"{max(c['new_file_bytes'] for c in sequence) / mb:.1f} | | {max(c['peak_anon_mb'] for c in sequence):.0f} | |",
        "",
        "| state | segments | their kinds | deleted rows | largest's efSearch | query p50 ms | p99 ms | recall@10 "
        "| cold `retrieval query` s |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {label} | {q['segments']} | {', '.join(q['factories'])} | {q['deleted']:,} | {q['ef_search']} "
            f"| {q['p50_ms']:.3f} | {q['p99_ms']:.3f} | {q['recall_at_10']:.3f} | {q['cold_query_s']:.2f} |"
            for label, q in (
                ("fresh build", result["base"]),
                (f"after {len(sequence) + 3} commits", result["after_commits"]),
                ("after compact (a fresh build of the live rows)", result["after_compact"]),
            )
        ),
        f"| after {len(sequence) + 3} commits, graphs at the compacted index's efSearch | "
        f"{(q := result['after_commits_at_compact_ef'])['segments']} | {', '.join(q['factories'])} "
        f"| {q['deleted']:,} | {q['ef_search']} | {q['p50_ms']:.3f} | {q['p99_ms']:.3f} | {q['recall_at_10']:.3f} | |",
        "",
        f"`retrieval compact` took {result['compact']['compact_s']:.0f} s, wrote "
        f"{result['compact']['new_file_bytes'] / mb:,.0f} MB, peak anonymous memory "
        f"{result['compact']['peak_anon_mb']:,.0f} MB.",
        "",
        *paired_lines(result["paired"], len(sequence) + 3, result["after_compact"]["ef_search"]),
    ]
    (RESULTS / "update.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "update.md").read_text())


def paired_lines(rounds: list[dict], commits: int, ef: int) -> list[str]:
    """The paired rounds as a table: each round's two p50s, measured one after the other, and their ratio."""
    ratios = [r["after_commits_p50_ms"] / r["compacted_p50_ms"] for r in rounds]
    return [
        f"Paired rounds: query p50 after {commits} commits (graphs at efSearch {ef}) and after compact, measured "
        f"alternately, {len(rounds)} times each. Median ratio {float(np.median(ratios)):.2f}.",
        "",
        "| round | after commits p50 ms | compacted p50 ms | ratio |",
        "|---|---|---|---|",
        *(
            f"| {i + 1} | {r['after_commits_p50_ms']:.3f} | {r['compacted_p50_ms']:.3f} | {ratio:.2f} |"
            for i, (r, ratio) in enumerate(zip(rounds, ratios))
        ),
    ]


if __name__ == "__main__":
    main()
