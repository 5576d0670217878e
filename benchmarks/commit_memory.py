"""Peak memory of a first ingest's commit: vectors checkpointed by the embed step, then built into an index.

    .venv/bin/python benchmarks/commit_memory.py [--count 300000] [--kind auto]

Writes `count` seeded cone vectors of 2048-d as checkpoint pieces of 1,000 (as an ingest's embed step does,
through checkpoints.Checkpoints), then, in a fresh process, does what the ingest does next: loads the
pieces, plans (every file resumed from them) and commits (ingest.commit) a first index of kind `kind`.
Reported: seconds, and the peak anonymous memory (the process's own heap, not the page cache of the mapped
files) and peak resident set of that process, sampled every 5 ms. Writes
benchmarks/results/commit_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from update import Peak

RESULTS = Path(__file__).parent / "results"
EMBEDDING = {"model": "synthetic cone", "dim": 2048}
PIECE = 1_000


def write_pieces(index: Path, count: int) -> None:
    from retrieval.analysis.synthetic import feature_vectors
    from retrieval.index.manifest import Entry
    from retrieval.ingestion.checkpoints import Checkpoints

    checkpoints = Checkpoints(index, EMBEDDING)
    vectors = feature_vectors("cone", count, queries=0, seed=0)[0]
    for start in range(0, count, PIECE):
        rows = range(start, min(start + PIECE, count))
        checkpoints.save([Entry(f"{i:07d}.jpg", 1000, 1) for i in rows], vectors[start : start + PIECE])


def commit_child(index: Path, kind: str) -> dict:
    from retrieval.config import Settings
    from retrieval.ingestion.checkpoints import Checkpoints
    from retrieval.ingestion.job import IngestReport, Plan, commit

    settings = Settings(index=index, index_type=kind, metric="cosine")
    with Peak() as peak:
        began = time.perf_counter()
        resumed = Checkpoints(index, EMBEDDING).load()
        the_plan = Plan(Path("/photos"), [e for e, _ in resumed], resumed={i: v for i, (_, v) in enumerate(resumed)})
        loaded = time.perf_counter()
        store = commit(
            None,
            the_plan,
            {},
            settings,
            embedding=EMBEDDING,
            runtime={},
            listing_count=len(resumed),
            report=IngestReport(index),
        )
        done = time.perf_counter()
    return {
        "rows": store.count,
        "factory": store.record.index["factory"],
        "load_pieces_s": loaded - began,
        "commit_s": done - loaded,
        "peak_anon_mb": peak.anon / 1024,
        "peak_rss_mb": peak.rss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300_000)
    parser.add_argument("--kind", default="auto")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(commit_child(Path(args.child[0]), args.child[1])))
        return
    from retrieval.io.system import machine

    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        index = Path(tmp) / "index"
        write_pieces(index, args.count)
        child = [sys.executable, __file__, "--child", str(index), args.kind]
        out = subprocess.run(child, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr)
        result = {"machine": machine(), "count": args.count, "kind": args.kind, **json.loads(out.stdout)}
        shutil.rmtree(index, ignore_errors=True)
    write(result)


def write(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "commit_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    host, mb_per_copy = result["machine"], result["count"] * 2048 * 4 / 2**20
    lines = [
        "# Memory of a first commit",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores; run {host['date']}. `python benchmarks/commit_memory.py "
        f"--count {result['count']} --kind {result['kind']}`: {result['count']:,} cone vectors of 2048-d "
        f"({mb_per_copy:,.0f} MB as float32) checkpointed in pieces of {PIECE:,}, then loaded and committed "
        f"as a first ingest does, into {result['factory']}.",
        "",
        "| load pieces s | commit s | peak anonymous MB | peak RSS MB |",
        "|---|---|---|---|",
        f"| {result['load_pieces_s']:.1f} | {result['commit_s']:.1f} | {result['peak_anon_mb']:,.0f} "
        f"| {result['peak_rss_mb']:,.0f} |",
    ]
    (RESULTS / "commit_memory.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "commit_memory.md").read_text())


if __name__ == "__main__":
    main()
