"""The search page in a real browser: Debian's chromium, headless, driven by Selenium through Debian's
chromedriver (both installed by scripts/install), against a real uvicorn on loopback. A screenshot of each
state is saved under test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.analysis.synthetic import near_duplicates, photo
from retrieval.search.searcher import Searcher

from .conftest import CHROMEDRIVER, CHROMIUM, PHOTOS
from .test_server import serving

ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromium-driver are not installed (scripts/install does it)"
)


def wait_for(driver, condition, what: str, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=what)


def captions(driver) -> list[str]:
    """The hits' captions; none while the grid is being replaced (its old items gone under the reader)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#hits li")]
    except StaleElementReferenceException:
        return []


def test_upload_see_the_grid_click_a_hit_get_its_neighbours(browser, indexed, embedder, tmp_path):
    from selenium.webdriver.common.by import By

    ARTIFACTS.mkdir(exist_ok=True)
    query = tmp_path / "mirrored.jpg"
    near_duplicates(photo(7))["mirrored"].convert("RGB").save(query)
    with serving(Searcher(indexed, lambda _: embedder)) as client:
        browser.get(str(client.base_url) + "/")
        wait_for(browser, lambda d: f"{PHOTOS} images" in d.find_element(By.ID, "info").text, "the index facts")
        browser.find_element(By.ID, "file").send_keys(str(query))
        wait_for(browser, lambda d: len(captions(d)) == 10, "a grid of 10 hits")
        first = captions(browser)[0]
        assert "photo-0007.jpg" in first and "similarity" in first
        assert all(img.get_property("naturalWidth") > 0 for img in browser.find_elements(By.CSS_SELECTOR, "#hits img"))
        browser.save_screenshot(str(ARTIFACTS / "page-upload.png"))

        second = captions(browser)[1].split("\n")[-1]
        browser.find_elements(By.CSS_SELECTOR, "#hits img")[1].click()  # the second hit
        wait_for(
            browser, lambda d: d.find_element(By.ID, "query-title").text == f"Neighbours of {second}", "a search by id"
        )
        wait_for(browser, lambda d: second in captions(d)[0] and "1.0000" in captions(d)[0], "the hit itself first")
        browser.save_screenshot(str(ARTIFACTS / "page-neighbours.png"))

        bad = tmp_path / "notes.png"
        bad.write_text("not a picture")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        wait_for(
            browser, lambda d: "Could not search with notes.png" in d.find_element(By.ID, "message").text, "an error"
        )
        assert "not an image" in browser.find_element(By.ID, "message").text


def test_the_page_fits_a_phone_sized_screen(browser, indexed, embedder):
    from selenium.webdriver.common.by import By

    with serving(Searcher(indexed, lambda _: embedder)) as client:
        browser.set_window_size(390, 844)
        try:
            browser.get(str(client.base_url) + "/")
            wait_for(browser, lambda d: "images" in d.find_element(By.ID, "info").text, "the index facts")
            fits = browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
            assert fits, "the page scrolls sideways on a 390 px wide screen"
        finally:
            browser.set_window_size(1200, 900)
