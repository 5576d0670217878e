"""The store against a reference: brute-force numpy search, save/load round trips, and every way the files
on disk can be damaged (../shared/BAD_INPUTS.md items 30-32, 39, 41, 42)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import faiss
import numpy as np
import pytest

from retrieval.errors import EmptyIndex, IndexBusy, IndexCorrupt, IndexMismatch, IndexMissing, StoreError, UsageError
from retrieval.index.generations import current_generation
from retrieval.index.manifest import FILES as MANIFEST_FILES
from retrieval.index.manifest import ORDER, RECORDS, Entry, Manifest
from retrieval.index.record import FORMAT_VERSION, META, IndexRecord, live_record
from retrieval.index.segment_files import MANIFEST, VECTORS, file_facts
from retrieval.index.store import Store
from retrieval.index.writing import writing

DIM = 64
EMBEDDING = {"model": "test", "dim": DIM}


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def entries(n: int) -> list[Entry]:
    return [Entry(f"dir/img-{i:03d}.jpg", 1000 + i, 10**18 + i) for i in range(n)]


def make_store(n: int = 50, metric: str = "cosine", root: Path = Path("/photos")) -> Store:
    store = Store.create(dim=DIM, metric=metric, embedding=EMBEDDING, root=root, runtime={})
    if n:
        store.add(vectors(n), entries(n))
    return store


def brute_force_cosine(data: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = data / np.linalg.norm(data, axis=1, keepdims=True)
    q = query / np.linalg.norm(query)
    scores = d @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


def test_search_equals_brute_force_numpy_cosine():
    store = make_store(200)
    for seed in range(5):
        query = vectors(1, seed=100 + seed)[0]
        rows, scores = zip(*store.search(query, 10)[0])
        expected_rows, expected_scores = brute_force_cosine(vectors(200), query, 10)
        assert list(rows) == list(expected_rows)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)


def test_stored_vectors_have_unit_norm():
    store = make_store(30)
    norms = np.linalg.norm(np.stack([store.vector(i) for i in range(store.count)]), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)


def test_l2_ranks_exactly_like_cosine_on_normalized_vectors():
    cosine, l2 = make_store(100, "cosine"), make_store(100, "l2")
    query = vectors(1, seed=9)[0]
    cos_hits, l2_hits = cosine.search(query, 20)[0], l2.search(query, 20)[0]
    assert [r for r, _ in cos_hits] == [r for r, _ in l2_hits]
    # on unit vectors, |a - b|^2 = 2 - 2 cos(a, b)
    np.testing.assert_allclose([d**2 for _, d in l2_hits], [2 - 2 * s for _, s in cos_hits], atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_save_load_search_equals_before(tmp_path, metric):
    store = make_store(80, metric)
    queries = vectors(7, seed=3)
    before = store.search(queries, 10)
    store.save(tmp_path / "index")
    loaded = Store.load(tmp_path / "index")
    assert loaded.search(queries, 10) == before
    assert [loaded.entry(i) for i in range(80)] == entries(80)
    assert loaded.metric == metric and loaded.count == 80 and loaded.dim == DIM


def test_k_larger_than_the_index_returns_only_what_exists():
    store = make_store(3)
    hits = store.search(vectors(1, seed=5)[0], 10)[0]
    assert len(hits) == 3 and all(row >= 0 for row, _ in hits)


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_is_a_usage_error(k):
    with pytest.raises(UsageError):
        make_store(5).search(vectors(1)[0], k)


@pytest.mark.parametrize(
    "query, message",
    [
        (np.ones(DIM + 1, np.float32), "dimension"),
        (np.full(DIM, np.nan, np.float32), "NaN"),
        (np.zeros(DIM, np.float32), "zeros"),
    ],
)
def test_bad_query_vectors_are_rejected(query, message):
    with pytest.raises(UsageError, match=message):
        make_store(5).search(query, 3)


UNDER_O = """
import numpy as np
from pathlib import Path
from retrieval.errors import UsageError
from retrieval.index.manifest import Entry
from retrieval.index.store import Store

store = Store.create(dim=8, metric="cosine", embedding={}, root=Path("/"), runtime={})
store.add(np.eye(8, dtype=np.float32), [Entry(str(i), 0, 0) for i in range(8)])
for query in (np.full(8, np.nan, np.float32), np.ones(9, np.float32)):
    try:
        store.search(query, 3)
    except UsageError:
        print("rejected")
