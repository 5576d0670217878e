"""The `openvino` engine: runs a model that preparation.py converted (and for int8 quantized and gated),
without TensorFlow. Its constructor only compiles what it is given."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.embedding.backbones import ModelSpec, Pooling, caffe_preprocess


@dataclass(frozen=True)
class PreparedModel:
    """What an OpenVinoEmbedder runs (preparation.prepare makes it), and what its index records of it."""

    spec: ModelSpec
    pooling: Pooling
    embedding: dict[str, Any]  # backbones.describe_embedding
    converted: Path  # the fp32 IR converted from Keras (an int8 model is cached beside it, keyed by it)
    xml: Path  # the IR to run: `converted`, or its int8 model
    precision: str  # what it runs in: int8, bf16 or fp32
    int8: dict[str, Any] | None = None  # quantize's record: the sample, the gate, or why int8 was not used


class OpenVinoEmbedder:
    """Runs a prepared model (preparation.prepare: converted, and for int8 quantized and gated) with OpenVINO on
    the CPU, in the precision the preparation chose.

    Compiled for latency: one request uses every core, so a plain synchronous `embed` per batch keeps
    the machine busy, and it releases the GIL for the decoding threads meanwhile. The one request is
    used by one thread at a time (a lock): a server's threads share the embedder safely.
    """

    def __init__(self, prepared: PreparedModel) -> None:
        import openvino as ov

        self.spec = prepared.spec
        self._prepared = prepared
        self._pooling = prepared.pooling if prepared.spec.pooled else None
        self._version = ov.__version__
        self._lock = threading.Lock()
        self._request = compile_ir(ov.Core(), prepared.xml, prepared.spec, prepared.precision)

    @property
    def prepared(self) -> PreparedModel:
        return self._prepared

    def embedding(self) -> dict[str, Any]:
        return self._prepared.embedding

    def runtime(self) -> dict[str, Any]:
        prepared = self._prepared
        facts: dict[str, Any] = {"engine": "openvino", "precision": prepared.precision, "openvino": self._version}
        return {**facts, "int8": prepared.int8} if prepared.int8 else facts

    def embed(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            return infer(self._request, images, self._pooling)


def native_bf16(core: Any) -> bool:
    """Whether OpenVINO computes bf16 natively on this CPU (AVX-512 BF16 or AMX)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def compile_ir(core: Any, xml: Path, spec: ModelSpec, precision: str) -> Any:
    """An inference request of the IR `xml` for any batch size, in `precision` (int8, bf16 or fp32)."""
    model = core.read_model(xml)
    width, height = spec.input_size
    model.reshape([-1, height, width, 3])  # any batch size, no recompilation
    # an int8 model keeps a few layers unquantized: those run in bf16 where it is native
    floating = "bf16" if precision == "bf16" or (precision == "int8" and native_bf16(core)) else "f32"
    hints = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": floating}
    return core.compile_model(model, "CPU", hints).create_infer_request()


def infer(request: Any, images: np.ndarray, pooling: Pooling | None) -> np.ndarray:
    """(n, h, w, 3) uint8 -> (n, dim) float32 through one compiled request, pooled where the backbone's output
    is a feature map."""
    request.infer({0: caffe_preprocess(images)})
    out = request.get_output_tensor(0).data
    return pooling(out) if pooling else out.copy()  # a new array: the request reuses its buffer
