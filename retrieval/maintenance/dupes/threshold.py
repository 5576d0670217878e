"""The cut-off `dupes` uses by default, measured on the collection itself instead of assumed: a cosine means
little by itself (with random weights almost every pair of pictures scores about 0.99), so the index measures
where unrelated pictures end.

The rule. An image's nearest unrelated neighbour is the cosine a cut-off must stay above. The collection's
own duplicates are unlabelled, and they would pass for that neighbour; but a group of copies is small, so an
image's RANK-th nearest neighbour is unrelated even when it has a few copies. So, on a seeded sample of the
stored vectors: take the RANK-th neighbour's cosine at its 1 - UNRELATED_SHARE quantile, and shift it by the
median gap between the nearest and the RANK-th neighbour (a median, so that the images with copies, fewer
than half, do not move it). The result is the cosine above which about one image in a thousand
(UNRELATED_SHARE) would have an unrelated neighbour: the precision the cut-off is chosen for. Below MIN_ROWS
images that quantile is one image's, and nothing is measured.

What it cannot know: duplicates in groups larger than RANK, or a collection where most images have copies,
look like ordinary neighbours to it and raise the cut-off (fewer copies found, none wrongly).

Measured beside it, for the user to judge: the copy recall, the share of changed copies of a seeded sample
of images (io/changes.py, as `eval` makes them) whose cosine to their original reaches the cut-off, and with
the hash evidence the share linked by either. The result is recorded beside the index (RECORD) and reused
until the index changes."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.embedding.quantize import Embed
from retrieval.errors import ImageError
from retrieval.index.store import Store
from retrieval.io.changes import CHANGES
from retrieval.io.durable import write_text_atomically
from retrieval.io.images import load_thumbnail
from retrieval.io.perceptual import perceptual_hash
from retrieval.maintenance.dupes.hashes import hamming
from retrieval.search.results import as_cosine
from retrieval.vectors import normalize

RANK = 8  # a neighbour this far down is unrelated unless an image has RANK or more copies
UNRELATED_SHARE = 0.001  # images with an unrelated neighbour above the cut-off, about
SAMPLE_ROWS = 2_000  # stored vectors whose neighbours are searched
COPY_IMAGES = 50  # images whose changed copies are embedded for the copy recall
MIN_ROWS = 40  # fewer rows than this, and the quantile is one image's (22 rows let a pair through)
RECORD = "dupes-threshold.json"


@dataclass(frozen=True)
class Measured:
    """A measured cut-off and what was measured with it (see the module docstring)."""

    threshold: float
    generation: str | None  # of the index it was measured on
    rows: int  # stored vectors sampled
    copies: int  # changed copies embedded (0: the model was not at hand, no copy recall)
    copy_recall: float | None  # share of the copies at or above the threshold
    by_change: dict[str, float] = field(default_factory=dict)
    with_hash: float | None = None  # share of the copies linked by the threshold or their hash
    seconds: float = 0.0
    recorded: bool = False  # read back from RECORD, not measured now
    rule: dict = field(default_factory=dict)


def measured_threshold(
    store: Store,
    folder: Path,
    embed: Embed | None,
    input_size: tuple[int, int],
    max_pixels: int,
    hash_distance: int | None,
    seed: int = 0,
) -> Measured | None:
    """The cut-off for `store` (in `folder`), recorded there; None for an index too small to measure on.
    `embed`: the index's own model, for the copy recall (None: not measured)."""
    if store.count < MIN_ROWS:
        return None
    rule = {"rank": RANK, "unrelated_share": UNRELATED_SHARE, "sample_rows": SAMPLE_ROWS, "seed": seed,
            "copy_images": COPY_IMAGES if embed else 0, "hash_distance": hash_distance}  # fmt: skip
    if (known := _recorded(folder, store.generation, rule)) is not None:
        return known
    started = time.perf_counter()
    threshold, rows = _cut_off(store, seed)
    copies = _copies(store, embed, input_size, max_pixels, seed) if embed else None
    measured = Measured(threshold, store.generation, rows, 0, None, rule=rule)
    if copies is not None:
        measured = _with_copy_recall(measured, store, copies, hash_distance)
    measured = replace(measured, seconds=round(time.perf_counter() - started, 2))
    try:
        write_text_atomically(folder / RECORD, json.dumps(asdict(measured), indent=2) + "\n")
    except OSError:
        pass  # a read-only index: measured again next time
    return measured


