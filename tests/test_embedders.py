"""The real Keras backbones with random weights: shapes, determinism, weight files, and the offline failure."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from retrieval.analysis.synthetic import photo
from retrieval.embedding.backbones import caffe_preprocess, keras_cache_file, spec_for, weights_fingerprint
from retrieval.embedding.openvino_engine import OpenVinoEmbedder
from retrieval.embedding.preparation import prepare
from retrieval.embedding.tensorflow_engine import KerasEmbedder
from retrieval.errors import IndexMismatch, UsageError, WeightsUnavailable
from retrieval.index.store import Store

RESNET = spec_for("resnet50")


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.stack([np.asarray(photo(seed, (224, 224))) for seed in range(3)])  # (3, 224, 224, 3) uint8


def test_resnet50_gives_2048_d_float32(embedder, batch):
    out = embedder.embed(batch)
    assert out.shape == (3, 2048) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_batching_does_not_change_vectors(embedder, batch):
    together = embedder.embed(batch)
    alone = np.concatenate([embedder.embed(batch[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(alone, together, rtol=1e-4, atol=1e-5)


def test_the_input_batch_is_left_untouched(embedder, batch):
    copy = batch.copy()
    embedder.embed(batch)
    assert np.array_equal(batch, copy)


def test_random_weights_are_identical_for_a_seed_and_differ_across_seeds(embedder, batch):
    same = KerasEmbedder(RESNET, "none", seed=0)
    other = KerasEmbedder(RESNET, "none", seed=1)
    np.testing.assert_allclose(same.embed(batch), embedder.embed(batch), rtol=1e-5, atol=1e-6)
    assert same.embedding() == embedder.embedding()
    assert not np.allclose(other.embed(batch), embedder.embed(batch))
    assert other.embedding()["weights"] == {"source": "random", "seed": 1}


def test_vgg16_fc1_gives_4096_d(batch):
    vgg = KerasEmbedder(spec_for("vgg16"), "none", seed=0)
    out = vgg.embed(batch[:2])
    assert out.shape == (2, 4096) and out.dtype == np.float32
    assert vgg.embedding()["output"] == "fc1"


def test_a_weights_file_is_loaded_and_identified_by_hash(tmp_path, embedder, batch):
    import keras

    keras.utils.set_random_seed(0)
    net = keras.applications.ResNet50(include_top=False, pooling="avg", weights=None, input_shape=(224, 224, 3))
    path = tmp_path / "resnet50.weights.h5"
    net.save_weights(path)
    from_file = KerasEmbedder(RESNET, str(path))
    np.testing.assert_allclose(from_file.embed(batch), embedder.embed(batch), rtol=1e-5, atol=1e-6)
    weights = from_file.embedding()["weights"]
    assert weights["source"] == "file" and weights["path"] == str(path) and len(weights["sha256"]) == 64
    # the same bytes elsewhere (another machine's copy) embed like the index; other bytes are refused
    index = Store.create(dim=2048, metric="cosine", embedding=from_file.embedding(), root=tmp_path, runtime={})
    elsewhere = tmp_path / "elsewhere" / "copy.weights.h5"
    elsewhere.parent.mkdir()
    shutil.copyfile(path, elsewhere)
    index.record.check_embedding(KerasEmbedder(RESNET, str(elsewhere)).embedding())
    with open(elsewhere, "ab") as f:
        f.write(b"\0")
    other = {**from_file.embedding(), "weights": weights_fingerprint(RESNET, str(elsewhere), 0)}
    with pytest.raises(IndexMismatch, match="sha256"):
        index.record.check_embedding(other)


def test_a_missing_or_broken_weights_file_says_what_to_do(tmp_path):
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        KerasEmbedder(RESNET, str(tmp_path / "nope.h5"))
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(WeightsUnavailable, match="cannot load weights file"):
        KerasEmbedder(RESNET, str(tmp_path / "broken.h5"))


def test_unavailable_imagenet_weights_name_the_cache_file_and_the_alternatives(tmp_path, monkeypatch):
    """The real download path, made to fail the same way with or without network: an empty Keras cache
    and a proxy on a closed local port."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(WeightsUnavailable) as caught:
        KerasEmbedder(RESNET, "imagenet")
    message = str(caught.value)
    assert str(keras_cache_file(spec_for("resnet50"))) in message
    assert "--weights none" in message and "--weights /path/to/" in message


def test_an_unknown_model_is_a_usage_error():
    with pytest.raises(UsageError):
        spec_for("alexnet")


def test_caffe_preprocessing_equals_keras_preprocess_input(batch):
    import keras

    expected = keras.applications.resnet50.preprocess_input(batch.astype(np.float32))
    np.testing.assert_allclose(caffe_preprocess(batch), expected, atol=1e-4)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def fidelity_batch() -> np.ndarray:
    return np.stack([np.asarray(photo(seed, (224, 224))) for seed in range(8)])


@pytest.mark.parametrize("precision, floor", [("fp32", 0.99999), ("bf16", 0.999)])
def test_openvino_vectors_match_tensorflow_fp32(embedder, fidelity_batch, precision, floor):
    ov = OpenVinoEmbedder(prepare(RESNET, "none", seed=0, precision=precision))
    assert ov.embedding() == embedder.embedding(), "same model and weights: the same embedding"
    assert ov.runtime()["engine"] == "openvino" and ov.runtime()["precision"] == precision
    assert cosines(ov.embed(fidelity_batch), embedder.embed(fidelity_batch)).min() >= floor


def test_tensorflow_bf16_vectors_match_fp32(embedder, fidelity_batch):
    bf16 = KerasEmbedder(RESNET, "none", seed=0, precision="bf16")
    assert bf16.runtime()["precision"] == "bf16"
    assert cosines(bf16.embed(fidelity_batch), embedder.embed(fidelity_batch)).min() >= 0.999


CACHED_OPENVINO = """
import sys
from retrieval.embedding.backbones import spec_for
from retrieval.embedding.openvino_engine import OpenVinoEmbedder
from retrieval.embedding.preparation import prepare
OpenVinoEmbedder(prepare(spec_for("resnet50"), "none", seed=0, precision="fp32"))
print("tensorflow" in sys.modules)
"""


def test_a_cached_openvino_model_runs_without_tensorflow(model_cache):
    OpenVinoEmbedder(prepare(RESNET, "none", seed=0, precision="fp32"))  # converts and caches, if not done yet
    run = subprocess.run([sys.executable, "-c", CACHED_OPENVINO], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False"]
    assert list(model_cache.glob("openvino/resnet50-*/model.xml"))


def test_the_tensorflow_engine_takes_a_gpu_it_sees_with_fp16(monkeypatch):
    """TensorFlow places the model on a GPU it sees by itself; auto then means fp16 (no GPU here: the probe
    is faked, and only the choice is checked, not a forward pass)."""
    import tensorflow as tf

    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["gpu0"] if kind == "GPU" else real(kind))
    runtime = KerasEmbedder(RESNET, "none", seed=0, precision="auto").runtime()
    assert (runtime["precision"], runtime["device"]) == ("fp16", "GPU (1)")
    assert KerasEmbedder(RESNET, "none", seed=0, precision="fp32").runtime()["precision"] == "fp32"
