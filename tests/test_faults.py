"""Faults from outside the process: SIGKILL mid-ingest, a small file-descriptor limit, and permissions
(../shared/BAD_INPUTS.md items 20, 21, 24, 28, 35). Each runs the real `retrieval` in a subprocess."""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.analysis.synthetic import write_photos
from retrieval.embedding.backbones import spec_for
from retrieval.embedding.openvino_engine import OpenVinoEmbedder
from retrieval.embedding.preparation import prepare
from retrieval.index.store import Store
from retrieval.ingestion.checkpoints import PENDING

from .test_incremental import assert_same_index


def retrieval_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "retrieval", *(str(a) for a in args)]


@pytest.fixture(scope="module", autouse=True)
def converted_model():
    """Convert the OpenVINO model once up front, so that every subprocess below spends its time ingesting."""
    OpenVinoEmbedder(prepare(spec_for("resnet50"), "none", seed=0))


def ingest_command(folder: Path, index: Path, *extra: object) -> list[str]:
    """A real ingest in fp32 (so that vectors do not depend on how images were batched), checkpointing
    every batch of 4: its progress can be watched as pieces appearing in index/pending/."""
    return retrieval_command(
        "ingest", folder, "--index", index, "--weights", "none", "--precision", "fp32",
        "--batch-size", "4", "--checkpoint-every", "4", *extra,
    )  # fmt: skip


def pieces(index: Path) -> list[Path]:
    """The whole checkpoint pieces: their JSON, written last, is there."""
    return sorted((index / PENDING).glob("piece-*.json")) if (index / PENDING).is_dir() else []


def checkpointed_paths(index: Path) -> list[str]:
    """Every path held by a checkpoint piece, once per piece that holds it."""
    return [e["path"] for piece in pieces(index) for e in json.loads(piece.read_text())["entries"]]


def start_and_wait_for_pieces(command: list[str], index: Path, count: int, **popen) -> subprocess.Popen:
    """Start `command` and return once it has written `count` more checkpoint pieces: a moment measured
    from the ingest's own progress, inside its embedding phase, whatever its start-up took."""
    before = len(pieces(index))
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + 120
    while len(pieces(index)) < before + count and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return run


