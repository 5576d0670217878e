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
from collections.abc import Iterator
from contextlib import contextmanager
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
    from retrieval.analysis.synthetic import photo

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
        result = _forward(job["engine"], job["precision"], job.get("folder"))
    elif kind == "decode":
        result = _decode(Path(job["folder"]), job["jpeg_draft"])
    else:
        result = _pipeline(
            Path(job["folder"]),
            job["engine"],
            job["precision"],
            job.get("jpeg_draft", True),
            job.get("decode_threads"),
            job.get("calibration", "excluded"),
            job.get("executor", "local"),
            job.get("ray_address", ""),
        )
    from retrieval.io.system import memory_bytes

    result["peak_rss_mb"] = memory_bytes("VmHWM") / 2**20
    return result


def _decode(folder: Path, jpeg_draft: bool) -> dict[str, Any]:
    """One thread decoding to model input, nothing else: the other half of the CPU budget."""
    from retrieval.io.images import load_image

    paths = sorted(folder.glob("*.jpg"))
    started = time.perf_counter()
    for path in paths:
        load_image(path, (224, 224), 10**9, jpeg_draft=jpeg_draft)
    seconds = time.perf_counter() - started
    return {"images": len(paths), "seconds": seconds, "img_per_s": len(paths) / seconds}


def _settings(engine: str, precision: str, index: Path, decode_threads: int | None = None, **more: Any) -> Any:
    from retrieval.config import Settings

    threads = {"decode_threads": decode_threads} if decode_threads else {}
    return Settings(index=index, weights="none", engine=engine, precision=precision, **threads, **more)


def _embedder(settings: Any, folder: Path | None) -> Any:
    """The embedder, built before timing; for int8, quantized on `folder`'s calibration sample (as an
    ingest of that folder would, and cached the same way)."""
    from retrieval.embedding.embedders import create_embedder
    from retrieval.embedding.quantize import calibration_sample
    from retrieval.io.files import list_images

    if settings.precision != "int8":
        return create_embedder(settings)
    paths = list_images(folder).paths
    sample = calibration_sample(folder, paths, (224, 224), settings.max_pixels, settings.calibration_images)
    return create_embedder(settings, calibration=sample)


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


def _forward(engine: str, precision: str, folder: str | None, batch: int = 32, rounds: int = 6) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        embedder = _embedder(_settings(engine, precision, Path(tmp)), Path(folder) if folder else None)
    images = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    embedder.embed(images)  # warm-up
    started = time.perf_counter()
    for _ in range(rounds):
        embedder.embed(images)
    seconds = time.perf_counter() - started
    return {"images": batch * rounds, "seconds": seconds, "img_per_s": batch * rounds / seconds, **embedder.runtime()}


