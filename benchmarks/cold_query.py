"""Cold `retrieval query` wall time on a large index: a fresh process, by an indexed image and by a new one.

    .venv/bin/python benchmarks/cold_query.py [--count 100000]

Builds, through the library API, an index of `count` seeded synthetic vectors whose manifest rows point at
symlinks to one generated JPEG (so that "an indexed image" exists on disk with the recorded size and
mtime), once with index_type flat and once with auto; then times `python -m retrieval query` as a user
runs it, five times each, with the file cache warm. Writes benchmarks/results/cold_query.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
RESULTS = HERE / "results"
RUNS = 5


def build_indexes(count: int) -> tuple[Path, dict[str, Path]]:
    from retrieval.analysis.synthetic import feature_vectors, photo
    from retrieval.config import Settings
    from retrieval.embedding.embedders import embedding_for
    from retrieval.index.manifest import Entry
    from retrieval.index.store import Store
    from retrieval.ingestion.job import index_choice

    folder = DATA / f"cold-{count}"
    photos = folder / "photos"
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        photos.mkdir(parents=True)
        photo(1, (1024, 768)).save(folder / "original.jpg", quality=90)
        for i in range(count):
            sub = photos / f"{i // 1000:03d}"
            sub.mkdir(exist_ok=True)
            (sub / f"{i:06d}.jpg").symlink_to(folder / "original.jpg")  # ext4 allows 65,000 hard links
        photo(2, (1024, 768)).save(folder / "new.jpg", quality=90)
        (folder / "done").touch()
    st = (folder / "original.jpg").stat()
    entries = [Entry(f"{i // 1000:03d}/{i:06d}.jpg", st.st_size, st.st_mtime_ns) for i in range(count)]
    vectors, _ = feature_vectors("clustered", count, seed=7)
    settings = Settings(weights="none")
    embedding = embedding_for(settings)
    indexes = {}
    for kind in ("flat", "auto"):
        index = folder / f"index-{kind}"
        if not (index / "CURRENT").exists():
            choice = index_choice(Settings(weights="none", index_type=kind))
            store = Store.create(
                dim=2048, metric="cosine", embedding=embedding, root=photos, runtime={}, kind=choice, recall_target=0.95
            )
            store.add(vectors, entries)
            store.save(index)
        indexes[kind] = index
    return folder, indexes


def wall_times(args: list[str]) -> list[float]:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "retrieval", "query", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    count = parser.parse_args().count
    os.environ.setdefault("RETRIEVAL_CACHE", str(DATA / "model-cache"))
    folder, indexes = build_indexes(count)
    rows = []
    for index in indexes.values():
        meta = json.loads((index / (index / "CURRENT").read_text().strip() / "meta.json").read_text())
        for query, label in ((folder / "photos/000/000000.jpg", "indexed image"), (folder / "new.jpg", "new image")):
            times = wall_times([str(query), "--index", str(index), "-k", "10", "--json"])
            rows.append(
                {
                    "index": meta["index"]["factory"],
                    "query": label,
                    "median_s": statistics.median(times),
                    "runs_s": times,
                }
            )
            print(f"{meta['index']['factory']:<22} {label:<14} median {statistics.median(times):.2f} s  {times}")
    from retrieval.io.system import machine

    host = machine()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cold_query.json").write_text(
        json.dumps({"machine": host, "count": count, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Cold query",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores; run {host['date']}; "
        f"typer {host['versions'].get('typer', '?')}.",
        "",
        f"`python -m retrieval query IMAGE -k 10 --json` in a fresh process, {count:,} vectors, warm file cache; "
        f"median of {RUNS} runs (`benchmarks/cold_query.py`).",
        "",
        "| index | query | median wall s |",
        "|---|---|---|",
        *(f"| {r['index']} | {r['query']} | {r['median_s']:.2f} |" for r in rows),
    ]
    (RESULTS / "cold_query.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