"""


def test_bad_query_vectors_are_rejected_under_python_O():
    """faiss's own checks are asserts, which -O removes; ours are not."""
    run = subprocess.run([sys.executable, "-O", "-c", UNDER_O], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["rejected", "rejected"]


def test_vectors_and_entries_must_agree():
    store = make_store(0)
    with pytest.raises(UsageError):
        store.add(vectors(3), entries(2))


def test_an_empty_index_has_no_results(tmp_path):
    make_store(0).save(tmp_path / "index")
    with pytest.raises(EmptyIndex):
        Store.load(tmp_path / "index").search(vectors(1)[0], 5)


def test_no_index_at_all(tmp_path):
    with pytest.raises(IndexMissing):
        Store.load(tmp_path / "nowhere")


# --- damage on disk ------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path) -> Path:
    folder = tmp_path / "index"
    make_store(40).save(folder)
    return folder


def live(folder: Path, name: str) -> Path:
    """A file of the live generation: meta.json, or a file of its first segment."""
    generation = current_generation(folder)
    return generation / name if name == META else generation / "seg-000001" / name


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # truncated
        lambda p: p.write_bytes(b""),  # empty
        lambda p: p.write_bytes(np.random.default_rng(1).bytes(p.stat().st_size)),  # garbage, same size
    ],
    ids=["truncated", "empty", "garbage"],
)
def test_a_damaged_vector_file_is_reported_corrupt(saved, damage):
    damage(live(saved, VECTORS))
    with pytest.raises(IndexCorrupt, match="rebuild"):
        Store.load(saved)


def _rewrite_meta(folder: Path, **changes) -> None:
    path = live(folder, META)
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("delta", [1, -1])
def test_a_manifest_with_a_row_more_or_fewer_is_refused(saved, delta):
    """Even with meta.json's hashes of the manifest updated to match, the counts must agree."""
    meta = json.loads(live(saved, META).read_text())
    for name in (RECORDS, ORDER):
        path = live(saved, name)
        rows = np.load(path)
        np.save(path, np.concatenate([rows, rows[-1:]]) if delta > 0 else rows[:-1])
        meta["files"][f"seg-000001/{name}"] = file_facts(path)
    live(saved, META).write_text(json.dumps(meta))
    with pytest.raises(IndexCorrupt, match="row counts"):
        Store.load(saved)


def as_written_by_format_5(index: Path) -> None:
    """Rewrite a single-segment live generation as format 5 laid it out: the segment's files in the
    generation folder itself, no segment list."""
    generation = current_generation(index)
    meta = json.loads((generation / META).read_text())
    [segment] = meta.pop("segments")
    del meta["next_segment"]
    for name in (VECTORS, *MANIFEST_FILES):
        (generation / segment["name"] / name).rename(generation / name)
        meta["files"][name] = meta["files"].pop(f"{segment['name']}/{name}")
    (generation / segment["name"]).rmdir()
    meta["format_version"] = 5
    (generation / META).write_text(json.dumps(meta))


def as_written_by_format_4(index: Path) -> None:
    """Rewrite the live generation's manifest as format 4 kept it: JSON lines, in place of the columns."""
    as_written_by_format_5(index)
    generation = current_generation(index)
    store = Store.load(index)
    lines = [json.dumps(asdict(e), ensure_ascii=True) + "\n" for e in store.entries()]
    (generation / MANIFEST).write_text("".join(lines))
    meta = json.loads((generation / META).read_text())
    for name in MANIFEST_FILES:
        (generation / name).unlink()
        del meta["files"][name]
    meta["files"][MANIFEST] = file_facts(generation / MANIFEST)
    meta["format_version"] = 4
    (generation / META).write_text(json.dumps(meta))


def as_written_before_hashes(index: Path) -> None:
    """Rewrite the live generation as format 6 wrote it: manifests without the perceptual hash column."""
    generation = current_generation(index)
    meta = json.loads((generation / META).read_text())
    for segment in meta["segments"]:
        path = generation / segment["name"] / RECORDS
        records = np.load(path)
        old = np.zeros(len(records), np.dtype([(n, records.dtype[n]) for n in records.dtype.names if n != "phash"]))
        for name in old.dtype.names:
            old[name] = records[name]
        path.unlink()  # a new file: the old one may be linked from another generation
        np.save(path, old)
        meta["files"][f"{segment['name']}/{RECORDS}"] = file_facts(path)
    meta["format_version"] = 6
    (generation / META).write_text(json.dumps(meta))


