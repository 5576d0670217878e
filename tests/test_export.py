"""`retrieval export`: what is read back with pyarrow equals the index, row for row; the target is written whole
or not at all, and never replaces what it must not."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from retrieval.analysis.synthetic import photo
from retrieval.cli import app as cli
from retrieval.config import Settings
from retrieval.index.store import Store
from retrieval.ingestion.job import ingest
from retrieval.maintenance import export as exporting

runner = CliRunner()


def run(*args: object):
    return runner.invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def changed_index(tmp_path_factory, photos, embedder) -> Settings:
    """An index of two segments with a deleted row: the photos ingested, one deleted, two added, ingested
    again; so "live rows in manifest order" means something."""
    folder = tmp_path_factory.mktemp("export") / "photos"
    shutil.copytree(photos, folder)
    settings = Settings(index=folder.parent / "index", weights="none", batch_size=5)
    ingest(folder, settings, embedder=embedder)
    (folder / "photo-0001.jpg").unlink()
    (folder / "new").mkdir()
    for seed in (101, 102):
        photo(seed).save(folder / "new" / f"{seed}.jpg")
    ingest(folder, settings, embedder=embedder)
    store = Store.load(settings.index)
    assert len(store.segments) == 2 and sum(s["deleted"] for s in store.segments) == 1
    return settings


def test_a_parquet_export_reads_back_equal_to_the_index(tmp_path, changed_index):
    out = tmp_path / "rows.parquet"
    result = run("export", out, "--index", changed_index.index)
    assert result.exit_code == 0, result.output
    store = Store.load(changed_index.index)
    assert f"{store.count} rows of 2048-d vectors, parquet" in result.output
    table = pq.read_table(out)
    entries = store.entries()
    assert table.column("path").to_pylist() == [e.path for e in entries]
    assert "photo-0001.jpg" not in table.column("path").to_pylist()
    assert table.column("size").to_pylist() == [e.size for e in entries]
    assert table.column("mtime").cast("int64").to_pylist() == [e.mtime_ns for e in entries]
    assert table.column("sha256").to_pylist() == [e.sha256 for e in entries]
    assert table.column("phash").to_pylist() == [e.phash for e in entries]
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(vectors, store.vectors())
    assert exporting.read_provenance(out)["rows"] == store.count


def test_an_npy_export_is_vectors_npy_beside_files_parquet(tmp_path, changed_index):
    out = tmp_path / "export"
    assert run("export", out, "--index", changed_index.index, "--format", "npy").exit_code == 0
    store = Store.load(changed_index.index)
    assert sorted(p.name for p in out.iterdir()) == ["files.parquet", "vectors.npy"]
    np.testing.assert_array_equal(np.load(out / "vectors.npy"), store.vectors())
    files = pq.read_table(out / "files.parquet")
    assert files.column_names == ["path", "size", "mtime", "sha256", "phash"]
    assert files.column("path").to_pylist() == [e.path for e in store.entries()]


def test_row_groups_stream_the_rows_a_bounded_chunk_at_a_time(tmp_path, changed_index, monkeypatch):
    """With room for 4 vectors per row group the file has ceil(rows / 4) of them, and still reads back equal."""
    monkeypatch.setattr(exporting, "GROUP_BYTES", 4 * 2048 * 4)
    store = Store.load(changed_index.index)
    done = exporting.export(changed_index.index, tmp_path / "rows.parquet")
    assert pq.ParquetFile(done.path).metadata.num_row_groups == -(-store.count // 4)
    vectors = np.stack(pq.read_table(done.path).column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(vectors, store.vectors())


def test_an_existing_target_is_replaced_only_with_force(tmp_path, changed_index):
    out = tmp_path / "rows.parquet"
    out.write_bytes(b"an older file")
    result = run("export", out, "--index", changed_index.index)
    assert result.exit_code == 2 and "exists: give --force" in result.output
    assert out.read_bytes() == b"an older file"
    assert run("export", out, "--index", changed_index.index, "--force").exit_code == 0
    assert pq.read_table(out).num_rows == Store.load(changed_index.index).count


@pytest.mark.parametrize("format", ["parquet", "npy"])
def test_force_never_replaces_a_folder_of_something_else(tmp_path, changed_index, format):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    result = run("export", folder, "--index", changed_index.index, "--format", format, "--force")
    assert result.exit_code == 2 and "is not" in result.output
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


def test_force_replaces_an_earlier_npy_export(tmp_path, changed_index):
    out = tmp_path / "export"
    assert run("export", out, "--index", changed_index.index, "--format", "npy").exit_code == 0
    (out / "vectors.npy").write_bytes(b"stale")
    assert run("export", out, "--index", changed_index.index, "--format", "npy", "--force").exit_code == 0
    assert np.load(out / "vectors.npy").shape == (Store.load(changed_index.index).count, 2048)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_target_inside_the_index_or_on_an_indexed_image_is_refused_even_with_force(tmp_path, changed_index):
    image = Store.load(changed_index.index).root / "photo-0000.jpg"
    before = image.read_bytes()
    for target in (changed_index.index / "rows.parquet", image):
        result = run("export", target, "--index", changed_index.index, "--force")
        assert result.exit_code == 2, result.output
    assert image.read_bytes() == before and not (changed_index.index / "rows.parquet").exists()


def test_bad_arguments_exit_2_and_a_missing_index_3_writing_nothing(tmp_path, changed_index):
    assert run("export", tmp_path / "no" / "such" / "x.parquet", "--index", changed_index.index).exit_code == 2
    result = run("export", tmp_path / "x", "--index", changed_index.index, "--format", "csv")
    assert result.exit_code == 2 and "parquet or npy" in result.output
    assert run("export", tmp_path / "x.parquet", "--index", tmp_path / "missing").exit_code == 3
    assert sorted(tmp_path.iterdir()) == []


def test_a_full_disk_leaves_nothing_and_exits_1(changed_index, small_filesystem):
    """BAD_INPUTS: an export target on a full disk. The vectors (about 100 KB) do not fit in the 3 MiB file
    system filled to 40 KB of room: exit 1 with the reason, and no file, staged or final, is left there."""
    filler = small_filesystem / "filler"
    filler.write_bytes(b"\0" * max(0, shutil.disk_usage(small_filesystem).free - 40_000))
    for format, name in (("parquet", "rows.parquet"), ("npy", "export")):
        result = run("export", small_filesystem / name, "--index", changed_index.index, "--format", format)
        assert result.exit_code == 1 and "No space left on device" in result.output, result.output
        assert sorted(p.name for p in small_filesystem.iterdir()) == ["filler"]
