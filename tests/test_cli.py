"""The command line: exit codes, output and --json, through typer's CliRunner and one real subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from retrieval.analysis.synthetic import near_duplicates, photo, write_photos
from retrieval.cli import app
from retrieval.index.generations import current_generation
from retrieval.index.manifest import Entry
from retrieval.index.segment_files import VECTORS
from retrieval.index.store import Store

from .conftest import no_hang, segment_file
from .test_images import png_header_only

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory, photos):
    index = tmp_path_factory.mktemp("cli") / "index"
    result = run("ingest", photos, "--index", index, "--weights", "none", "--batch-size", "6", "--quiet")
    assert result.exit_code == 0, result.output
    assert "Indexed 12 images" in result.output
    return index


def test_query_prints_a_ranked_table(cli_index, photos):
    result = run("query", photos / "photo-0004.jpg", "--index", cli_index, "-k", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["rank", "similarity", "path"]
    assert lines[1].split()[0] == "1" and lines[1].endswith("photo-0004.jpg")
    assert len(lines) == 4


def test_query_json_parses_and_finds_a_mirrored_copy(cli_index, tmp_path):
    near_duplicates(photo(9))["mirrored"].save(tmp_path / "mirror.png")
    result = run("query", tmp_path / "mirror.png", "--index", cli_index, "-k", "20", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["embedded"] is True and body["metric"] == "cosine"
    assert [r["rank"] for r in body["results"]] == list(range(1, 13))  # k > count: only what exists
    assert body["results"][0]["relative_path"] == "photo-0009.jpg"


def test_query_draws_a_collage(cli_index, photos, tmp_path):
    out = tmp_path / "c.png"
    result = run("query", photos / "photo-0000.jpg", "--index", cli_index, "--collage", out)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size[0] > 6 * 256


def test_info_reports_the_index(cli_index):
    result = run("info", "--index", cli_index, "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["count"] == 12 and facts["model"] == "resnet50" and facts["dim"] == 2048
    assert facts["weights"] == {"source": "random", "seed": 0} and facts["metric"] == "cosine"
    assert run("info", "--index", cli_index).output.startswith("index")


@pytest.mark.parametrize("k", ["0", "-3"])
def test_k_below_one_is_a_usage_error(cli_index, photos, k):
    assert run("query", photos / "photo-0000.jpg", "--index", cli_index, "-k", k).exit_code == 2


def test_a_missing_folder_or_a_file_as_folder_is_a_usage_error(tmp_path, photos):
    assert run("ingest", tmp_path / "nope", "--index", tmp_path / "i").exit_code == 2
    assert run("ingest", photos / "photo-0000.jpg", "--index", tmp_path / "i").exit_code == 2


def test_an_empty_folder_exits_4_and_keeps_the_index(cli_index, tmp_path):
    before = current_generation(cli_index)
    (tmp_path / "empty").mkdir()
    result = run("ingest", tmp_path / "empty", "--index", cli_index, "--weights", "none", "--quiet")
    assert result.exit_code == 4
    assert "no image files" in result.output
    assert current_generation(cli_index) == before


def test_a_corrupt_or_bomb_query_image_exits_1(cli_index, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    (tmp_path / "bomb.png").write_bytes(png_header_only(40000, 40000))
    for name, reason in (("bad.jpg", "error:"), ("bomb.png", "decompression bomb")):
        result = run("query", tmp_path / name, "--index", cli_index)
        assert result.exit_code == 1 and reason in result.output


def test_a_missing_or_corrupt_index_exits_3(tmp_path, cli_index, photos):
    assert run("query", photos / "photo-0000.jpg", "--index", tmp_path / "none").exit_code == 3
    damaged = tmp_path / "damaged"
    shutil.copytree(cli_index, damaged)
    vectors = segment_file(damaged, VECTORS)
    vectors.write_bytes(vectors.read_bytes()[:100])
    result = run("query", photos / "photo-0000.jpg", "--index", damaged)
    assert result.exit_code == 3 and "corrupt" in result.output
    assert run("info", "--index", damaged).exit_code == 0  # info reads metadata only


def test_an_empty_index_exits_4_for_every_command_that_searches_it(tmp_path, photos, embedder):
    """BAD_INPUTS 42 and 58 (export too); and an index too small to measure is a usage error for the bench."""
    Store.create(dim=2048, metric="cosine", embedding=embedder.embedding(), root=photos, runtime={}).save(
        tmp_path / "idx"
    )
    result = run("query", photos / "photo-0000.jpg", "--index", tmp_path / "idx")
    assert result.exit_code == 4 and "no results" in result.output
    for command in (["eval"], ["dupes", "--relative", "0.3"], ["bench", "search", "--out", tmp_path / "b"]):
        flag = "--from-index" if command[0] == "bench" else "--index"
        result = run(*command, flag, tmp_path / "idx")
        assert result.exit_code == 4 and "is empty" in result.output, (command, result.output)
    result = run("export", tmp_path / "rows.parquet", "--index", tmp_path / "idx")
    assert result.exit_code == 4 and "nothing to export" in result.output and not (tmp_path / "rows.parquet").exists()
    small = Store.create(dim=2048, metric="cosine", embedding=embedder.embedding(), root=photos, runtime={})
    small.add(np.eye(1, 2048, dtype=np.float32), [Entry("photo-0000.jpg", 1, 1)])
    small.save(tmp_path / "one")
    result = run("bench", "search", "--from-index", tmp_path / "one", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "holds 1 rows; --from-index needs at least 100" in result.output, result.output
    assert not (tmp_path / "b").exists()


def test_bad_config_exits_2(tmp_path, photos):
    (tmp_path / "config.yaml").write_text("batch_size: many\n")
    result = run("ingest", photos, "--config", tmp_path / "config.yaml")
    assert result.exit_code == 2 and "whole number" in result.output


def test_a_real_subprocess_with_a_name_that_is_not_utf8(tmp_path):
    """`python -m retrieval` as a user runs it, under LC_ALL=C.UTF-8, with a non-UTF-8 file name that
    holds a copy of another file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        photo(i).save(folder / f"p{i}.jpg")
    odd = os.fsencode(folder) + b"/caf\xe9.jpg"
    shutil.copy(folder / "p1.jpg", odd)
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    common = {"capture_output": True, "env": env, "timeout": 300}
    ingest = subprocess.run(
        [sys.executable, "-m", "retrieval", "ingest", folder, "--index", tmp_path / "i", "--weights", "none", "-q"],
        **common,
    )
    assert ingest.returncode == 0, ingest.stderr
    table = subprocess.run([sys.executable, "-m", "retrieval", "query", odd, "--index", tmp_path / "i"], **common)
    assert table.returncode == 0, table.stderr
    assert b"caf\\xe9.jpg" in table.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "retrieval", "query", odd, "--index", tmp_path / "i", "--json"], **common
    )
    assert as_json.returncode == 0, as_json.stderr
    results = json.loads(as_json.stdout)["results"]
    assert len(results) == 4  # the same picture under two names is two entries
    # the copy and its original tie at the top; surrogate escapes round-trip to the original bytes
    assert {os.fsencode(r["path"]) for r in results[:2]} == {odd, os.fsencode(folder / "p1.jpg")}
    assert results[1]["score"] == pytest.approx(1.0, abs=1e-5)


