"""The `retrieval` command: parse arguments, call one library function, print its result.

Library errors become exit codes here and nowhere else (see errors.py): 0 ok, 1 error, 2 usage,
3 index missing/corrupt/mismatched, 4 nothing to index or no results, 5 index busy, 130 interrupted.
"""

from __future__ import annotations

import csv
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .config import (
    ENGINES,
    EXECUTORS,
    FAMILIES,
    INDEX_TYPES,
    METRICS,
    MODELS,
    POOLINGS,
    PRECISIONS,
    Settings,
    load_settings,
)
from .errors import EXIT_ERROR, EXIT_INDEX, RetrievalError, UsageError
from .files import list_images, printable
from .results import QueryResult
from .sources import Location

if TYPE_CHECKING:
    from rich.console import Console

    from .dupes import Group, Move
    from .ingest import ProgressCallback
    from .record import IndexRecord

# The library is imported inside each command, not here: `retrieval query --server` and `--help` then
# start without numpy, Pillow or FAISS, in the time of a small client. Rich (messages and progress bars on
# stderr, about 40 ms to import) waits for the first message.

app = typer.Typer(
    help="Content-based image search: index a folder of images, then find the ones most like a query image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@cache
def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _say(message: str, label: str = "", style: str = "") -> None:
    """A line on stderr: `label` ("error: ", "warning: ") styled, then `message` as plain text, never read
    as Rich markup (a file name may hold brackets)."""
    from rich.text import Text

    _stderr().print(Text(label, style=style) + Text(message))


@app.callback()
def _main() -> None:
    """Content-based image search: index a folder of images, then find the ones most like a query image."""
    # Pillow warns between its pixel limit and twice it, where max_pixels decides instead (and the skip
    # report says so); the command line owns the process's warning filters, so it silences that one here.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="Settings file (default: ./config.yaml when present).", exists=True, dir_okay=False),
]
IndexOption = Annotated[Path | None, typer.Option("--index", help="Index folder (config: index).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
WaitOption = Annotated[bool, typer.Option("--wait", help="Wait for another ingest into the index to finish.")]
EngineOption = Annotated[str | None, typer.Option(help=f"{' | '.join(ENGINES)} (config: engine).")]
TokenOption = Annotated[
    str | None,
    typer.Option(envvar="RETRIEVAL_TOKEN", help="The server's token (env: RETRIEVAL_TOKEN)."),
]
PrecisionOption = Annotated[str | None, typer.Option(help=f"{' | '.join(PRECISIONS)} (config: precision).")]


@contextmanager
def _reported() -> Iterator[None]:
    """Turn the library's exceptions into a one-line message on stderr and the exception's exit code."""
    try:
        yield
    except RetrievalError as e:
        _say(printable(str(e)), "error: ", "bold red")
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        _say("interrupted; the index on disk is unchanged (an interrupted ingest resumes when run again)")
        raise typer.Exit(130) from None


def _settings(config: Path | None, **overrides: Any) -> Settings:
    with _reported():
        return load_settings(config, **overrides)


@app.command()
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
    settings = _settings(
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
    with _reported(), _progress(quiet) as progress:
        from .ingest import ingest as run_ingest

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
        _warn(warning)


def _warn(warning: str | None) -> None:
    if warning:
        _say(warning, "warning: ", "bold yellow")


@app.command()
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
    config: ConfigOption = None,
) -> None:
    """Print the indexed images most similar to each query image, best first.

    With one IMAGE, --json prints one object; with several (or a folder), a list of them.
    """
    settings = _settings(config, index=index, engine=engine, precision=precision)
    with _reported():
        paths = _expand(images)
        if collage is not None and len(paths) != 1:
            raise UsageError("--collage draws one query: give a single image")
        if server is not None:
            if collage is not None:
                raise UsageError("--collage draws from a local index: leave out --server, or --collage")
            from .client import query_server

            results = query_server(server, paths, k or settings.top_k, token)
        else:
            from .search import query_many

            results = query_many(paths, settings, k=k)
        if collage is not None:
            from .collage import render

            render(results[0], collage, settings.max_pixels)
    if as_json:
        bodies = [_result_json(result, collage) for result in results]
        _echo_json(bodies[0] if len(images) == 1 and images[0].is_file() else bodies)
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


@app.command()
def info(index: IndexOption = None, as_json: JsonOption = False, config: ConfigOption = None) -> None:
    """Describe the index: size, model, weights, metric, when it was built."""
    settings = _settings(config, index=index)
    with _reported():
        from .record import live_record
        from .store import disk_size

        record = live_record(settings.index)
        size = disk_size(settings.index)
    facts = {
        "index": str(settings.index),
        "count": record.count,
        "model": record.model,
        "weights": record.weights,
        "dim": record.dim,
        "metric": record.metric,
        "precision": record.precision,
        "int8": _int8_summary(record.int8),
        "index_type": record.factory,
        "segments": _segments_summary(record),
        "recall_at_10": record.recall_at_10,
        "recall_target": record.recall_target,
        "warning": record.warning(),
        "bytes_on_disk": size,
        "created": record.created,
        "root": record.root,
        "format_version": record.format_version,
    }
    if as_json:
        _echo_json(facts)
        return
    facts["weights"] = " ".join(f"{k}={v}" for k, v in record.weights.items())
    facts["bytes_on_disk"] = f"{size / 2**20:.1f} MiB"
    for key, value in facts.items():
        if value is not None and key != "warning":
            typer.echo(f"{key:<15} {printable(str(value))}")
    _warn(facts["warning"])


def _segments_summary(record: IndexRecord) -> str:
    """How many segments hold the rows, and how many rows are marked deleted (`compact` drops them)."""
    if not record.segments:
        return "1 (format 5 or older: moved into a segment by the next change, or by `retrieval compact`)"
    return f"{len(record.segments)}, {record.deleted} rows marked deleted"


def _int8_summary(int8: dict[str, Any] | None) -> str | None:
    """The int8 gate's figures (or why int8 was not used), in one line."""
    if not int8:
        return None
    parts = []
    if gate := int8.get("gate"):
        parts.append(
            f"gate {'passed' if gate['passed'] else 'failed'}: min cosine to fp32 {gate['min_cosine']:.5f} "
            f"(at least {gate['threshold']}), {gate['copies_kept']} of {gate['copies']} copies still at rank 1"
            + (f" (at most {gate['max_lost']:.1%} may be lost)" if "max_lost" in gate else "")
            + (f", {gate['held_out']} held-out images (at least {gate['min_held_out']})" if "held_out" in gate else "")
        )
    if int8.get("calibration"):
        parts.append(f"calibration sample {int8['calibration']}")
    if int8.get("fallback"):
        parts.append(f"not used: {int8['fallback']}")
    return "; ".join(parts)


@app.command()
def verify(
    index: IndexOption = None,
    repair: Annotated[bool, typer.Option("--repair", help="Drop the rows whose files are gone.")] = False,
    wait: WaitOption = False,
    config: ConfigOption = None,
) -> None:
    """Check the index: files, counts, hashes, metadata, and that every indexed file still exists.

    Exit 0 when healthy (or repaired), 3 when damaged or pointing at files that are gone.
    """
    settings = _settings(config, index=index)
    with _reported():
        from .verify import verify as run_verify

        health = run_verify(settings.index, repair=repair, wait=wait)
    typer.echo(f"{printable(settings.index)}: {health.count} vectors; files, counts, hashes and metadata consistent")
    if health.repaired:
        typer.echo(f"repaired: dropped {health.repaired} rows whose files are gone")
    elif health.missing:
        typer.echo(f"missing: {len(health.missing)} indexed files no longer exist (`--repair` drops them)")
        for path in health.missing[:10]:
            typer.echo(f"  {printable(path)}")
    if health.changed:
        typer.echo(f"changed: {len(health.changed)} files changed since indexed (`retrieval ingest` updates them)")
    _warn(health.warning)
    typer.echo("healthy" if health.healthy or health.repaired else "damaged")
    if not (health.healthy or health.repaired):
        raise typer.Exit(EXIT_INDEX)


@app.command()
def compact(index: IndexOption = None, wait: WaitOption = False, config: ConfigOption = None) -> None:
    """Merge the index's segments into one and drop its deleted rows (ingest merges by tiers on its own)."""
    settings = _settings(config, index=index)
    with _reported():
        from .ingest import compact as run_compact

        done = run_compact(settings.index, wait=wait)
    where, count = printable(settings.index), done.store.count
    if done.segments > 1 or done.deleted:
        typer.echo(
            f"{where}: merged {done.segments} segments into one, {done.deleted} deleted rows dropped; {count} vectors"
        )
    elif done.written:
        typer.echo(f"{where}: saved in the current layout (one segment, files linked); {count} vectors")
    else:
        typer.echo(f"{where}: already one segment with no deleted rows; nothing written")
    _warn(done.store.record.warning())


@app.command()
def dupes(
    index: IndexOption = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Cosine at which two images are duplicates (default 0.95 without --relative)."),
    ] = None,
    relative: Annotated[
        float | None,
        typer.Option(
            help="Duplicates: distance (1 - cosine) at most this fraction of that to the reference neighbour."
        ),
    ] = None,
    neighbours: Annotated[
        int, typer.Option(min=2, help="Neighbours searched per image; the last is the reference.")
    ] = 32,
    keep: Annotated[str, typer.Option(help="Which to keep, by order of: resolution,size,oldest,newest,path.")] = (
        "resolution,size,oldest"
    ),
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (group, keep, score, path, ...) instead.")] = False,
    collage_dir: Annotated[
        Path | None, typer.Option(help="Draw one collage per group into this folder.", file_okay=False)
    ] = None,
    move_to: Annotated[
        Path | None, typer.Option(help="Move every group's extras here (a dry run unless --apply).", file_okay=False)
    ] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Really move them, log it, and update the index.")] = False,
    config: ConfigOption = None,
) -> None:
    """Find groups of near-duplicate images through the index; optionally move the extras out of the folder.

    Exit 0 whether or not duplicates are found; a dry run (no --apply) changes nothing.
    """
    settings = _settings(config, index=index)
    with _reported():
        if apply and move_to is None:
            raise UsageError("--apply needs --move-to DIR")
        if as_json and as_csv:
            raise UsageError("--json and --csv are two formats for the same output: give one of them")
        from . import dupes as found_dupes
        from .store import Store

        store = Store.load(settings.index)
        rule, caveat = found_dupes.rule_for(store.record, threshold, relative, neighbours)
        _warn(caveat)
        groups = found_dupes.find_groups(store, rule, tuple(k.strip() for k in keep.split(",") if k.strip()))
        moves = found_dupes.plan_moves(groups, store.root, move_to) if move_to else []
        # drawn before anything moves: the collages show the extras where they were found
        collages = _group_collages(groups, store.root, collage_dir, settings.max_pixels) if collage_dir else []
        if moves and apply:
            moves, store = found_dupes.apply_moves(store, settings.index, moves, move_to)
    extras = sum(len(g.extras) for g in groups)
    if as_json:
        _echo_json({"groups": found_dupes.as_json(groups), "moves": [asdict(m) for m in moves], "applied": apply})
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["group", "keep", "score", "path", "width", "height", "bytes"])
        for number, group in enumerate(groups, 1):
            for member in group.members:
                is_kept = member is group.keep
                writer.writerow(
                    [
                        number,
                        int(is_kept),
                        f"{member.score:.6f}",
                        member.path,
                        member.width,
                        member.height,
                        member.bytes,
                    ]
                )
    else:
        typer.echo(f"{len(groups)} groups of near-duplicates, {extras} extra images ({printable(str(store.root))})")
        for number, group in enumerate(groups, 1):
            typer.echo(f"group {number}: {len(group.members)} images")
            typer.echo(f"  keep    {printable(group.keep.path)}")
            for member in group.extras:
                typer.echo(f"  {member.score:.4f}  {printable(member.path)}")
    for path in collages:
        _say(f"collage: {printable(str(path))}")
    _report_moves(moves, apply, move_to)
    if apply and any(m.problem for m in moves):
        raise typer.Exit(EXIT_ERROR)


