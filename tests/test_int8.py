"""int8 inference: NNCF-quantized OpenVINO model calibrated on the collection, its fidelity gate against fp32,
its cache, `precision: auto`'s choice per CPU, and int8 indexes answering queries (with the int8 model, and
in fp32 where it is not cached)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval.analysis.synthetic import near_duplicates, photo, write_photos
from retrieval.config import Settings
from retrieval.embedding import quantize
from retrieval.embedding.backbones import spec_for
from retrieval.embedding.openvino_engine import OpenVinoEmbedder
from retrieval.embedding.preparation import prepare
from retrieval.embedding.quantize import Calibration, Gate, GateRule, cached, calibration_sample, int8_capable
from retrieval.index.manifest import Entry
from retrieval.index.store import Store
from retrieval.ingestion.job import ingest
from retrieval.ingestion.model import LazyEmbedder
from retrieval.ingestion.plan import Plan
from retrieval.search.searcher import Searcher

from .test_embedders import cosines

RESNET = spec_for("resnet50")
PHOTOS = 30
# The gate judges on the 6 images held out of 30 (a fifth): below the default minimum of 20, which a
# test of the gate's own refusal shows; the others state the smaller sample they trust.
SMALL_SAMPLE = GateRule(min_held_out=PHOTOS // 5)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("int8-photos")
    write_photos(folder, PHOTOS, seed=900)
    return folder


@pytest.fixture(scope="module")
def calibration(collection) -> Calibration:
    paths = sorted(p.name for p in collection.iterdir())
    sample = calibration_sample(collection, paths, RESNET.input_size, 10**8, count=PHOTOS)
    assert sample is not None
    return sample


@pytest.fixture(scope="module")
def int8(calibration) -> OpenVinoEmbedder:
    return OpenVinoEmbedder(
        prepare(RESNET, "none", seed=0, precision="int8", calibration=calibration, gate=SMALL_SAMPLE)
    )


def test_int8_vectors_match_fp32_and_the_gate_records_it(int8, calibration):
    runtime = int8.runtime()
    assert runtime["precision"] == "int8", runtime
    gate = runtime["int8"]["gate"]
    assert gate["passed"] and gate["min_cosine"] >= 0.999 and gate["copies"] == gate["copies_kept"] > 0
    assert runtime["int8"]["calibration"] == calibration.digest
    fresh = np.stack([np.asarray(photo(seed, (224, 224))) for seed in range(950, 958)])  # not in the sample
    fp32 = OpenVinoEmbedder(prepare(RESNET, "none", seed=0, precision="fp32"))
    assert cosines(int8.embed(fresh), fp32.embed(fresh)).min() >= 0.999


def test_the_sample_is_seeded_and_holds_images_out(collection, calibration):
    paths = sorted(p.name for p in collection.iterdir())
    again = calibration_sample(collection, paths, RESNET.input_size, 10**8, count=PHOTOS)
    other = calibration_sample(collection, paths, RESNET.input_size, 10**8, count=PHOTOS, seed=1)
    assert again.digest == calibration.digest and np.array_equal(again.images, calibration.images)
    assert other.digest != calibration.digest
    assert len(calibration.images) + len(calibration.held_out) == PHOTOS and len(calibration.held_out) == PHOTOS // 5


def test_the_gate_falls_back_when_forced_to_fail(int8, calibration):
    rule = GateRule(min_cosine=1.0, min_held_out=PHOTOS // 5)
    strict = OpenVinoEmbedder(prepare(RESNET, "none", seed=0, precision="int8", calibration=calibration, gate=rule))
    runtime = strict.runtime()
    assert runtime["precision"] in ("bf16", "fp32")
    assert runtime["int8"]["gate"]["passed"] is False and "cosine" in runtime["int8"]["fallback"]


def test_the_default_gate_refuses_to_judge_on_too_few_held_out_images(int8, calibration):
    refused = OpenVinoEmbedder(prepare(RESNET, "none", seed=0, precision="int8", calibration=calibration)).runtime()
    assert refused["precision"] in ("bf16", "fp32")
    gate = refused["int8"]["gate"]
    assert (gate["held_out"], gate["min_held_out"], gate["passed"]) == (6, 20, False)
    assert "6 held-out images, fewer than the 20" in refused["int8"]["fallback"]


@pytest.mark.parametrize(("kept", "passed"), [(164, True), (163, True), (162, False)])
def test_the_gate_tolerates_losing_a_stated_fraction_of_the_copies(kept, passed):
    """The case that refused int8 before: 1 of 164 copies lost (1 allowed at 1 %: floor(1.64)), cosine 0.99964."""
    gate = Gate(min_cosine=0.99964, held_out=60, copies=164, copies_kept=kept, rule=GateRule())
    assert gate.passed is passed and gate.allowed_lost == 1
    assert (
        passed
        or gate.reason == "int8 lost 2 of 164 copies fp32 finds at rank 1 (at most 1 allowed: int8_max_lost 0.01)"
    )
    assert gate.record()["passed"] is passed and gate.record()["max_lost"] == 0.01


def test_an_ingest_that_asked_for_int8_and_did_not_get_it_says_so(tmp_path, collection, int8):
    """The calibration sample is the fixture's (same files, same seed): its quantized model is cached."""
    from typer.testing import CliRunner

    from retrieval.cli import app

    args = ["ingest", str(collection), "--index", str(tmp_path / "i"), "--weights", "none", "--precision", "int8"]
    result = CliRunner().invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "warning: precision int8 was asked for and not used: the gate had 6 held-out images" in result.output
    assert Store.load(tmp_path / "i").record.runtime["precision"] in ("bf16", "fp32")


