"""Turning batches of decoded images into feature vectors: the `Embedder` protocol and the factory that
builds one from settings, on one of two engines.

- `tensorflow` (tensorflow_engine.py): the Keras model itself, traced once into a `tf.function`.
- `openvino` (preparation.py, openvino_engine.py): the same Keras model and weights converted once to OpenVINO IR
  (cached on disk), which runs bf16 on CPUs that have it at about twice TensorFlow's fp32 rate.

What a backbone is (spec, weights, preprocessing) lives in backbones.py, shared by both engines. Vectors
leave here unnormalized: the store is the one place that normalizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from retrieval.config import Settings
from retrieval.embedding.backbones import (
    ModelSpec,
    Pooling,
    build_keras_model,
    embedding_of,
    keras_cache_file,
    spec_for,
)

if TYPE_CHECKING:
    from retrieval.embedding.quantize import Calibration


class Embedder(Protocol):
    """Anything that maps a batch of RGB images to feature vectors. Tests plug in trivial ones.

    `embed` may be called from several threads: each engine serialises its own calls (one inference
    request, one traced graph), so callers need no lock of their own.
    """

    spec: ModelSpec

    def embedding(self) -> dict[str, Any]:
        """Everything that decides the vectors (backbones.describe_embedding): compared between ingest
        and query."""
        ...

    def runtime(self) -> dict[str, Any]:
        """Engine, precision and versions: recorded in the index, not compared."""
        ...

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(n, height, width, 3) uint8 -> (n, dim) float32, not normalized."""
        ...


def create_embedder(
    settings: Settings, *, calibration: Calibration | None = None, calibrated: str | None = None
) -> Embedder:
    """The embedder `settings` ask for: model, pooling, weights, seed, engine and precision. For int8 (on
    OpenVINO), `calibration` is an ingest's sample of its collection and `calibrated` the sample digest an
    int8 index records (see OpenVinoEmbedder)."""
    spec = spec_for(settings.model)
    if settings.engine == "openvino":
        from retrieval.embedding.openvino_engine import OpenVinoEmbedder
        from retrieval.embedding.preparation import prepare
        from retrieval.embedding.quantize import GateRule

        gate = GateRule(settings.int8_min_cosine, settings.int8_max_lost, settings.int8_min_held_out)
        model = prepare(
            spec,
            settings.weights,
            settings.seed,
            settings.precision,
            pooling_for(settings),
            calibration=calibration,
            calibrated=calibrated,
            gate=gate,
        )
        return OpenVinoEmbedder(model)
    from retrieval.embedding.tensorflow_engine import KerasEmbedder

    return KerasEmbedder(spec, settings.weights, settings.seed, settings.precision, pooling_for(settings))


def pooling_for(settings: Settings) -> Pooling:
    return Pooling(settings.pooling, settings.gem_p)


def embedding_for(settings: Settings) -> dict[str, Any]:
    """The `embedding()` of the embedder `settings` ask for, without building it when the weights are at
    hand (ImageNet weights not yet in Keras' cache are downloaded first, or WeightsUnavailable says why not)."""
    spec = spec_for(settings.model)
    if settings.weights == "imagenet" and not keras_cache_file(spec).is_file():
        build_keras_model(spec, "imagenet", settings.seed)
    elif settings.weights not in ("imagenet", "none") and not Path(settings.weights).is_file():
        build_keras_model(spec, settings.weights, settings.seed)  # raises WeightsUnavailable, saying what to do
    return embedding_of(spec, settings.weights, settings.seed, pooling_for(settings))