def _pipeline(
    folder: Path,
    engine: str,
    precision: str,
    jpeg_draft: bool,
    decode_threads: int | None,
    calibration: str,
    executor: str = "local",
    ray_address: str = "",
) -> dict[str, Any]:
    """One ingest of `folder`. calibration "included": the ingest builds its own embedder, so an int8 run's
    sampling, quantizing (no cached model) and gate are timed with it; else the embedder is built first.
    On Ray the actors build their own embedders: starting Ray (without an address) and the actors' model
    builds are inside the timed run, as a user pays them."""
    from retrieval.config import decode_threads_for
    from retrieval.embedding.preparation import cache_dir
    from retrieval.index.store import Store
    from retrieval.ingestion.job import ingest
    from retrieval.io.images import load_image

    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(
            engine, precision, Path(tmp) / "index", decode_threads, executor=executor, ray_address=ray_address
        )
        decode = partial(load_image, jpeg_draft=jpeg_draft)
        if calibration == "included":
            for quantized in (cache_dir() / "openvino").glob("*-int8-*"):
                shutil.rmtree(quantized)
        if calibration == "included" or executor == "ray":
            embedder = None
        else:
            embedder = _embedder(settings, folder)
            embedder.embed(np.zeros((settings.batch_size, 224, 224, 3), np.uint8))  # warm-up
        started = time.perf_counter()
        report = ingest(folder, settings, embedder=embedder, decode=decode)
        seconds = time.perf_counter() - started
        runtime = embedder.runtime() if embedder else Store.load(settings.index).record.runtime
    return {
        "images": report.indexed,
        "seconds": seconds,
        "img_per_s": report.indexed / seconds,
        "decode_threads": decode_threads_for(settings, runtime.get("precision", "")),
        "batch_size": settings.batch_size,
        "model_seconds": report.model_seconds,
        **runtime,
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


def plan_int8() -> list[dict[str, Any]]:
    """The int8 rows beside what they are judged against, in one run: the prototype loop, forward-only and
    pipeline rates for bf16 and int8 (default decoding threads: 1 for bf16, 2 for int8 on 2 cores), int8
    with one decoding thread, and 2,000 images with the calibration (sampling, quantizing, gate) timed in
    and out."""
    small = str(photo_set((1024, 768), 512))
    baseline = str(photo_set((1024, 768), 96))
    thousands = str(linked_set(Path(small), 2000))
    openvino = {"engine": "openvino", "set": "1024x768"}
    jobs: list[dict[str, Any]] = [
        {"name": "prototype loop (baseline)", "kind": "prototype", "folder": baseline, "set": "1024x768"},
        {"name": "decode only, 1 thread, 1024x768, with JPEG draft", "kind": "decode", "folder": small,
         "set": "1024x768", "jpeg_draft": True},
    ]  # fmt: skip
    for precision in ("bf16", "int8"):
        forward = {"name": f"forward only, openvino {precision}", "kind": "forward", "folder": small}
        jobs.append({**forward, **openvino, "precision": precision})
        jobs.append(
            {
                "name": f"pipeline, openvino {precision}",
                "kind": "pipeline",
                "folder": small,
                **openvino,
                "precision": precision,
            }
        )
    jobs.append(
        {"name": "pipeline, openvino int8, 1 decoding thread", "kind": "pipeline", "folder": small, **openvino,
         "precision": "int8", "decode_threads": 1}
    )  # fmt: skip
    for calibration in ("excluded", "included"):
        jobs.append(
            {"name": f"pipeline, openvino int8, 2000 images, calibration {calibration}", "kind": "pipeline",
             "folder": thousands, **openvino, "precision": "int8", "calibration": calibration}
        )  # fmt: skip
    return jobs


def plan_ray(address: str) -> list[dict[str, Any]]:
    """The same 512 JPEGs through the local pipeline and through `executor: ray` (a local instance the
    ingest starts itself, and the two-node loopback cluster at `address`), beside the forward-only rate."""
    small = str(photo_set((1024, 768), 512))
    baseline = str(photo_set((1024, 768), 96))
    common = {"engine": "openvino", "precision": "bf16", "set": "1024x768", "folder": small}
    return [
        {"name": "prototype loop (baseline)", "kind": "prototype", "folder": baseline, "set": "1024x768"},
        {"name": "forward only, openvino bf16", "kind": "forward", **common},
        {"name": "pipeline, local executor", "kind": "pipeline", **common},
        {"name": "pipeline, ray, local instance (2 CPUs)", "kind": "pipeline", **common, "executor": "ray"},
        {"name": "pipeline, ray, two-node loopback cluster (1 CPU each)", "kind": "pipeline", **common,
         "executor": "ray", "ray_address": address},
    ]  # fmt: skip


@contextmanager
def two_node_cluster() -> Iterator[str]:
    """`ray start --head` and a second `ray start --address`, one CPU each, on 127.0.0.1, with token
    authentication (a token file of its own, named in the environment the jobs inherit); stopped after."""
    ray = str(Path(sys.executable).parent / "ray")
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "auth_token"
        token.write_text(os.urandom(32).hex())
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
        address = "127.0.0.1:46379"
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
        try:
            subprocess.run([ray, "start", "--head", "--port=46379", "--include-dashboard=false", *common], check=True,
                           capture_output=True)  # fmt: skip
            subprocess.run([ray, "start", f"--address={address}", *common], check=True, capture_output=True)
            yield address
        finally:
            subprocess.run([ray, "stop", "--force"], capture_output=True)
            for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
                os.environ.pop(key)


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    baseline = next(r["img_per_s"] for r in results if r["kind"] == "prototype")
    ceilings = {(r["engine"], r["precision"]): r["img_per_s"] for r in results if r["kind"] == "forward"}
    for r in results:
        r["x_baseline"] = r["img_per_s"] / baseline
        if r["kind"] == "pipeline":
            r["of_ceiling"] = r["img_per_s"] / ceilings[(r["engine"], r["precision"])]
    return results


def shared_cpu_bound(results: list[dict[str, Any]], cores: int) -> list[str]:
    """What bounds each pipeline when decoding and the forward pass share the cores: an image costs the
    forward pass `cores / F` core-seconds (it runs on all of them at F img/s) plus `1 / D` for one thread
    decoding at D img/s, so at best `cores / (cores / F + 1 / D)` images a second."""
    decode = next((r["img_per_s"] for r in results if r["kind"] == "decode" and r["set"] == "1024x768"
                   and r.get("jpeg_draft")), None)  # fmt: skip
    if decode is None:
        return []
    lines = []
    for r in results:
        if r["kind"] == "forward":
            bound = cores / (cores / r["img_per_s"] + 1 / decode)
            lines.append(
                f"- {r['engine']} {r['precision']}: forward {r['img_per_s']:.1f} img/s and decoding {decode:.1f} img/s "
                f"on one thread share {cores} cores: at most {bound:.1f} img/s end to end "
                f"({bound / r['img_per_s']:.0%} of forward-only)."
            )
    return lines


def markdown(results: list[dict[str, Any]], host: dict[str, Any]) -> str:
    lines = [
        "# Ingest benchmark",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores, native bf16: {', '.join(host['bf16']) or 'none'}; "
        f"Python {host['python']}; " + ", ".join(f"{k} {v}" for k, v in host["versions"].items()) + ".",
        f"Run: {host['date']} with `{host['command']}`. Random ResNet50 weights, batch 32.",
        "",
        "| configuration | images | img/s | × baseline | of forward-only | peak RSS (MB) | threads | ran in |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ceiling = f"{r['of_ceiling']:.0%}" if "of_ceiling" in r else ""
        threads = f"{r['decode_threads']} decoding" if "decode_threads" in r else ""
        ran = r.get("precision", "") if r["kind"] in ("forward", "pipeline") else ""
        if r.get("calibration") == "included":
            ran += f" ({r['model_seconds']:.1f} s to sample, quantize and gate)"
        lines.append(
            f"| {r['name']} | {r['images']} | {r['img_per_s']:.1f} | {r['x_baseline']:.1f}× | {ceiling} "
            f"| {r['peak_rss_mb']:.0f} | {threads} | {ran} |"
        )
    bounds = shared_cpu_bound(results, host["cores"])
    if bounds:
        lines += ["", f"What bounds a pipeline on {host['cores']} cores, from the rates above:", "", *bounds]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, no memory runs")
    parser.add_argument("--int8", action="store_true", help="only the int8 rows and what they are judged by")
    parser.add_argument("--ray", action="store_true", help="only the Ray rows and what they are judged by")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(measure(json.loads(args.job))))
        return
    os.environ.setdefault("RETRIEVAL_CACHE", str(DATA / "model-cache"))
    from retrieval.io.system import machine

    host = machine()
    flags = [flag for flag, on in (("--quick", args.quick), ("--int8", args.int8), ("--ray", args.ray)) if on]
    host["command"] = " ".join(["benchmarks/ingest.py", *flags])
    print(f"{host['cpu']}, {host['cores']} cores; generating images under {DATA} ...")
    if args.ray:
        with two_node_cluster() as address:
            results = summarize([run_in_subprocess(job) for job in plan_ray(address)])
    else:
        results = summarize([run_in_subprocess(job) for job in (plan_int8() if args.int8 else plan(args.quick))])
    name = "ingest-int8" if args.int8 else "ingest-ray" if args.ray else "ingest"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": host, "results": results}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(results, host))
    print(markdown(results, host))


if __name__ == "__main__":
    main()
