"""`retrieval ingest`."""

from __future__ import annotations

from typing import Annotated

import typer

from retrieval.cli.app import (
    ConfigOption,
    EngineOption,
    IndexOption,
    PrecisionOption,
    WaitOption,
    reported,
    settings_from,
)
from retrieval.cli.output import progress_for, warn
from retrieval.config import EXECUTORS, INDEX_TYPES, METRICS, MODELS, POOLINGS
from retrieval.io.files import printable


def ingest(
    folder: Annotated[
        str,
        typer.Argument(
            help="Folder of images, searched recursively: a local path, or a URI pyarrow reaches (s3://bucket/photos)."
        ),
    ],
    index: IndexOption = None,
    model: Annotated[str | None, typer.Option(help=f"Backbone: {' | '.join(MODELS)} (config: model).")] = None,
    pooling: Annotated[
        str | None, typer.Option(help=f"resnet50's pooling: {' | '.join(POOLINGS)} (config: pooling).")
    ] = None,
    gem_p: Annotated[float | None, typer.Option(help="Exponent of gem pooling (config: gem_p).")] = None,
    weights: Annotated[
        str | None, typer.Option(help="imagenet | none (seeded random) | path to a weights file (config: weights).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass (config: batch_size).")] = None,
    metric: Annotated[str | None, typer.Option(help=f"{' | '.join(METRICS)} (config: metric).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for random weights (config: seed).")] = None,
    engine: EngineOption = None,
    precision: PrecisionOption = None,
    decode_threads: Annotated[
        int | None, typer.Option(min=1, help="Threads decoding images (config: decode_threads).")
    ] = None,
    index_type: Annotated[str | None, typer.Option(help=f"{' | '.join(INDEX_TYPES)} (config: index_type).")] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(min=1, help="Save progress every N embedded images (config: checkpoint_every).")
    ] = None,
    executor: Annotated[
        str | None, typer.Option(help=f"Where images are embedded: {' | '.join(EXECUTORS)} (config: executor).")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="A running Ray cluster's address; none starts a local one (config: ray_address).")
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Embed everything again, e.g. to change the model.")] = False,
    wait: WaitOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    config: ConfigOption = None,
) -> None:
    """Bring the index up to date with FOLDER: embed new and changed images, drop deleted ones.

    The previous index stays in use until the new one is completely saved; an interrupted run resumes.
    A remote FOLDER (s3://..., gs://...) is read through pyarrow, credentials from the environment.
    """
    settings = settings_from(
        config,
        index=index,
        model=model,
        pooling=pooling,
        gem_p=gem_p,
        weights=weights,
        batch_size=batch_size,
        metric=metric,
        seed=seed,
        engine=engine,
        precision=precision,
        decode_threads=decode_threads,
        checkpoint_every=checkpoint_every,
        index_type=index_type,
        executor=executor,
        ray_address=ray_address,
    )
    with reported(), progress_for(quiet) as progress:
        from retrieval.ingestion.job import ingest as run_ingest

        report = run_ingest(folder, settings, progress=progress, full=full, wait=wait)
    loading = f" (loading the model: {report.model_seconds:.1f} s)" if report.model_seconds else ""
    typer.echo(f"Indexed {report.indexed} images into {printable(report.index)} in {report.seconds:.1f} s{loading}")
    typer.echo(f"embedded {report.embedded} images" + (f" at {report.rate:.1f} img/s" if report.embedded else ""))
    counts = ("added", "updated", "removed", "moved", "unchanged", "resumed")
    typer.echo(", ".join(f"{getattr(report, name)} {name}" for name in counts))
    if report.nodes:
        spread = ", ".join(f"{node[:8]} {n}" for node, n in report.nodes.most_common())
        typer.echo(f"embedded on {len(report.nodes)} Ray nodes: {spread}")
    if report.skipped:
        typer.echo(f"Skipped {len(report.skipped)}: {report.reasons()}. Details: {printable(report.error_report)}")
    for warning in report.warnings:
        warn(warning)
