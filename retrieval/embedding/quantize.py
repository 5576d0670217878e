"""int8 inference: the converted model quantized by NNCF's post-training quantization, calibrated on a seeded
sample of the collection being ingested, and trusted only after a fidelity gate against fp32.

Quantizing takes a few hundred forward passes, so its result is cached beside the converted model, keyed
by that model (weights identity included), the calibration sample's digest and NNCF's version: the same
folder gives the same sample, the same key and the same model. The gate compares the two models on a
held-out part of the sample: the minimum cosine between their vectors, and whether each changed copy
(mirrored, half size, JPEG re-encoded) of a held-out image that fp32 finds at rank 1 among the held-out
images is still found there by int8. Plain nearest neighbours among unrelated images are not used: with
random weights they are near ties that 1e-4 of noise reorders.

The rule (`GateRule`, set in config.yaml and recorded with the figures): at least `min_held_out` held-out
images, every vector within `min_cosine` of fp32, and at most `max_lost` of the copies fp32 finds lost by
int8. A tolerance rather than none, because a copy whose two best candidates differ by less than int8's
own noise (cosine 0.9996 here) is a tie either model may break either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retrieval.errors import ImageError
from retrieval.io.changes import CHANGES, Change, resized, unchanged
from retrieval.io.durable import place_folder
from retrieval.io.images import load_image
from retrieval.io.sources import Location
from retrieval.io.system import cpu, package_version
from retrieval.vectors import normalize

CALIBRATION_IMAGES = 300  # sampled from the collection; the last HELD_OUT of them are kept for the gate
HELD_OUT = 60
INT8_MIN_IMAGES = 1000  # `precision: auto` quantizes only runs embedding at least this many images


def int8_capable() -> bool:
    """Whether this CPU has integer dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX), without which
    int8 runs no faster than bf16."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu()[1])


@dataclass(frozen=True)
class Calibration:
    """Decoded pixels of a seeded sample of the collection: `images` to calibrate on, `held_out` for the gate."""

    digest: str  # names the sample (its files, sizes and mtimes, and the seed)
    images: np.ndarray  # (n, h, w, 3) uint8
    held_out: np.ndarray  # (m, h, w, 3) uint8


