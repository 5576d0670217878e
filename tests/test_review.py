"""The review page of duplicate groups in `retrieval serve`: its JSON routes over a real uvicorn, and the page
itself in Debian's Chromium (headless, through Selenium), moving a group's extras with a keeper chosen by a
click. Screenshots of the page are saved under test-artifacts/."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from retrieval.config import Settings
from retrieval.index.store import Store
from retrieval.ingestion.job import ingest
from retrieval.maintenance.verify import verify
from retrieval.search.searcher import Searcher
from retrieval.server import ServeOptions

from .conftest import CHROMEDRIVER, CHROMIUM
from .test_dupes import planted_folder
from .test_page import ARTIFACTS, wait_for
from .test_server import serving


@pytest.fixture
def planted(tmp_path, embedder) -> tuple[Settings, list[set[str]]]:
    """3 planted groups of 3 among 40 photos (enough rows for the measured cut-off), indexed."""
    groups = planted_folder(tmp_path / "photos", photos=40)
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(tmp_path / "photos", settings, embedder=embedder)
    return settings, groups


def found(client, **params) -> dict:
    """GET /dupes/groups until the groups are found (202 before), within a minute."""
    for _ in range(600):
        response = client.get("/dupes/groups", params=params, headers=client.headers)
        if response.status_code != 202:
            assert response.status_code == 200, response.text
            return response.json()
        time.sleep(0.1)
    raise AssertionError("the groups were not found within a minute")


def paths_of(groups: list[dict]) -> list[set[str]]:
    return sorted(({m["path"] for m in g["members"]} for g in groups), key=sorted)


def test_the_review_routes_page_the_groups_guard_them_and_move_a_groups_extras(planted, embedder, tmp_path):
    settings, groups = planted
    target = tmp_path / "extras"
    searcher = Searcher(settings, lambda _: embedder)
    with serving(searcher, ServeOptions(token="s3cret")) as c:  # no --move-to: read-only
        assert c.get("/dupes/groups").status_code == 401
        token = {"Authorization": "Bearer s3cret"}
        c.headers.update(token)
        first = found(c, limit=2)
        rest = found(c, offset=2, limit=2)
        assert first["total"] == rest["total"] == 3 and [len(first["groups"]), len(rest["groups"])] == [2, 1]
        assert paths_of(first["groups"] + rest["groups"]) == sorted(groups, key=sorted)
        assert not first["movable"] and first["threshold"] is not None
        ids = [m["id"] for m in first["groups"][0]["members"]]
        body = {"generation": first["generation"], "ids": ids, "keep": ids[1]}
        assert c.post("/dupes/move", json=body, headers=token).status_code == 403
        assert {"/dupes/groups", "/dupes/move"} <= set(c.get("/openapi.json", headers=token).json()["paths"])
    with serving(searcher, ServeOptions(move_to=target)) as c:
        page = found(c)
        group = next(g for g in page["groups"] if "photo-0001.jpg" in {m["path"] for m in g["members"]})
        ids = [m["id"] for m in group["members"]]
        keep = next(m["id"] for m in group["members"] if m["path"] == "small-1.jpg")  # not the suggested one
        body = {"generation": page["generation"], "ids": ids, "keep": keep}
        assert c.post("/dupes/move", json={**body, "keep": 10**6}).status_code == 422
        assert c.post("/dupes/move", json={**body, "generation": "gen-999999"}).status_code == 409
        moved = c.post("/dupes/move", json=body).json()
        assert sorted(m["source"] for m in moved["moves"]) == ["lowq-1.jpg", "photo-0001.jpg"]
        assert all(m["done"] for m in moved["moves"])
        after = found(c)
        assert after["total"] == 2 and after["generation"] != page["generation"]
        assert c.post("/dupes/move", json=body).status_code == 409  # that generation is gone
    log = [json.loads(line) for line in (target / "dupes-log.jsonl").read_text().splitlines()]
    assert sorted(Path(e["destination"]).relative_to(target).as_posix() for e in log) == [
        "lowq-1.jpg",
        "photo-0001.jpg",
    ]
    assert all(Path(e["destination"]).is_file() and not (searcher.root / e["source"]).exists() for e in log)
    assert (searcher.root / "small-1.jpg").is_file()
    listed = {e.path for e in Store.load(settings.index).entries()}
    assert "small-1.jpg" in listed and not {"lowq-1.jpg", "photo-0001.jpg"} & listed
    assert verify(settings.index).healthy


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromium-driver are not installed")
def test_in_the_browser_with_a_token_a_group_is_shown_its_keeper_changed_by_a_click_and_its_extras_moved(
    browser,
    planted,
    embedder,
    tmp_path,
):
    from selenium.webdriver.common.by import By

    settings, _ = planted
    target = tmp_path / "extras"
    searcher = Searcher(settings, lambda _: embedder)
    ARTIFACTS.mkdir(exist_ok=True)
    with serving(searcher, ServeOptions(move_to=target, token="s3cret")) as client:
        browser.get(str(client.base_url) + "/?token=s3cret")  # the search page, then its link, token carried
        wait_for(browser, lambda d: "?token=s3cret" in d.find_element(By.ID, "to-dupes").get_attribute("href"), "link")
        browser.find_element(By.ID, "to-dupes").click()
        # finding them (the cut-off measured on changed copies, then every image's neighbours) takes a while
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".group")) == 3, "three groups", 180)
        row = next(s for s in browser.find_elements(By.CSS_SELECTOR, ".group") if "photo-0000.jpg" in s.text)
        members = {f.find_element(By.TAG_NAME, "a").text: f for f in row.find_elements(By.CSS_SELECTOR, ".member")}
        assert "keep" in members["photo-0000.jpg"].get_attribute("class")  # the suggested keeper: the largest
        assert all(img.get_property("naturalWidth") > 0 for img in row.find_elements(By.TAG_NAME, "img"))
        browser.save_screenshot(str(ARTIFACTS / "dupes-page.png"))
        members["small-0.jpg"].find_element(By.TAG_NAME, "img").click()
        assert "keep" in members["small-0.jpg"].get_attribute("class")
        assert "keep" not in members["photo-0000.jpg"].get_attribute("class")
        row.find_element(By.CSS_SELECTOR, "button.move").click()
        wait_for(browser, lambda d: "moved 2 files" in d.find_element(By.ID, "message").text, "the move's report", 180)
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".group")) == 2, "two groups left", 180)
        browser.save_screenshot(str(ARTIFACTS / "dupes-page-moved.png"))
    log = [json.loads(line) for line in (target / "dupes-log.jsonl").read_text().splitlines()]
    assert sorted(e["source"] for e in log) == ["lowq-0.jpg", "photo-0000.jpg"] and all(e["done"] for e in log)
    assert all(Path(e["destination"]).is_file() for e in log) and (searcher.root / "small-0.jpg").is_file()
    listed = {e.path for e in Store.load(settings.index).entries()}
    assert not {"lowq-0.jpg", "photo-0000.jpg"} & listed
    assert verify(settings.index).healthy
