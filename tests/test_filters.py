"""Narrowing a search by folder, modification time and size: what users type is read or refused alike by the
command line and the server, and a real index (the model's vectors of generated photos in two folders) answers
only from the files the filter keeps, ranked as an unfiltered search ranks them."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from retrieval.analysis.synthetic import near_duplicates, photo
from retrieval.cli import app as cli
from retrieval.config import Settings
from retrieval.errors import UsageError
from retrieval.filters import Filter, parse_filter, parse_size, parse_time, within
from retrieval.ingestion.job import ingest
from retrieval.search.searcher import Searcher, query
from retrieval.server import ServeOptions, create_app

from .conftest import CHROMEDRIVER, CHROMIUM, PHOTOS
from .test_page import ARTIFACTS, captions, wait_for
from .test_server import jpeg, serving_app

runner = CliRunner()
NEW_YEAR = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()


def run(*args: object):
    return runner.invoke(cli, [str(a) for a in args])


def test_dates_sizes_and_folders_are_read_as_typed():
    assert parse_time("2024-01-01", "x") == int(NEW_YEAR) * 10**9
    assert parse_time("2024-01-01T01:00:00+01:00", "x") == int(NEW_YEAR) * 10**9
    assert parse_time("2024-01-01T00:00:00.5", "x") == int(NEW_YEAR) * 10**9 + 500_000_000
    assert [parse_size(t, "x") for t in ("512", "2kB", "2KiB", "1.5 MB", "1MiB", "3g")] == [
        512, 2000, 2048, 1_500_000, 2**20, 3 * 10**9,
    ]  # fmt: skip
    assert parse_filter(folder="./a//b/").folder == "a/b"
    assert parse_filter(folder=".").folder == "" and not parse_filter(folder=".")
    assert within("/photos/2023/x", "/photos") == "2023/x" and within("/photos", "/photos") == ""


@pytest.mark.parametrize(
    "given, said",
    [
        ({"modified_after": "yesterday"}, "cannot read 'yesterday' as a date"),
        ({"modified_before": "2024-13-01"}, "cannot read '2024-13-01' as a date"),
        ({"min_size": "-5"}, "cannot read '-5' as a size"),
        ({"max_size": "nan"}, "cannot read 'nan' as a size"),
        ({"max_size": "inf"}, "cannot read 'inf' as a size"),
        ({"min_size": "2 parsecs"}, "cannot read '2 parsecs' as a size"),
        ({"min_size": "1" + "0" * 30}, "too large"),
        ({"folder": "../elsewhere"}, "outside the indexed folder"),
        ({"folder": "a/../../b"}, "outside the indexed folder"),
        ({"folder": "a\x00b"}, "NUL"),
        ({"modified_after": "2024-02-01", "modified_before": "2024-01-01"}, "range is empty"),
        ({"min_size": ""}, "cannot read '' as a size"),
        ({"modified_before": " "}, "cannot read ' ' as a date"),
        ({"folder": ""}, "an empty folder"),
        ({"min_size": "2MB", "max_size": "1MB"}, "range is empty"),
    ],
)
def test_what_cannot_be_read_is_refused_naming_it(given, said):
    with pytest.raises(UsageError, match=said):
        parse_filter(**given)


def test_an_absolute_folder_outside_the_root_is_refused():
    with pytest.raises(UsageError, match="outside the indexed folder"):
        within("/elsewhere/2023", "/photos")
    with pytest.raises(UsageError, match="outside the indexed folder"):
        within("/photos-old", "/photos")


@pytest.fixture(scope="module")
def two_years(tmp_path_factory, photos, embedder) -> Settings:
    """The photos twice, in 2023/ (mtimes in 2023) and 2024/ (mtimes in 2024), ingested by the real pipeline."""
    root = tmp_path_factory.mktemp("library") / "photos"
    for year in (2023, 2024):
        shutil.copytree(photos, root / str(year))
        stamp = datetime(year, 6, 1, tzinfo=timezone.utc).timestamp()
        for path in (root / str(year)).iterdir():
            os.utime(path, (stamp, stamp))
    settings = Settings(index=root.parent / "index", weights="none", batch_size=5)
    ingest(root, settings, embedder=embedder)
    return settings


def mirrored(tmp_path, seed: int):
    path = tmp_path / f"mirrored-{seed}.jpg"
    near_duplicates(photo(seed))["mirrored"].convert("RGB").save(path)
    return path


@pytest.mark.parametrize(
    "where, year",
    [(Filter(folder="2023"), 2023), (Filter(modified_after=int(NEW_YEAR) * 10**9), 2024)],
)
def test_a_filtered_query_ranks_the_kept_files_as_the_whole_index_does(tmp_path, two_years, make_embedder, where, year):
    image = mirrored(tmp_path, 3)
    everything = query(image, two_years, k=2 * PHOTOS, make_embedder=make_embedder)
    kept = query(image, two_years, k=PHOTOS, make_embedder=make_embedder, where=where)
    expected = [(h.path, h.score) for h in everything.hits if h.path.startswith(f"{year}/")]
    assert [(h.path, h.score) for h in kept.hits] == expected
    assert kept.hits[0].path == f"{year}/photo-0003.jpg" and [h.rank for h in kept.hits] == list(range(1, PHOTOS + 1))


def test_the_command_line_takes_every_filter_and_exits_4_when_none_is_kept(tmp_path, two_years):
    image, index = mirrored(tmp_path, 2), two_years.index
    result = run("query", image, "--index", index, "--folder", "2024", "--min-size", "1", "-k", "3")
    paths = _paths(result.output)
    assert result.exit_code == 0 and len(paths) == 3, result.output
    assert paths[0].endswith("/2024/photo-0002.jpg") and all("/2024/" in p for p in paths)
    inside = run("query", image, "--index", index, "--folder", two_years.index.parent / "photos" / "2023", "-k", "1")
    assert inside.exit_code == 0 and _paths(inside.output)[0].endswith("2023/photo-0002.jpg"), inside.output
    before = run("query", image, "--index", index, "--modified-before", "2024-01-01", "-k", "1")
    assert _paths(before.output)[0].endswith("2023/photo-0002.jpg"), before.output
    none = run("query", image, "--index", index, "--max-size", "10")
    assert none.exit_code == 4 and "no indexed image is of at most 10 bytes" in none.output, none.output
    bad_flags = (["--modified-after", "soon"], ["--folder", "../x"], ["--folder", "/elsewhere"], ["--min-size", "nan"])
    for bad in (*bad_flags, ["--max-size", ""], ["--folder", ""]):
        result = run("query", image, "--index", index, *bad)
        assert result.exit_code == 2, (bad, result.output)


def _paths(output: str) -> list[str]:
    return [line.split()[-1] for line in output.splitlines() if line.strip()[:1].isdigit()]


def test_the_server_filters_both_searches_and_answers_422_for_what_it_cannot_read(two_years, embedder):
    searcher = Searcher(two_years, lambda _: embedder)
    upload = {"files": ("q.jpg", jpeg(near_duplicates(photo(4))["mirrored"]))}
    with serving_app(create_app(searcher, ServeOptions())) as c:
        by_id = c.get("/search", params={"id": 0, "k": 5, "folder": "2024"})
        by_upload = c.post("/search", files=upload, data={"k": "3", "modified_after": "2024-01-01"})
        nothing = c.get("/search", params={"id": 0, "max_size": "10"})
        bad = [
            c.get("/search", params={"id": 0, **given})
            for given in ({"folder": "../up"}, {"modified_after": "2024-99-01"}, {"min_size": "nan"}, {"folder": "/x"})
        ]
        bad_form = c.post("/search", files=upload, data={"max_size": "a lot"})
    assert by_id.status_code == 200 and [h["path"][:5] for h in by_id.json()["results"][0]] == ["2024/"] * 5
    assert by_upload.json()["results"][0][0]["path"] == "2024/photo-0004.jpg"
    assert {h["path"][:5] for h in by_upload.json()["results"][0]} == {"2024/"}
    assert nothing.status_code == 200 and nothing.json()["results"] == [[]]
    assert [r.status_code for r in bad] == [422] * 4 and "outside the indexed folder" in bad[0].json()["detail"]
    assert bad_form.status_code == 422 and "as a size" in bad_form.json()["detail"]


def test_query_by_server_sends_the_filters(tmp_path, two_years, embedder):
    image = mirrored(tmp_path, 5)
    local = run("query", image, "--index", two_years.index, "--folder", "2023", "-k", "3", "--json")
    with serving_app(create_app(Searcher(two_years, lambda _: embedder), ServeOptions())) as c:
        remote = run("query", image, "--server", str(c.base_url), "--folder", "2023", "-k", "3", "--json")
    assert remote.exit_code == 0, remote.output
    hits = [[h["relative_path"] for h in json.loads(out.output)["results"]] for out in (local, remote)]
    assert hits[0] == hits[1] and all(p.startswith("2023/") for p in hits[0])


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromium-driver are not installed")
def test_the_page_narrows_a_search_by_folder_and_searches_again_when_it_changes(tmp_path, two_years, embedder, browser):
    """In Chromium: "Narrow the search", folder 2023, an upload: every hit from 2023/, its original first;
    the folder changed to 2024: the same image searched again, every hit from 2024/; a folder outside the
    indexed one: the server's reason on the page."""
    from selenium.webdriver.common.by import By

    def folders(driver) -> set[str]:
        return {line.split("\n")[-1].split("/")[0] for line in captions(driver)}

    with serving_app(create_app(Searcher(two_years, lambda _: embedder), ServeOptions())) as client:
        browser.get(str(client.base_url) + "/")
        wait_for(browser, lambda d: "images" in d.find_element(By.ID, "info").text, "the index facts")
        browser.find_element(By.CSS_SELECTOR, "#narrow summary").click()
        browser.find_element(By.ID, "folder").send_keys("2023")
        browser.find_element(By.ID, "file").send_keys(str(mirrored(tmp_path, 6)))
        wait_for(browser, lambda d: len(captions(d)) == 10 and folders(d) == {"2023"}, "10 hits from 2023/")
        assert captions(browser)[0].endswith("2023/photo-0006.jpg")
        field = browser.find_element(By.ID, "folder")
        field.clear()
        field.send_keys("2024\n")
        browser.execute_script("document.getElementById('folder').dispatchEvent(new Event('change'))")
        wait_for(browser, lambda d: len(captions(d)) == 10 and folders(d) == {"2024"}, "10 hits from 2024/")
        assert captions(browser)[0].endswith("2024/photo-0006.jpg")
        browser.save_screenshot(str(ARTIFACTS / "page-narrowed.png"))
        field.clear()
        field.send_keys("../elsewhere")
        browser.execute_script("document.getElementById('folder').dispatchEvent(new Event('change'))")
        wait_for(browser, lambda d: "outside the indexed folder" in d.find_element(By.ID, "message").text, "refused")
