"""Incremental and resumable ingest, the write lock, verify (../shared/BAD_INPUTS.md items 27, 29, 33, 36,
37, 45, 46), with the real random-weight ResNet50 counting its own calls."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval.analysis.synthetic import photo, write_photos
from retrieval.cli import app
from retrieval.config import Settings
from retrieval.errors import IndexBusy, IndexMismatch
from retrieval.index.generations import current_generation
from retrieval.index.lock import IndexLock
from retrieval.index.store import Store
from retrieval.ingestion.job import ingest
from retrieval.io.images import load_image

from .conftest import Counting, reading_in_a_thread, segment_file
from .test_ann import as_written_by_format_3

runner = CliRunner()


def snapshot(index: Path) -> dict[str, tuple[str, np.ndarray]]:
    """path -> (content hash, vector): an index's rows, whatever their order."""
    store = Store.load(index)
    return {e.path: (e.sha256, v) for e, v in zip(store.entries(), store.vectors())}


def neighbours(index: Path, k: int = 5) -> list[dict[str, float]]:
    """For each row in path order, its top-k by the index's own search: path -> score."""
    store = Store.load(index)
    rows = sorted(range(store.count), key=lambda r: store.entry(r).path)
    return [{store.entry(r).path: s for r, s in hits} for hits in store.search(store.vectors_of(rows), k)]


def assert_same_index(a: Path, b: Path, atol: float = 1e-5) -> None:
    """The same rows (paths, hashes), the same vectors and the same search results: every hit found by
    both with the same score, and any hit found by one only tied (within `atol`) with the last one kept,
    since vectors equal within `atol` may order near ties either way."""
    rows_a, rows_b = snapshot(a), snapshot(b)
    assert sorted(rows_a) == sorted(rows_b)
    assert {p: h for p, (h, _) in rows_a.items()} == {p: h for p, (h, _) in rows_b.items()}
    for path, (_, vector) in rows_a.items():
        np.testing.assert_allclose(vector, rows_b[path][1], atol=atol)
    for hits_a, hits_b in zip(neighbours(a), neighbours(b), strict=True):
        for path in hits_a.keys() & hits_b.keys():
            assert hits_a[path] == pytest.approx(hits_b[path], abs=atol)
        last = min(min(hits_a.values()), min(hits_b.values()))
        for path in hits_a.keys() ^ hits_b.keys():
            assert {**hits_a, **hits_b}[path] == pytest.approx(last, abs=2 * atol), "not a tie"


@pytest.fixture
def folder(tmp_path) -> Path:
    folder = tmp_path / "photos"
    write_photos(folder, 8, seed=100)
    return folder


def settings_for(tmp_path: Path, name: str = "index", **kw) -> Settings:
    return Settings(index=tmp_path / name, weights="none", batch_size=3, **kw)


def test_add_change_delete_move_embeds_exactly_what_changed(tmp_path, folder, embedder):
    settings = settings_for(tmp_path)
    ingest(folder, settings, embedder=embedder)
    write_photos(tmp_path / "new", 3, seed=200)
    for p in (tmp_path / "new").iterdir():
        shutil.move(p, folder / f"new-{p.name}")  # 3 added
    photo(300).save(folder / "photo-0001.jpg", quality=90)  # 2 changed
    photo(301).save(folder / "photo-0002.jpg", quality=90)
    (folder / "photo-0003.jpg").unlink()  # 1 deleted
    (folder / "sub").mkdir()
    (folder / "photo-0004.jpg").rename(folder / "sub" / "moved.jpg")  # 1 moved
    counting = Counting(embedder)
    report = ingest(folder, settings, embedder=counting)
    assert counting.images == 5 == report.embedded
    assert (report.added, report.updated, report.removed, report.moved, report.unchanged) == (3, 2, 1, 1, 4)
    assert report.indexed == 10
    ingest(folder, settings_for(tmp_path, "fresh"), embedder=embedder, full=True)
    assert_same_index(settings.index, tmp_path / "fresh")


