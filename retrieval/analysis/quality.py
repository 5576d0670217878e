"""`retrieval eval`: how well an index finds what it should, with labels or without.

- With ground truth (query image -> the indexed files relevant to it): recall@k, precision@k and mean
  average precision over the top `depth` results. A query that is itself indexed is left out of its own
  results: finding itself says nothing.
- Without labels: a seeded sample of the indexed images, each changed in the ways a copy changes
  (`io.changes.CHANGES`), written to a temporary folder and queried against the index; recall@1 and recall@k of the
  original, per change. The same seed gives the same sample, the same copies and the same figures.

Ground-truth files, either
- JSON: {"query.jpg": ["relevant-1.jpg", "relevant-2.jpg"], ...}, or
- CSV: a header `query,relevant`, then one row per (query, relevant file) pair;
query paths are relative to the ground-truth file's folder (or absolute), relevant paths relative to the
indexed folder, as the manifest lists them.
"""

from __future__ import annotations

import csv
import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import EmptyIndex, ImageError, UsageError
from retrieval.io.changes import CHANGES
from retrieval.io.images import load_thumbnail
from retrieval.io.sources import open_regular
from retrieval.search.searcher import Searcher, indexed_row

EDGE = 1024  # the sample is decoded to at most this many pixels a side: every change below needs no more


# --- the measures ---------------------------------------------------------------------------------


def recall_at(ranked: list[str], relevant: set[str], k: int) -> float:
    """The share of `relevant` among the first k of `ranked`."""
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def precision_at(ranked: list[str], relevant: set[str], k: int) -> float:
    """The share of the first k places that hold a relevant file (k places, even if fewer came back)."""
    return len(relevant.intersection(ranked[:k])) / k


def average_precision(ranked: list[str], relevant: set[str]) -> float:
    """Mean of the precision at the rank of each relevant file, counting relevant files never ranked as 0."""
    hits, total = 0, 0.0
    for rank, path in enumerate(ranked, 1):
        if path in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant) if relevant else 0.0


# --- with labels ----------------------------------------------------------------------------------


@dataclass
class LabelledReport:
    k: int
    depth: int
    queries: int
    recall: float  # mean recall@k
    precision: float  # mean precision@k
    map: float  # mean average precision over the top `depth`
    per_query: list[dict] = field(default_factory=list)


def read_ground_truth(path: Path) -> dict[Path, set[str]]:
    """query image -> relevant manifest paths, from a JSON or CSV file (see the module's docstring)."""
    try:
        with open_regular(path) as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise UsageError(f"cannot read the ground truth {path} (--truth): {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise UsageError(f"the ground truth {path} (--truth) is not UTF-8 text: {e}") from e
    pairs: dict[str, set[str]] = {}
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or not {"query", "relevant"} <= set(rows[0]):
            raise UsageError(f"{path}: a CSV ground truth needs a header `query,relevant` and at least one row")
        for row in rows:
            pairs.setdefault(row["query"], set()).add(row["relevant"])
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} is not valid JSON ({e}); see `retrieval eval --help` for the format") from e
        valid = isinstance(loaded, dict) and all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in loaded.values()
        )
        if not valid or not loaded:
            raise UsageError(f"{path}: expected a JSON object mapping each query image to a list of relevant paths")
        pairs = {q: set(v) for q, v in loaded.items()}
    return {(path.parent / q) if not Path(q).is_absolute() else Path(q): relevant for q, relevant in pairs.items()}


