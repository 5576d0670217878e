"""`retrieval query`: a local index, or a running server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from retrieval.cli.app import (
    AfterOption,
    BeforeOption,
    ConfigOption,
    EngineOption,
    FolderOption,
    IndexOption,
    JsonOption,
    MaxSizeOption,
    MinSizeOption,
    PrecisionOption,
    TokenOption,
    reported,
    settings_from,
)
from retrieval.cli.output import echo_json
from retrieval.errors import NoMatch, UsageError
from retrieval.io.files import list_images, printable
from retrieval.search.results import QueryResult


def query(
    images: Annotated[
        list[Path],
        typer.Argument(help="Query image(s), or folders of them: searched together in one batch.", exists=True),
    ],
    k: Annotated[int | None, typer.Option("-k", "--top-k", min=1, help="How many results (config: top_k).")] = None,
    index: IndexOption = None,
    collage: Annotated[
        Path | None, typer.Option(help="Also draw the query and its hits with their scores to this .png/.jpg.")
    ] = None,
    as_json: JsonOption = False,
    engine: EngineOption = None,
    precision: PrecisionOption = None,
    server: Annotated[
        str | None, typer.Option(help="Ask a running `retrieval serve` at this URL instead of loading the index.")
    ] = None,
    token: TokenOption = None,
    folder: FolderOption = None,
    modified_after: AfterOption = None,
    modified_before: BeforeOption = None,
    min_size: MinSizeOption = None,
    max_size: MaxSizeOption = None,
    config: ConfigOption = None,
) -> None:
    """Print the indexed images most similar to each query image, best first.

    With one IMAGE, --json prints one object; with several (or a folder), a list of them. The filters narrow
    the search to the indexed files they keep; none kept: exit 4.
    """
    settings = settings_from(config, index=index, engine=engine, precision=precision)
    typed = {"folder": folder, "modified_after": modified_after, "modified_before": modified_before}
    typed |= {"min_size": min_size, "max_size": max_size}
    with reported():
        from retrieval.filters import parse_filter

        where = parse_filter(**typed)
        paths = _expand(images)
        if collage is not None and len(paths) != 1:
            raise UsageError("--collage draws one query: give a single image")
        if server is not None:
            if collage is not None:
                raise UsageError("--collage draws from a local index: leave out --server, or --collage")
            from retrieval.search.client import query_server

            filters = {name: value for name, value in typed.items() if value}
            results = query_server(server, paths, k or settings.top_k, token, filters=filters)
        else:
            from retrieval.search.searcher import query_many

            results = query_many(paths, settings, k=k, where=where)
        if where and not any(result.hits for result in results):
            raise NoMatch(f"no indexed image is {where.describe()}: nothing to rank")
        if collage is not None:
            from retrieval.search.collage import render

            render(results[0], collage, settings.max_pixels)
    if as_json:
        bodies = [_result_json(result, collage) for result in results]
        echo_json(bodies[0] if len(images) == 1 and images[0].is_file() else bodies)
        return
    for result in results:
        if len(results) > 1:
            typer.echo(f"query: {printable(result.query)}")
        label = "similarity" if result.metric == "cosine" else "distance"
        typer.echo(f"rank  {label:>10}  path")
        for h in result.hits:
            typer.echo(f"{h.rank:>4}  {h.score:>10.4f}  {printable(result.absolute(h))}")
    if collage is not None:
        typer.echo(f"collage: {printable(collage)}")


def _expand(images: list[Path]) -> list[Path]:
    """Query paths: files as given, folders replaced by the images under them (sorted)."""
    paths: list[Path] = []
    for image in images:
        if image.is_dir():
            paths += [image / rel for rel in list_images(image).paths]
        else:
            paths.append(image)
    if not paths:
        raise UsageError("no query images: the folders given hold none")
    return paths


def _result_json(result: QueryResult, collage: Path | None) -> dict[str, Any]:
    return {
        "query": str(result.query),
        "metric": result.metric,
        "embedded": result.embedded,
        "results": [
            {"rank": h.rank, "score": h.score, "path": str(result.absolute(h)), "relative_path": h.path}
            for h in result.hits
        ],
        "collage": str(collage) if collage else None,
    }