def test_the_quantized_model_is_cached_and_keyed_by_model_and_sample(int8, calibration, monkeypatch):
    model = int8.prepared.converted  # the converted fp32 IR this embedder quantized
    target = cached(model, calibration.digest)
    assert (target / "model.xml").is_file()
    import nncf

    def refuse(*_, **__):
        raise AssertionError("quantized again despite the cache")

    monkeypatch.setattr(nncf, "quantize", refuse)
    assert quantize.quantized(model, calibration, lambda x: x) == target / "model.xml"
    assert cached(model, "another-sample") != target
    other_weights = model.parent.with_name(model.parent.name + "0") / "model.xml"
    assert cached(other_weights, calibration.digest) != target  # other weights: another IR folder, another key


@pytest.mark.parametrize(
    ("flags", "capable"),
    [({"avx512_vnni", "avx512f"}, True), ({"amx_int8", "amx_tile"}, True), ({"avx_vnni"}, True), ({"avx2"}, False)],
)
def test_auto_quantizes_only_big_runs_on_cpus_with_integer_dot_products(monkeypatch, flags, capable):
    monkeypatch.setattr(quantize, "cpu", lambda: ("probe", frozenset(flags)))
    assert int8_capable() is capable
    asked = []
    monkeypatch.setattr(quantize, "calibration_sample", lambda *args, **kw: asked.append(args) or None)
    for images, expected in ((quantize.INT8_MIN_IMAGES, capable), (quantize.INT8_MIN_IMAGES - 1, False)):
        asked.clear()
        entries = [Entry(f"{i}.jpg", 1, 1) for i in range(images)]
        the_plan = Plan(Path("/nowhere"), entries, to_embed=list(range(images)))
        LazyEmbedder(Settings(weights="none"), None).prepare_int8(the_plan, None)
        assert bool(asked) is expected, (flags, images)
    asked.clear()  # precision int8 asks for a sample whatever the CPU and the size
    LazyEmbedder(Settings(weights="none", precision="int8"), None).prepare_int8(
        Plan(Path("/nowhere"), [Entry("a.jpg", 1, 1)], to_embed=[0]), None
    )
    assert asked


def test_an_int8_index_finds_near_duplicates_with_its_int8_model_and_in_fp32(tmp_path, collection, int8):
    settings = Settings(
        index=tmp_path / "index", weights="none", precision="int8", calibration_images=PHOTOS, int8_min_held_out=6
    )
    ingest(collection, settings)
    runtime = Store.load(settings.index).record.runtime
    assert runtime["precision"] == "int8" and runtime["int8"]["gate"]["passed"]
    copies = []
    for seed in (903, 917, 925):
        for name, image in near_duplicates(photo(seed)).items():
            path = tmp_path / f"{seed}-{name}.jpg"
            image.convert("RGB").save(path, quality=95)
            copies.append((path, f"photo-{seed - 900:04d}.jpg"))
    queries = Settings(index=settings.index, weights="none")  # precision auto: the index's int8 model
    searcher = Searcher(queries)
    first = [r.hits[0].path for r in searcher.query([p for p, _ in copies], 3)]
    assert searcher.embedder().runtime()["precision"] == "int8"
    assert first == [original for _, original in copies]
    shutil.rmtree(cached(int8.prepared.converted, runtime["int8"]["calibration"]))  # as on a machine without it
    elsewhere = Searcher(queries)
    again = [r.hits[0].path for r in elsewhere.query([p for p, _ in copies], 3)]
    assert elsewhere.embedder().runtime()["precision"] == "fp32" and again == first
