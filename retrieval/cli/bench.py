"""`retrieval bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import FAMILIES
from ..errors import UsageError
from .app import reported
from .output import progress_bars, say

bench_app = typer.Typer(help="Measure speed: see benchmarks/ for the recorded runs.", no_args_is_help=True)


@bench_app.command("search")
def bench_search(
    sizes: Annotated[str, typer.Option(help="Comma-separated numbers of vectors.")] = "10000,100000",
    families: Annotated[
        str,
        typer.Option(
            help=f"Synthetic families, comma-separated: {', '.join(FAMILIES)} (see synthetic.feature_vectors)."
        ),
    ] = "clustered,hard,cone",
    from_index: Annotated[
        Path | None,
        typer.Option(
            "--from-index",
            help="Measure on the vectors of this index instead (held-out rows as queries).",
            file_okay=False,
        ),
    ] = None,
    kinds: Annotated[str | None, typer.Option(help="Only these kinds, comma-separated (default: all).")] = None,
    out: Annotated[
        Path, typer.Option(help="Folder for search.json, search.md and search.png.", file_okay=False)
    ] = Path("benchmarks/results"),
) -> None:
    """Latency, throughput, recall and build cost of every index kind, on seeded synthetic features or on
    the vectors of an existing index."""
    with reported():
        from .. import bench

        known = {s.label for s in bench.SWEEPS}
        wanted = kinds.split(",") if kinds else None
        if wanted and not set(wanted) <= known:
            raise UsageError(f"--kinds: choose from {', '.join(sorted(known))}")
        if from_index is not None:
            sets = [bench.index_set(from_index)]
        else:
            try:
                counts = [int(n) for n in sizes.split(",")]
            except ValueError:
                raise UsageError(f"--sizes takes comma-separated whole numbers, not {sizes!r}") from None
            if min(counts) < 100 or not set(families.split(",")) <= set(FAMILIES):
                raise UsageError(f"--sizes must be at least 100 and --families among {', '.join(FAMILIES)}")
            sets = bench.synthetic_sets(families.split(","), counts)
        with progress_bars("vectors") as progress:
            bench.run(sets, wanted, out, log=say, progress=progress)
    typer.echo(f"wrote {out / 'search.json'}, {out / 'search.md'} and {out / 'search.png'}")
