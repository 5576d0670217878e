"""Preparing what the OpenVINO engine runs, in one step: the Keras backbone converted to OpenVINO IR (cached),
and for int8 the IR quantized for the collection (cached) and trusted only once it passes its gate against
fp32 (quantize.py). `prepare` returns a PreparedModel; OpenVinoEmbedder only compiles and runs it.

Conversion (Keras -> SavedModel -> IR) takes TensorFlow and several seconds, so its result is cached,
keyed by model, weights content and OpenVINO version, under $RETRIEVAL_CACHE (default
~/.cache/retrieval/openvino). Later runs read the IR directly and never import TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from retrieval.embedding.backbones import (
    AVERAGE,
    ModelSpec,
    Pooling,
    build_keras_model,
    caffe_preprocess,
    describe_embedding,
    keras_cache_file,
    weights_fingerprint,
)
from retrieval.embedding.openvino_engine import PreparedModel, compile_ir, infer, native_bf16
from retrieval.embedding.quantize import DEFAULT_GATE, Calibration, GateRule, cached, fidelity, int8_capable, quantized
from retrieval.io.durable import place_folder
from retrieval.io.system import package_version, resolve_precision


def prepare(
    spec: ModelSpec,
    weights: str = "imagenet",
    seed: int = 0,
    precision: str = "auto",
    pooling: Pooling = AVERAGE,
    *,
    calibration: Calibration | None = None,
    calibrated: str | None = None,
    gate: GateRule = DEFAULT_GATE,
) -> PreparedModel:
    """The model `precision` asks for: int8 where it was calibrated and passed its gate, else bf16 where the
    CPU has it natively, else fp32 (auto; see quantize.py).

    int8 needs a model quantized for the collection: `calibration` (an ingest's sample) quantizes one, or
    takes it from the cache, and gates it; `calibrated` (the sample digest an int8 index records) only looks
    it up in the cache, and runs in fp32 when it is not there. An int8 index's queries use its int8 model on
    any CPU: the same vectors as the index, if not the speed."""
    import openvino as ov

    if weights == "imagenet" and not keras_cache_file(spec).is_file():
        build_keras_model(spec, weights, seed)  # Keras downloads into its cache, or says what to do
    fingerprint = weights_fingerprint(spec, weights, seed)
    converted = _converted(spec, weights, seed, fingerprint)
    core = ov.Core()
    floating = resolve_precision("auto" if precision == "int8" else precision, native_bf16(core))
    model = PreparedModel(spec, pooling, describe_embedding(spec, fingerprint, pooling), converted, converted, floating)
    if precision == "int8" or (precision == "auto" and (calibrated or (calibration and int8_capable()))):
        return _int8(core, model, calibration, calibrated, gate)
    return model


def _int8(
    core: Any, model: PreparedModel, calibration: Calibration | None, calibrated: str | None, rule: GateRule
) -> PreparedModel:
    """`model` switched to its int8 IR if there is one for this collection and it passes the gate; otherwise
    kept in its float precision, with why recorded."""
    if calibration is not None:
        candidate = quantized(model.converted, calibration, caffe_preprocess)
        pooling = model.pooling if model.spec.pooled else None
        run = {
            name: partial(infer, compile_ir(core, xml, model.spec, precision), pooling=pooling)
            for name, xml, precision in (("fp32", model.converted, "fp32"), ("int8", candidate, "int8"))
        }
        gate = fidelity(run["fp32"], run["int8"], calibration.held_out, rule)
        record = {"calibration": calibration.digest, "gate": gate.record()}
        if gate.passed:
            return replace(model, xml=candidate, precision="int8", int8=record)
        return replace(model, int8={**record, "fallback": f"{gate.reason}; embedding in {model.precision} instead"})
    if calibrated is not None:
        path = cached(model.converted, calibrated) / "model.xml"
        if path.is_file():
            return replace(model, xml=path, precision="int8", int8={"calibration": calibrated})
        fallback = "the index's int8 model is not cached here; embedding in fp32"
        return replace(model, precision="fp32", int8={"calibration": calibrated, "fallback": fallback})
    fallback = f"int8 needs a calibration sample (ingest takes one); embedding in {model.precision}"
    return replace(model, int8={"fallback": fallback})


def cache_dir() -> Path:
    """Where converted models are kept: $RETRIEVAL_CACHE, else $XDG_CACHE_HOME/retrieval, else ~/.cache."""
    if "RETRIEVAL_CACHE" in os.environ:
        return Path(os.environ["RETRIEVAL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "retrieval"


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
            place_folder(staging, target)
    return target / "model.xml"
