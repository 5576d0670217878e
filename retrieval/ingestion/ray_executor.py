"""The embed step on a Ray cluster: `executor: ray`. Only this step changes; planning, checkpoints and the
commit stay on the driver, exactly as in a local ingest.

The planned files become a Ray Dataset of (index, path) rows; an actor pool of the same embedder the local
pipeline uses (same engine, precision and pooling; one GPU per actor where the cluster has GPUs) decodes and
embeds them in `map_batches`, and the vectors stream back to the driver in order. Paths stay relative to
the ingested root, which every node must reach at the same place: shared storage, or a URI of a filesystem
pyarrow reaches (s3://...), read by each actor itself; file facts come from the driver's plan. Without an
address, a local Ray instance is started for the run and stopped after it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import Settings
from retrieval.embedding.backbones import identity
from retrieval.embedding.embedders import create_embedder
from retrieval.errors import ImageError, IndexMismatch, RetrievalError, UsageError
from retrieval.ingestion.executors import Embedded, read_image
from retrieval.io.files import Skipped
from retrieval.io.images import load_image
from retrieval.io.sources import Location, location, recorded

CPUS_PER_ACTOR = 2  # one engine uses every core it is given: actors are sized to whole pairs of cores


class _EmbedBatch:
    """One actor: the embedder, built once, then each batch of rows decoded, hashed and embedded."""

    def __init__(self, settings: Settings, root: str, embedding: dict[str, Any]) -> None:
        # int8 needs the driver's calibration sample: a Ray run embeds in the float precision auto picks
        precision = "auto" if settings.precision == "int8" else settings.precision
        self._settings = replace(settings, precision=precision)
        self._root = location(root)
        self._embedder = create_embedder(self._settings)
        import ray

        self._node = ray.get_runtime_context().get_node_id()  # where Ray placed this actor, for the report
        if identity(self._embedder.embedding()) != identity(embedding):
            raise IndexMismatch(
                f"the Ray worker on {os.uname().nodename} would embed otherwise than the driver (its weights "
                f"{self._embedder.embedding()['weights']}, the driver's {embedding['weights']}); give every "
                "node the same weights file (the same SHA-256, at the path in the settings)"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels, facts = [], []  # facts: (hashes, skip reason, detail) per row, reason "" when embedded
        for rel in batch["path"]:
            try:
                image, hashes = read_image(
                    self._root, str(rel), decode=load_image, size=self._embedder.spec.input_size,
                    max_pixels=self._settings.max_pixels,
                )  # fmt: skip
            except ImageError as e:
                facts.append((("", ""), e.reason, e.detail))
                continue
            except Exception as e:  # noqa: BLE001 - one file's decoder bug must not end the run
                facts.append((("", ""), "decoder failed", f"{type(e).__name__}: {e}"))
                continue
            pixels.append(image)
            facts.append((hashes, "", ""))
        ok = np.array([not reason for _, reason, _ in facts], bool)
        vectors = np.zeros((len(facts), self._embedder.spec.dim), np.float32)
        if pixels:
            vectors[ok] = self._embedder.embed(np.stack(pixels))
        digests = np.array([h[0] for h, _, _ in facts], object)
        phashes = np.array([h[1] for h, _, _ in facts], object)
        reasons, details = (np.array(column, object) for column in list(zip(*facts))[1:])
        node = np.full(len(facts), self._node, object)
        runtime = np.full(len(facts), json.dumps(self._embedder.runtime()), object)
        return {"index": batch["index"], "path": batch["path"], "ok": ok, "digest": digests, "phash": phashes,
                "reason": reasons, "detail": details, "vector": vectors, "node": node, "runtime": runtime}  # fmt: skip


class RayExecutor:
    """The embed step over Ray (see the module docstring); `address` "" starts a local instance."""

    def __init__(self, settings: Settings, embedding: dict[str, Any], address: str = "") -> None:
        try:
            import ray  # noqa: F401 - here, so that a missing Ray is said before any work
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'retrieval[ray]'") from None
        check_address(address)
        self._settings = settings
        self._embedding = embedding  # the driver's: every actor checks that it embeds the same way
        self._address = address

    def run(self, root: Location, paths: list[str]) -> Iterator[Embedded]:
        if not paths:
            return
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(
                address=self._address or None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                runtime_env=_runtime_env(),
            )
        try:
            yield from self._stream(ray, root, paths)
        finally:
            if started_here:
                ray.shutdown()

    def _stream(self, ray: Any, root: Location, paths: list[str]) -> Iterator[Embedded]:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        per_actor, gpus, actors = actor_pool([n["Resources"] for n in ray.nodes() if n["Alive"]])
        rows = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)])
        embedded = rows.map_batches(
            _EmbedBatch,
            fn_constructor_kwargs={"settings": self._settings, "root": recorded(root), "embedding": self._embedding},
            batch_size=self._settings.batch_size,
            batch_format="numpy",
            concurrency=actors,
            num_cpus=per_actor,
            num_gpus=gpus,
        )
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            ok = batch["ok"]
            indices = [int(i) for i in batch["index"]]
            skipped = [
                (i, Skipped(str(p), str(r), str(d)))
                for i, p, r, d, good in zip(indices, batch["path"], batch["reason"], batch["detail"], ok)
                if not good
            ]
            yield Embedded(
                [i for i, good in zip(indices, ok) if good],
                [(str(d), str(h)) for d, h, good in zip(batch["digest"], batch["phash"], ok) if good],
                np.asarray(batch["vector"])[ok],
                skipped,
                str(batch["node"][0]) if len(batch["node"]) else "",
                json.loads(str(batch["runtime"][0])) if len(batch["runtime"]) else {},
            )


RAY_PROBE_TIMEOUT = 5.0  # seconds to connect to a cluster's address before Ray's own minutes of retries


def check_address(address: str) -> None:
    """Refuse an address no Ray cluster answers at, within seconds: ray.init retries a dead one for minutes.
    "" (and Ray's own "local" and "auto") start or find a local instance and are not probed."""
    if address in ("", "local", "auto"):
        return
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit():
        raise UsageError(
            f"--ray-address {address!r} is not host:port (a head node's address, e.g. 10.0.0.5:6379, or "
            "ray://10.0.0.5:10001)"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_PROBE_TIMEOUT).close()
    except OSError as e:
        raise RetrievalError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e}): is `ray start --head` running there? "
            "Leave out --ray-address to start a local Ray for the run"
        ) from None


def actor_pool(nodes: list[dict[str, float]]) -> tuple[int, int, int]:
    """(CPUs per actor, GPUs per actor, actors) for a cluster of `nodes` (each node's resources): an actor
    takes up to CPUS_PER_ACTOR cores but never more than the largest node has, and as many actors as fit
    node by node; with GPUs, one actor per GPU."""
    per_actor = max(1, min(CPUS_PER_ACTOR, max((int(n.get("CPU", 0)) for n in nodes), default=1)))
    gpus = sum(int(n.get("GPU", 0)) for n in nodes)
    if gpus:
        return per_actor, 1, gpus
    return per_actor, 0, max(1, sum(int(n.get("CPU", 0)) // per_actor for n in nodes))


def _runtime_env() -> dict[str, Any]:
    """Workers import this package from where the driver does, and find converted models where it does."""
    package = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k in ("RETRIEVAL_CACHE", "KERAS_HOME", "XDG_CACHE_HOME")}
    python_path = os.pathsep.join(filter(None, [str(package), os.environ.get("PYTHONPATH", "")]))
    return {"env_vars": {**env, "PYTHONPATH": python_path}}