def _group_collages(groups: list[Group], root: Location, folder: Path, max_pixels: int) -> list[Path]:
    """One collage per group: the kept image first, then the extras with their scores."""
    from .collage import render
    from .results import Hit

    paths = []
    for number, group in enumerate(groups, 1):
        hits = [Hit(rank, m.score, m.path, m.row) for rank, m in enumerate(group.extras, 1)]
        result = QueryResult(root / group.keep.path, root, "cosine", hits, embedded=False)
        paths.append(render(result, folder / f"group-{number:04d}.jpg", max_pixels, first="Keep"))
    return paths


def _report_moves(moves: list[Move], applied: bool, target: Path | None) -> None:
    if target is None:
        return
    problems = [m for m in moves if m.problem]
    if applied:
        moved = sum(m.done for m in moves)
        _say(f"moved {moved} files to {printable(str(target))}; log: {printable(str(target / 'dupes-log.jsonl'))}")
    else:
        _say(f"dry run: {len(moves) - len(problems)} files would move to {printable(str(target))} (--apply moves them)")
    for m in problems:
        _say(f"not moved: {printable(m.source)}: {m.problem}")


@app.command("eval")
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
    settings = _settings(config, index=index, engine=engine, precision=precision)
    with _reported():
        from . import quality
        from .search import Searcher

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
            _echo_json({**figures, "per_query": labelled.per_query})
            return
        typer.echo("| " + " | ".join(figures) + " |\n|" + "---|" * len(figures))
        typer.echo("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in figures.values()) + " |")
        return
    if as_json:
        overall = dict(zip(("recall@1", f"recall@{k}"), augmented.overall))
        _echo_json({**asdict(augmented), "overall": overall, "count": len(augmented.sample)})
        return
    typer.echo(f"{len(augmented.sample)} indexed images (seed {seed}), each changed {len(augmented.recall_at_1)} ways:")
    typer.echo(quality.markdown(augmented))
    if augmented.skipped:
        _say(f"skipped {len(augmented.skipped)} sampled images that could not be read")


@app.command()
def serve(
    index: IndexOption = None,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    token: TokenOption = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without a token on a non-loopback address.")
    ] = False,
    engine: EngineOption = None,
    precision: PrecisionOption = None,
    config: ConfigOption = None,
) -> None:
    """Serve the index over HTTP: search by upload or by id, images and thumbnails, /info, /health.

    The index is loaded once; a later `retrieval ingest` is picked up without a restart.
    """
    settings = _settings(config, index=index, engine=engine, precision=precision)
    with _reported():
        if token is not None and no_auth:
            raise UsageError("--token and --no-auth contradict each other: give one of them")
        if not _is_loopback(host) and token is None and not no_auth:
            raise UsageError(f"binding {host} exposes the index beyond this machine: pass --token (or set "
                             "RETRIEVAL_TOKEN), or --no-auth to serve it to anyone who can reach it")  # fmt: skip
        from .search import Searcher
        from .server import ServeOptions, create_app, listen, run

        options = ServeOptions(token=token)
        sock = listen(host, port)
        app_ = create_app(Searcher(settings), options)
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
    _say(f"serving {printable(settings.index)} on http://{shown}:{port}/ (Ctrl-C stops)")
    run(app_, sock)


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