def test_an_index_written_before_perceptual_hashes_loads_without_them_and_takes_new_rows_with_them(tmp_path):
    store = make_store(0)
    store.add(vectors(30), [replace(e, phash="ab" * 16) for e in entries(30)])
    store.save(tmp_path / "index")
    assert Store.load(tmp_path / "index").hashed
    as_written_before_hashes(tmp_path / "index")
    old = Store.load(tmp_path / "index")
    assert not old.hashed and {e.phash for e in old.entries()} == {""} and not old.perceptual_hashes().any()
    assert [e.key for e in old.entries()] == [e.key for e in store.entries()]
    old.add(vectors(2, seed=5), [Entry(f"new-{i}.jpg", 1, 2, phash="cd" * 16) for i in range(2)])
    old.save(tmp_path / "index")
    again = Store.load(tmp_path / "index")
    assert not again.hashed  # the old segment still has none
    assert again.perceptual_hashes()[-2:].tobytes() == bytes.fromhex("cd" * 32)
    assert not again.perceptual_hashes()[:30].any()


def test_a_format_4_index_loads_as_it_is_and_its_next_save_is_columnar(tmp_path):
    store = make_store(0)
    rows = [*entries(30), Entry("caf\udce9.jpg", 7, 8, "ab" * 32)]  # the last file name is not UTF-8
    store.add(np.concatenate([vectors(30), vectors(1, seed=9)]), rows)
    store.save(tmp_path / "index")
    as_written_by_format_4(tmp_path / "index")
    old = Store.load(tmp_path / "index")
    assert old.entries() == store.entries() and not old.record.stale
    assert old.row_of("caf\udce9.jpg") == 30 and old.row_of("dir/img-007.jpg") == 7
    np.testing.assert_array_equal(old.search(vectors(1, seed=9), 1)[0][0][0], 30)
    old.save(tmp_path / "index")
    generation = current_generation(tmp_path / "index")
    assert not (generation / MANIFEST).exists()
    assert all((generation / "seg-000001" / n).is_file() for n in MANIFEST_FILES)
    assert json.loads((generation / META).read_text())["format_version"] == FORMAT_VERSION
    assert Store.load(tmp_path / "index").entries() == store.entries()


def test_a_format_5_index_loads_and_its_next_save_links_its_files_into_a_segment(tmp_path):
    store = make_store(30)
    store.save(tmp_path / "index")
    as_written_by_format_5(tmp_path / "index")
    old_generation = current_generation(tmp_path / "index")
    old = Store.load(tmp_path / "index")
    assert old.entries() == store.entries() and not old.record.stale
    assert old.search(vectors(3, seed=4), 5) == store.search(vectors(3, seed=4), 5)
    old.delete([0])
    old.save(tmp_path / "index")
    generation = current_generation(tmp_path / "index")
    [segment] = json.loads((generation / META).read_text())["segments"]
    assert (generation / segment["name"] / VECTORS).stat().st_ino == (old_generation / VECTORS).stat().st_ino
    assert Store.load(tmp_path / "index").entries() == store.entries()[1:]


def test_the_manifest_round_trips_and_finds_paths_by_binary_search(tmp_path):
    rows = [
        Entry("b/2.jpg", 2, 20, ""),
        Entry("a/1.jpg", 1, 10, "00" * 31 + "01"),
        Entry("\u00e9t\u00e9.png", 3, 30, "ff" * 32),
    ]
    rows.append(Entry("z\udcff.jpg", 4, 40))  # undecodable bytes, kept by surrogate escapes
    Manifest.of(rows).write(tmp_path)
    loaded = Manifest.read(tmp_path)
    assert loaded.entries() == rows and [loaded.entry(i) for i in range(4)] == rows
    assert [loaded.row_of(e.path) for e in rows] == [0, 1, 2, 3]
    assert loaded.row_of("a/0.jpg") is None and loaded.row_of("zzz") is None and loaded.row_of("") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    Manifest.of([]).write(empty)
    assert len(Manifest.read(empty)) == 0 and Manifest.read(empty).row_of("a") is None


def test_missing_meta_is_refused(saved):
    live(saved, META).unlink()
    with pytest.raises(IndexCorrupt):
        Store.load(saved)


def test_unparsable_meta_is_refused(saved):
    live(saved, META).write_text("{ not json")
    with pytest.raises(IndexCorrupt, match="JSON"):
        Store.load(saved)


def test_unknown_format_version_is_refused_by_name(saved):
    _rewrite_meta(saved, format_version=99)
    with pytest.raises(IndexMismatch, match="format version 99"):
        Store.load(saved)


def test_another_dimension_in_meta_is_refused(saved):
    _rewrite_meta(saved, dim=DIM * 2)
    with pytest.raises(IndexCorrupt, match="dimension"):
        Store.load(saved)


def test_another_model_is_refused_naming_the_difference(saved):
    store = Store.load(saved)
    with pytest.raises(IndexMismatch, match="model: index has 'test', now 'other'"):
        store.record.check_embedding({**EMBEDDING, "model": "other"})
    store.record.check_embedding(dict(EMBEDDING))  # the same embedding passes


