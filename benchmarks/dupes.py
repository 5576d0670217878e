"""Planted near-duplicates among distractors: `retrieval dupes` beside a perceptual hash (imagehash's pHash).

    .venv/bin/pip install -e '.[bench]'; .venv/bin/python benchmarks/dupes.py     # a few minutes on 2 cores

1,000 images, through the real pipeline: 40 generated photos (320x240) with five planted copies each
(re-encoded at JPEG quality 30, resized to 2/3, mirrored, the central 80 % cropped, 30 % brighter), among 760
generated distractors. The index is built with default settings, and again with max and with gem pooling;
random weights (ImageNet weights cannot be downloaded here). Each method's groups are scored by pairs: a pair
of images is predicted when they share a group, and correct when they come from the same original. pHash uses
its usual rule, a Hamming distance of at most 10 of 64 bits, joined into groups the same way (connected
components).

100,000 vectors: the time and peak memory of finding groups in an index of that size, on seeded synthetic
vectors shaped like the model's (the cone family) with 1,000 planted near-copies (each a stored vector
plus 2 % noise): embedding 100,000 images would take half an hour here, and grouping time does not depend
on where the vectors came from. pHash has no index: at that size it compares every pair (5 x 10^9).
Writes benchmarks/results/dupes.json and dupes.md.
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
ORIGINALS, DISTRACTORS, SIZE = 40, 760, (320, 240)
RULES = {  # pooling -> the rules tried on an index of that pooling (a threshold suits one pooling only)
    "avg": {
        "relative 0.2": {"relative": 0.2},
        "relative 0.3": {"relative": 0.3},
        "threshold 0.9985": {"threshold": 0.9985},
    },
    "max": {"relative 0.2": {"relative": 0.2}, "relative 0.3": {"relative": 0.3}},
    "gem": {"relative 0.3": {"relative": 0.3}},
}
CANDIDATES = 120  # thresholds tried for the best one, spread over the pairs' highest cosines ...
TOP_PAIRS = 8_000  # ... the 8,000 highest of 499,500 pairs: 13 times the 600 planted ones
COPIES = ("reencoded", "resized", "mirrored", "cropped", "brightened")
DEFAULTS = {  # --evidence -> its row: `retrieval dupes` with no cut-off given, on the default index
    "both": "dupes, default: measured threshold + hash",
    "vectors": "dupes, vectors only, measured threshold",
    "hash": "dupes, hash only (Hamming <= 8, either way mirrored)",
}


def write_set(folder: Path) -> list[str]:
    """The 1,000 files; returns each file's planted group name ('' for a distractor), in file-name order."""
    from PIL import Image, ImageEnhance

    from retrieval.analysis.synthetic import near_duplicates, photo, write_photos

    write_photos(folder, DISTRACTORS, seed=90_000)
    for i in range(ORIGINALS):
        original = photo(10_000 + i, SIZE)
        original.save(folder / f"dup-{i:02d}-original.jpg", quality=90)
        copies = near_duplicates(original)
        w, h = SIZE
        made = {
            "reencoded": copies["reencoded"],
            "resized": copies["resized"],
            "mirrored": copies["mirrored"],
            "cropped": original.crop((w // 10, h // 10, w - w // 10, h - h // 10)).resize(
                SIZE, Image.Resampling.BILINEAR
            ),
            "brightened": ImageEnhance.Brightness(original).enhance(1.3),
        }
        for name, image in made.items():
            image.convert("RGB").save(folder / f"dup-{i:02d}-{name}.jpg", quality=90)
    return sorted(p.name for p in folder.iterdir())


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not carried over from the parent
    across the exec that starts a spawned child)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def planted(name: str) -> str:
    return name.rsplit("-", 1)[0] if name.startswith("dup-") else ""


