"""The default index on the model's own vectors, as a new user meets it: N generated photos (320x240) ingested
with default settings (index_type auto, random weights here), then mirrored and half-size copies of 20 of them
queried against the default index and against an exact (flat) index over the same vectors.

    .venv/bin/python benchmarks/default_index.py [--count 6000]     # about 2.5 minutes on 2 cores

Writes benchmarks/results/default_index.json and .md: the kind auto chose, the recall@10 it recorded, recall@10
of the 40 new images against exact search, and how many of the 40 rank the same image first in both indexes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval import Settings, Store, ingest
from retrieval.analysis.synthetic import photo, write_photos
from retrieval.ann.indexes import IndexChoice
from retrieval.embedding.embedders import create_embedder
from retrieval.io.images import load_image
from retrieval.io.system import machine
from retrieval.vectors import normalize

RESULTS = Path(__file__).parent / "results"
SIZE = (320, 240)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=6000)
    count = parser.parse_args().count
    with tempfile.TemporaryDirectory() as tmp:
        folder, settings = Path(tmp) / "photos", Settings(index=Path(tmp) / "index", weights="none")
        write_photos(folder, count, size=SIZE)
        embedder = create_embedder(settings)
        started = time.perf_counter()
        report = ingest(folder, settings, embedder=embedder)
        seconds = time.perf_counter() - started
        store = Store.load(settings.index)
        names, pixels = [], []
        for seed in range(20):
            original = photo(seed, SIZE)
            for copy in (original.transpose(Image.Transpose.FLIP_LEFT_RIGHT), original.resize((160, 120))):
                path = Path(tmp) / f"query-{len(names)}.png"
                copy.save(path)
                names.append(f"photo-{seed:04d}.jpg")
                pixels.append(load_image(path, embedder.spec.input_size, settings.max_pixels))
        queries = normalize(embedder.embed(np.stack(pixels)))
        flat = Store.create(
            dim=store.dim, metric="cosine", embedding={}, root=store.root, runtime={}, kind=IndexChoice("flat")
        )
        flat.add(store.vectors(), store.entries())
        default_hits, exact_hits = store.search(queries, 10), flat.search(queries, 10)
    recall = np.mean([len({r for r, _ in d} & {r for r, _ in e}) / 10 for d, e in zip(default_hits, exact_hits)])
    same_first = sum(d[0][0] == e[0][0] for d, e in zip(default_hits, exact_hits))
    original_first = sum(store.entry(d[0][0]).path == name for d, name in zip(default_hits, names))
    facts = store.record.index
    result = {
        "machine": machine(),
        "count": count,
        "ingest_seconds": seconds,
        "embedded_per_second": report.rate,
        "index": facts["factory"],
        # the search parameter of the chosen kind (flat has none)
        "parameters": {k: facts[k] for k in ({"hnsw": ("ef_search",), "ivf": ("nprobe",)}.get(facts["kind"], ()))},
        "recorded_recall_at_10": facts["recall_at_10"],
        "new_image_recall_at_10": float(recall),
        "queries": len(names),
        "same_first_as_flat": int(same_first),
        "original_first": int(original_first),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "default_index.json").write_text(json.dumps(result, indent=2) + "\n")
    host = result["machine"]
    (RESULTS / "default_index.md").write_text(
        "# The default index on the model's own vectors\n\n"
        f"Machine: {host['cpu']}, {host['cores']} cores; run {host['date']}. {count:,} generated photos "
        f"({SIZE[0]}x{SIZE[1]}) ingested with default settings and random weights in {seconds:.0f} s.\n\n"
        "| auto chose | recorded recall@10 | recall@10 of 40 new images | same first hit as flat | original first |\n"
        "|---|---|---|---|---|\n"
        f"| {facts['factory']} ({', '.join(f'{k}={v}' for k, v in result['parameters'].items() if v)}) "
        f"| {facts['recall_at_10']:.3f} | {recall:.3f} | {same_first} of {len(names)} "
        f"| {original_first} of {len(names)} |\n"
    )
    print((RESULTS / "default_index.md").read_text())


if __name__ == "__main__":
    main()
