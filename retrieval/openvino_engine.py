"""The `openvino` engine: the Keras backbone converted once to OpenVINO IR, then run without TensorFlow.

Conversion (Keras -> SavedModel -> IR) takes TensorFlow and several seconds, so its result is cached,
keyed by model, weights content and OpenVINO version, under $RETRIEVAL_CACHE (default
~/.cache/retrieval/openvino). Later runs read the IR directly and never import TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import (
    AVERAGE,
    ModelSpec,
    Pooling,
    build_keras_model,
    caffe_preprocess,
    describe_embedding,
    keras_cache_file,
    weights_fingerprint,
)
from .system import package_version, resolve_precision


def cache_dir() -> Path:
    """Where converted models are kept: $RETRIEVAL_CACHE, else $XDG_CACHE_HOME/retrieval, else ~/.cache."""
    if "RETRIEVAL_CACHE" in os.environ:
        return Path(os.environ["RETRIEVAL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "retrieval"


class OpenVinoEmbedder:
    """Runs the backbone with OpenVINO on the CPU, in bf16 where the CPU has it natively (precision auto).

    Compiled for latency: one request uses every core, so a plain synchronous `embed` per batch keeps
    the machine busy, and it releases the GIL for the decoding threads meanwhile. The one request is
    used by one thread at a time (a lock): a server's threads share the embedder safely.
    """

    def __init__(
        self,
        spec: ModelSpec,
        weights: str = "imagenet",
        seed: int = 0,
        precision: str = "auto",
        pooling: Pooling = AVERAGE,
    ) -> None:
        import openvino as ov

        self.spec = spec
        self._pooling = pooling if spec.pooled else None
        if weights == "imagenet" and not keras_cache_file(spec).is_file():
            build_keras_model(spec, weights, seed)  # Keras downloads into its cache, or says what to do
        fingerprint = weights_fingerprint(spec, weights, seed)
        self._embedding = describe_embedding(spec, fingerprint, pooling)
        core = ov.Core()
        native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self._precision = resolve_precision(precision, native_bf16)
        model = core.read_model(_converted(spec, weights, seed, fingerprint))
        width, height = spec.input_size
        model.reshape([-1, height, width, 3])  # any batch size, no recompilation
        hints = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if self._precision == "bf16" else "f32",
        }
        self._request = core.compile_model(model, "CPU", hints).create_infer_request()
        self._lock = threading.Lock()
        self._version = ov.__version__

    def embedding(self) -> dict[str, Any]:
        return self._embedding

    def runtime(self) -> dict[str, str]:
        return {"engine": "openvino", "precision": self._precision, "openvino": self._version}

    def embed(self, images: np.ndarray) -> np.ndarray:
        pixels = caffe_preprocess(images)
        with self._lock:
            self._request.infer({0: pixels})
            out = self._request.get_output_tensor(0).data
            # pooled into a new array, or copied: the request reuses its buffer
            return self._pooling(out) if self._pooling else out.copy()


def _converted(spec: ModelSpec, weights: str, seed: int, fingerprint: dict[str, Any]) -> Path:
    """The cached IR for these weights, converting (and caching) it first if needed."""
    import openvino as ov

    # the IR ends where spec.output says (a feature map for ResNet50, pooled outside it), so one IR serves
    # every pooling; naming the output keeps IRs that ended elsewhere (the pooled vector) from being reused
    key: dict[str, Any] = {
        "model": spec.name,
        "output": spec.output,
        "weights": fingerprint,
        "openvino": ov.__version__,
    }
    if fingerprint["source"] == "random":  # random initial values depend on the release that drew them
        key["drawn_by"] = [package_version(n) for n in ("keras", "tensorflow", "tensorflow-cpu")]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    target = cache_dir() / "openvino" / f"{spec.name}-{digest}"
    if not (target / "model.xml").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp:
            net = build_keras_model(spec, weights, seed)
            net.export(f"{tmp}/savedmodel", format="tf_saved_model", verbose=False)
            staging = Path(tmp) / "ir"
            # fp32 weights on disk: bf16 or not is decided at compile time, per machine
            ov.save_model(ov.convert_model(f"{tmp}/savedmodel"), staging / "model.xml", compress_to_fp16=False)
            try:
                os.rename(staging, target)  # atomic: a reader never sees half an IR
            except OSError:
                if not (target / "model.xml").is_file():  # not a concurrent conversion that won the race
                    raise
    return target / "model.xml"