def evaluate_labelled(searcher: Searcher, truth: dict[Path, set[str]], k: int = 10, depth: int = 100) -> LabelledReport:
    """Recall@k, precision@k and mAP (over the top `depth`) of the index against `truth`."""
    store = searcher.store
    unknown = sorted({p for relevant in truth.values() for p in relevant if store.row_of(p) is None})
    if unknown:
        raise UsageError(f"{len(unknown)} relevant paths are not in the index, e.g. {unknown[0]!r}")
    queries = list(truth)
    results = searcher.query(queries, min(depth + 1, store.count))
    report = LabelledReport(k, depth, len(queries), 0.0, 0.0, 0.0)
    for query, result in zip(queries, results):
        row = None if result.embedded else indexed_row(store, query)  # the row the searcher itself used
        own = None if row is None else store.entry(row).path
        ranked = [h.path for h in result.hits if h.path != own][:depth]
        relevant = truth[query]
        row = {
            "query": str(query),
            "recall": recall_at(ranked, relevant, k),
            "precision": precision_at(ranked, relevant, k),
            "ap": average_precision(ranked, relevant),
        }
        report.per_query.append(row)
    n = len(report.per_query)
    report.recall = sum(r["recall"] for r in report.per_query) / n
    report.precision = sum(r["precision"] for r in report.per_query) / n
    report.map = sum(r["ap"] for r in report.per_query) / n
    return report


# --- without labels -------------------------------------------------------------------------------


@dataclass
class AugmentedReport:
    k: int
    seed: int
    sample: list[str]  # manifest paths of the originals
    recall_at_1: dict[str, float]  # per transform
    recall_at_k: dict[str, float]
    skipped: list[str] = field(default_factory=list)  # originals that could not be read

    @property
    def overall(self) -> tuple[float, float]:
        """Mean recall@1 and recall@k over the transforms."""
        n = len(self.recall_at_1)
        return sum(self.recall_at_1.values()) / n, sum(self.recall_at_k.values()) / n


def evaluate_augmented(
    searcher: Searcher,
    sample: int = 100,
    k: int = 10,
    seed: int = 0,
    transforms: list[str] | None = None,
    among: list[int] | None = None,
) -> AugmentedReport:
    """Changed copies of `sample` seeded indexed images (drawn from the rows `among`, default all), queried
    against the index: is the original found first (recall@1), and within the top k (recall@k), per change?"""
    names = transforms or list(CHANGES)
    unknown = [t for t in names if t not in CHANGES]
    if unknown:
        raise UsageError(f"unknown transform {unknown[0]!r}; choose from {', '.join(CHANGES)}")
    store = searcher.store
    if store.count == 0:
        raise EmptyIndex(f"the index in {searcher.settings.index} is empty: nothing to evaluate")
    pool = range(store.count) if among is None else among
    rows = sorted(random.Random(seed).sample(pool, min(sample, len(pool))))
    max_pixels = searcher.settings.max_pixels
    report = AugmentedReport(k, seed, [], {}, {})
    with tempfile.TemporaryDirectory(prefix="retrieval-eval-") as tmp:
        copies: dict[str, list[tuple[int, Path]]] = {name: [] for name in names}
        for row in rows:
            path = store.entry(row).path
            try:
                original = load_thumbnail(store.root / path, EDGE, max_pixels)
            except ImageError:  # gone or broken since it was indexed: reported, not fatal
                report.skipped.append(path)
                continue
            report.sample.append(path)
            for name in names:
                copies[name].append((row, CHANGES[name].save(original, Path(tmp) / f"{row}-{name}")))
        if not report.sample:
            raise UsageError("none of the sampled images could be read; is the indexed folder still there?")
        for name in names:
            results = searcher.query([copy for _, copy in copies[name]], k)
            found = [[h.row for h in result.hits] for result in results]
            targets = [row for row, _ in copies[name]]
            report.recall_at_1[name] = sum(hits[:1] == [t] for t, hits in zip(targets, found)) / len(targets)
            report.recall_at_k[name] = sum(t in hits for t, hits in zip(targets, found)) / len(targets)
    return report


def markdown(report: AugmentedReport) -> str:
    """The label-free figures as a markdown table, one row per change and one overall."""
    lines = [f"| change | recall@1 | recall@{report.k} |", "|---|---|---|"]
    lines += [f"| {n} | {report.recall_at_1[n]:.3f} | {report.recall_at_k[n]:.3f} |" for n in report.recall_at_1]
    one, k = report.overall
    lines.append(f"| **mean** | **{one:.3f}** | **{k:.3f}** |")
    return "\n".join(lines)
