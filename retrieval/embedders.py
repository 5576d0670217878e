"""Turning batches of decoded images into feature vectors with a Keras backbone.

TensorFlow is imported only when a `KerasEmbedder` is built, so commands that never run a model (a query
by an already indexed image, `info`) start in a fraction of a second. Vectors leave here unnormalized:
the store is the one place that normalizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import UsageError, WeightsUnavailable
from .files import sha256_file


@dataclass(frozen=True)
class ModelSpec:
    """What is known of a backbone without loading TensorFlow."""

    name: str
    dim: int
    input_size: tuple[int, int]  # (width, height)
    output: str  # the layer whose activations are the feature vector
    imagenet_file: str  # the file Keras caches ImageNet weights in, under ~/.keras/models


SPECS = {
    "resnet50": ModelSpec(
        "resnet50", 2048, (224, 224), "global average pool", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "vgg16": ModelSpec("vgg16", 4096, (224, 224), "fc1", "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
}


class Embedder(Protocol):
    """Anything that maps a batch of RGB images to feature vectors. Tests plug in trivial ones."""

    spec: ModelSpec

    def identity(self) -> dict[str, Any]:
        """Everything that decides the vectors: compared between ingest and query."""
        ...

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(n, height, width, 3) uint8 -> (n, dim) float32, not normalized."""
        ...


def spec_for(model: str) -> ModelSpec:
    try:
        return SPECS[model]
    except KeyError:
        raise UsageError(f"unknown model {model!r}; choose one of {', '.join(SPECS)}") from None


def keras_cache_file(spec: ModelSpec) -> Path:
    """Where Keras looks for (and downloads) the ImageNet weights of `spec`."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return home / "models" / spec.imagenet_file


class KerasEmbedder:
    """ResNet50 (global average pool, 2048-d) or VGG16 (fc1, 4096-d), run on whole batches.

    `weights` is "imagenet" (Keras' download and cache), "none" (random, from `seed`, identical across
    runs) or the path of a weights file for the same architecture.
    """

    def __init__(self, model: str, weights: str = "imagenet", seed: int = 0) -> None:
        self.spec = spec_for(model)
        self._weights = weights
        self._seed = seed
        tf, keras = _import_tensorflow()
        self._versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
        net = self._build(keras)
        width, height = self.spec.input_size
        # One traced graph for every batch size: no per-call Python overhead, no retracing.
        self._forward = tf.function(
            lambda x: net(x, training=False),
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
        )
        applications = {"resnet50": keras.applications.resnet50, "vgg16": keras.applications.vgg16}
        self._preprocess = applications[self.spec.name].preprocess_input
        self._weights_identity = self._identify_weights()

    def identity(self) -> dict[str, Any]:
        return {
            "model": self.spec.name,
            "dim": self.spec.dim,
            "output": self.spec.output,
            "input_size": list(self.spec.input_size),
            "model_preprocessing": "keras preprocess_input (caffe: BGR, ImageNet mean subtracted)",
            "weights": self._weights_identity,
        }

    @property
    def versions(self) -> dict[str, str]:
        return dict(self._versions)

    def embed(self, images: np.ndarray) -> np.ndarray:
        # preprocess_input may work in place: give it its own float copy, never the caller's buffer.
        batch = self._preprocess(images.astype(np.float32))
        return np.array(self._forward(batch), dtype=np.float32)  # (n, dim), a writable copy

    def _build(self, keras: Any) -> Any:
        make = {"resnet50": _resnet50, "vgg16": _vgg16_fc1}[self.spec.name]
        if self._weights == "none":
            keras.utils.set_random_seed(self._seed)
            return make(keras, None)
        if self._weights == "imagenet":
            try:
                return make(keras, "imagenet")
            except Exception as e:  # noqa: BLE001 - Keras raises a bare Exception for a failed download
                raise WeightsUnavailable(self._imagenet_help(e)) from e
        path = Path(self._weights)
        if not path.is_file():
            raise WeightsUnavailable(
                f"weights file {path} does not exist; set weights to a weights file for {self.spec.name}, "
                "to `imagenet`, or to `none` for seeded random weights"
            )
        try:
            return make(keras, str(path))
        except Exception as e:  # noqa: BLE001 - h5py and Keras raise many types for a bad file
            raise WeightsUnavailable(f"cannot load weights file {path} into {self.spec.name}: {e}") from e

    def _imagenet_help(self, error: Exception) -> str:
        cache = keras_cache_file(self.spec)
        return (
            f"ImageNet weights for {self.spec.name} could not be loaded ({error}).\n"
            f"Keras downloads them once into {cache}. Without network access, either\n"
            f"  - copy that file there from a machine that has it, or\n"
            f"  - pass a local weights file: --weights /path/to/{self.spec.imagenet_file}, or\n"
            f"  - use --weights none for seeded random weights (finds near-duplicates only, not similar content)."
        )

    def _identify_weights(self) -> dict[str, Any]:
        if self._weights == "none":
            return {"source": "random", "seed": self._seed}
        if self._weights == "imagenet":
            cache = keras_cache_file(self.spec)
            return {"source": "imagenet", "file": cache.name, "sha256": sha256_file(cache)}
        path = Path(self._weights).resolve()
        return {"source": "file", "path": str(path), "sha256": sha256_file(path)}


def weights_argument(identity: dict[str, Any]) -> tuple[str, int]:
    """Recover the (weights, seed) arguments that rebuild the embedder an index recorded."""
    weights = identity["weights"]
    source = weights.get("source")
    if source == "random":
        return "none", int(weights["seed"])
    if source == "imagenet":
        return "imagenet", 0
    return str(weights["path"]), 0


def _import_tensorflow() -> tuple[Any, Any]:
    """Import TensorFlow and Keras without their C++ start-up banner on the user's terminal.

    TF_CPP_MIN_LOG_LEVEL does not reach the lines absl prints before it is initialised, so standard
    error is pointed at /dev/null for the import alone; a failed import still raises as usual.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras
            import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf, keras


def _resnet50(keras: Any, weights: str | None) -> Any:
    return keras.applications.ResNet50(
        include_top=False, pooling="avg", weights=weights, input_shape=(224, 224, 3)
    )


def _vgg16_fc1(keras: Any, weights: str | None) -> Any:
    full = keras.applications.VGG16(include_top=True, weights=weights)
    return keras.Model(full.input, full.get_layer("fc1").output)