def pair_scores(labels: dict[str, int], names: list[str]) -> dict[str, float]:
    """Pair precision and recall of predicted groups (`labels`: file -> group id, absent = alone), and the
    recall of each kind of copy (the copy and its original in one group)."""
    truth: dict[str, list[str]] = {}
    for name in names:
        if planted(name):
            truth.setdefault(planted(name), []).append(name)
    predicted: dict[int, list[str]] = {}
    for name, label in labels.items():
        predicted.setdefault(label, []).append(name)
    predicted_pairs = sum(len(m) * (len(m) - 1) // 2 for m in predicted.values())
    correct = 0
    for members in predicted.values():
        by_group: dict[str, int] = {}
        for m in members:
            if planted(m):
                by_group[planted(m)] = by_group.get(planted(m), 0) + 1
        correct += sum(n * (n - 1) // 2 for n in by_group.values())
    true_pairs = sum(len(m) * (len(m) - 1) // 2 for m in truth.values())
    result = {"precision": correct / predicted_pairs if predicted_pairs else 1.0, "recall": correct / true_pairs}
    for copy in COPIES:
        found = [
            labels.get(f"{g}-{copy}.jpg") is not None
            and labels.get(f"{g}-{copy}.jpg") == labels.get(f"{g}-original.jpg")
            for g in truth
        ]
        result[f"recall {copy}"] = sum(found) / len(found)
    return result


def by_index(folder: str, index: str, rule: dict, queue: multiprocessing.Queue) -> None:
    """Child process: groups from the index; seconds and peak RSS of the grouping alone."""
    from retrieval.index.store import Store
    from retrieval.maintenance.dupes.groups import Rule, find_groups

    store = Store.load(Path(index))
    before = peak_mb()
    started = time.perf_counter()
    groups = find_groups(store, Rule(**rule))
    seconds = time.perf_counter() - started
    labels = {m.path: n for n, g in enumerate(groups) for m in g.members}
    queue.put({"labels": labels, "seconds": seconds, "peak_rss_mb": peak_mb(), "rss_before_mb": before})


def by_default(index: str, evidence: str, queue: multiprocessing.Queue) -> None:
    """Child process: `retrieval dupes` as a user runs it, with no cut-off given (measured on the index,
    threshold.py) and the evidence asked for; seconds (the measuring included) and peak RSS."""
    from retrieval.config import Settings
    from retrieval.maintenance.dupes.run import Request, dupes
    from retrieval.maintenance.dupes.threshold import RECORD

    (Path(index) / RECORD).unlink(missing_ok=True)  # measured now, not read back
    before = peak_mb()
    started = time.perf_counter()
    done = dupes(Settings(index=Path(index), weights="none"), Request(evidence=evidence))
    seconds = time.perf_counter() - started
    labels = {m.path: n for n, g in enumerate(done.groups) for m in g.members}
    measured = done.measured
    queue.put(
        {
            "labels": labels,
            "seconds": seconds,
            "peak_rss_mb": peak_mb(),
            "rss_before_mb": before,
            "threshold": measured.threshold if measured else None,
            "copy_recall": measured.copy_recall if measured else None,
            "copy_recall_with_hash": measured.with_hash if measured else None,
            "notes": done.notes,
        }  # fmt: skip
    )


def best_threshold(folder: str, index: str, names: list[str], queue: multiprocessing.Queue) -> None:
    """Child process: the threshold under which `dupes` scores best (the lower of precision and recall
    highest), chosen knowing the answers: a bound on what a threshold can do on this set. Each candidate is a
    real `find_groups` run; candidates are spread over the cosines of the highest pairs."""
    from retrieval.index.store import Store
    from retrieval.maintenance.dupes.groups import Rule, find_groups

    store = Store.load(Path(index))
    vectors = store.vectors()
    cosines = (vectors @ vectors.T)[np.triu_indices(len(vectors), k=1)]
    top = np.sort(cosines)[::-1][:TOP_PAIRS]
    best: dict = {}
    for threshold in np.unique(top[:: max(1, len(top) // CANDIDATES)]):
        groups = find_groups(store, Rule(threshold=float(threshold)))
        scores = pair_scores({m.path: n for n, g in enumerate(groups) for m in g.members}, names)
        if min(scores["precision"], scores["recall"]) > min(best.get("precision", 0), best.get("recall", 0)):
            best = {**scores, "threshold": float(threshold)}
    queue.put(best)


def by_phash(folder: str, names: list[str], queue: multiprocessing.Queue) -> None:
    """Child process: pHash every file, join pairs within Hamming distance 10; seconds and peak RSS."""
    import imagehash
    from PIL import Image

    started = time.perf_counter()
    hashes = []
    for name in names:
        with Image.open(Path(folder) / name) as im:
            hashes.append(np.packbits(imagehash.phash(im).hash.flatten()))
    hashed = time.perf_counter() - started
    bits = np.unpackbits(np.stack(hashes), axis=1).astype(np.uint8)
    distances = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)  # all pairs: fine at 1,000
    parent = list(range(len(names)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in zip(*np.nonzero(np.triu(distances <= 10, k=1))):
        parent[root(int(i))] = root(int(j))
    sizes: dict[int, int] = {}
    for i in range(len(names)):
        sizes[root(i)] = sizes.get(root(i), 0) + 1
    labels = {name: root(i) for i, name in enumerate(names) if sizes[root(i)] > 1}
    seconds = time.perf_counter() - started
    queue.put({"labels": labels, "seconds": seconds, "hash_seconds": hashed, "peak_rss_mb": peak_mb()})


def in_child(target, *args) -> dict:
    """Run `target` in a fresh process (its own peak memory) and return what it reports."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    answer = queue.get()
    process.join()
    return answer


def large(count: int, copies: int, folder: Path) -> Path:
    """An index of `count` cone-family vectors, the last `copies` of them near-copies of others (+2 % noise),
    each row with a synthetic perceptual hash (random; a copy's is its source's with 0-6 bits flipped), built
    once in `folder` (reused when it is there). The vectors are drawn into one array and the copies written
    over its last rows, so that a million of them (8 GB) are never held twice."""
    from retrieval import Settings, Store
    from retrieval.analysis.synthetic import feature_vectors
    from retrieval.ann.indexes import IndexChoice
    from retrieval.embedding.embedders import embedding_for
    from retrieval.index.manifest import Entry

    if (folder / "index" / "CURRENT").is_file():
        return folder / "index"
    vectors, _ = feature_vectors("cone", count, seed=21)
    rng = np.random.default_rng(22)
    sources = rng.choice(count - copies, copies, replace=False)
    noise = rng.normal(size=(copies, vectors.shape[1])).astype(np.float32)
    noise *= 0.02 / np.linalg.norm(noise, axis=1, keepdims=True)
    near = vectors[sources] + noise
    vectors[count - copies :] = near / np.linalg.norm(near, axis=1, keepdims=True)
    hashes = rng.integers(0, 256, (count, 16), dtype=np.uint8)
    bits = np.unpackbits(hashes[sources], axis=1)
    for row, flips in zip(bits, rng.integers(0, 7, copies)):
        row[rng.choice(128, flips, replace=False)] ^= 1
    hashes[count - copies :] = np.packbits(bits, axis=1)
    # auto's choice at 100,000 rows; given here, so that a million rows build once, not once per candidate
    kind = IndexChoice("auto") if count <= 100_000 else IndexChoice("hnsw", pca=256)
    store = Store.create(
        dim=2048, metric="cosine", embedding=embedding_for(Settings(weights="none")), root=folder, runtime={},
        kind=kind,
    )  # fmt: skip
    names = [f"v{i:07d}.jpg" for i in range(count - copies)] + [f"v{s:07d}-copy.jpg" for s in sources]
    store.add(vectors, [Entry(n, 0, 0, phash=h.tobytes().hex()) for n, h in zip(names, hashes)])
    del vectors
    store.save(folder / "index")
    return folder / "index"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", type=int, default=100_000, help="rows of the synthetic index (default 100,000)")
    parser.add_argument("--only-large", type=Path, help="only the synthetic index, built in (or reused from) this "
                        "folder; results in dupes-large-N.json/md")  # fmt: skip
    args = parser.parse_args()
    if args.only_large:
        return only_large(args.large, args.only_large)
    from retrieval import Settings, Store, ingest
    from retrieval.embedding.embedders import create_embedder
    from retrieval.io.system import machine

    result: dict = {"machine": machine(), "small": {}, "large": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        names = write_set(folder)
        for pooling, rules in RULES.items():
            settings = Settings(index=Path(tmp) / f"index-{pooling}", weights="none", pooling=pooling)
            ingest(folder, settings, embedder=create_embedder(settings))
            result["small"]["index"] = Store.load(settings.index).record.index["factory"]
            for evidence in DEFAULTS if pooling == "avg" else ():
                answer = in_child(by_default, str(settings.index), evidence)
                method = DEFAULTS[evidence]
                result["small"][method] = {**pair_scores(answer.pop("labels"), names), **answer}
                print(method, result["small"][method], flush=True)
            for label, rule in rules.items():
                answer = in_child(by_index, str(folder), str(settings.index), rule)
                method = f"dupes, {pooling} pooling, {label}"
                result["small"][method] = {**pair_scores(answer.pop("labels"), names), **answer}
                print(method, result["small"][method], flush=True)
            best = in_child(best_threshold, str(folder), str(settings.index), names)
            method = f"dupes, {pooling} pooling, best threshold {best['threshold']:.5f} (chosen knowing the answers)"
            result["small"][method] = best
            print(method, best, flush=True)
        answer = in_child(by_phash, str(folder), names)
        result["small"]["pHash, Hamming <= 10"] = {**pair_scores(answer.pop("labels"), names), **answer}
        print("phash", result["small"]["pHash, Hamming <= 10"], flush=True)

        result["large"] = grouped_at_scale(args.large, Path(tmp) / "large")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dupes.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "dupes.md").write_text(markdown(result))
    print(markdown(result))


def grouped_at_scale(count: int, folder: Path) -> dict:
    """The synthetic index of `count` rows (`large`) grouped by `dupes --relative 0.3` and by default."""
    from retrieval import Store

    started = time.perf_counter()
    index = large(count, count // 100, folder)
    found: dict = {"rows": count, "build_seconds": time.perf_counter() - started}
    found["index"] = Store.load(index).record.index["factory"]
    for label, run in (("relative 0.3", (by_index, "", str(index), {"relative": 0.3})),
                       ("default", (by_default, str(index), "both"))):  # fmt: skip
        answer = in_child(*run)
        labels = answer.pop("labels")
        copies = [n for n in labels if n.endswith("-copy.jpg")]
        with_source = sum(labels.get(n.replace("-copy", "")) == labels[n] for n in copies)
        found[label] = {**answer, "groups": len(set(labels.values())), "copies_with_their_source": with_source}
        print("large", label, found[label], flush=True)
    return found


def only_large(count: int, folder: Path) -> None:
    from retrieval.io.system import machine

    result = {"machine": machine(), "large": grouped_at_scale(count, folder)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"dupes-large-{count}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"dupes-large-{count}.md").write_text(large_markdown(result["machine"], result["large"]))


def large_markdown(host: dict, big: dict) -> str:
    rows, copies = big["rows"], big["rows"] // 100
    lines = [
        f"{rows:,} synthetic vectors (cone family, {copies:,} planted near-copies; synthetic perceptual hashes, a "
        f"copy's within 6 bits of its source's), index {big['index']}, "
        + (f"built in {big['build_seconds']:.0f} s " if big["build_seconds"] > 5 else "built by an earlier run ")
        + f"(machine: {host['cpu']}, {host['cores']} cores; {host['date']}):",
    ]
    for label, r in big.items():
        if isinstance(r, dict):
            lines.append(
                f"- `dupes` {label}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB ({r['rss_before_mb']:.0f}"
                f" MB before it, loading the index); {r['groups']} groups, {r['copies_with_their_source']} of "
                f"{copies:,} copies grouped with their source"
                + (f"; threshold {r['threshold']:.5f}" if r.get("threshold") else "")
                + (f" ({'; '.join(r['notes'])})" if r.get("notes") else "")
                + "."
            )
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    host, small, big = result["machine"], result["small"], result["large"]
    methods = [k for k in small if k != "index"]
    lines = [
        "# Near-duplicate groups: `retrieval dupes` and pHash",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores; run {host['date']}. Random weights.",
        f"1,000 images ({ORIGINALS} originals x {len(COPIES)} planted copies + {DISTRACTORS} distractors), "
        f"index {small['index']}:",
        "",
        "| method | pair precision | pair recall | "
        + " | ".join(f"recall {c}" for c in COPIES)
        + " | seconds | peak RSS MB |",
        "|---|---|---|" + "---|" * len(COPIES) + "---|---|",
    ]
    for m in methods:
        r = small[m]
        cells = " | ".join(f"{r[f'recall {c}']:.3f}" for c in COPIES)
        scores = f"{r['precision']:.3f} | {r['recall']:.3f}"
        cost = "| |" if "chosen knowing" in m else f"| {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} |"
        lines.append(f"| {m} | {scores} | {cells} {cost}")
    lines += [
        "",
        "Seconds: for dupes, grouping from the built index (the ingest's embedding of the images not included); "
        "for pHash, hashing the files and comparing every pair. Peak RSS of the process doing it. A 'best "
        "threshold' row is the absolute threshold under which that index's groups scored best (the lower of "
        f"precision and recall highest) of {CANDIDATES} tried, spread over the highest pair cosines, chosen "
        "knowing the answers: a bound on what a threshold can do here, not a setting to use. The default "
        "rows' seconds include measuring the cut-off (embedding the changed copies). Measured cut-offs: "
        + "; ".join(
            f"{DEFAULTS[e]}: {small[DEFAULTS[e]]['threshold']:.5f} (copy recall {small[DEFAULTS[e]]['copy_recall']})"
            for e in ("both", "vectors")
        )
        + ".",
        "",
    ]
    return "\n".join(lines) + "\n\n" + large_markdown(host, big)


if __name__ == "__main__":
    main()
