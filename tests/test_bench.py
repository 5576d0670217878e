"""`retrieval bench search` end to end on a small size: files written, flat exact, usage errors."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from retrieval.cli import app

runner = CliRunner()


def test_bench_search_writes_json_markdown_and_a_plot(tmp_path):
    result = runner.invoke(
        app, ["bench", "search", "--sizes", "600", "--families", "clustered,hard", "--kinds", "flat,HNSW32", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "search.json").read_text())["rows"]
    assert {(r["family"], r["kind"]) for r in rows} == {(f, k) for f in ("clustered", "hard") for k in ("flat", "HNSW32")}
    assert all(r["recall_at_10"] == 1.0 for r in rows if r["kind"] == "flat")
    assert all(0 < r["p50_ms"] <= r["p99_ms"] for r in rows)
    assert (tmp_path / "search.md").read_text().count("| clustered |") == 6  # flat + 5 efSearch values
    assert Image.open(tmp_path / "search.png").size[0] > 500


def test_bench_search_usage_errors(tmp_path):
    for args in (["--sizes", "ten"], ["--kinds", "annoy"], ["--families", "easy"], ["--sizes", "5"]):
        assert runner.invoke(app, ["bench", "search", "--out", str(tmp_path), *args]).exit_code == 2
