"""Shared fixtures: a small generated photo collection, one real (random-weight) ResNet50, and an index
built from them with the real pipeline. Built once per session: TensorFlow is the slow part."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from retrieval.analysis.synthetic import write_photos
from retrieval.config import Settings
from retrieval.embedding.backbones import spec_for
from retrieval.embedding.embedders import Embedder, create_embedder
from retrieval.embedding.tensorflow_engine import KerasEmbedder
from retrieval.index.generations import current_generation
from retrieval.ingestion.job import ingest

PHOTOS = 12

# With CI=true, a skipped test fails the run unless its reason starts with one of these: each names why the
# test cannot run on some machines of the kind CI uses. Anything else a CI machine lacks is an install bug.
ALLOWED_SKIPS = {
    "this CPU has no native bf16": "hosts of this kind differ: some have AVX-512 BF16, others AVX2 only",
    "cannot mount a size-limited tmpfs here": "mount(2) needs CAP_SYS_ADMIN, which a container may withhold from root",
}


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _fail_unallowed_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI, turn a skip whose reason is not in ALLOWED_SKIPS into a failure that says so."""
    if not report.skipped or os.environ.get("CI", "").lower() not in ("1", "true"):
        return
    reason = _skip_reason(report)
    if not reason.startswith(tuple(ALLOWED_SKIPS)):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, and the reason is not in tests/conftest.py's ALLOWED_SKIPS: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_unallowed_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_unallowed_skip(outcome.get_result())


def pytest_terminal_summary(terminalreporter) -> None:
    """One line that counts what ran and what was skipped, and why each skip was allowed."""
    stats = terminalreporter.stats
    counts = {name: len(stats.get(name, [])) for name in ("passed", "failed", "error", "skipped")}
    terminalreporter.write_line("tests: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    for report in stats.get("skipped", []):
        reason = _skip_reason(report)
        why = next((why for start, why in ALLOWED_SKIPS.items() if reason.startswith(start)), "not allowed under CI")
        terminalreporter.write_line(f"  skipped {report.nodeid}: {reason} ({why})")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Converted OpenVINO models go to a fresh folder, not the user's ~/.cache (subprocesses inherit it)."""
    folder = tmp_path_factory.mktemp("model-cache")
    os.environ["RETRIEVAL_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def embedder() -> KerasEmbedder:
    return KerasEmbedder(spec_for("resnet50"), "none", seed=0, precision="fp32")


@pytest.fixture(scope="session")
def make_embedder(embedder):
    """An embedder factory for `search.query` that hands back the session's model when asked for it."""

    def make(settings: Settings) -> KerasEmbedder:
        if (settings.model, settings.weights, settings.seed) == ("resnet50", "none", 0):
            return embedder
        return create_embedder(settings)

    return make


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, PHOTOS)
    return folder


@pytest.fixture(scope="session")
def indexed(tmp_path_factory, photos, embedder) -> Settings:
    """Settings pointing at an index of `photos`, built once by the real ingest pipeline."""
    settings = Settings(index=tmp_path_factory.mktemp("index"), weights="none", batch_size=5)
    ingest(photos, settings, embedder=embedder)
    return settings


class Counting:
    """The real embedder, counting the images it is asked to embed, and optionally 'pressing Ctrl-C'
    on one call."""

    def __init__(self, embedder, interrupt_on_call: int | None = None):
        self._embedder, self.spec = embedder, embedder.spec
        self.images, self.calls, self._interrupt = 0, 0, interrupt_on_call

    def embedding(self):
        return self._embedder.embedding()

    def runtime(self):
        return self._embedder.runtime()

    def embed(self, images):
        self.calls += 1
        if self.calls == self._interrupt:
            raise KeyboardInterrupt
        self.images += len(images)
        return self._embedder.embed(images)


REAL_COUNT = 5000  # at least auto's flat threshold, so that the default index is an approximate one


@pytest.fixture(scope="session")
def real_index(tmp_path_factory) -> tuple[Settings, Embedder]:
    """REAL_COUNT small generated photos through the real default pipeline (OpenVINO, random weights) into
    an index built with default settings: the model's own vectors, in the narrow cone real features form,
    for the tests that synthetic vectors cannot stand in for. The suite's largest part: 270 s of ingest on a
    2-core AVX2 host, where the model runs in fp32 (22 images a second)."""
    folder = tmp_path_factory.mktemp("many-photos")
    write_photos(folder, REAL_COUNT, size=(96, 72))
    settings = Settings(index=tmp_path_factory.mktemp("real") / "index", weights="none")
    embedder = create_embedder(settings)
    ingest(folder, settings, embedder=embedder)
    return settings, embedder


def segment_file(index: Path, name: str) -> Path:
    """A file of the live generation's first segment (vectors.faiss, manifest.npy, ...)."""
    segments = sorted(p for p in current_generation(index).iterdir() if p.is_dir())
    return segments[0] / name


@contextmanager
def reading_in_a_thread(read: Callable[[], None]) -> Iterator[list[Exception]]:
    """Call `read` over and over in a thread while the block runs (a reader beside a writer); yields the
    list of what it raised, filled once the block is done."""
    errors: list[Exception] = []
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            try:
                read()
            except Exception as e:  # noqa: BLE001 - any failure is the test's finding
                errors.append(e)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield errors
    finally:
        done.set()
        thread.join()


@contextmanager
def no_hang(seconds: float = 60) -> Iterator[None]:
    """Around a call that must never block: if it is still running after `seconds`, every thread's stack is
    printed and the test run ends (a hang fails CI in bounded time instead of holding it until its limit)."""
    import faulthandler

    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def small_filesystem(tmp_path) -> Path:
    """A 3 MiB tmpfs mounted for the test, or a skip saying why where mounting is not permitted."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {done.stderr.strip() or done.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