def _cut_off(store: Store, seed: int) -> tuple[float, int]:
    """The cut-off by the module's rule, and the number of stored vectors it was measured on."""
    rows = np.array(sorted(random.Random(seed).sample(range(store.count), min(SAMPLE_ROWS, store.count))))
    nearest, ranked = [], []
    for start in range(0, len(rows), 1024):
        chunk = rows[start : start + 1024]
        for row, hits in zip(chunk.tolist(), store.search(store.vectors_of(chunk), RANK + 1)):
            others = [score for r, score in hits if r != row][:RANK]
            if len(others) == RANK:
                cosines = as_cosine(np.array(others, np.float64), store.metric)
                nearest.append(cosines[0])
                ranked.append(cosines[-1])
    gap = float(np.median(np.array(nearest) - np.array(ranked)))
    return min(1.0, float(np.quantile(ranked, 1.0 - UNRELATED_SHARE)) + gap), len(nearest)


@dataclass
class _Copies:
    rows: list[int]  # the original's row of each copy
    changes: list[str]
    vectors: np.ndarray  # normalized
    hashes: list[str]


def _copies(store: Store, embed: Embed, input_size: tuple[int, int], max_pixels: int, seed: int) -> _Copies:
    """Every change of io/changes.py applied to a seeded sample of the indexed images, embedded."""
    sample = sorted(random.Random(seed + 1).sample(range(store.count), min(COPY_IMAGES, store.count)))
    rows, changes, pixels = [], [], []
    for row in sample:
        try:
            original = load_thumbnail(store.root / store.entry(row).path, 2 * max(input_size), max_pixels)
        except ImageError:  # gone or broken since it was indexed: left out of the sample
            continue
        for name, change in CHANGES.items():
            copy = change(original).convert("RGB").resize(input_size, Image.Resampling.BILINEAR)
            rows.append(row)
            changes.append(name)
            pixels.append(np.asarray(copy))
    if not pixels:
        return _Copies([], [], np.empty((0, store.dim), np.float32), [])
    batch = np.stack(pixels)
    vectors = normalize(np.concatenate([embed(batch[i : i + 32]) for i in range(0, len(batch), 32)]))
    return _Copies(rows, changes, vectors, [perceptual_hash(p) for p in pixels])


def _with_copy_recall(measured: Measured, store: Store, copies: _Copies, hash_distance: int | None) -> Measured:
    if not copies.rows:
        return measured
    cosines = (copies.vectors * store.vectors_of(copies.rows)).sum(axis=1)
    found = cosines >= measured.threshold
    by_change = {name: round(float(found[[c == name for c in copies.changes]].mean()), 3) for name in CHANGES}
    with_hash = None
    if hash_distance is not None and store.hashed:
        stored = store.perceptual_hashes()[copies.rows]
        made = np.frombuffer(bytes.fromhex("".join(copies.hashes)), np.uint8).reshape(len(copies.rows), 16)
        both = np.concatenate([made, stored])
        distances = hamming(both, np.arange(len(made)), np.arange(len(made), 2 * len(made)))
        with_hash = round(float((found | ((distances >= 0) & (distances <= hash_distance))).mean()), 3)
    recall = round(float(found.mean()), 3)
    return replace(measured, copies=len(copies.rows), copy_recall=recall, by_change=by_change, with_hash=with_hash)


def _recorded(folder: Path, generation: str | None, rule: dict) -> Measured | None:
    """The measurement recorded for this generation under this rule, if any."""
    try:
        known = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        if known.get("generation") != generation or known.get("rule") != rule:
            return None
        return Measured(**{**known, "recorded": True})
    except (OSError, ValueError, TypeError):
        return None
