"""The three steps of an ingest, each alone: plan without a model, the local executor with a trivial
embedder, commit without images."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval.analysis.synthetic import photo, write_photos
from retrieval.config import Settings
from retrieval.embedding.backbones import spec_for
from retrieval.errors import NothingToIndex
from retrieval.index.assembly import MAPPED_ROWS
from retrieval.index.building import Tuning
from retrieval.index.manifest import Entry
from retrieval.index.store import Store
from retrieval.index.writing import writing
from retrieval.ingestion.checkpoints import PENDING, Checkpoints
from retrieval.ingestion.job import IngestReport, LocalExecutor, commit, embed
from retrieval.ingestion.plan import Plan, plan
from retrieval.io.files import sha256_file
from retrieval.io.images import load_image
from retrieval.io.perceptual import perceptual_hash
from retrieval.vectors import normalize

DIM = 8
EMBEDDING = {"model": "test", "dim": DIM}


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def entry_of(folder: Path, rel: str, digest: bool = True) -> Entry:
    st = (folder / rel).stat()
    return Entry(rel, st.st_size, st.st_mtime_ns, sha256_file(folder / rel) if digest else "")


@pytest.fixture
def folder(tmp_path) -> Path:
    write_photos(tmp_path / "photos", 5)
    return tmp_path / "photos"


def previous_index(folder: Path, paths: list[str]) -> Store:
    store = Store.create(dim=DIM, metric="cosine", embedding=EMBEDDING, root=folder, runtime={})
    store.add(np.stack([unit(i) for i in range(len(paths))]), [entry_of(folder, p) for p in paths])
    return store


def test_plan_sorts_every_file_into_kept_resumed_or_to_embed(folder):
    names = [f"photo-{i:04d}.jpg" for i in range(5)]
    previous = previous_index(folder, names[:3])  # rows 0, 1, 2
    shutil.move(folder / names[2], folder / "renamed.jpg")  # moved: same bytes, new path
    photo(99).save(folder / names[1], quality=90)  # changed
    (folder / names[0]).unlink()  # deleted... and one checkpointed vector for photo-0003
    checkpointed = [(entry_of(folder, names[3], digest=False), unit(30))]
    listed = sorted(p.name for p in folder.iterdir())  # photo-0001, -0003, -0004, renamed
    result = plan(folder, listed, previous, checkpointed)
    assert [e.path for e in result.entries] == listed
    assert result.kept == {3: 2}  # renamed.jpg keeps row 2's vector
    assert list(result.resumed) == [1] and np.array_equal(result.resumed[1], unit(30))
    assert result.to_embed == [0, 2]  # the changed file and the new one
    assert (result.unchanged, result.moved, result.removed) == (0, {3}, 1)
    assert result.previous_paths == set(names[:3])


def test_plan_of_an_unchanged_folder_keeps_every_row(folder):
    names = sorted(p.name for p in folder.iterdir())
    result = plan(folder, names, previous_index(folder, names), [])
    assert result.kept == {i: i for i in range(5)} and result.to_embed == [] and result.unchanged == 5


class Trivial:
    """A stand-in embedder: the mean colour of each image, as a 3-d vector."""

    spec = spec_for("resnet50")
    calls = 0

    def runtime(self) -> dict[str, str]:
        return {"engine": "trivial", "precision": "fp32"}

    def embed(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        return images.reshape(len(images), -1, 3).mean(axis=1).astype(np.float32)


def test_the_local_executor_streams_batches_in_order_and_reports_skips(folder):
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    paths = sorted(p.name for p in folder.iterdir())  # broken.jpg first
    embedder = Trivial()
    executor = LocalExecutor(Settings(batch_size=2, decode_threads=2), lambda: embedder, embedder.spec, load_image)
    batches = list(executor.run(folder, paths))
    assert [b.done for b in batches] == [[1, 2], [3, 4], [5]]
    assert [(i, s.reason) for b in batches for i, s in b.skipped] == [(0, "not an image")]
    assert embedder.calls == 3
    first = load_image(folder / paths[1], (224, 224), 10**8).reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(batches[0].vectors[0], first, rtol=1e-5)
    pixels = load_image(folder / paths[1], (224, 224), 10**8)
    assert batches[0].hashes[0] == (sha256_file(folder / paths[1]), perceptual_hash(pixels))


def memory_mapped(vector: np.ndarray) -> bool:
    """Whether `vector` is a view of a memory-mapped file (its bases lead to an np.memmap)."""
    while vector is not None and not isinstance(vector, np.memmap):
        vector = vector.base
    return vector is not None


def test_embed_hands_back_the_vectors_memory_mapped_from_its_checkpoint_pieces(tmp_path, folder):
    """Five images in batches of 2, checkpointed every 2: three pieces (the last at the end of the run);
    every vector the step returns is read from them, not held in memory, and equals the embedder's own."""
    names = sorted(p.name for p in folder.iterdir())
    the_plan = Plan(folder, [entry_of(folder, n, digest=False) for n in names], to_embed=list(range(5)))
    embedder = Trivial()
    executor = LocalExecutor(Settings(batch_size=2, decode_threads=1), lambda: embedder, embedder.spec, load_image)
    checkpoints = Checkpoints(tmp_path / "index", EMBEDDING)
    vectors = embed(the_plan, executor, checkpoints, IngestReport(tmp_path / "index"), checkpoint_every=2)
    assert sorted(vectors) == list(range(5)) and all(memory_mapped(v) for v in vectors.values())
    assert len(list((tmp_path / "index" / PENDING).glob("piece-*.json"))) == 3
    pixels = [load_image(folder / n, (224, 224), 10**8).reshape(-1, 3).mean(axis=0) for n in names]
    np.testing.assert_allclose(np.stack([vectors[i] for i in range(5)]), normalize(np.stack(pixels)), rtol=1e-5)
    resumed = checkpoints.load()
    assert [e.path for e, _ in resumed] == names and all(memory_mapped(v) for _, v in resumed)