def calibration_sample(
    root: Location,
    paths: list[str],
    size: tuple[int, int],
    max_pixels: int,
    count: int = CALIBRATION_IMAGES,
    seed: int = 0,
) -> Calibration | None:
    """Up to `count` images of `paths` (relative to `root`), seeded, decoded as the model sees them; None when
    fewer than 2 can be read. A fifth of them (at most HELD_OUT) is held out for the gate."""
    chosen = sorted(random.Random(seed).sample(paths, min(count, len(paths))))
    facts, pixels = [], []
    for rel in chosen:
        try:
            st = (root / rel).stat()
            pixels.append(load_image(root / rel, size, max_pixels))
        except (OSError, ImageError):
            continue
        facts.append([rel, st.st_size, st.st_mtime_ns])
    if len(pixels) < 2:
        return None
    digest = hashlib.sha256(json.dumps({"seed": seed, "files": facts}).encode()).hexdigest()[:16]
    held = max(1, min(HELD_OUT, len(pixels) // 5))
    return Calibration(digest, np.stack(pixels[:-held]), np.stack(pixels[-held:]))


@dataclass(frozen=True)
class GateRule:
    """When int8 is trusted (config: int8_min_cosine, int8_max_lost, int8_min_held_out)."""

    min_cosine: float = 0.999  # every held-out vector and copy at least this close to fp32's
    max_lost: float = 0.01  # the fraction of the copies fp32 finds at rank 1 that int8 may lose
    min_held_out: int = 20  # fewer held-out images than this (3 copies each) cannot judge: int8 is not used


DEFAULT_GATE = GateRule()


@dataclass(frozen=True)
class Gate:
    """int8 against fp32 on the held-out images, judged by `rule`: what `retrieval info` shows and the index
    records."""

    min_cosine: float
    held_out: int  # images held out of the calibration sample
    copies: int  # changed copies that fp32 finds at rank 1 among the held-out originals
    copies_kept: int  # of those, the ones int8 finds at rank 1 too
    rule: GateRule

    @property
    def allowed_lost(self) -> int:
        return int(self.rule.max_lost * self.copies)

    @property
    def passed(self) -> bool:
        return self.reason is None

    @property
    def reason(self) -> str | None:
        rule = self.rule
        if self.held_out < rule.min_held_out:
            return (
                f"the gate had {self.held_out} held-out images, fewer than the {rule.min_held_out} it needs to judge "
                "int8 (a fifth of the calibration sample is held out: ingest more images, or lower int8_min_held_out)"
            )
        if self.min_cosine < rule.min_cosine:
            return f"int8 vectors reach a cosine of only {self.min_cosine:.5f} to fp32 (minimum {rule.min_cosine})"
        if self.copies - self.copies_kept > self.allowed_lost:
            return (
                f"int8 lost {self.copies - self.copies_kept} of {self.copies} copies fp32 finds at rank 1 "
                f"(at most {self.allowed_lost} allowed: int8_max_lost {rule.max_lost})"
            )
        return None

    def record(self) -> dict[str, Any]:
        """The figures and the rule; `threshold` is the minimum cosine, under the name indexes have recorded."""
        rule = self.rule
        return {
            "min_cosine": self.min_cosine,
            "threshold": rule.min_cosine,
            "held_out": self.held_out,
            "min_held_out": rule.min_held_out,
            "copies": self.copies,
            "copies_kept": self.copies_kept,
            "max_lost": rule.max_lost,
            "passed": self.passed,
        }


Embed = Callable[[np.ndarray], np.ndarray]  # (n, h, w, 3) uint8 -> (n, dim) float32


def fidelity(fp32: Embed, int8: Embed, held_out: np.ndarray, rule: GateRule) -> Gate:
    """The gate's figures for `int8` against `fp32` on `held_out` and its changed copies."""
    copies = np.concatenate([_changed(held_out, change) for change in _CHANGES])
    models = (("fp32", fp32), ("int8", int8))
    originals = {name: normalize(_batched(embed, held_out)) for name, embed in models}
    changed = {name: normalize(_batched(embed, copies)) for name, embed in models}
    cosines = np.concatenate(
        [(originals["fp32"] * originals["int8"]).sum(1), (changed["fp32"] * changed["int8"]).sum(1)]
    )
    truth = np.tile(np.arange(len(held_out)), len(_CHANGES))
    found = {name: np.argmax(changed[name] @ originals[name].T, axis=1) == truth for name in originals}
    kept = found["fp32"] & found["int8"]
    return Gate(round(float(cosines.min()), 6), len(held_out), int(found["fp32"].sum()), int(kept.sum()), rule)


def _batched(embed: Embed, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """In batches of `batch`, as an ingest embeds: one pass over hundreds of images would need gigabytes."""
    return np.concatenate([embed(images[i : i + batch]) for i in range(0, len(images), batch)])


# the gate's copies: mirrored, halved and re-encoded, milder than eval's (bilinear, quality 50), as measured
_CHANGES = (
    CHANGES["flip"],
    Change(partial(resized, resample=Image.Resampling.BILINEAR)),
    Change(unchanged, "JPEG", 50),
)


def _changed(pixels: np.ndarray, change: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """Each image changed, then brought back to the model's input size as decoding would."""
    height, width = pixels.shape[1:3]
    out = [change(Image.fromarray(p)).convert("RGB").resize((width, height), Image.Resampling.BILINEAR) for p in pixels]
    return np.stack([np.asarray(im) for im in out])


def quantized(model_xml: Path, calibration: Calibration, preprocess: Callable[[np.ndarray], np.ndarray]) -> Path:
    """The int8 IR of `model_xml` calibrated on `calibration`, from the cache or quantized (and cached) now."""
    target = cached(model_xml, calibration.digest)
    if (target / "model.xml").is_file():
        return target / "model.xml"
    import nncf
    import openvino as ov

    model = ov.Core().read_model(model_xml)
    height, width = calibration.images.shape[1:3]
    model.reshape([-1, height, width, 3])
    batches = [preprocess(calibration.images[i : i + 1]) for i in range(len(calibration.images))]
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # NNCF draws progress bars
        nncf.set_log_level(40)  # errors only
        int8 = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    staging = target.parent / f".tmp-{target.name}-{os.getpid()}"
    ov.save_model(int8, staging / "model.xml", compress_to_fp16=False)
    place_folder(staging, target)
    return target / "model.xml"


def cached(model_xml: Path, digest: str) -> Path:
    """Where the int8 model of `model_xml` calibrated on the sample `digest` is (or would be) cached."""
    key = hashlib.sha256(f"{model_xml.parent.name}/{digest}/nncf-{package_version('nncf')}".encode()).hexdigest()[:16]
    return model_xml.parent.parent / f"{model_xml.parent.name}-int8-{key}"
