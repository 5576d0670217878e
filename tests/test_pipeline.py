"""Ingest and query end to end with real TensorFlow (random weights) and real FAISS on generated photos."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from retrieval.analysis.synthetic import near_duplicates, photo
from retrieval.config import Settings
from retrieval.embedding.backbones import spec_for
from retrieval.embedding.openvino_engine import OpenVinoEmbedder
from retrieval.embedding.preparation import prepare
from retrieval.errors import IndexMismatch, NothingToIndex
from retrieval.index.generations import current_generation
from retrieval.index.record import META
from retrieval.index.store import Store
from retrieval.ingestion.job import ERROR_REPORT, ingest
from retrieval.io.images import load_image
from retrieval.io.system import native_bf16
from retrieval.search.collage import MAX_COLUMNS, render
from retrieval.search.searcher import query

from .conftest import PHOTOS, Counting


@pytest.fixture(scope="module")
def store(indexed) -> Store:
    return Store.load(indexed.index)


@pytest.mark.parametrize("seed", range(PHOTOS))
def test_near_duplicates_find_their_original_first(tmp_path, indexed, make_embedder, seed):
    for kind, copy in near_duplicates(photo(seed)).items():
        path = tmp_path / f"{kind}.png"
        copy.convert("RGB").save(path)
        result = query(path, indexed, k=3, make_embedder=make_embedder)
        assert result.embedded
        assert result.hits[0].path == f"photo-{seed:04d}.jpg", kind


def test_scores_and_order_equal_brute_force_numpy(tmp_path, photos, indexed, embedder, make_embedder):
    """Embed everything again outside the store, normalize with numpy, rank with numpy."""
    paths = sorted(photos.glob("*.jpg"))
    data = embedder.embed(np.stack([load_image(p, (224, 224), 10**8) for p in paths]))
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    photo(3).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(tmp_path / "q.png")
    q = embedder.embed(load_image(tmp_path / "q.png", (224, 224), 10**8)[np.newaxis])[0]
    scores = data @ (q / np.linalg.norm(q))
    order = np.argsort(-scores)[:6]
    result = query(tmp_path / "q.png", indexed, k=6, make_embedder=make_embedder)
    assert [h.path for h in result.hits] == [paths[i].name for i in order]
    np.testing.assert_allclose([h.score for h in result.hits], scores[order], rtol=1e-5, atol=1e-6)


def test_every_stored_vector_has_norm_one(store):
    norms = np.linalg.norm(np.stack([store.vector(i) for i in range(store.count)]), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert store.count == PHOTOS


def test_ingesting_the_same_folder_twice_gives_the_same_index(tmp_path, photos, indexed, store, embedder):
    again = Settings(index=tmp_path / "again", weights="none", batch_size=4)  # another batching, too
    ingest(photos, again, embedder=embedder)
    other = Store.load(again.index)
    assert [other.entry(i) for i in range(other.count)] == [store.entry(i) for i in range(store.count)]
    for i in range(store.count):
        np.testing.assert_allclose(other.vector(i), store.vector(i), atol=1e-5)


def test_an_indexed_image_is_looked_up_not_embedded(photos, indexed):
    def no_model(*_):
        raise AssertionError("an indexed image must not need a model")

    result = query(photos / "photo-0005.jpg", indexed, k=4, make_embedder=no_model)
    assert not result.embedded
    assert result.hits[0].path == "photo-0005.jpg" and result.hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_query_of_an_indexed_image_does_not_import_tensorflow(photos, indexed):
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from retrieval import Settings, query\n"
        f"result = query(Path({str(photos / 'photo-0002.jpg')!r}), Settings(index=Path({str(indexed.index)!r})))\n"
        "print(result.hits[0].path, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["photo-0002.jpg", "False", "False"]


def test_bad_files_are_skipped_reported_and_the_rest_indexed(tmp_path, embedder):
    folder = tmp_path / "mixed"
    folder.mkdir()
    photo(1).save(folder / "good.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not a picture")
    data = (folder / "good.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    settings = Settings(index=tmp_path / "index", weights="none")
    report = ingest(folder, settings, embedder=embedder)
    assert report.indexed == 1
    assert report.skipped_by_reason() == {"not an image": 2, "truncated": 1}
    lines = [json.loads(line) for line in (settings.index / ERROR_REPORT).read_text().splitlines()]
    assert sorted(line["path"] for line in lines) == ["cut.jpg", "empty.jpg", "notes.png"]


def test_a_folder_without_usable_images_writes_nothing_over_a_good_index(tmp_path, photos, embedder):
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(photos, settings, embedder=embedder)
    generation = current_generation(settings.index)
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"")
    for folder in (empty, broken):
        with pytest.raises(NothingToIndex):
            ingest(folder, settings, embedder=embedder, full=True)
    assert current_generation(settings.index) == generation
    assert Store.load(settings.index).count == PHOTOS


def test_changed_preprocessing_is_refused_at_query_time(tmp_path, photos, embedder, make_embedder):
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(photos, settings, embedder=embedder)
    meta_path = current_generation(settings.index) / META
    meta = json.loads(meta_path.read_text())
    meta["embedding"]["preprocessing"]["resize"] = "centre crop"  # as if ingested by another version
    meta_path.write_text(json.dumps(meta))
    photo(2).save(tmp_path / "new.png")
    with pytest.raises(IndexMismatch, match="preprocessing"):
        query(tmp_path / "new.png", settings, make_embedder=make_embedder)


@pytest.mark.parametrize("k", [5, 8])
def test_the_collage_has_a_titled_tile_per_hit_plus_the_query(tmp_path, photos, indexed, k):
    result = query(photos / "photo-0001.jpg", indexed, k=k)
    out = render(result, tmp_path / "collage.png", indexed.max_pixels)
    sheet = np.asarray(Image.open(out).convert("RGB"))
    tiles = k + 1
    columns = min(tiles, MAX_COLUMNS)
    assert sheet.shape[1] == columns * (256 + 12) + 12
    assert sheet.shape[0] == math.ceil(tiles / columns) * (256 + 52 + 12) + 12
    for i in range(tiles):  # every tile holds a picture (not blank) and a caption under it
        x, y = 12 + (i % columns) * 268, 12 + (i // columns) * 320
        assert sheet[y : y + 256, x : x + 256].std() > 10
        assert (sheet[y + 262 : y + 300, x : x + 256] < 100).any()


def test_threaded_pipeline_equals_the_simple_sequential_path(tmp_path, photos, embedder):
    """Decoding threads and batching change nothing: same order, same vectors as one image at a time."""
    settings = Settings(index=tmp_path / "index", weights="none", batch_size=5, decode_threads=3)
    ingest(photos, settings, embedder=embedder)
    store = Store.load(settings.index)
    paths = sorted(photos.glob("*.jpg"))
    assert [store.entry(i).path for i in range(store.count)] == [p.name for p in paths]
    for i, path in enumerate(paths):
        alone = embedder.embed(load_image(path, (224, 224), settings.max_pixels)[np.newaxis])[0]
        np.testing.assert_allclose(store.vector(i), alone / np.linalg.norm(alone), atol=1e-5)


def test_a_decoder_failure_on_one_file_skips_that_file_only(tmp_path, photos, embedder):
    def flaky(path, size, max_pixels):
        if path.name == "photo-0004.jpg":
            raise RuntimeError("decoder bug")
        return load_image(path, size, max_pixels)

    settings = Settings(index=tmp_path / "index", weights="none", batch_size=4, decode_threads=2)
    report = ingest(photos, settings, embedder=embedder, decode=flaky)
    assert report.indexed == PHOTOS - 1
    assert [(s.path, s.reason) for s in report.skipped] == [("photo-0004.jpg", "decoder failed")]


def test_ctrl_c_stops_the_decoding_threads_and_keeps_the_index(tmp_path, photos, embedder):
    settings = Settings(index=tmp_path / "index", weights="none", batch_size=3, decode_threads=2)
    ingest(photos, settings, embedder=embedder)
    generation = current_generation(settings.index)
    with pytest.raises(KeyboardInterrupt):
        ingest(photos, settings, embedder=Counting(embedder, interrupt_on_call=2), full=True)
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]
    assert current_generation(settings.index) == generation and Store.load(settings.index).count == PHOTOS


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16")
def test_bf16_gives_the_same_near_duplicate_answers(tmp_path, photos, indexed, make_embedder):
    """Ingest and query on OpenVINO bf16: every copy still finds its original first, as with fp32."""
    bf16 = OpenVinoEmbedder(prepare(spec_for("resnet50"), "none", seed=0, precision="bf16"))
    settings = Settings(index=tmp_path / "index", weights="none", batch_size=5)
    ingest(photos, settings, embedder=bf16)
    for seed in range(PHOTOS):
        for kind, copy in near_duplicates(photo(seed)).items():
            path = tmp_path / f"{seed}-{kind}.png"
            copy.convert("RGB").save(path)
            on_bf16 = query(path, settings, k=1, make_embedder=lambda _: bf16)
            on_fp32 = query(path, indexed, k=1, make_embedder=make_embedder)
            assert on_bf16.hits[0].path == on_fp32.hits[0].path == f"photo-{seed:04d}.jpg"
