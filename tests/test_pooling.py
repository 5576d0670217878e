"""`pooling: avg | max | gem`: one pooling function for every engine, recorded in the embedding identity, kept
by queries, and refused when it does not match."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.analysis.synthetic import near_duplicates, photo, write_photos
from retrieval.config import Settings
from retrieval.embedding.backbones import AVERAGE, Pooling, caffe_preprocess, import_tensorflow, spec_for
from retrieval.embedding.embedders import create_embedder
from retrieval.embedding.openvino_engine import OpenVinoEmbedder
from retrieval.embedding.preparation import prepare
from retrieval.embedding.tensorflow_engine import KerasEmbedder
from retrieval.errors import ConfigError, IndexMismatch
from retrieval.index.store import Store
from retrieval.ingestion.job import ingest
from retrieval.search.searcher import Searcher

from .test_embedders import cosines

RESNET = spec_for("resnet50")


def test_each_pooling_reduces_the_feature_map_as_defined():
    maps = np.random.default_rng(0).uniform(0, 2, (3, 7, 7, 16)).astype(np.float32)
    np.testing.assert_allclose(Pooling("avg")(maps), maps.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(Pooling("max")(maps), maps.max(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(Pooling("gem", 3)(maps), np.cbrt((maps**3).mean(axis=(1, 2))), rtol=1e-5)
    np.testing.assert_allclose(Pooling("gem", 1)(maps), maps.mean(axis=(1, 2)), rtol=1e-5)
    for pooling in (Pooling("avg"), Pooling("max"), Pooling("gem", 3), Pooling("gem", 4.5)):
        assert Pooling.from_output(pooling.output) == pooling


def test_average_pooling_equals_keras_own_global_average_pool(embedder):
    """The index's default vectors are the design's: Keras' ResNet50 with pooling="avg", same seed."""
    _, keras = import_tensorflow()
    keras.utils.set_random_seed(0)
    pooled = keras.applications.ResNet50(include_top=False, pooling="avg", weights=None, input_shape=(224, 224, 3))
    batch = np.stack([np.asarray(photo(seed, (224, 224))) for seed in range(4)])
    theirs = pooled.predict(caffe_preprocess(batch), verbose=0)
    assert embedder.embedding()["output"] == "global average pool" == AVERAGE.output
    assert cosines(embedder.embed(batch), theirs).min() >= 0.99999


@pytest.mark.parametrize("pooling", [Pooling("max"), Pooling("gem", 3)])
def test_openvino_and_tensorflow_pool_alike(embedder, pooling):
    batch = np.stack([np.asarray(photo(seed, (224, 224))) for seed in range(4)])
    ov = OpenVinoEmbedder(prepare(RESNET, "none", seed=0, precision="fp32", pooling=pooling))
    tf = KerasEmbedder(RESNET, "none", seed=0, precision="fp32", pooling=pooling)
    assert ov.embedding() == tf.embedding() and ov.embedding()["output"] == pooling.output
    assert cosines(ov.embed(batch), tf.embed(batch)).min() >= 0.99999


@pytest.mark.parametrize("kind", ["max", "gem"])
def test_a_pooling_round_trips_through_save_load_and_query(tmp_path, kind):
    folder = tmp_path / "photos"
    write_photos(folder, 8, seed=700)
    settings = Settings(index=tmp_path / "index", weights="none", pooling=kind)
    ingest(folder, settings, embedder=create_embedder(settings))
    store = Store.load(settings.index)
    assert store.record.embedding["output"] == Pooling(kind).output
    copy = tmp_path / "copy.jpg"
    near_duplicates(photo(703))["resized"].save(copy, quality=95)
    # the query's settings say nothing of pooling: the searcher takes the index's own
    searcher = Searcher(Settings(index=settings.index, weights="none"))
    result = searcher.query([copy], 3)[0]
    assert result.hits[0].path == "photo-0003.jpg" and result.hits[0].score > 0.999
    assert searcher.embedder().embedding()["output"] == Pooling(kind).output


def test_a_mismatched_pooling_is_refused(tmp_path):
    folder = tmp_path / "photos"
    write_photos(folder, 4, seed=710)
    gem = Settings(index=tmp_path / "index", weights="none", pooling="gem")
    ingest(folder, gem, embedder=create_embedder(gem))
    average = Settings(index=gem.index, weights="none")
    with pytest.raises(IndexMismatch, match="generalized mean pool"):
        ingest(folder, average, embedder=create_embedder(average))  # an update must embed as the index did
    stubborn = Searcher(average, lambda _: create_embedder(average))  # ignores the pooling it is asked for
    with pytest.raises(IndexMismatch, match="output"):
        stubborn.embedder()


def test_vgg16_has_no_pooling_to_choose():
    with pytest.raises(ConfigError, match="vgg16"):
        Settings(model="vgg16", pooling="max")
