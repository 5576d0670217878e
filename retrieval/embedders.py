"""Turning batches of decoded images into feature vectors with a Keras backbone, on one of two engines.

- `tensorflow`: the Keras model itself, traced once into a `tf.function`.
- `openvino`: the same Keras model and weights converted once to OpenVINO IR (cached on disk), which runs
  bf16 on CPUs that have it at about twice TensorFlow's fp32 rate (see benchmarks/).

The engine and precision change the vectors only by rounding (cosine >= 0.999 to fp32, tested), so they
are not part of the embedding identity that ingest and query must share; model, weights and
preprocessing are. TensorFlow is imported only when a Keras model is built, so commands that never run a
model (a query by an indexed image, `info`), and OpenVINO runs with a cached conversion, never pay for it.
Vectors leave here unnormalized: the store is the one place that normalizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config import Settings
from .errors import UsageError, WeightsUnavailable
from .files import sha256_file

# Keras' "caffe" preprocess_input, which both backbones use: RGB -> BGR, ImageNet mean subtracted, no scaling.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


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

    def runtime(self) -> dict[str, str]:
        """Engine, precision and versions: recorded in the index, not compared."""
        ...

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(n, height, width, 3) uint8 -> (n, dim) float32, not normalized."""
        ...


def create_embedder(settings: Settings) -> Embedder:
    """The embedder `settings` ask for: model, weights, seed, engine and precision."""
    spec = spec_for(settings.model)
    if settings.engine == "openvino":
        from .openvino_engine import OpenVinoEmbedder

        return OpenVinoEmbedder(spec, settings.weights, settings.seed, settings.precision)
    return KerasEmbedder(spec, settings.weights, settings.seed, settings.precision)


def identity_for(settings: Settings) -> dict[str, Any]:
    """The identity of the embedder `settings` ask for, without building it when the weights are at hand
    (ImageNet weights not yet in Keras' cache are downloaded first, or WeightsUnavailable says why not)."""
    spec = spec_for(settings.model)
    if settings.weights == "imagenet" and not keras_cache_file(spec).is_file():
        build_keras_model(spec, "imagenet", settings.seed)
    elif settings.weights not in ("imagenet", "none") and not Path(settings.weights).is_file():
        build_keras_model(spec, settings.weights, settings.seed)  # raises WeightsUnavailable, saying what to do
    return identity(spec, weights_identity(spec, settings.weights, settings.seed))


def spec_for(model: str) -> ModelSpec:
    try:
        return SPECS[model]
    except KeyError:
        raise UsageError(f"unknown model {model!r}; choose one of {', '.join(SPECS)}") from None


def identity(spec: ModelSpec, weights: dict[str, Any]) -> dict[str, Any]:
    """The embedding identity shared by every engine running `spec` with `weights`."""
    return {
        "model": spec.name,
        "dim": spec.dim,
        "output": spec.output,
        "input_size": list(spec.input_size),
        "model_preprocessing": "caffe: RGB to BGR, ImageNet mean subtracted",
        "weights": weights,
    }


def caffe_preprocess(images: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) uint8 RGB -> float32 BGR minus the ImageNet mean, as Keras' preprocess_input does,
    without importing Keras. Always a new array: the caller's batch buffer is never touched."""
    return images[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR


def keras_cache_file(spec: ModelSpec) -> Path:
    """Where Keras looks for (and downloads) the ImageNet weights of `spec`."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return home / "models" / spec.imagenet_file


def weights_identity(spec: ModelSpec, weights: str, seed: int) -> dict[str, Any]:
    """Name the weights by content, so that a query can tell whether it would embed like the index.
    ImageNet weights must already be in Keras' cache (build the model first to download them)."""
    if weights == "none":
        return {"source": "random", "seed": seed}
    if weights == "imagenet":
        cache = keras_cache_file(spec)
        return {"source": "imagenet", "file": cache.name, "sha256": sha256_file(cache)}
    path = Path(weights).resolve()
    return {"source": "file", "path": str(path), "sha256": sha256_file(path)}


def weights_argument(identity: dict[str, Any]) -> tuple[str, int]:
    """Recover the (weights, seed) settings that rebuild the embedder an index recorded."""
    weights = identity["weights"]
    source = weights.get("source")
    if source == "random":
        return "none", int(weights["seed"])
    if source == "imagenet":
        return "imagenet", 0
    return str(weights["path"]), 0


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, native_bf16: bool) -> str:
    if precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16 else "fp32"
    return precision


