"""The ingest job: bring an index up to date with a folder, embedding only what it does not hold yet.

Three steps, each testable alone:

- `plan` (plan.py): list the folder and decide, file by file, where its vector comes from: the current index
  (unchanged files, and moved ones recognised by content hash), the checkpoints of an interrupted run, or
  the model. No model, no decoding.
- `embed`: an `Executor` decodes and embeds the planned files in batches and streams the vectors back
  (`LocalExecutor`: decoding threads ahead of one engine). The driver checkpoints them every
  `checkpoint_every` images, so a killed run loses at most that much work.
- `commit`: save a new generation, under the writer lock: the new and moved files' vectors as a new
  segment, the rows of changed and removed files marked deleted, segments merged when due (index/store.py,
  index/segments.py). The old index stays live until the new one is completely written.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.ann.indexes import IndexChoice
from retrieval.config import Settings
from retrieval.embedding.embedders import Embedder
from retrieval.errors import IndexMismatch, NothingToIndex, StoreError
from retrieval.index.assembly import assembled
from retrieval.index.store import Store
from retrieval.index.writing import Writing, writing
from retrieval.ingestion.checkpoints import Checkpoints
from retrieval.ingestion.executors import Decoder, Embedded, Executor, LocalExecutor
from retrieval.ingestion.model import LazyEmbedder, int8_refused
from retrieval.ingestion.plan import Plan, plan
from retrieval.io.durable import write_text_atomically
from retrieval.io.files import Skipped, list_images
from retrieval.io.images import load_image
from retrieval.io.sources import Location, location
from retrieval.vectors import normalize

ERROR_REPORT = "errors.jsonl"
KEPT_CHUNK = 50_000  # vectors of the previous index read at a time into a new build
ProgressCallback = Callable[[int, int], None]  # (images embedded, images to embed)


@dataclass
class IngestReport:
    """What a run did: printed as a summary, and written to ERROR_REPORT file by file for the skipped."""

    index: Path
    indexed: int = 0  # rows in the saved index
    seconds: float = 0.0
    embedded: int = 0  # images run through the model this time
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    moved: int = 0
    resumed: int = 0  # taken from the checkpoints of an interrupted run
    nodes: Counter[str] = field(default_factory=Counter)  # images embedded per Ray node (executor ray)
    worker_runtime: dict[str, Any] = field(default_factory=dict)  # engine, precision of Ray's actors
    model_seconds: float = 0.0  # spent loading (or, once, converting) the model
    skipped: list[Skipped] = field(default_factory=list)
    # printed after the summary: int8 asked for and not used, the saved index's recall below target (its record's)
    warnings: list[str] = field(default_factory=list)

    @property
    def error_report(self) -> Path:
        """The file listing each skipped file with its reason."""
        return self.index / ERROR_REPORT

    @property
    def rate(self) -> float:
        """Embedded images per second, model loading left out."""
        working = self.seconds - self.model_seconds
        return self.embedded / working if working > 0 else 0.0

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped).most_common())

    def reasons(self) -> str:
        """The skipped files counted by reason, most common first: "2 not an image, 1 truncated"."""
        return ", ".join(f"{n} {reason}" for reason, n in self.skipped_by_reason().items())


def ingest(
    folder: Path | str,
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    progress: ProgressCallback | None = None,
    decode: Decoder = load_image,
    full: bool = False,
    wait: bool = False,
) -> IngestReport:
    """Bring the index at `settings.index` up to date with the images under `folder`: plan, embed, commit.

    `full` embeds everything again (needed to change model, weights, metric or folder); `wait` waits
    for another ingest into the same index instead of failing with IndexBusy. `folder` may be a URI of any
    filesystem pyarrow reaches (s3://bucket/photos; io/sources.py).
    """
    started = time.perf_counter()
    folder = location(folder)
    with writing(settings.index, wait=wait, create=True, load=not full) as index:
        listing = list_images(folder)
        if not listing.paths:
            raise NothingToIndex(f"no image files found in {folder}; nothing was written")
        model = LazyEmbedder(settings, embedder)
        checkpoints = Checkpoints(settings.index, model.embedding)
        if full:
            checkpoints.clear()
        previous = _updatable(index.live, settings, model.embedding, folder)
        the_plan = plan(folder, listing.paths, previous, checkpoints.load(), listing.facts)
        report = IngestReport(
            settings.index,
            unchanged=the_plan.unchanged,
            moved=len(the_plan.moved),
            removed=the_plan.removed,
            resumed=len(the_plan.resumed),
            skipped=listing.errors + the_plan.skipped,
        )
        model.prepare_int8(the_plan, previous)
        executor = _executor(settings, model, decode)
        vectors = embed(the_plan, executor, checkpoints, report, settings.checkpoint_every, progress)
        write_error_report(settings.index, report.skipped)
        runtime = model.runtime(previous, report.worker_runtime)
        store = commit(
            index,
            the_plan,
            vectors,
            settings,
            embedding=model.embedding,
            runtime=runtime,
            listing_count=len(listing.paths),
            report=report,
        )
        checkpoints.clear()
    report.indexed = store.count
    report.warnings = [w for w in (int8_refused(settings, report.embedded, runtime), store.record.warning()) if w]
    report.model_seconds = model.load_seconds + model.calibration_seconds
    report.seconds = time.perf_counter() - started
    return report


def _executor(settings: Settings, model: LazyEmbedder, decode: Decoder) -> Executor:
    if settings.executor == "ray":
        from retrieval.ingestion.ray_executor import RayExecutor

        return RayExecutor(settings, model.embedding, settings.ray_address)
    return LocalExecutor(settings, model.get, model.spec, decode)


def embed(
    the_plan: Plan,
    executor: Executor,
    checkpoints: Checkpoints,
    report: IngestReport,
    checkpoint_every: int,
    progress: ProgressCallback | None = None,
) -> dict[int, np.ndarray]:
    """Run the plan's `to_embed` slots through `executor`, normalize, checkpoint every `checkpoint_every`
    (and at the end, and on Ctrl-C or any error), fill in each embedded entry's hash, and count into
    `report`. Returns slot -> vector for what was embedded, each vector memory-mapped from its checkpoint
    piece: the run holds at most `checkpoint_every` vectors in memory. Skipped slots get no vector."""
    slots = the_plan.to_embed
    paths = [the_plan.entries[s].path for s in slots]
    vectors: dict[int, np.ndarray] = {}
    unsaved: list[int] = []

    def checkpoint() -> None:
        if unsaved:
            saving = unsaved.copy()
            unsaved.clear()  # first: a piece is written once, even when Ctrl-C lands while it is being written
            saved = checkpoints.save([the_plan.entries[s] for s in saving], np.stack([vectors[s] for s in saving]))
            vectors.update(zip(saving, saved))

    done = 0
    try:
        # closing: on Ctrl-C here, the executor stops its decoding threads before this returns
        with closing(executor.run(the_plan.root, paths)) as batches:
            for batch in batches:
                _account(batch, the_plan, vectors, unsaved, report)
                done += len(batch.done) + len(batch.skipped)
                if len(unsaved) >= checkpoint_every:
                    checkpoint()
                if progress:
                    progress(done, len(slots))
    finally:
        checkpoint()  # the rest; after Ctrl-C or a fatal error, what was embedded is kept for the next run
    if progress and not slots:
        progress(0, 0)
    return vectors


def _account(
    batch: Embedded, the_plan: Plan, vectors: dict[int, np.ndarray], unsaved: list[int], report: IngestReport
) -> None:
    """Take one executor batch in: normalized vectors by slot, each entry's hashes, the counts."""
    slots = the_plan.to_embed
    report.skipped += [skipped for _, skipped in batch.skipped]
    if batch.node:
        report.nodes[batch.node] += len(batch.done)
        report.worker_runtime = batch.runtime
    if batch.done:
        for i, (digest, phash), vector in zip(batch.done, batch.hashes, normalize(batch.vectors)):
            slot = slots[i]
            entry = the_plan.entries[slot] = replace(the_plan.entries[slot], sha256=digest, phash=phash)
            vectors[slot] = vector
            unsaved.append(slot)
            if entry.path in the_plan.previous_paths:
                report.updated += 1
            else:
                report.added += 1
    report.embedded += len(batch.done)


def commit(
    index: Writing,
    the_plan: Plan,
    embedded: dict[int, np.ndarray],
    settings: Settings,
    *,
    embedding: dict[str, Any],
    runtime: dict[str, str],
    listing_count: int,
    report: IngestReport,
) -> Store:
    """Save the plan's outcome, through the write transaction `index` (index/writing.py), as a new generation of
    vectors made by `embedding` (backbones.describe_embedding; `runtime` is recorded beside it).

    Into a current index of the same kind, only the change is written: one new segment with the new,
    changed and moved files' vectors, and deletion markers for the rows they replace or that are gone;
    then merges, when the policy says they are due. Otherwise (a first run, --full, another kind asked
    for, an older format) every vector is assembled in listing order into a new index. When nothing
    changed, the previous index is kept and nothing is written. NothingToIndex when no file gave a
    vector: the existing index, if any, stays as it is."""
    previous = index.live
    if not (the_plan.kept or the_plan.resumed or embedded):
        raise NothingToIndex(
            f"none of the {listing_count} image files in {the_plan.root} could be read "
            f"({report.reasons()}); the existing index, if any, is unchanged. "
            f"See {settings.index / ERROR_REPORT}"
        )
    kind = index_choice(settings)
    requested = {**asdict(kind), "recall_target": settings.recall_target, "memory_budget_gb": settings.memory_budget_gb}
    if previous is not None and not previous.record.stale and previous.record.requested == requested:
        # arrays, not sets: at a million rows this is most of a small commit's time
        rows = np.fromiter(the_plan.kept.values(), np.int64, len(the_plan.kept))
        if the_plan.moved:
            slots = np.fromiter(the_plan.kept.keys(), np.int64, len(the_plan.kept))
            rows = rows[~np.isin(slots, np.fromiter(the_plan.moved, np.int64, len(the_plan.moved)))]
        gone = np.setdiff1d(np.arange(previous.count), rows)
        new = sorted([*the_plan.resumed, *embedded, *the_plan.moved])
        if not new and not len(gone):
            return previous
        fill = partial(_vectors_of, new, previous, the_plan, embedded)
        mapped = index.tuning.mapped_rows
        with assembled(len(new), previous.dim, fill, settings.index, mapped) as x:  # read before rows are renumbered
            previous.delete(gone)
            previous.add(x, [the_plan.entries[s] for s in new])
        previous.merge()
        previous.record_runtime(runtime)
        index.save(previous)
        return previous
    store = Store.create(
        dim=embedding["dim"],
        metric=settings.metric,
        embedding=embedding,
        root=the_plan.root,
        runtime=runtime,
        kind=kind,
        recall_target=settings.recall_target,
        memory_budget_gb=settings.memory_budget_gb,
        tuning=index.tuning,
    )
    slots = [s for s in range(len(the_plan.entries)) if s in the_plan.kept or s in the_plan.resumed or s in embedded]
    fill = partial(_vectors_of, slots, previous, the_plan, embedded)
    with assembled(len(slots), store.dim, fill, settings.index, index.tuning.mapped_rows) as x:
        store.add(x, [the_plan.entries[s] for s in slots])
    index.save(store)
    return store


def _vectors_of(
    slots: list[int], previous: Store | None, the_plan: Plan, embedded: dict[int, np.ndarray], out: np.ndarray
) -> None:
    """Fill `out` (len(slots), dim) with the vectors of `slots`, from wherever the plan found them: the
    previous index a chunk at a time, the checkpoints, or this run (released as they are copied)."""
    kept = [i for i, slot in enumerate(slots) if slot in the_plan.kept]
    for start in range(0, len(kept), KEPT_CHUNK):
        part = kept[start : start + KEPT_CHUNK]
        out[part] = previous.vectors_of([the_plan.kept[slots[i]] for i in part])
    for i, slot in enumerate(slots):
        if slot in the_plan.resumed:
            out[i] = the_plan.resumed[slot]
        elif slot not in the_plan.kept:
            out[i] = embedded.pop(slot)


def index_choice(settings: Settings) -> IndexChoice:
    """The index kind and parameters `settings` ask for."""
    return IndexChoice(
        kind=settings.index_type,
        pca=settings.pca_dim,
        hnsw_m=settings.hnsw_m,
        ef_search=settings.ef_search,
        ivf_lists=settings.ivf_lists,
        nprobe=settings.nprobe,
        pq_bytes=settings.pq_bytes,
        rerank=settings.rerank,
    )


def _updatable(store: Store | None, settings: Settings, embedding: dict[str, Any], folder: Location) -> Store | None:
    """The live index, if any, once checked that this run can update it; IndexMismatch if it was built
    otherwise."""
    if store is None:
        return None
    store.record.check_embedding(embedding, remedy="pass --full to rebuild the index with the new settings")
    if store.metric != settings.metric:
        raise IndexMismatch(
            f"the index in {settings.index} uses metric {store.metric}, not {settings.metric}; "
            "pass --full to rebuild it"
        )
    if store.root != folder.resolve():
        raise IndexMismatch(
            f"the index in {settings.index} holds the images of {store.root}, not {folder.resolve()}; "
            "use another --index, or pass --full to replace it"
        )
    return store


def write_error_report(index: Path, skipped: list[Skipped]) -> None:
    """One JSON object per skipped file, beside the index, replaced atomically each run."""
    try:
        index.mkdir(parents=True, exist_ok=True)
        write_text_atomically(
            index / ERROR_REPORT, "".join(json.dumps(asdict(s), ensure_ascii=True) + "\n" for s in skipped)
        )
    except OSError as e:
        raise StoreError(f"cannot write to the index folder {index}: {e.strerror or e}") from e