def test_an_update_is_a_new_segment_with_deletion_markers_and_compact_merges_them(tmp_path, folder, embedder):
    settings = settings_for(tmp_path)
    ingest(folder, settings, embedder=embedder)
    photo(700).save(folder / "photo-0001.jpg", quality=90)  # changed: its old row is marked deleted
    photo(701).save(folder / "added.jpg", quality=90)
    ingest(folder, settings, embedder=embedder)
    info = json.loads(runner.invoke(app, ["info", "--index", str(settings.index), "--json"]).output)
    assert info["count"] == 9 and info["segments"] == "2, 1 rows marked deleted"
    ingest(folder, settings_for(tmp_path, "fresh"), embedder=embedder, full=True)
    assert_same_index(settings.index, tmp_path / "fresh")
    result = runner.invoke(app, ["compact", "--index", str(settings.index)])
    assert result.exit_code == 0 and "merged 2 segments into one, 1 deleted rows dropped; 9 vectors" in result.output
    info = json.loads(runner.invoke(app, ["info", "--index", str(settings.index), "--json"]).output)
    assert info["segments"] == "1, 0 rows marked deleted"
    assert_same_index(settings.index, tmp_path / "fresh")
    again = runner.invoke(app, ["compact", "--index", str(settings.index)])
    assert again.exit_code == 0 and "nothing written" in again.output


def test_a_seeded_sequence_of_adds_changes_moves_and_deletes_equals_a_fresh_build_after_each_step(
    tmp_path, folder, embedder
):
    """Six ingests, each after three seeded random changes to the folder; after each, the updated index
    equals a full build of the folder (rows, vectors, search results)."""
    settings = settings_for(tmp_path)
    ingest(folder, settings, embedder=embedder)
    rng, made = random.Random(14), 0
    done = {"add": 0, "change": 0, "move": 0, "delete": 0}
    for step in range(6):
        for _ in range(3):
            files = sorted(p for p in folder.rglob("*.jpg"))
            operation = rng.choice(list(done)) if len(files) > 4 else "add"
            target = rng.choice(files)
            made += 1
            if operation == "add":
                photo(1000 + made).save(folder / f"added-{made}.jpg", quality=90)
            elif operation == "change":
                photo(2000 + made).save(target, quality=90)
            elif operation == "move":
                (folder / f"dir-{made}").mkdir()
                target.rename(folder / f"dir-{made}" / target.name)
            else:
                target.unlink()
            done[operation] += 1
        ingest(folder, settings, embedder=embedder)
        fresh = tmp_path / f"fresh-{step}"
        ingest(folder, settings_for(tmp_path, fresh.name), embedder=embedder, full=True)
        assert_same_index(settings.index, fresh)
    assert min(done.values()) >= 2, done


def test_an_unchanged_folder_embeds_nothing_and_loads_no_model(tmp_path, folder, embedder):
    settings = settings_for(tmp_path)
    ingest(folder, settings, embedder=embedder)
    generation = current_generation(settings.index)
    report = ingest(folder, settings)  # no embedder given: one would be built only if needed
    assert report.embedded == 0 and report.unchanged == 8 and report.indexed == 8
    assert report.model_seconds == 0, "no model was built"
    assert current_generation(settings.index) == generation


def test_full_embeds_everything_again(tmp_path, folder, embedder):
    settings = settings_for(tmp_path)
    ingest(folder, settings, embedder=embedder)
    counting = Counting(embedder)
    assert ingest(folder, settings, embedder=counting, full=True).embedded == 8 == counting.images


def test_another_model_or_folder_needs_full(tmp_path, folder, embedder):
    settings = settings_for(tmp_path)
    ingest(folder, settings, embedder=embedder)
    with pytest.raises(IndexMismatch, match="--full"):
        ingest(folder, settings_for(tmp_path, seed=1))
    other = tmp_path / "other"
    write_photos(other, 2, seed=400)
    with pytest.raises(IndexMismatch, match="--full"):
        ingest(other, settings, embedder=embedder)


