"""`retrieval bench search` end to end on small sizes: files written, every requested row present, recall
measured against exact search, the --from-index mode, usage errors."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from retrieval.analysis.synthetic import feature_vectors
from retrieval.cli import app
from retrieval.index.manifest import Entry
from retrieval.index.store import Store

runner = CliRunner()


def test_bench_search_writes_json_markdown_and_a_plot(tmp_path):
    result = runner.invoke(
        app,
        [
            "bench",
            "search",
            "--sizes",
            "600",
            "--families",
            "clustered,cone",
            "--kinds",
            "flat,HNSW32",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "search.json").read_text())["rows"]
    expected = {(f, "flat", "") for f in ("clustered", "cone")}
    expected |= {(f, "HNSW32", f"ef_search={ef}") for f in ("clustered", "cone") for ef in (16, 32, 64, 128, 256)}
    assert {(r["family"], r["kind"], r["parameter"]) for r in rows} == expected
    assert all(r["sgemv_ms"] > 0 and r["path_p50_ms"] > 0 for r in rows)
    graph = [r for r in rows if r["kind"] == "HNSW32"]
    assert min(r["recall_at_10"] for r in graph) >= 0.9  # 600 vectors: a graph that works finds nearly all
    markdown = (tmp_path / "search.md").read_text()
    assert markdown.count("| clustered |") == markdown.count("| cone |") == 6
    assert Image.open(tmp_path / "search.png").size[0] > 500


def test_bench_search_from_an_index_holds_out_its_queries(tmp_path):
    vectors, _ = feature_vectors("cone", 1000, dim=64, seed=5)
    store = Store.create(dim=64, metric="cosine", embedding={}, root=tmp_path, runtime={})
    store.add(vectors, [Entry(f"{i}.jpg", i, i) for i in range(1000)])
    store.save(tmp_path / "mine")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["bench", "search", "--from-index", str(tmp_path / "mine"), "--kinds", "flat", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    [row] = json.loads((out / "search.json").read_text())["rows"]
    assert (row["family"], row["n"]) == ("index:mine", 900)  # a tenth held out as queries


def test_bench_search_usage_errors_exit_2_and_a_missing_index_3(tmp_path):
    for args in (["--sizes", "ten"], ["--kinds", "annoy"], ["--families", "easy"], ["--sizes", "5"]):
        assert runner.invoke(app, ["bench", "search", "--out", str(tmp_path), *args]).exit_code == 2, args
    missing = runner.invoke(app, ["bench", "search", "--out", str(tmp_path), "--from-index", str(tmp_path / "none")])
    assert missing.exit_code == 3 and "no index" in missing.output
