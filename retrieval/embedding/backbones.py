"""What a backbone is, whatever engine runs it: its spec, its weights and their fingerprint, the Keras model
that both engines start from, and the preprocessing of its input.

TensorFlow is imported only when a Keras model is built (`import_tensorflow`), so that commands which
never run a model, and OpenVINO runs with a cached conversion, never pay for it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import UsageError, WeightsUnavailable
from retrieval.io.files import sha256_file
from retrieval.io.images import PREPROCESSING

# Keras' "caffe" preprocess_input, which both backbones use: RGB -> BGR, ImageNet mean subtracted, no scaling.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


@dataclass(frozen=True)
class ModelSpec:
    """What is known of a backbone without loading TensorFlow."""

    name: str
    dim: int
    input_size: tuple[int, int]  # (width, height)
    output: str  # the layer whose activations are the feature vector, or "feature map" to be pooled
    imagenet_file: str  # the file Keras caches ImageNet weights in, under ~/.keras/models

    @property
    def pooled(self) -> bool:
        """Whether its model ends in a feature map that `Pooling` reduces to the vector."""
        return self.output == "feature map"


SPECS = {
    "resnet50": ModelSpec(
        "resnet50", 2048, (224, 224), "feature map", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "vgg16": ModelSpec("vgg16", 4096, (224, 224), "fc1", "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
}


@dataclass(frozen=True)
class Pooling:
    """How a (n, h, w, channels) feature map becomes (n, channels): the mean over positions (avg), the
    maximum (max), or the generalized mean (gem: the p-th root of the mean of p-th powers, between the two;
    p = 3 is the usual choice in instance retrieval). Done here, in numpy, for every engine and precision,
    so that one converted model serves every pooling."""

    kind: str = "avg"
    p: float = 3.0

    @property
    def output(self) -> str:
        """Its name in the index's embedding record; the average's is the one indexes always recorded."""
        return {"avg": "global average pool", "max": "global max pool"}.get(
            self.kind, f"generalized mean pool, p={self.p:g}"
        )

    @classmethod
    def from_output(cls, output: str) -> Pooling:
        """The pooling an index's recorded `output` names (`avg` for a model without a choice)."""
        if output == "global max pool":
            return cls("max")
        if output.startswith("generalized mean pool, p="):
            return cls("gem", float(output.removeprefix("generalized mean pool, p=")))
        return cls("avg")

    def __call__(self, maps: np.ndarray) -> np.ndarray:
        x = np.asarray(maps, dtype=np.float32)
        if self.kind == "max":
            return x.max(axis=(1, 2))
        if self.kind == "gem":
            # ReLU outputs are >= 0; the floor keeps the root of an all-zero channel finite
            return np.power(np.power(np.maximum(x, 1e-6), self.p).mean(axis=(1, 2)), 1.0 / self.p)
        return x.mean(axis=(1, 2))


def spec_for(model: str) -> ModelSpec:
    try:
        return SPECS[model]
    except KeyError:
        raise UsageError(f"unknown model {model!r}; choose one of {', '.join(SPECS)}") from None


AVERAGE = Pooling("avg")  # the design's global average pooling, and the default


def describe_embedding(spec: ModelSpec, weights: dict[str, Any], pooling: Pooling) -> dict[str, Any]:
    """How a picture becomes a vector with `spec`, `weights` (a `weights_fingerprint`) and `pooling`,
    decoding included: what the index records as its `embedding`, and what a query must reproduce
    exactly. Engine and precision are not in it: they change vectors only by rounding (cosine >= 0.999,
    tested)."""
    return {
        "model": spec.name,
        "dim": spec.dim,
        "output": pooling.output if spec.pooled else spec.output,
        "input_size": list(spec.input_size),
        "model_preprocessing": "caffe: RGB to BGR, ImageNet mean subtracted",
        "weights": weights,
        "preprocessing": PREPROCESSING,
    }


def embedding_of(spec: ModelSpec, weights: str, seed: int, pooling: Pooling) -> dict[str, Any]:
    """`describe_embedding` of the weights setting `weights` (imagenet, none or a file) with `seed`."""
    return describe_embedding(spec, weights_fingerprint(spec, weights, seed), pooling)