def test_checkpoints_pass_over_a_half_written_piece_and_another_embeddings(tmp_path):
    """A vectors file whose JSON never came (a crash between the two renames) is removed; a piece of
    another embedding is left alone and not read."""
    index = tmp_path / "index"
    Checkpoints(index, {**EMBEDDING, "model": "other"}).save([Entry("b.jpg", 1, 1)], unit(2)[None])
    Checkpoints(index, EMBEDDING).save([Entry("a.jpg", 1, 1)], unit(1)[None])
    newest = sorted((index / PENDING).glob("piece-*.json"))[-1]
    newest.unlink()  # the piece of a.jpg, as a crash before its JSON leaves it
    assert Checkpoints(index, EMBEDDING).load() == []
    assert not newest.with_suffix(".npy").exists() and len(list((index / PENDING).iterdir())) == 2


def test_checkpoints_read_a_piece_into_memory_where_no_more_mappings_are_allowed(tmp_path, monkeypatch):
    checkpoints = Checkpoints(tmp_path / "index", EMBEDDING)
    checkpoints.save([Entry("a.jpg", 1, 1)], unit(1)[None])
    real_load = np.load

    def mapping_refused(path, *args, mmap_mode=None, **kwargs):
        if mmap_mode:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", mapping_refused)
    [(entry, vector)] = checkpoints.load()
    assert entry.path == "a.jpg" and not memory_mapped(vector) and np.array_equal(vector, unit(1))


@pytest.mark.parametrize("mapped", [False, True], ids=["in memory", "memory-mapped"])
def test_commit_assembles_kept_resumed_and_embedded_vectors_in_listing_order(tmp_path, folder, monkeypatch, mapped):
    """The same index whether the new segment's vectors are assembled in memory or, as for a large commit,
    in a memory-mapped file in the index folder (removed after)."""
    files = []
    real = np.lib.format.open_memmap
    spy = lambda path, *a, **kw: files.append(Path(path).name) or real(path, *a, **kw)  # noqa: E731
    monkeypatch.setattr(np.lib.format, "open_memmap", spy)
    names = sorted(p.name for p in folder.iterdir())
    settings = Settings(index=tmp_path / "index")
    previous_index(folder, names).save(settings.index)
    the_plan = Plan(
        folder, [entry_of(folder, n) for n in names], kept={0: 4, 3: 1}, resumed={1: unit(11)}, to_embed=[2, 4]
    )
    report = IngestReport(settings.index)
    with writing(settings.index, tuning=Tuning(mapped_rows=1 if mapped else MAPPED_ROWS)) as index:
        store = commit(
            index, the_plan, {2: unit(12)}, settings, embedding=EMBEDDING, runtime={}, listing_count=5, report=report
        )  # slot 4 was to be embedded but failed: it has no vector and no row
    assert [e.path for e in store.entries()] == names[:4]
    expected = np.stack([unit(4), unit(11), unit(12), unit(1)])
    np.testing.assert_allclose(store.vectors(), expected, atol=1e-6)
    assert Store.load(settings.index).count == 4
    assert any(name.startswith(".tmp-vectors-") for name in files) == mapped
    assert not [p for p in settings.index.iterdir() if p.name.startswith(".tmp-")]


def test_commit_writes_nothing_when_nothing_changed_and_refuses_an_empty_result(tmp_path, folder):
    names = sorted(p.name for p in folder.iterdir())
    settings = Settings(index=tmp_path / "index", index_type="flat")
    previous = previous_index(folder, names)
    previous.save(settings.index)
    report = IngestReport(settings.index)
    with writing(settings.index) as index:
        the_plan = Plan(folder, index.live.entries(), kept={i: i for i in range(5)})
        same = commit(index, the_plan, {}, settings, embedding=EMBEDDING, runtime={}, listing_count=5, report=report)
        assert same is index.live
    generation = Store.load(settings.index).generation
    with pytest.raises(NothingToIndex), writing(tmp_path / "other", create=True) as nothing:
        commit(nothing, Plan(folder, previous.entries(), to_embed=[0]), {}, settings, embedding=EMBEDDING,
               runtime={}, listing_count=5, report=report)  # fmt: skip
    assert Store.load(settings.index).generation == generation, "nothing written when nothing changed"