def test_ctrl_c_keeps_the_work_done_and_the_next_run_resumes(tmp_path, folder, embedder):
    settings = settings_for(tmp_path, checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        ingest(folder, settings, embedder=Counting(embedder, interrupt_on_call=3))  # batches 1, 2 done
    counting = Counting(embedder)
    report = ingest(folder, settings, embedder=counting)
    assert report.resumed == 6 and counting.images == 2 == report.embedded
    ingest(folder, settings_for(tmp_path, "reference"), embedder=embedder)
    assert_same_index(settings.index, tmp_path / "reference")
    assert not (settings.index / "pending").exists(), "checkpoints are dropped once in the index"


def test_leftover_temporary_files_are_ignored_and_cleaned(tmp_path, folder, embedder):
    settings = settings_for(tmp_path)
    ingest(folder, settings, embedder=embedder)
    litter = [settings.index / ".tmp-gen-000099-1", settings.index / "pending" / ".tmp-piece-1-1.npz"]
    litter[0].mkdir()
    litter[1].parent.mkdir()
    litter[1].write_bytes(b"half a piece")
    assert Store.load(settings.index).count == 8
    photo(500).save(folder / "extra.jpg")
    ingest(folder, settings, embedder=embedder)
    assert not any(p.exists() for p in litter)


def test_a_second_ingest_is_refused_while_one_runs_or_waits(tmp_path, folder, embedder):
    settings = settings_for(tmp_path)
    with IndexLock(settings.index):
        with pytest.raises(IndexBusy, match="index busy"):
            ingest(folder, settings, embedder=embedder)
        result = runner.invoke(app, ["ingest", str(folder), "--index", str(settings.index), "--weights", "none"])
        assert result.exit_code == 5 and "index busy" in result.output

    lock = IndexLock(settings.index).__enter__()
    threading.Timer(0.5, lock.__exit__, (None, None, None)).start()
    started = time.monotonic()
    assert ingest(folder, settings, embedder=embedder, wait=True).indexed == 8
    assert time.monotonic() - started >= 0.4


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, folder, embedder):
    settings = settings_for(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from retrieval.index.lock import IndexLock\n"
            f"IndexLock(Path({str(settings.index)!r})).__enter__(); print('locked', flush=True)\n"
            "import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(IndexBusy):
        ingest(folder, settings, embedder=embedder)
    holder.kill()
    holder.wait()
    assert ingest(folder, settings, embedder=embedder).indexed == 8


def test_files_deleted_or_changed_during_ingest(tmp_path, folder, embedder):
    settings = settings_for(tmp_path)

    def meddling(path, size, max_pixels):
        if path.name == "photo-0001.jpg":
            (folder / "photo-0006.jpg").unlink()  # deleted before its turn
            photo(600).save(folder / "photo-0005.jpg", quality=90)  # changed after it was listed
        return load_image(path, size, max_pixels)

    report = ingest(folder, settings, embedder=embedder, decode=meddling)
    assert [(s.path, s.reason) for s in report.skipped] == [("photo-0006.jpg", "file not found")]
    counting = Counting(embedder)
    again = ingest(folder, settings, embedder=counting)
    assert again.updated == 1 and counting.images == 1, "the file changed mid-run is picked up next run"


def test_queries_during_ingests_see_one_whole_generation(tmp_path, folder, embedder):
    settings = settings_for(tmp_path)
    ingest(folder, settings, embedder=embedder)
    extra = folder / "extra.jpg"
    seen = set()

    def read() -> None:
        store = Store.load(settings.index)
        hits = store.search(store.vector(0), 20)[0]
        assert len(hits) == store.count
        assert {store.entry(r).path for r, _ in hits} == {e.path for e in store.entries()}
        seen.add(store.count)

    with reading_in_a_thread(read) as errors:
        for i in range(6):
            if i % 2 == 0:
                photo(700 + i).save(extra)
            else:
                extra.unlink()
            ingest(folder, settings, embedder=embedder)
    assert not errors, errors[:3]
    assert seen <= {8, 9} and len(seen) == 2


def test_verify_reports_and_repairs(tmp_path, folder, embedder):
    settings = settings_for(tmp_path)
    ingest(folder, settings, embedder=embedder)
    index = str(settings.index)
    healthy = runner.invoke(app, ["verify", "--index", index])
    assert healthy.exit_code == 0 and healthy.output.strip().endswith("healthy")
    (folder / "photo-0002.jpg").unlink()
    photo(800).save(folder / "photo-0003.jpg", quality=90)
    damaged = runner.invoke(app, ["verify", "--index", index])
    assert damaged.exit_code == 3 and "photo-0002.jpg" in damaged.output and "changed: 1" in damaged.output
    repaired = runner.invoke(app, ["verify", "--index", index, "--repair"])
    assert repaired.exit_code == 0 and "dropped 1" in repaired.output
    assert Store.load(settings.index).count == 7
    assert runner.invoke(app, ["verify", "--index", index]).exit_code == 0


def test_verify_of_a_moved_or_emptied_root_says_so_and_repair_changes_nothing(tmp_path, folder, embedder):
    """BAD_INPUTS 50: with the indexed folder moved away (or an empty mount point in its place), every file
    looks gone; `--repair` must not take that for 8 deletions."""
    settings = settings_for(tmp_path)
    ingest(folder, settings, embedder=embedder)
    index, before = str(settings.index), current_generation(settings.index)
    moved = folder.rename(tmp_path / "moved")
    try:
        for args in (["verify"], ["verify", "--repair"]):
            result = runner.invoke(app, [*args, "--index", index])
            assert result.exit_code == 1 and "does not exist (moved" in result.output, result.output
        folder.mkdir()  # an empty mount point where the photos were
        emptied = runner.invoke(app, ["verify", "--repair", "--index", index])
        assert emptied.exit_code == 1 and "none of the 8 indexed files" in emptied.output, emptied.output
        assert current_generation(settings.index) == before and Store.load(settings.index).count == 8
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        moved.rename(folder)


def test_repairing_or_compacting_a_mistyped_index_leaves_no_folder_behind(tmp_path):
    """BAD_INPUTS 49: exit 3, and neither a folder nor a lock file made."""
    for command in (["verify", "--repair"], ["compact"]):
        result = runner.invoke(app, [*command, "--index", str(tmp_path / "typo" / "index")])
        assert result.exit_code == 3 and "no index in" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_verify_of_a_corrupt_index_exits_3(tmp_path, folder, embedder):
    settings = settings_for(tmp_path)
    ingest(folder, settings, embedder=embedder)
    segment_file(settings.index, "manifest.npy").write_text("garbage\n")
    result = runner.invoke(app, ["verify", "--index", str(settings.index)])
    assert result.exit_code == 3 and "corrupt" in result.output


def test_a_format_3_approximate_index_is_rebuilt_by_the_next_ingest_without_embedding(tmp_path, folder, embedder):
    settings = settings_for(tmp_path, index_type="hnsw")
    ingest(folder, settings, embedder=embedder)
    before = Store.load(settings.index)
    as_written_by_format_3(settings.index, before)
    with pytest.raises(IndexMismatch, match="older retrieval"):
        Store.load(settings.index).search(before.vector(0), 3)
    counting = Counting(embedder)
    report = ingest(folder, settings, embedder=counting)
    assert counting.images == 0 and report.embedded == 0 and report.unchanged == 8
    rebuilt = Store.load(settings.index)
    assert not rebuilt.record.stale and rebuilt.record.index["factory"] == "HNSW32"
    np.testing.assert_allclose(rebuilt.vectors(), before.vectors(), atol=1e-6)
    assert rebuilt.search(before.vector(0), 3) == before.search(before.vector(0), 3)
