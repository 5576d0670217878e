"""Load on a real `retrieval serve`, on loopback, bounded in count: id queries and uploads at 1 and 8 clients,
the server's memory before and after, and `retrieval query --server` beside a cold `retrieval query`.

    .venv/bin/python benchmarks/serve.py [--count 100000] [--precision int8]      # about a minute on 2 cores

The index holds `count` seeded synthetic vectors of the cone family (shaped like the model's), recorded as
made by ResNet50 with random weights so that uploads are embedded by the real model. The load generator
runs on the same 2 cores as the server: the numbers include that contention. Writes
benchmarks/results/serve.json and serve.md (serve-int8.* with --precision int8: the index records an int8
ingest, calibrated on 300 generated photos, so the server embeds uploads with that int8 model).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from retrieval import Settings, Store
from retrieval.analysis.synthetic import feature_vectors, photo, write_photos
from retrieval.ann.indexes import IndexChoice
from retrieval.embedding.embedders import Embedder, create_embedder, embedding_for
from retrieval.embedding.quantize import calibration_sample
from retrieval.index.manifest import Entry
from retrieval.io.images import load_image
from retrieval.io.system import machine
from retrieval.search.client import multipart

DATA = Path(__file__).parent / ".data" / "serve"
RESULTS = Path(__file__).parent / "results"


def build_index(count: int, runtime: dict) -> Path:
    """The index, built once and reused by later runs; `runtime` is recorded as the ingest's (an int8 one
    makes the server embed uploads with that int8 model)."""
    index = DATA / (f"index-{count}" + ("-int8" if runtime.get("precision") == "int8" else ""))
    if not (index / "CURRENT").exists():
        vectors, _ = feature_vectors("cone", count, seed=11)
        store = Store.create(
            dim=2048, metric="cosine", embedding=embedding_for(Settings(weights="none")), root=DATA, runtime=runtime,
            kind=IndexChoice("auto"),
        )  # fmt: skip
        store.add(vectors, [Entry(f"photos/{i:07d}.jpg", 0, 0) for i in range(count)])
        store.save(index)
    return index


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory: anonymous (the heap: a leak shows here) and file-backed (the memory-mapped index,
    growing as queries touch its pages, and shared with the page cache)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[f"Rss{name.capitalize()}"].split()[0]) / 1024 for name in ("anon", "file")}


def the_embedder(precision: str) -> Embedder:
    """The model uploads will run through: bf16 (auto), or int8 calibrated on 300 generated photos, as an
    int8 ingest of them would make it (and cache it, where the server finds it)."""
    if precision != "int8":
        return create_embedder(Settings(weights="none"))
    folder = DATA / "calibration"
    if not (folder / "done").exists():
        write_photos(folder, 300, seed=70_000)
        (folder / "done").touch()
    paths = sorted(p.name for p in folder.glob("*.jpg"))
    sample = calibration_sample(folder, paths, (224, 224), 10**8)
    return create_embedder(Settings(weights="none", precision="int8"), calibration=sample)


def forward_rate(embedder: Embedder, query: Path, batch: int = 32, rounds: int = 4) -> float:
    """Images per second of the model's forward pass alone at batch 32, in this process before the server
    starts: the ceiling for uploads on this machine today."""
    pixels = np.stack([load_image(query, embedder.spec.input_size, 10**8)] * batch)
    embedder.embed(pixels)
    started = time.perf_counter()
    for _ in range(rounds):
        embedder.embed(pixels)
    return batch * rounds / (time.perf_counter() - started)


def timed(call, n: int, clients: int) -> dict[str, float]:
    """`n` calls spread over `clients` threads: latency percentiles, throughput, errors."""
    latencies: list[float] = []
    errors = 0

    def one(_: int) -> None:
        nonlocal errors
        started = time.perf_counter()
        ok = call()
        latencies.append((time.perf_counter() - started) * 1000)
        errors += not ok

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n)))
    seconds = time.perf_counter() - started
    return {
        "requests": n,
        "clients": clients,
        "p50_ms": statistics.median(latencies),
        "p99_ms": float(np.percentile(latencies, 99)),
        "per_second": n / seconds,
        "errors": errors,
    }


def wall(command: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--precision", choices=("auto", "int8"), default="auto", help="of the index's ingest")
    args = parser.parse_args()
    count, precision = args.count, args.precision
    embedder = the_embedder(precision)
    runtime = embedder.runtime() if precision == "int8" else {}
    if precision == "int8" and runtime["precision"] != "int8":
        raise SystemExit(f"the int8 model did not pass its gate: {runtime['int8']}")
    index = build_index(count, runtime)
    query = DATA / "query.jpg"
    photo(3, (1024, 768)).save(query, quality=90)
    body, content_type = multipart({"k": "10"}, [("q.jpg", query.read_bytes())])
    forward = forward_rate(embedder, query)
    del embedder
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    retrieval = [sys.executable, "-m", "retrieval"]
    server = subprocess.Popen(
        [*retrieval, "serve", "--index", str(index), "--port", str(port)], stderr=subprocess.DEVNULL
    )
    local, opened = threading.local(), []

    def connection() -> http.client.HTTPConnection:
        """This thread's keep-alive connection (the standard library's client: the load generator shares the
        server's 2 cores, and httpx spent about twice its CPU per request)."""
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            opened.append(local.connection)
        return local.connection

    def call(method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> bool:
        """One request; False (an error) for any answer but 200 or a broken connection, which is replaced."""
        try:
            c = connection()
            c.request(method, path, data, headers or {})
            response = c.getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            local.__dict__.pop("connection", None)
            return False

    rng = random.Random(0)

    def by_id() -> bool:
        return call("GET", f"/search?id={rng.randrange(count)}&k=10")

    def by_upload() -> bool:
        return call("POST", "/search", body, {"Content-Type": content_type})

    try:
        for _ in range(300):
            if call("GET", "/health"):
                break
            time.sleep(0.1)
        by_upload()  # builds the model once
        rss = {"after warm-up": rss_mb(server.pid)}
        rows = {"id query, 1 client": timed(by_id, 2000, 1), "id query, 8 clients": timed(by_id, 2000, 8)}
        rss["after the id queries"] = rss_mb(server.pid)
        rows["upload 1024x768 JPEG, 1 client"] = timed(by_upload, 200, 1)
        rows["upload 1024x768 JPEG, 8 clients"] = timed(by_upload, 400, 8)
        rss["after the uploads"] = rss_mb(server.pid)
        rows["upload 1024x768 JPEG, 8 clients, again"] = timed(by_upload, 400, 8)
        rss["after the uploads again"] = rss_mb(server.pid)
        for each in opened:
            each.close()
        cold = wall([*retrieval, "query", str(query), "--index", str(index), "-k", "10", "--json"])
        remote = wall([*retrieval, "query", str(query), "--server", url, "-k", "10", "--json"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {
        "machine": machine(),
        "count": count,
        "index": Store.load(index).record.index["factory"],
        "rows": rows,
        "precision": precision,
        "forward_img_per_s": forward,
        "server_rss_mb": rss,
        "cold_query_s": cold,
        "query_server_s": remote,
    }
    RESULTS.mkdir(exist_ok=True)
    name = "serve-int8" if precision == "int8" else "serve"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    host = result["machine"]
    lines = [
        "# Serving benchmark",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores (server and load generator share them); run {host['date']}.",
        f"{count:,} cone-family vectors, index {result['index']}; `retrieval serve` on 127.0.0.1, "
        "standard-library HTTP clients on keep-alive connections, one per thread.",
        f"The model's forward pass alone (batch 32, {'int8' if precision == 'int8' else 'bf16 where native'}) ran at "
        f"{forward:.0f} img/s in the same run: "
        "the ceiling for uploads.",
        "",
        "| load | requests | clients | p50 ms | p99 ms | per second | errors |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {r['requests']} | {r['clients']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['per_second']:.0f} | {r['errors']} |"
            for name, r in rows.items()
        ),
        "",
        "Server RSS in MB: anonymous (the heap, where a leak would show) and file-backed (the memory-mapped "
        "index, growing as queries touch its pages; shared with the page cache).",
        "",
        "| when | anonymous | file-backed |",
        "|---|---|---|",
        *(f"| {when} | {r['anon']:.0f} | {r['file']:.0f} |" for when, r in rss.items()),
        "",
        f"A new 1024x768 image, median of 5 runs: cold `retrieval query` {cold:.2f} s, `retrieval query --server` "
        f"{remote:.2f} s ({cold / remote:.1f}x).",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