def test_several_queries_and_a_folder_in_one_batch(cli_index, photos, tmp_path):
    queries = tmp_path / "queries"
    queries.mkdir()
    for seed in (2, 5):
        near_duplicates(photo(seed))["resized"].save(queries / f"copy-{seed}.png")
    result = run("query", photos / "photo-0001.jpg", queries, "--index", cli_index, "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    bodies = json.loads(result.output)
    assert [b["results"][0]["relative_path"] for b in bodies] == ["photo-0001.jpg", "photo-0002.jpg", "photo-0005.jpg"]
    assert [b["embedded"] for b in bodies] == [False, True, True]
    table = run("query", queries, "--index", cli_index, "-k", "1")
    assert table.output.count("query: ") == 2
    assert run("query", queries, "--index", cli_index, "--collage", tmp_path / "c.png").exit_code == 2


def test_the_index_type_can_be_chosen_on_the_command_line(photos, tmp_path):
    index = tmp_path / "index"
    result = run("ingest", photos, "--index", index, "--weights", "none", "--index-type", "hnsw", "-q")
    assert result.exit_code == 0, result.output
    facts = json.loads(run("info", "--index", index, "--json").output)
    assert facts["index_type"] == "HNSW32"
    assert run("ingest", photos, "--index", index, "--index-type", "annoy").exit_code == 2


def test_a_recall_below_target_is_warned_by_ingest_info_and_verify(tmp_path, monkeypatch):
    """60 photos with auto's threshold lowered to 50 and its only candidate a kind far below the target:
    auto falls back to flat, and every command that reports on the index says so."""
    from retrieval.ann import tuning
    from retrieval.ann.indexes import IndexChoice
    from retrieval.ann.tuning import Candidate

    monkeypatch.setattr(tuning, "AUTO_FLAT_BELOW", 50)
    weak = IndexChoice("ivf", ivf_lists=30, pq_bytes=2, rerank=1)
    monkeypatch.setattr(tuning, "candidates", lambda *_: [Candidate(weak, "nprobe", (1,))])
    write_photos(tmp_path / "photos", 60)
    index = tmp_path / "index"
    ingested = run("ingest", tmp_path / "photos", "--index", index, "--weights", "none", "-q")
    assert ingested.exit_code == 0, ingested.output
    for result in (ingested, run("info", "--index", index), run("verify", "--index", index)):
        assert "warning: auto chose exact search (flat): no approximate kind reached recall@10 0.95" in result.output
        assert "IVF30,PQ4x4fs,RFlat" in result.output
    facts = json.loads(run("info", "--index", index, "--json").output)
    assert facts["index_type"] == "Flat" and facts["recall_at_10"] == 1.0 and "auto chose" in facts["warning"]


def test_fifos_given_as_folder_entries_query_truth_or_config_never_block(cli_index, tmp_path, photos):
    """BAD_INPUTS 47: a FIFO in the folder is skipped with its reason; as a query, a truth file or a config
    file it is refused with one that names it. Each run is bounded: a hang ends the test run."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photos / "photo-0000.jpg", folder)
    for fifo in (folder / "pipe.jpg", tmp_path / "query.jpg", tmp_path / "truth.json", tmp_path / "config.yaml"):
        os.mkfifo(fifo)
    with no_hang(180):
        ingested = run("ingest", folder, "--index", tmp_path / "i", "--weights", "none", "--quiet")
        queried = run("query", tmp_path / "query.jpg", "--index", cli_index)
        evaluated = run("eval", "--truth", tmp_path / "truth.json", "--index", cli_index)
        configured = run("info", "--index", cli_index, "--config", tmp_path / "config.yaml")
    assert ingested.exit_code == 0 and "Skipped 1: 1 not a regular file" in ingested.output, ingested.output
    assert queried.exit_code == 1 and "query.jpg: a FIFO" in queried.output, queried.output
    assert evaluated.exit_code == 2 and "truth.json (--truth): a FIFO" in evaluated.output, evaluated.output
    assert configured.exit_code == 2 and "config.yaml: a FIFO" in configured.output, configured.output


POINTER_DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "not UTF-8": lambda p: p.write_bytes(b"gen-\xff\xfe\n"),
    "a folder": lambda p: (p.unlink(), p.mkdir(), (p / "x").write_text("x")),
    "a FIFO": lambda p: (p.unlink(), os.mkfifo(p)),
    "a missing generation": lambda p: p.write_text("gen-999999\n"),
    "outside the index": lambda p: p.write_text("../../etc\n"),
}


@pytest.mark.parametrize("damage", POINTER_DAMAGE)
def test_a_damaged_current_pointer_is_a_corrupt_index_for_every_command_and_ingest_full_repairs_it(
    damage, cli_index, photos, tmp_path
):
    """BAD_INPUTS 48: exit 3 and "corrupt" from every command that reads the index, never a traceback or a
    hang; then the remedy the message names, `ingest --full`, rebuilds it."""
    index = tmp_path / "index"
    shutil.copytree(cli_index, index)
    POINTER_DAMAGE[damage](index / "CURRENT")
    commands = [
        ["query", photos / "photo-0000.jpg"],
        ["info"],
        ["verify"],
        ["verify", "--repair"],
        ["compact"],
        ["dupes"],
        ["eval", "--sample", "2"],
        ["ingest", photos, "--weights", "none", "--quiet"],
    ]
    with no_hang(120):
        for command in commands:
            result = run(*command, "--index", index)
            assert result.exit_code == 3, (command, result.output)
            assert "corrupt" in result.output and "ingest --full" in result.output, (command, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit), (command, result.exception)
        rebuilt = run("ingest", photos, "--index", index, "--weights", "none", "--quiet", "--full")
    assert rebuilt.exit_code == 0 and "Indexed 12 images" in rebuilt.output, rebuilt.output
    found = run("query", photos / "photo-0003.jpg", "--index", index, "-k", "1")
    assert found.exit_code == 0 and found.output.splitlines()[1].endswith("photo-0003.jpg"), found.output


def test_the_help_shows_the_truth_files_format_with_its_brackets():
    """Rich reads `[...]` as markup and ate `[relevant, ...]` from the help."""
    shown = " ".join(re.sub(r"[│╭╮╰╯─]", " ", run("eval", "--help").output).split())
    assert "JSON {query: [relevant, ...]} or CSV query,relevant" in shown, shown
