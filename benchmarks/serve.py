"""Load on a real `retrieval serve`, on loopback, bounded in count: id queries and uploads at 1 and 8 clients,
the server's memory before and after, and `retrieval query --server` beside a cold `retrieval query`.

    .venv/bin/python benchmarks/serve.py [--count 100000]      # about 3 minutes on 2 cores

The index holds `count` seeded synthetic vectors of the cone family (shaped like the model's), recorded as
made by ResNet50 with random weights so that uploads are embedded by the real model. The load generator
runs on the same 2 cores as the server: the numbers include that contention. Writes
benchmarks/results/serve.json and serve.md.
"""

from __future__ import annotations

import argparse
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

import httpx
import numpy as np

from retrieval import Settings, Store
from retrieval.ann import IndexChoice
from retrieval.embedders import embedding_for
from retrieval.store import Entry
from retrieval.synthetic import feature_vectors, photo
from retrieval.system import machine

DATA = Path(__file__).parent / ".data" / "serve"
RESULTS = Path(__file__).parent / "results"


def build_index(count: int) -> Path:
    """The index, built once and reused by later runs."""
    index = DATA / f"index-{count}"
    if not (index / "CURRENT").exists():
        vectors, _ = feature_vectors("cone", count, seed=11)
        store = Store.create(
            dim=2048, metric="cosine", embedding=embedding_for(Settings(weights="none")), root=DATA, runtime={},
            kind=IndexChoice("auto"),
        )  # fmt: skip
        store.add(vectors, [Entry(f"photos/{i:07d}.jpg", 0, 0) for i in range(count)])
        store.save(index)
    return index


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


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
    count = parser.parse_args().count
    index = build_index(count)
    query = DATA / "query.jpg"
    photo(3, (1024, 768)).save(query, quality=90)
    upload = query.read_bytes()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    retrieval = [sys.executable, "-m", "retrieval"]
    server = subprocess.Popen(
        [*retrieval, "serve", "--index", str(index), "--port", str(port)], stderr=subprocess.DEVNULL
    )
    try:
        with httpx.Client(base_url=url, timeout=60) as warmup:
            for _ in range(300):
                try:
                    if warmup.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            warmup.post("/search", files={"files": ("q.jpg", upload)})  # builds the model once
        rss_before = rss_mb(server.pid)
        rng = random.Random(0)
        local, opened = threading.local(), []

        def client() -> httpx.Client:
            """This thread's keep-alive client."""
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=url, timeout=60)
                opened.append(local.client)
            return local.client

        def by_id() -> bool:
            return client().get("/search", params={"id": rng.randrange(count), "k": 10}).status_code == 200

        def by_upload() -> bool:
            return client().post("/search", files={"files": ("q.jpg", upload)}, data={"k": "10"}).status_code == 200

        rows = {
            "id query, 1 client": timed(by_id, 2000, 1),
            "id query, 8 clients": timed(by_id, 2000, 8),
            "upload 1024x768 JPEG, 1 client": timed(by_upload, 200, 1),
            "upload 1024x768 JPEG, 8 clients": timed(by_upload, 400, 8),
        }
        rss_after = rss_mb(server.pid)
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
        "index": Store.load(index).meta["index"]["factory"],
        "rows": rows,
        "server_rss_mb": {"before": rss_before, "after": rss_after},
        "cold_query_s": cold,
        "query_server_s": remote,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    host = result["machine"]
    lines = [
        "# Serving benchmark",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores (server and load generator share them); run {host['date']}.",
        f"{count:,} cone-family vectors, index {result['index']}; `retrieval serve` on 127.0.0.1, "
        "httpx clients on keep-alive connections, one per thread.",
        "",
        "| load | requests | clients | p50 ms | p99 ms | per second | errors |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {r['requests']} | {r['clients']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['per_second']:.0f} | {r['errors']} |"
            for name, r in rows.items()
        ),
        "",
        f"Server RSS: {rss_before:.0f} MB after warm-up, {rss_after:.0f} MB after the load.",
        f"A new 1024x768 image, median of 5 runs: cold `retrieval query` {cold:.2f} s, `retrieval query --server` "
        f"{remote:.2f} s ({cold / remote:.1f}x).",
    ]
    (RESULTS / "serve.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "serve.md").read_text())


if __name__ == "__main__":
    main()
