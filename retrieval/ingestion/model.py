"""The model an ingest embeds with: built only when something needs embedding (an up-to-date index costs no
model load), with what an int8 model needs prepared first (the index's own calibration, or a sample of the
listing), and the runtime it records; and, after the run, why an int8 run that was asked for did not happen."""

from __future__ import annotations

import time
from typing import Any

from retrieval.config import Settings
from retrieval.embedding import quantize
from retrieval.embedding.backbones import ModelSpec, spec_for
from retrieval.embedding.embedders import Embedder, create_embedder, embedding_for
from retrieval.index.store import Store
from retrieval.ingestion.plan import Plan
from retrieval.io.system import package_version


class LazyEmbedder:
    """The embedder, built only when something needs embedding: an up-to-date index costs no model load."""

    def __init__(self, settings: Settings, embedder: Embedder | None) -> None:
        self._settings = settings
        self._embedder = embedder
        self.load_seconds = 0.0
        self.spec: ModelSpec = embedder.spec if embedder else spec_for(settings.model)
        self.embedding = embedder.embedding() if embedder else embedding_for(settings)
        self._int8: dict[str, Any] = {}  # create_embedder's int8 arguments, from prepare_int8
        self.calibration_seconds = 0.0  # decoding the calibration sample (quantizing is in load_seconds)

    def prepare_int8(self, the_plan: Plan, previous: Store | None) -> None:
        """What an int8 embedder will need: the index's own int8 model when it has one (an update embeds like
        the run that made it), else, for precision int8, or auto on a CPU with integer dot products and a run
        of at least INT8_MIN_IMAGES images, a seeded calibration sample of the listing (see quantize.py)."""
        settings = self._settings
        # Ray's actors build their own embedders, in a float precision: no sample to take for them
        on_ray = settings.executor == "ray"
        if (
            self._embedder is not None
            or on_ray
            or settings.engine != "openvino"
            or settings.precision not in ("auto", "int8")
        ):
            return
        calibrated = previous.record.calibration if previous else None
        if calibrated:
            self._int8 = {"calibrated": calibrated}
            return
        wanted = settings.precision == "int8" or (
            quantize.int8_capable() and len(the_plan.to_embed) >= quantize.INT8_MIN_IMAGES
        )
        if wanted and the_plan.to_embed:
            started = time.perf_counter()
            paths = [e.path for e in the_plan.entries]
            sample = quantize.calibration_sample(
                the_plan.root, paths, self.spec.input_size, settings.max_pixels, settings.calibration_images
            )
            self._int8 = {"calibration": sample}
            self.calibration_seconds = time.perf_counter() - started

    def get(self) -> Embedder:
        if self._embedder is None:
            started = time.perf_counter()
            self._embedder = create_embedder(self._settings, **self._int8)
            self.load_seconds = time.perf_counter() - started
        return self._embedder

    def runtime(self, previous: Store | None, workers: dict[str, Any]) -> dict[str, Any]:
        """Engine and versions of this run's embedder (here, or `workers`' on Ray), or of the run that made
        the vectors if none ran."""
        here = self._embedder.runtime() if self._embedder else workers
        if not here and previous is not None:
            return previous.record.runtime
        versions = {n: v for n in ("retrieval", "pillow", "numpy", "faiss-cpu") if (v := package_version(n))}
        return {**here, **versions}


def int8_refused(settings: Settings, embedded: int, runtime: dict[str, Any]) -> str | None:
    """Why `precision: int8`, asked for, did not embed this run's images (the gate's reason, say), else None."""
    if settings.precision != "int8" or not embedded or runtime.get("precision") == "int8":
        return None
    if settings.executor == "ray":
        why = "a Ray run embeds in the float precision auto picks"
    else:
        why = (runtime.get("int8") or {}).get("fallback", f"embedded in {runtime.get('precision')}")
    return f"precision int8 was asked for and not used: {why} (`retrieval info` shows the gate's figures)"