def build_keras_model(spec: ModelSpec, weights: str, seed: int, bf16: bool = False) -> Any:
    """The Keras backbone with its weights, or WeightsUnavailable saying what to do."""
    _, keras = import_tensorflow()
    make = {"resnet50": _resnet50, "vgg16": _vgg16_fc1}[spec.name]
    if weights == "none":
        keras.utils.set_random_seed(seed)
    elif weights != "imagenet" and not Path(weights).is_file():
        raise WeightsUnavailable(
            f"weights file {weights} does not exist; set weights to a weights file for {spec.name}, "
            "to `imagenet`, or to `none` for seeded random weights"
        )
    # The policy applies to the layers built while it is set, so bf16 stays local to this model.
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
    try:
        return make(keras, None if weights == "none" else weights)
    except Exception as e:  # noqa: BLE001 - Keras raises a bare Exception for a failed download, h5py others
        if weights == "imagenet":
            raise WeightsUnavailable(_imagenet_help(spec, e)) from e
        raise WeightsUnavailable(f"cannot load weights file {weights} into {spec.name}: {e}") from e
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _imagenet_help(spec: ModelSpec, error: Exception) -> str:
    cache = keras_cache_file(spec)
    return (
        f"ImageNet weights for {spec.name} could not be loaded ({error}).\n"
        f"Keras downloads them once into {cache}. Without network access, either\n"
        f"  - copy that file there from a machine that has it, or\n"
        f"  - pass a local weights file: --weights /path/to/{spec.imagenet_file}, or\n"
        f"  - use --weights none for seeded random weights (finds near-duplicates only, not similar content)."
    )


class KerasEmbedder:
    """The `tensorflow` engine: the Keras model traced once into a graph and run on whole batches.

    bf16 uses Keras' mixed_bfloat16 policy (weights kept in fp32, arithmetic in bf16).
    """

    def __init__(self, spec: ModelSpec, weights: str = "imagenet", seed: int = 0, precision: str = "fp32") -> None:
        tf, keras = import_tensorflow()
        self.spec = spec
        self._precision = resolve_precision(precision, cpu_has_bf16())
        net = build_keras_model(spec, weights, seed, bf16=self._precision == "bf16")
        self._identity = identity(spec, weights_identity(spec, weights, seed))
        self._versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
        width, height = spec.input_size
        # One traced graph for every batch size: no per-call Python overhead, no retracing.
        self._forward = tf.function(
            lambda x: tf.cast(net(x, training=False), tf.float32),
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
        )

    def identity(self) -> dict[str, Any]:
        return self._identity

    def runtime(self) -> dict[str, str]:
        return {"engine": "tensorflow", "precision": self._precision, **self._versions}

    def embed(self, images: np.ndarray) -> np.ndarray:
        return np.array(self._forward(caffe_preprocess(images)), dtype=np.float32)  # (n, dim), writable


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


def package_version(name: str) -> str:
    """An installed distribution's version without importing it ("" when absent)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def _resnet50(keras: Any, weights: str | None) -> Any:
    return keras.applications.ResNet50(
        include_top=False, pooling="avg", weights=weights, input_shape=(224, 224, 3)
    )


def _vgg16_fc1(keras: Any, weights: str | None) -> Any:
    full = keras.applications.VGG16(include_top=True, weights=weights)
    return keras.Model(full.input, full.get_layer("fc1").output)