def caffe_preprocess(images: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) uint8 RGB -> float32 BGR minus the ImageNet mean, as Keras' preprocess_input does,
    without importing Keras. Always a new array: the caller's batch buffer is never touched."""
    return images[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR


def keras_cache_file(spec: ModelSpec) -> Path:
    """Where Keras looks for (and downloads) the ImageNet weights of `spec`."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return home / "models" / spec.imagenet_file


def weights_fingerprint(spec: ModelSpec, weights: str, seed: int) -> dict[str, Any]:
    """Name the weights by content, so that a query can tell whether it would embed like the index.
    ImageNet weights must already be in Keras' cache (build the model first to download them)."""
    if weights == "none":
        return {"source": "random", "seed": seed}
    if weights == "imagenet":
        cache = keras_cache_file(spec)
        return {"source": "imagenet", "file": cache.name, "sha256": sha256_file(cache)}
    path = Path(weights).resolve()
    return {"source": "file", "path": str(path), "sha256": sha256_file(path)}


def identity(embedding: dict[str, Any]) -> dict[str, Any]:
    """What makes vectors comparable: the embedding without a weights file's path, which only says where
    the file was found. A file is its SHA-256, so the same weights may lie elsewhere on another machine (a
    Ray worker, a query host) and still embed like the index."""
    weights = {k: v for k, v in embedding.get("weights", {}).items() if k != "path"}
    return {**embedding, "weights": weights}


def weights_setting(embedding: dict[str, Any]) -> tuple[str, int]:
    """The (weights, seed) settings that rebuild the embedder an index's `embedding` records."""
    weights = embedding["weights"]
    source = weights.get("source")
    if source == "random":
        return "none", int(weights["seed"])
    if source == "imagenet":
        return "imagenet", 0
    return str(weights["path"]), 0


POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}  # precision -> Keras policy


def build_keras_model(spec: ModelSpec, weights: str, seed: int, precision: str = "fp32") -> Any:
    """The Keras backbone with its weights, or WeightsUnavailable saying what to do.

    Global state is left as it was found: the mixed-precision policy (`precision` applies to the layers built
    while it is set) and Python's and numpy's random generators, which `keras.utils.set_random_seed`
    reseeds for `weights: none` and Keras draws its initializers' seeds from while the model is built.
    """
    _, keras = import_tensorflow()
    make = {"resnet50": _resnet50, "vgg16": _vgg16_fc1}[spec.name]
    if weights not in ("none", "imagenet") and not Path(weights).is_file():
        raise WeightsUnavailable(
            f"weights file {weights} does not exist; set weights to a weights file for {spec.name}, "
            "to `imagenet`, or to `none` for seeded random weights"
        )
    saved = random.getstate(), np.random.get_state()
    if weights == "none":
        keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    try:
        return make(keras, None if weights == "none" else weights)
    except Exception as e:  # Keras raises a bare Exception for a failed download, h5py others
        if weights == "imagenet":
            raise WeightsUnavailable(_imagenet_help(spec, e)) from e
        raise WeightsUnavailable(f"cannot load weights file {weights} into {spec.name}: {e}") from e
    finally:
        keras.mixed_precision.set_global_policy("float32")
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def _imagenet_help(spec: ModelSpec, error: Exception) -> str:
    cache = keras_cache_file(spec)
    return (
        f"ImageNet weights for {spec.name} could not be loaded ({error}).\n"
        f"Keras downloads them once into {cache}. Without network access, either\n"
        f"  - copy that file there from a machine that has it, or\n"
        f"  - pass a local weights file: --weights /path/to/{spec.imagenet_file}, or\n"
        f"  - use --weights none for seeded random weights (finds near-duplicates only, not similar content)."
    )


@lru_cache(maxsize=1)
def import_tensorflow() -> tuple[Any, Any]:
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
    """The last block's (7, 7, 2048) feature map: pooled by `Pooling`, outside the model."""
    return keras.applications.ResNet50(include_top=False, pooling=None, weights=weights, input_shape=(224, 224, 3))


def _vgg16_fc1(keras: Any, weights: str | None) -> Any:
    full = keras.applications.VGG16(include_top=True, weights=weights)
    return keras.Model(full.input, full.get_layer("fc1").output)