bench_app = typer.Typer(help="Measure speed: see benchmarks/ for the recorded runs.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


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
    with _reported():
        from . import bench

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
        with _bars("vectors") as progress:
            bench.run(sets, wanted, out, log=_say, progress=progress)
    typer.echo(f"wrote {out / 'search.json'}, {out / 'search.md'} and {out / 'search.png'}")


def _echo_json(value: Any) -> None:
    """JSON on stdout; ASCII-escaped so that file names that are not UTF-8 survive any locale."""
    typer.echo(json.dumps(value, indent=2, ensure_ascii=True))


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


@contextmanager
def _progress(quiet: bool) -> Iterator[ProgressCallback | None]:
    """On a terminal, a bar with files done, img/s and time left; otherwise (a batch job's log) a line
    every LOG_EVERY seconds. Both on stderr, so that stdout stays parseable."""
    if quiet:
        yield None
    elif _stderr().is_terminal:
        with _bars("img") as start:
            yield start("embedding")
    else:
        yield _log_lines()


LOG_EVERY = 5.0


def _log_lines() -> ProgressCallback:
    started = time.monotonic()
    last = started

    def update(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < LOG_EVERY and done < total:
            return
        last = now
        rate = done / (now - started) if now > started else 0.0
        left = f", about {(total - done) / rate:.0f} s left" if rate and done < total else ""
        _say(f"ingest: {done}/{total} files ({rate:.1f} files/s{left})")

    return update


@contextmanager
def _bars(unit: str) -> Iterator[Callable[[str], ProgressCallback]]:
    """Progress bars on stderr: `start(label)` adds one (done/total, `unit`s per second, time left)
    and returns the callback that moves it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=_stderr(),
    )

    def start(label: str) -> ProgressCallback:
        task = bars.add_task(label, total=None, rate="")

        def update(done: int, total: int) -> None:
            speed = next(t.speed for t in bars.tasks if t.id == task)
            bars.update(task, completed=done, total=total, rate=f"{speed:.1f} {unit}/s" if speed else "")

        return update

    with bars:
        yield start
