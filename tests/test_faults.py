"""Faults from outside the process: SIGKILL mid-ingest, a small file-descriptor limit, and permissions
(../shared/BAD_INPUTS.md items 20, 21, 24, 28, 35). Each runs the real `retrieval` in a subprocess."""

from __future__ import annotations

import ctypes
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.embedders import spec_for
from retrieval.openvino_engine import OpenVinoEmbedder
from retrieval.store import Store
from retrieval.synthetic import write_photos

from .test_incremental import snapshot


def retrieval_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "retrieval", *(str(a) for a in args)]


@pytest.fixture(scope="module", autouse=True)
def converted_model():
    """Convert the OpenVINO model once up front, so that every subprocess below spends its time ingesting."""
    OpenVinoEmbedder(spec_for("resnet50"), "none", seed=0)


def test_sigkill_at_20_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    folder, index, reference = tmp_path / "photos", tmp_path / "index", tmp_path / "reference"
    write_photos(folder, 400, seed=900, size=(160, 120))  # about 5 s of work in one run
    def ingest_into(target: Path) -> list[str]:
        return retrieval_command(
            "ingest", folder, "--index", target, "--weights", "none", "--batch-size", "4", "--checkpoint-every", "4", "-q"
        )

    ingest = ingest_into(index)
    rng = random.Random(2026)
    killed = 0
    for attempt in range(20):
        run = subprocess.Popen(ingest, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, 2.0))
        run.kill()
        if run.wait() == 0:  # it finished first: give the next runs new work
            write_photos(folder / f"more-{attempt:02d}", 100, seed=2000 + 100 * attempt, size=(160, 120))
        else:
            killed += 1
        if (index / "CURRENT").exists():  # every intermediate state loads and answers a query
            store = Store.load(index)
            assert len(store.search(store.vector(0), 3)[0]) == min(3, store.count)
    assert killed >= 5, "kills should land mid-run; give the runs more work if this fails"
    assert subprocess.run(ingest, capture_output=True).returncode == 0
    subprocess.run(ingest_into(reference), check=True, capture_output=True)
    (entries, vectors), (ref_entries, ref_vectors) = snapshot(index), snapshot(reference)
    assert entries == ref_entries and len(entries) >= 400
    assert (vectors * ref_vectors).sum(axis=1).min() > 0.999  # unit vectors: cosine; bf16 batches may differ


def test_5000_files_under_a_256_descriptor_limit(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(5000):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    run = subprocess.run(
        retrieval_command("ingest", folder, "--index", tmp_path / "index", "--weights", "none", "--batch-size", "64", "-q"),
        preexec_fn=limit, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Indexed 5000 images" in run.stdout


# --- permissions: root ignores them, so the child runs without the capabilities that let it --------


def _without_permission_override() -> None:
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone for the exec'd child
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def as_ordinary_user(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], preexec_fn=_without_permission_override, capture_output=True, text=True, timeout=120
    )


def test_an_unreadable_file_is_skipped_as_permission_denied(tmp_path):
    write_photos(tmp_path, 1)
    (tmp_path / "photo-0000.jpg").chmod(0)
    run = as_ordinary_user(
        "from pathlib import Path\nfrom retrieval.errors import ImageError\nfrom retrieval.images import load_image\n"
        f"try:\n    load_image(Path({str(tmp_path / 'photo-0000.jpg')!r}), (224, 224), 10**8)\n"
        "except ImageError as e:\n    print(e.reason)\n"
    )
    assert run.stdout.strip() == "permission denied", run.stderr


def test_an_unreadable_sub_folder_is_reported_and_its_siblings_listed(tmp_path):
    write_photos(tmp_path / "open", 2)
    write_photos(tmp_path / "closed", 2)
    (tmp_path / "closed").chmod(0)
    try:
        run = as_ordinary_user(
            "from pathlib import Path\nfrom retrieval.files import list_images\n"
            f"listing = list_images(Path({str(tmp_path)!r}))\n"
            "print(listing.paths)\nprint([(e.path, e.reason) for e in listing.errors])\n"
        )
    finally:
        (tmp_path / "closed").chmod(0o755)
    paths, errors = run.stdout.splitlines()
    assert paths == "['open/photo-0000.jpg', 'open/photo-0001.jpg']", run.stderr
    assert errors == "[('closed', 'permission denied')]"


def test_a_read_only_index_folder_is_a_clear_error_and_keeps_the_index(tmp_path, photos):
    index = tmp_path / "index"
    subprocess.run(retrieval_command("ingest", photos, "--index", index, "--weights", "none", "-q"), check=True)
    before = (index / "CURRENT").read_text()
    index.chmod(0o555)
    try:
        run = as_ordinary_user(
            "import sys\nfrom retrieval.cli import app\n"
            f"sys.argv = ['retrieval', 'ingest', {str(photos)!r}, '--index', {str(index)!r}, '--weights', 'none', '--full', '-q']\n"
            "app()\n"
        )
    finally:
        index.chmod(0o755)
    assert run.returncode == 3, run.stderr
    assert "cannot" in run.stderr and str(index) in run.stderr
    assert (index / "CURRENT").read_text() == before and Store.load(index).count == 12