def assert_answers_like_brute_force(index: Path) -> None:
    """The state on disk loads, and a query's results equal numpy cosine over the vectors it holds."""
    store = Store.load(index)
    vectors = store.vectors()
    query = vectors[len(vectors) // 2] + 0.01
    expected = np.argsort(-(vectors @ (query / np.linalg.norm(query))), kind="stable")[:10]
    assert [row for row, _ in store.search(query, 10)[0]] == expected.tolist()


def test_sigkill_mid_embedding_20_times_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A committed index of 100 photos, then 400 more to embed, and 20 runs each killed after it has
    checkpointed 1-4 batches of its own. Counted: kills that landed mid-embedding, states loaded and
    checked against brute force, and the resumed run's own report of what it embedded."""
    folder, index, reference = tmp_path / "photos", tmp_path / "index", tmp_path / "reference"
    write_photos(folder / "first", 100, seed=900, size=(160, 120))
    subprocess.run(ingest_command(folder, index, "-q"), check=True, capture_output=True)
    write_photos(folder / "second", 400, seed=1000, size=(160, 120))
    rng = random.Random(2026)
    mid_embedding = states_checked = 0
    for _ in range(20):
        run = start_and_wait_for_pieces(ingest_command(folder, index, "-q"), index, rng.randint(1, 4))
        if run.poll() is None:  # still embedding, with pieces of its own on disk
            mid_embedding += 1
        run.kill()
        run.wait()
        assert_answers_like_brute_force(index)
        states_checked += 1
    held = checkpointed_paths(index)
    assert len(held) == len(set(held)), "a file was embedded again although a checkpoint held it"
    final = subprocess.run(ingest_command(folder, index), capture_output=True, text=True, check=True)
    counts = dict((name, int(n)) for n, name in re.findall(r"(\d+) (added|resumed|unchanged)", final.stdout))
    embedded = int(re.search(r"embedded (\d+) images", final.stdout).group(1))
    assert counts["resumed"] == len(held) and counts["unchanged"] == 100
    assert embedded == 400 - len(held), "the resumed run embedded exactly what no checkpoint held"
    subprocess.run(ingest_command(folder, reference, "-q"), check=True, capture_output=True)
    assert_same_index(index, reference)
    assert Store.load(index).count == 500
    assert mid_embedding >= 15 and states_checked == 20, (mid_embedding, states_checked)
    print(f"kills mid-embedding: {mid_embedding}/20; states checked: {states_checked}; "
          f"checkpointed before the resume: {len(held)}; embedded by the resume: {embedded}")  # fmt: skip


def interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_mid_embedding_exits_130_keeps_its_checkpoint_and_the_next_run_resumes(tmp_path):
    folder, index = tmp_path / "photos", tmp_path / "index"
    write_photos(folder, 200, seed=3000, size=(160, 120))
    # SIGINT as a terminal's Ctrl-C delivers it: a shell's background job (a CI script started with `&`)
    # inherits SIGINT ignored, and a Python started so never turns it into KeyboardInterrupt
    run = start_and_wait_for_pieces(ingest_command(folder, index), index, 2, preexec_fn=interruptible)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert "interrupted" in stderr and not (index / "CURRENT").exists()
    held = checkpointed_paths(index)
    assert len(held) >= 8  # at least the 2 pieces waited for: 4 images each
    resumed = subprocess.run(ingest_command(folder, index), capture_output=True, text=True, check=True)
    assert f"{len(held)} resumed" in resumed.stdout
    assert f"embedded {200 - len(held)} images" in resumed.stdout
    assert Store.load(index).count == 200 and pieces(index) == []


def test_a_disk_that_fills_up_while_saving_keeps_the_previous_generation(tmp_path, small_filesystem):
    folder, index = tmp_path / "photos", small_filesystem / "index"
    write_photos(folder, 12, seed=4000)
    subprocess.run(ingest_command(folder, index, "-q"), check=True, capture_output=True)  # ~0.1 MiB
    before = (index / "CURRENT").read_text()
    write_photos(folder / "more", 300, seed=4100, size=(96, 72))  # 312 vectors: 2.5 MiB more than fits
    filler = small_filesystem / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024))
    run = subprocess.run(ingest_command(folder, index, "--checkpoint-every", "10000"), capture_output=True, text=True)
    assert run.returncode == 3, run.stderr
    assert "No space left on device" in run.stderr and "previous index is untouched" in run.stderr
    assert (index / "CURRENT").read_text() == before
    assert_answers_like_brute_force(index)
    assert Store.load(index).count == 12
    generations = sorted(p.name for p in index.iterdir() if p.name.startswith(("gen-", ".tmp-")))
    assert generations == [before.strip()], "no partial generation is left visible"


def test_512_files_under_a_128_descriptor_limit(tmp_path):
    """Four times as many files as the process may hold open: a descriptor kept per file (or per decode
    thread's file) would run out before the end. (It took 5,000 files under 256, then 1,000, until the suite
    had to get shorter: the files are embedded, and that is the time it takes.)"""
    folder = tmp_path / "tiny"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(512):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    run = subprocess.run(
        retrieval_command(
            "ingest", folder, "--index", tmp_path / "index", "--weights", "none", "--batch-size", "64", "-q"
        ),
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Indexed 512 images" in run.stdout


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
        [sys.executable, "-c", code],
        preexec_fn=_without_permission_override,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_unreadable_file_is_skipped_as_permission_denied(tmp_path):
    write_photos(tmp_path, 1)
    (tmp_path / "photo-0000.jpg").chmod(0)
    run = as_ordinary_user(
        "from pathlib import Path\nfrom retrieval.errors import ImageError\n"
        "from retrieval.io.images import load_image\n"
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
            "from pathlib import Path\nfrom retrieval.io.files import list_images\n"
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
            f"sys.argv = ['retrieval', 'ingest', {str(photos)!r}, '--index', {str(index)!r}, "
            "'--weights', 'none', '--full', '-q']\n"
            "app()\n"
        )
    finally:
        index.chmod(0o755)
    assert run.returncode == 3, run.stderr
    assert "cannot" in run.stderr and str(index) in run.stderr
    assert (index / "CURRENT").read_text() == before and Store.load(index).count == 12
