"""The `tensorflow` engine: the Keras backbone itself, traced once into a graph and run on whole batches."""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.embedding.backbones import (
    AVERAGE,
    ModelSpec,
    Pooling,
    build_keras_model,
    caffe_preprocess,
    embedding_of,
    import_tensorflow,
)
from retrieval.io.system import native_bf16, resolve_precision


class KerasEmbedder:
    """The `tensorflow` engine: the Keras model traced once into a graph and run on whole batches.

    bf16 uses Keras' mixed_bfloat16 policy (weights kept in fp32, arithmetic in bf16). Where TensorFlow sees
    a CUDA GPU (the `gpu` extra) it runs there, and `precision: auto` becomes fp16 (mixed_float16). A traced
    function may be called from several threads at once (TensorFlow's own guarantee), so `embed` needs no
    lock.
    """

    def __init__(
        self,
        spec: ModelSpec,
        weights: str = "imagenet",
        seed: int = 0,
        precision: str = "fp32",
        pooling: Pooling = AVERAGE,
    ) -> None:
        tf, keras = import_tensorflow()
        self.spec = spec
        gpus = tf.config.list_physical_devices("GPU")
        self._device = f"GPU ({len(gpus)})" if gpus else "CPU"
        self._pooling = pooling if spec.pooled else None
        # on a CUDA GPU (which TensorFlow then uses by itself), auto means fp16 arithmetic on its tensor cores
        self._precision = "fp16" if gpus and precision == "auto" else resolve_precision(precision, native_bf16())
        net = build_keras_model(spec, weights, seed, precision=self._precision)
        self._embedding = embedding_of(spec, weights, seed, pooling)
        self._versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
        width, height = spec.input_size
        # One traced graph for every batch size: no per-call Python overhead, no retracing.
        self._forward = tf.function(
            lambda x: tf.cast(net(x, training=False), tf.float32),
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
        )

    def embedding(self) -> dict[str, Any]:
        return self._embedding

    def runtime(self) -> dict[str, str]:
        return {"engine": "tensorflow", "precision": self._precision, "device": self._device, **self._versions}

    def embed(self, images: np.ndarray) -> np.ndarray:
        out = np.array(self._forward(caffe_preprocess(images)), dtype=np.float32)  # writable
        return self._pooling(out) if self._pooling else out  # (n, dim)
