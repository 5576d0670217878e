"""Loading a manifest and finding a path in it, at 1,000,000 rows: the columnar form against format 4's
JSON lines.

    .venv/bin/python benchmarks/manifest.py [--count 1000000]      # about a minute

Writes both forms of the same seeded rows to a temporary folder, then times, each in a fresh process with
the file cache warm (median of 5): opening the manifest and finding one path (what a cold `retrieval query`
by an indexed image does before it searches), and reading every row (what an ingest's plan does).
Writes benchmarks/results/manifest.json and manifest.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
RUNS = 5

OPEN_AND_FIND = {
    "columnar": "from retrieval.index.manifest import Manifest\nm = Manifest.read(folder)\nrow = m.row_of(target)",
    "JSON lines": (
        "import json\nfrom retrieval.index.manifest import Entry\n"
        "lines = (folder / 'manifest.jsonl').read_text().splitlines()\n"
        "rows = [Entry(**r) for r in json.loads('[' + ','.join(lines) + ']')]\n"
        "row = {e.path: i for i, e in enumerate(rows)}.get(target)"
    ),
}
EVERY_ROW = {
    "columnar": "from retrieval.index.manifest import Manifest\nrows = Manifest.read(folder).entries()",
    "JSON lines": (
        "import json\nfrom retrieval.index.manifest import Entry\n"
        "lines = (folder / 'manifest.jsonl').read_text().splitlines()\n"
        "rows = [Entry(**r) for r in json.loads('[' + ','.join(lines) + ']')]"
    ),
}
TIMED = """
import sys, time
from pathlib import Path
started = time.perf_counter()
folder, target = Path(sys.argv[1]), sys.argv[2]
{body}
print(time.perf_counter() - started)
"""


def timed(body: str, folder: Path, target: str) -> float:
    """Median seconds of `body` in a fresh interpreter (imports of numpy and the module included)."""
    times = []
    for _ in range(RUNS):
        out = subprocess.run(
            [sys.executable, "-c", TIMED.format(body=body), str(folder), target],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def main() -> None:
    from retrieval.index.manifest import Entry, Manifest
    from retrieval.io.system import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    count = parser.parse_args().count
    rows = [
        Entry(f"photos/{i // 1000:04d}/IMG_{i:07d}.jpg", 2_000_000 + i, 1_700_000_000_000_000_000 + i, f"{i:064x}")
        for i in range(count)
    ]
    target = rows[count // 3].path
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        Manifest.of(rows).write(folder)
        write_columnar = time.perf_counter() - started
        with open(folder / "manifest.jsonl", "w") as f:
            f.writelines(json.dumps(asdict(e)) + "\n" for e in rows)
        sizes = {
            "columnar": sum((folder / n).stat().st_size for n in ("manifest.npy", "paths.bin", "order.npy")),
            "JSON lines": (folder / "manifest.jsonl").stat().st_size,
        }
        result = {
            "machine": machine(),
            "count": count,
            "write_columnar_s": write_columnar,
            "bytes": sizes,
            "open_and_find_s": {form: timed(body, folder, target) for form, body in OPEN_AND_FIND.items()},
            "every_row_s": {form: timed(body, folder, target) for form, body in EVERY_ROW.items()},
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "manifest.json").write_text(json.dumps(result, indent=2) + "\n")
    host = result["machine"]
    lines = [
        "# Manifest load",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores; run {host['date']}. {count:,} rows; a fresh process each "
        f"time (Python start-up not included, imports included), warm file cache, median of {RUNS}.",
        "",
        "| form | bytes | open and find one path, s | read every row, s |",
        "|---|---|---|---|",
        *(
            f"| {form} | {sizes[form]:,} | {result['open_and_find_s'][form]:.3f} | {result['every_row_s'][form]:.2f} |"
            for form in OPEN_AND_FIND
        ),
        "",
        f"Writing the columnar form took {write_columnar:.1f} s.",
    ]
    (RESULTS / "manifest.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "manifest.md").read_text())


if __name__ == "__main__":
    main()
