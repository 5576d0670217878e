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
from functools import partial
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
from .quantize import DEFAULT_GATE, Calibration, GateRule, cached, fidelity, int8_capable, quantized
from .system import package_version, resolve_precision


def cache_dir() -> Path:
    """Where converted models are kept: $RETRIEVAL_CACHE, else $XDG_CACHE_HOME/retrieval, else ~/.cache."""
    if "RETRIEVAL_CACHE" in os.environ:
        return Path(os.environ["RETRIEVAL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "retrieval"


class OpenVinoEmbedder:
    """Runs the backbone with OpenVINO on the CPU: int8 where it was calibrated and passed its gate, else bf16
    where the CPU has it natively, else fp32 (precision auto; see quantize.py).

    Compiled for latency: one request uses every core, so a plain synchronous `embed` per batch keeps
    the machine busy, and it releases the GIL for the decoding threads meanwhile. The one request is
    used by one thread at a time (a lock): a server's threads share the embedder safely.

    int8 needs a model quantized for the collection: `calibration` (an ingest's sample) quantizes one, or
    takes it from the cache, and gates it; `calibrated` (the sample digest an int8 index records) only looks
    it up in the cache, and embeds in fp32 when it is not there.
    """

    def __init__(
        self,
        spec: ModelSpec,
        weights: str = "imagenet",
        seed: int = 0,
        precision: str = "auto",
        pooling: Pooling = AVERAGE,
        *,
        calibration: Calibration | None = None,
        calibrated: str | None = None,
        gate: GateRule = DEFAULT_GATE,
    ) -> None:
        import openvino as ov

        self.spec = spec
        self._pooling = pooling if spec.pooled else None
        if weights == "imagenet" and not keras_cache_file(spec).is_file():
            build_keras_model(spec, weights, seed)  # Keras downloads into its cache, or says what to do
        fingerprint = weights_fingerprint(spec, weights, seed)
        self._embedding = describe_embedding(spec, fingerprint, pooling)
        self._core = ov.Core()
        self._native_bf16 = "BF16" in self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self._version = ov.__version__
        self._lock = threading.Lock()
        self._model = _converted(spec, weights, seed, fingerprint)
        self._precision = resolve_precision("auto" if precision == "int8" else precision, self._native_bf16)
        self._int8: dict[str, Any] | None = None
        self._request = self._compile(self._model, self._precision)
        # an int8 index's queries use its int8 model on any CPU: the same vectors as the index, if not the speed
        if precision == "int8" or (precision == "auto" and (calibrated or (calibration and int8_capable()))):
            self._try_int8(calibration, calibrated, gate)

    def _compile(self, xml: Path, precision: str) -> Any:
        model = self._core.read_model(xml)
        width, height = self.spec.input_size
        model.reshape([-1, height, width, 3])  # any batch size, no recompilation
        # an int8 model keeps a few layers unquantized: those run in bf16 where it is native
        floating = "bf16" if precision == "bf16" or (precision == "int8" and self._native_bf16) else "f32"
        hints = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": floating}
        return self._core.compile_model(model, "CPU", hints).create_infer_request()

    def _try_int8(self, calibration: Calibration | None, calibrated: str | None, rule: GateRule) -> None:
        """Switch to the int8 model if there is one for this collection and it passes the gate; otherwise
        keep the float precision and record why."""
        if calibration is not None:
            candidate = self._compile(quantized(self._model, calibration, caffe_preprocess), "int8")
            reference = self._compile(self._model, "fp32")
            gate = fidelity(partial(self._run, reference), partial(self._run, candidate), calibration.held_out, rule)
            self._int8 = {"calibration": calibration.digest, "gate": gate.record()}
            if gate.passed:
                self._request, self._precision = candidate, "int8"
            else:
                self._int8["fallback"] = f"{gate.reason}; embedding in {self._precision} instead"
        elif calibrated is not None:
            self._int8 = {"calibration": calibrated}
            path = cached(self._model, calibrated) / "model.xml"
            if path.is_file():
                self._request, self._precision = self._compile(path, "int8"), "int8"
            else:
                self._request, self._precision = self._compile(self._model, "fp32"), "fp32"
                self._int8["fallback"] = "the index's int8 model is not cached here; embedding in fp32"
        else:
            self._int8 = {
                "fallback": f"int8 needs a calibration sample (ingest takes one); embedding in {self._precision}"
            }

    def embedding(self) -> dict[str, Any]:
        return self._embedding

    def runtime(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"engine": "openvino", "precision": self._precision, "openvino": self._version}
        return {**facts, "int8": self._int8} if self._int8 else facts

    def embed(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._run(self._request, images)

    def _run(self, request: Any, images: np.ndarray) -> np.ndarray:
        request.infer({0: caffe_preprocess(images)})
        out = request.get_output_tensor(0).data
        return self._pooling(out) if self._pooling else out.copy()  # a new array: the request reuses its buffer


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
