"""Ingest speed, end to end and forward-only, for the prototype's loop and every engine and precision.

    .venv/bin/python benchmarks/ingest.py                 # everything, ~15 minutes on 2 cores
    .venv/bin/python benchmarks/ingest.py --quick         # fewer images, no 20,000-image RSS run

Generates seeded photo-like JPEGs (1024x768 and 4000x3000) under benchmarks/.data/, then runs each
configuration in a fresh process (so that peak RSS and thread pools are its own) through the library
API, with random ResNet50 weights (the arithmetic is the same as with ImageNet weights). Rates exclude
building the model (done once per process before timing) and include listing, decoding, embedding,
normalizing, and saving the index. Writes benchmarks/results/ingest.json and ingest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
RESULTS = HERE / "results"


# --- data ----------------------------------------------------------------------------------------


def photo_set(size: tuple[int, int], count: int) -> Path:
    """`count` JPEGs of `size`, generated once and reused."""
    from retrieval.synthetic import photo

    folder = DATA / f"jpeg-{size[0]}x{size[1]}-{count}"
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i in range(count):
            photo(i, size).save(folder / f"photo-{i:05d}.jpg", quality=90)
        (folder / "done").touch()
    return folder


def linked_set(source: Path, count: int) -> Path:
    """`count` files as hard links to a smaller set: as many paths to decode, little disk."""
    folder = DATA / f"{source.name}-linked-{count}"
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        originals = sorted(source.glob("*.jpg"))
        for i in range(count):
            sub = folder / f"{i // 1000:03d}"
            sub.mkdir(parents=True, exist_ok=True)
            os.link(originals[i % len(originals)], sub / f"photo-{i:06d}.jpg")
        (folder / "done").touch()
    return folder


# --- one measurement, in its own process ----------------------------------------------------------


def measure(job: dict[str, Any]) -> dict[str, Any]:
    kind = job["kind"]
    if kind == "prototype":
        result = _prototype(Path(job["folder"]))
    elif kind == "forward":
        result = _forward(job["engine"], job["precision"])
    elif kind == "decode":
        result = _decode(Path(job["folder"]), job["jpeg_draft"])
    else:
        result = _pipeline(Path(job["folder"]), job["engine"], job["precision"], job.get("jpeg_draft", True))
    from retrieval.system import memory_bytes

    result["peak_rss_mb"] = memory_bytes("VmHWM") / 2**20
    return result


def _decode(folder: Path, jpeg_draft: bool) -> dict[str, Any]:
    """One thread decoding to model input, nothing else: the other half of the CPU budget."""
    from retrieval.images import load_image

    paths = sorted(folder.glob("*.jpg"))
    started = time.perf_counter()
    for path in paths:
        load_image(path, (224, 224), 10**9, jpeg_draft=jpeg_draft)
    seconds = time.perf_counter() - started
    return {"images": len(paths), "seconds": seconds, "img_per_s": len(paths) / seconds}


def _settings(engine: str, precision: str, index: Path) -> Any:
    from retrieval.config import Settings

    return Settings(index=index, weights="none", engine=engine, precision=precision)


def _prototype(folder: Path) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from prototype import FeatureExtractor, index_folder

    extractor = FeatureExtractor()
    paths = sorted(folder.glob("*.jpg"))
    extractor.extract(paths[0])  # warm-up, as the model build is excluded for every configuration
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        n = index_folder(extractor, paths, Path(tmp) / "features.npz")
        seconds = time.perf_counter() - started
    return {"images": n, "seconds": seconds, "img_per_s": n / seconds}


def _forward(engine: str, precision: str, batch: int = 32, rounds: int = 6) -> dict[str, Any]:
    from retrieval.embedders import create_embedder

    with tempfile.TemporaryDirectory() as tmp:
        embedder = create_embedder(_settings(engine, precision, Path(tmp)))
    images = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    embedder.embed(images)  # warm-up
    started = time.perf_counter()
    for _ in range(rounds):
        embedder.embed(images)
    seconds = time.perf_counter() - started
    return {"images": batch * rounds, "seconds": seconds, "img_per_s": batch * rounds / seconds, **embedder.runtime()}


def _pipeline(folder: Path, engine: str, precision: str, jpeg_draft: bool) -> dict[str, Any]:
    from retrieval.embedders import create_embedder
    from retrieval.images import load_image
    from retrieval.ingest import ingest

    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(engine, precision, Path(tmp) / "index")
        embedder = create_embedder(settings)
        embedder.embed(np.zeros((settings.batch_size, 224, 224, 3), np.uint8))  # warm-up
        decode = partial(load_image, jpeg_draft=jpeg_draft)
        started = time.perf_counter()
        report = ingest(folder, settings, embedder=embedder, decode=decode)
        seconds = time.perf_counter() - started
    return {
        "images": report.indexed,
        "seconds": seconds,
        "img_per_s": report.indexed / seconds,
        "decode_threads": settings.decode_threads,
        "batch_size": settings.batch_size,
        **embedder.runtime(),
    }


def run_in_subprocess(job: dict[str, Any]) -> dict[str, Any]:
    print(f"  {job['name']} ...", end="", flush=True)
    out = subprocess.run(
        [sys.executable, __file__, "--job", json.dumps(job)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"\n{job['name']} failed:\n{out.stderr[-3000:]}")
    result = {**job, **json.loads(out.stdout.strip().splitlines()[-1])}
    print(f" {result['img_per_s']:.1f} img/s, peak RSS {result['peak_rss_mb']:.0f} MB")
    return result


# --- the whole benchmark --------------------------------------------------------------------------


def plan(quick: bool) -> list[dict[str, Any]]:
    small = str(photo_set((1024, 768), 128 if quick else 512))
    baseline = str(photo_set((1024, 768), 48 if quick else 96))
    camera = str(photo_set((4000, 3000), 16 if quick else 48))
    jobs: list[dict[str, Any]] = [
        {"name": "prototype loop (baseline)", "kind": "prototype", "folder": baseline, "set": "1024x768"}
    ]
    for engine in ("tensorflow", "openvino"):
        for precision in ("fp32", "bf16"):
            jobs.append(
                {
                    "name": f"forward only, {engine} {precision}",
                    "kind": "forward",
                    "engine": engine,
                    "precision": precision,
                }
            )
            jobs.append(
                {
                    "name": f"pipeline, {engine} {precision}",
                    "kind": "pipeline",
                    "folder": small,
                    "set": "1024x768",
                    "engine": engine,
                    "precision": precision,
                }
            )
    for folder, name in ((small, "1024x768"), (camera, "4000x3000")):
        for draft in (True, False):
            jobs.append(
                {
                    "name": f"decode only, 1 thread, {name}, {'with' if draft else 'without'} JPEG draft",
                    "kind": "decode",
                    "folder": folder,
                    "set": name,
                    "jpeg_draft": draft,
                }
            )
    for draft in (True, False):
        jobs.append(
            {
                "name": f"pipeline, openvino bf16, 4000x3000, {'with' if draft else 'without'} JPEG draft",
                "kind": "pipeline",
                "folder": camera,
                "set": "4000x3000",
                "engine": "openvino",
                "precision": "bf16",
                "jpeg_draft": draft,
            }
        )
    for count in () if quick else (2000, 20000):
        jobs.append(
            {
                "name": f"pipeline, openvino bf16, {count} images (memory)",
                "kind": "pipeline",
                "set": "1024x768",
                "folder": str(linked_set(Path(small), count)),
                "engine": "openvino",
                "precision": "bf16",
            }
        )
    return jobs


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    baseline = next(r["img_per_s"] for r in results if r["kind"] == "prototype")
    ceilings = {(r["engine"], r["precision"]): r["img_per_s"] for r in results if r["kind"] == "forward"}
    for r in results:
        r["x_baseline"] = r["img_per_s"] / baseline
        if r["kind"] == "pipeline":
            r["of_ceiling"] = r["img_per_s"] / ceilings[(r["engine"], r["precision"])]
    return results


def markdown(results: list[dict[str, Any]], host: dict[str, Any]) -> str:
    lines = [
        "# Ingest benchmark",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores, native bf16: {', '.join(host['bf16']) or 'none'}; "
        f"Python {host['python']}; " + ", ".join(f"{k} {v}" for k, v in host["versions"].items()) + ".",
        f"Run: {host['date']} with `{host['command']}`. Random ResNet50 weights, batch 32.",
        "",
        "| configuration | images | img/s | × baseline | of forward-only | peak RSS (MB) | threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ceiling = f"{r['of_ceiling']:.0%}" if "of_ceiling" in r else ""
        threads = f"{r['decode_threads']} decoding" if "decode_threads" in r else ""
        lines.append(
            f"| {r['name']} | {r['images']} | {r['img_per_s']:.1f} | {r['x_baseline']:.1f}× | {ceiling} "
            f"| {r['peak_rss_mb']:.0f} | {threads} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, no memory runs")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(measure(json.loads(args.job))))
        return
    os.environ.setdefault("RETRIEVAL_CACHE", str(DATA / "model-cache"))
    from retrieval.system import machine

    host = machine()
    host["command"] = "benchmarks/ingest.py" + (" --quick" if args.quick else "")
    print(f"{host['cpu']}, {host['cores']} cores; generating images under {DATA} ...")
    results = summarize([run_in_subprocess(job) for job in plan(args.quick)])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps({"machine": host, "results": results}, indent=2) + "\n")
    (RESULTS / "ingest.md").write_text(markdown(results, host))
    print(markdown(results, host))


if __name__ == "__main__":
    main()