def test_a_failed_save_leaves_the_previous_index_loadable(saved, monkeypatch):
    before = Store.load(saved).search(vectors(2, seed=4), 5)

    def disk_full(index, path):
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(faiss, "write_index", disk_full)
    with pytest.raises(StoreError, match="previous index is untouched"):
        make_store(10).save(saved)
    monkeypatch.undo()
    assert Store.load(saved).search(vectors(2, seed=4), 5) == before
    assert not [p for p in saved.iterdir() if p.name.startswith(".tmp-")], "no staging left behind"


def test_saves_switch_generations_and_keep_only_the_previous_one(tmp_path):
    folder = tmp_path / "index"
    for n in (5, 6, 7):
        make_store(n).save(folder)
    assert Store.load(folder).count == 7
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("gen-")) == ["gen-000002", "gen-000003"]
    assert live_record(folder).count == 7


def test_a_pointer_outside_the_index_is_refused(saved):
    (saved / "CURRENT").write_text("../../etc\n")
    with pytest.raises(IndexCorrupt):
        Store.load(saved)


def test_damage_that_keeps_the_size_is_found_by_the_hash_check(saved):
    path = live(saved, VECTORS)
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)  # the last vector zeroed: same size, valid header
    path.write_bytes(bytes(data))
    Store.load(saved)  # a query's load checks sizes only: it reads nothing it does not search
    with pytest.raises(IndexCorrupt, match="SHA-256"):
        Store.load(saved, check_hashes=True)  # what `retrieval verify` does


@pytest.mark.parametrize("bad, message", [(np.nan, "NaN"), (0.0, "zeros")])
def test_normalize_checks_every_chunk_of_a_large_array(monkeypatch, bad, message):
    """Checked a few rows at a time (8 GB of temporaries at a million rows otherwise): a bad row in the
    last chunk is still found, and good rows come back unit length."""
    from retrieval import vectors as store_module

    x = vectors(14)
    np.testing.assert_allclose(np.linalg.norm(store_module.normalize(x, chunk=4), axis=1), 1.0, rtol=1e-6)
    x[13] = bad
    with pytest.raises(UsageError, match=message):
        store_module.normalize(x, chunk=4)


def test_the_record_reads_back_what_it_wrote_and_meta_json_keeps_its_keys(saved):
    """record.py is the one reader and writer of meta.json: a saved record loads equal, and the file holds
    exactly format 6's keys (an index written before this module reads after it: the format tests above)."""
    store = Store.load(saved)
    raw = json.loads(live(saved, META).read_text())
    assert IndexRecord.from_json(raw, saved) == store.record == live_record(saved)
    assert IndexRecord.from_json(store.record.to_json(), saved) == store.record
    assert set(raw) == {
        "format", "format_version", "dim", "metric", "root", "embedding", "runtime", "index", "count", "created",
        "files", "next_segment", "segments",
    }  # fmt: skip
    assert [(s.name, s.rows, s.deleted) for s in store.record.segments] == [("seg-000001", 40, 0)]
    assert (store.record.count, store.record.dim, store.record.factory, store.record.stale) == (40, DIM, "Flat", False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw.update(count="many"), "malformed"),
        (lambda raw: raw.update(segments=[{"name": "seg-000001"}]), "malformed"),
        (lambda raw: raw.pop("embedding"), "lacks embedding"),
        (lambda raw: raw.update(format_version=99), "format version 99"),
    ],
)
def test_a_malformed_record_is_refused_with_what_is_wrong(saved, change, message):
    raw = json.loads(live(saved, META).read_text())
    change(raw)
    with pytest.raises(StoreError, match=message):
        IndexRecord.from_json(raw, saved)


def test_writing_holds_the_lock_commits_what_it_saves_and_releases_on_error(saved, tmp_path):
    """`writing`, the one transaction every writer uses: a second writer is busy while it runs, a store
    saved through it is the live index after, an error leaves the index as it was and the lock free, and an
    index that is not there is IndexMissing with nothing created (unless `create`)."""
    with writing(saved) as held:
        with pytest.raises(IndexBusy):
            writing(saved).__enter__()
        held.live.delete([0])
        held.save(held.live)
    assert Store.load(saved).count == 39
    with pytest.raises(RuntimeError), writing(saved) as held:
        held.live.delete([0])
        raise RuntimeError("a writer's bug")
    assert Store.load(saved).count == 39
    with writing(saved, wait=False) as held:  # free again
        assert held.live.count == 39
    with pytest.raises(IndexMissing):
        writing(tmp_path / "nothing").__enter__()
    assert not (tmp_path / "nothing").exists()
    with writing(tmp_path / "new", create=True) as held:
        assert held.live is None
        held.save(make_store(3))
    assert Store.load(tmp_path / "new").count == 3
