"""`retrieval eval`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from retrieval.cli.app import (
    ConfigOption,
    EngineOption,
    IndexOption,
    JsonOption,
    PrecisionOption,
    reported,
    settings_from,
)
from retrieval.cli.output import echo_json, say


def evaluate(
    index: IndexOption = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            help="Ground truth, JSON {query: \\[relevant, ...]} or CSV query,relevant; without it, changed copies "
            "of a sample of the indexed images are the queries.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Recall and precision at k.")] = 10,
    depth: Annotated[int, typer.Option(min=1, help="Results ranked for mean average precision.")] = 100,
    sample: Annotated[int, typer.Option(min=1, help="Without --truth: indexed images to change and query.")] = 100,
    seed: Annotated[int, typer.Option(help="Without --truth: picks the sample.")] = 0,
    transforms: Annotated[
        str | None, typer.Option(help="Without --truth: changes to make, comma-separated (default: all).")
    ] = None,
    as_json: JsonOption = False,
    engine: EngineOption = None,
    precision: PrecisionOption = None,
    config: ConfigOption = None,
) -> None:
    """Measure the index's retrieval quality: against ground truth, or on changed copies of its own images.

    Without labels: each sampled image is resized, re-encoded, cropped, flipped, rotated, brightened, made
    grey and written over; is the original found first (recall@1) and in the top k?
    """
    settings = settings_from(config, index=index, engine=engine, precision=precision)
    with reported():
        from retrieval.analysis import quality
        from retrieval.search.searcher import Searcher

        searcher = Searcher(settings)
        if truth is not None:
            labelled = quality.evaluate_labelled(searcher, quality.read_ground_truth(truth), k, depth)
        else:
            names = [t.strip() for t in transforms.split(",") if t.strip()] if transforms else None
            augmented = quality.evaluate_augmented(searcher, sample, k, seed, names)
    if truth is not None:
        figures = {"queries": labelled.queries, f"recall@{k}": labelled.recall, f"precision@{k}": labelled.precision}
        figures[f"mAP@{depth}"] = labelled.map
        if as_json:
            echo_json({**figures, "per_query": labelled.per_query})
            return
        typer.echo("| " + " | ".join(figures) + " |\n|" + "---|" * len(figures))
        typer.echo("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in figures.values()) + " |")
        return
    if as_json:
        overall = dict(zip(("recall@1", f"recall@{k}"), augmented.overall))
        echo_json({**asdict(augmented), "overall": overall, "count": len(augmented.sample)})
        return
    typer.echo(f"{len(augmented.sample)} indexed images (seed {seed}), each changed {len(augmented.recall_at_1)} ways:")
    typer.echo(quality.markdown(augmented))
    if augmented.skipped:
        say(f"skipped {len(augmented.skipped)} sampled images that could not be read")
