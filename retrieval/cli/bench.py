"""`retrieval bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrieval.cli.app import reported
from retrieval.cli.output import progress_bars, say
from retrieval.config import FAMILIES

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
    with reported(), progress_bars("vectors") as progress:
        from retrieval.analysis.bench import search

        search(out, sizes=sizes, families=families, from_index=from_index, kinds=kinds, log=say, progress=progress)
    typer.echo(f"wrote {out / 'search.json'}, {out / 'search.md'} and {out / 'search.png'}")
