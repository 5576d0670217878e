"""Search benchmark at the issue's sizes: the library's `retrieval bench search`, with 1M vectors included.

    .venv/bin/python benchmarks/search.py                      # 10k, 100k and 1M; both families
    .venv/bin/python benchmarks/search.py --sizes 10000,100000 # shorter

Writes benchmarks/results/search.json, search.md and search.png. The 1M run needs about 20 GB of memory.
"""

from __future__ import annotations

import sys

from retrieval.cli import app

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a.startswith("--sizes") for a in args):
        args = ["--sizes", "10000,100000,1000000", *args]
    app(["bench", "search", *args], prog_name="benchmarks/search.py")
