"""`retrieval export` of a large index: seconds, file size, and the peak of the process's anonymous memory (what
the export itself holds: the index's vectors are memory-mapped, so resident file pages come and go with the page
cache and say nothing of the export's own needs).

    .venv/bin/python benchmarks/export.py --index /tmp/filters/index    # the index benchmarks/filters.py builds

Writes benchmarks/results/export.json and export.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def anonymous_mb() -> float:
    """This process's resident anonymous memory (RssAnon), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_while(run) -> tuple[object, float, float]:
    """`run()`'s result, its seconds, and the peak anonymous memory sampled every 20 ms meanwhile."""
    peak, done = [anonymous_mb()], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak.append(anonymous_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        result = run()
    finally:
        done.set()
        sampler.join()
    return result, time.perf_counter() - started, max(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=Path("/tmp/filters/index"))
    args = parser.parse_args()

    from retrieval.index.store import Store
    from retrieval.io.system import machine
    from retrieval.maintenance.export import GROUP_BYTES, export

    rows = Store.load(args.index).count
    before = anonymous_mb()
    runs = {}
    with tempfile.TemporaryDirectory(dir=args.index.parent) as scratch:
        for format, name in (("parquet", "rows.parquet"), ("npy", "vectors")):
            target = Path(scratch) / name
            done, seconds, peak = peak_while(partial(export, args.index, target, format=format))
            runs[format] = {
                "seconds": seconds,
                "bytes": done.bytes,
                "peak_anonymous_mb": peak,
                "rows_per_second": rows / seconds,
            }
            print(format, json.dumps(runs[format]), flush=True)
    result = {
        "machine": machine(),
        "rows": rows,
        "row_group_vector_mb": GROUP_BYTES / 2**20,
        "anonymous_mb_before": before,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "export.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    host = result["machine"]
    lines = [
        f"`retrieval export` of {result['rows']:,} rows of 2048-d vectors (machine: {host['cpu']}, {host['cores']} "
        f"cores; {host['date']}); row groups of {result['row_group_vector_mb']:.0f} MB of vectors; the process held "
        f"{result['anonymous_mb_before']:.0f} MB of anonymous memory before.",
        "",
        "| format | seconds | rows/s | written MB | peak anonymous memory MB |",
        "|---|---|---|---|---|",
    ]
    for format, run in result["runs"].items():
        lines.append(
            f"| {format} | {run['seconds']:.1f} | {run['rows_per_second']:,.0f} | {run['bytes'] / 2**20:,.0f} | "
            f"{run['peak_anonymous_mb']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
