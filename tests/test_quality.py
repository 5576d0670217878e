"""`retrieval eval`: the measures against a hand-computed example, ground-truth files, and the label-free run
on a real index (random-weight ResNet50), which a seed makes repeatable."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from retrieval.analysis.quality import (
    average_precision,
    evaluate_augmented,
    evaluate_labelled,
    precision_at,
    read_ground_truth,
    recall_at,
)
from retrieval.analysis.synthetic import near_duplicates, photo
from retrieval.cli import app as cli
from retrieval.config import Settings
from retrieval.errors import UsageError
from retrieval.ingestion.job import ingest
from retrieval.io.changes import CHANGES
from retrieval.search.searcher import Searcher

from .test_dupes import ORIGINALS, planted_folder

runner = CliRunner()


def test_measures_equal_a_hand_computed_example():
    ranked = ["a", "x", "b", "y", "c"]
    relevant = {"a", "b", "c", "d"}  # d is never ranked
    assert recall_at(ranked, relevant, 3) == 2 / 4
    assert precision_at(ranked, relevant, 3) == 2 / 3
    assert precision_at(["a"], relevant, 3) == 1 / 3  # k places, even when fewer came back
    assert average_precision(ranked, relevant) == pytest.approx((1 / 1 + 2 / 3 + 3 / 5) / 4)
    assert average_precision(["x", "y"], relevant) == 0.0


def test_ground_truth_reads_the_same_from_json_and_csv(tmp_path):
    (tmp_path / "truth.json").write_text(json.dumps({"q1.jpg": ["a.jpg", "b.jpg"], "q2.jpg": ["c.jpg"]}))
    (tmp_path / "truth.csv").write_text("query,relevant\nq1.jpg,a.jpg\nq1.jpg,b.jpg\nq2.jpg,c.jpg\n")
    expected = {tmp_path / "q1.jpg": {"a.jpg", "b.jpg"}, tmp_path / "q2.jpg": {"c.jpg"}}
    assert read_ground_truth(tmp_path / "truth.json") == expected == read_ground_truth(tmp_path / "truth.csv")


@pytest.mark.parametrize(
    ("name", "text"),
    [("bad.json", "{not json"), ("list.json", '["a.jpg"]'), ("empty.json", "{}"), ("headless.csv", "a.jpg,b.jpg\n")],
)
def test_a_malformed_ground_truth_is_a_usage_error(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(UsageError):
        read_ground_truth(tmp_path / name)


@pytest.fixture
def planted(tmp_path, embedder, make_embedder) -> Searcher:
    folder = tmp_path / "photos"
    planted_folder(folder)
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(folder, settings, embedder=embedder)
    return Searcher(settings, make_embedder)


def test_labelled_queries_find_their_copies_and_not_themselves(planted, tmp_path):
    root = planted.store.root
    outside = tmp_path / "mirrored-0.jpg"
    near_duplicates(photo(300))["resized"].save(outside, quality=95)  # not indexed: embedded
    truth = {root / f"photo-{i:04d}.jpg": {f"small-{i}.jpg", f"lowq-{i}.jpg"} for i in range(ORIGINALS)}
    truth[outside] = {"photo-0000.jpg", "small-0.jpg", "lowq-0.jpg"}
    report = evaluate_labelled(planted, truth, k=3)
    assert report.queries == ORIGINALS + 1
    assert [q["recall"] for q in report.per_query] == [1.0] * (ORIGINALS + 1)
    assert [q["precision"] for q in report.per_query] == [2 / 3] * ORIGINALS + [1.0]
    assert report.map == 1.0


def test_a_relevant_path_missing_from_the_index_is_a_usage_error(planted):
    with pytest.raises(UsageError, match="not in the index"):
        evaluate_labelled(planted, {planted.store.root / "photo-0000.jpg": {"nowhere.jpg"}})


def test_the_label_free_run_is_deterministic_for_a_seed(planted):
    first = evaluate_augmented(planted, sample=8, k=5, seed=3)
    again = evaluate_augmented(planted, sample=8, k=5, seed=3)
    other = evaluate_augmented(planted, sample=8, k=5, seed=4, transforms=["resize"])
    assert first == again and len(first.sample) == 8 and set(first.recall_at_1) == set(CHANGES)
    assert other.sample != first.sample
    # what random weights are known to find (see the README): resized and re-encoded copies
    assert first.recall_at_k["resize"] == 1.0 and first.recall_at_k["jpeg"] == 1.0


def test_eval_command_prints_json_and_refuses_an_unknown_transform(indexed):
    result = runner.invoke(
        cli, ["eval", "--index", str(indexed.index), "--sample", "4", "--transforms", "resize,jpeg", "--json"]
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["count"] == 4 and set(answer["recall_at_1"]) == {"resize", "jpeg"}
    assert set(answer["overall"]) == {"recall@1", "recall@10"}
    bad = runner.invoke(cli, ["eval", "--index", str(indexed.index), "--transforms", "sepia"])
    assert bad.exit_code == 2 and "unknown transform" in bad.output


def test_eval_command_with_a_csv_ground_truth(indexed, tmp_path):
    near_duplicates(photo(1))["resized"].save(tmp_path / "query.jpg", quality=95)  # photo-0001's copy
    (tmp_path / "truth.csv").write_text("query,relevant\nquery.jpg,photo-0001.jpg\n")
    args = ["eval", "--index", str(indexed.index), "--truth", str(tmp_path / "truth.csv"), "-k", "5", "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert (answer["queries"], answer["recall@5"], answer["precision@5"], answer["mAP@100"]) == (1, 1.0, 0.2, 1.0)


@pytest.mark.parametrize(
    ("truth", "code", "message"),
    [
        ("query,relevant\nmissing.jpg,photo-0001.jpg\n", 1, "missing.jpg"),
        ("query,relevant\nnotes.jpg,photo-0001.jpg\n", 1, "not an image"),
        ("query,relevant\nquery.jpg,../outside.jpg\n", 2, "'../outside.jpg'"),
        ("query,relevant\nquery.jpg,gone.jpg\n", 2, "not in the index, e.g. 'gone.jpg'"),
    ],
)
def test_a_truth_file_naming_missing_non_image_or_outside_files_says_which(indexed, tmp_path, truth, code, message):
    """BAD_INPUTS 59: a query that is not there or not an image, a relevant path outside the indexed folder or
    not indexed: the exit code, and a message that names the file."""
    near_duplicates(photo(1))["resized"].save(tmp_path / "query.jpg", quality=95)
    (tmp_path / "notes.jpg").write_text("not a picture")
    (tmp_path / "truth.csv").write_text(truth)
    result = runner.invoke(cli, ["eval", "--index", str(indexed.index), "--truth", str(tmp_path / "truth.csv")])
    assert result.exit_code == code and message in result.output, result.output
