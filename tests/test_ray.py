"""`executor: ray`: the embed step on a real local Ray instance (started and stopped by the ingest itself,
on 2 CPUs), giving the same index as a local ingest, first and incremental runs alike; and on a two-node
cluster on loopback (`ray start`, stopped by the tests), where the work spreads over both nodes, a killed
worker is retried, and a killed driver's checkpoints are resumed by a local run."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retrieval.analysis.synthetic import write_photos
from retrieval.config import Settings
from retrieval.index.store import Store
from retrieval.ingestion.job import ingest
from retrieval.ingestion.ray_executor import actor_pool
from retrieval.io.images import load_image

from .conftest import no_hang
from .test_cli import run as run_cli
from .test_faults import checkpointed_paths, pieces
from .test_incremental import assert_same_index

pytest.importorskip("ray")


def test_a_ray_ingest_gives_the_index_a_local_one_gives_and_updates_it_the_same_way(tmp_path):
    folder = tmp_path / "photos"
    write_photos(folder, 10, seed=1200)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    local = Settings(index=tmp_path / "local", weights="none")
    distributed = Settings(index=tmp_path / "ray", weights="none", executor="ray", batch_size=4)
    for run in ("first", "incremental"):
        if run == "incremental":
            write_photos(folder / "more", 3, seed=1300)
        by_ray = ingest(folder, distributed)
        here = ingest(folder, local)
        expected = (10, 10) if run == "first" else (3, 3)
        assert (by_ray.embedded, by_ray.added) == (here.embedded, here.added) == expected
        assert [(s.path, s.reason) for s in by_ray.skipped] == [(s.path, s.reason) for s in here.skipped]
        ours, theirs = Store.load(distributed.index), Store.load(local.index)
        assert ours.entries() == theirs.entries()  # paths, sizes, mtimes and content hashes, in listing order
        engines = [(s.record.runtime["engine"], s.record.runtime["precision"]) for s in (ours, theirs)]
        assert engines[0] == engines[1], "the actors' engine and precision are recorded, as a local run's are"
        a, b = ours.vectors(), theirs.vectors()
        assert (a * b).sum(axis=1).min() >= 0.9999, run  # unit vectors: their cosines
    assert np.isfinite(ours.vectors()).all()


def test_actors_are_sized_from_the_clusters_nodes_with_one_per_gpu_where_there_are_gpus():
    """Ray's node resources as ray.nodes() reports them (no GPU machine here: the sizing rule itself)."""
    assert actor_pool([{"CPU": 1.0}, {"CPU": 1.0}]) == (1, 0, 2)  # small nodes: one actor per core
    assert actor_pool([{"CPU": 8.0}]) == (2, 0, 4)  # pairs of cores
    assert actor_pool([{"CPU": 3.0}, {"CPU": 2.0}]) == (2, 0, 2)  # a spare core is left, not split
    assert actor_pool([{"CPU": 16.0, "GPU": 2.0}, {"CPU": 4.0}]) == (2, 1, 2)  # one actor per GPU


# --- a two-node cluster on loopback: placement, a killed worker, a killed driver ----------------------


def ray_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    ray = Path(sys.executable).parent / "ray"
    return subprocess.run([str(ray), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("address", "code", "message"),
    [
        ("127.0.0.1:{dead}", 1, "cannot reach a Ray cluster at 127.0.0.1:"),
        ("ray://127.0.0.1:{dead}", 1, "cannot reach a Ray cluster at ray://127.0.0.1:"),
        ("not-an-address", 2, "is not host:port"),
    ],
)
def test_a_dead_or_malformed_ray_address_fails_at_once(tmp_path, address, code, message):
    """BAD_INPUTS 60: ray.init retried a dead address for minutes (81 s and on, measured)."""
    write_photos(tmp_path / "photos", 2, seed=1400)
    args = ["ingest", tmp_path / "photos", "--index", tmp_path / "i", "--weights", "none", "--executor", "ray"]
    with no_hang(60):
        result = run_cli(*args, "--ray-address", address.format(dead=free_port()), "--quiet")
    assert result.exit_code == code and message in result.output, result.output
    assert not (tmp_path / "i" / "CURRENT").exists()


def test_without_ray_installed_the_ray_executor_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is absent
    write_photos(tmp_path / "photos", 2, seed=1400)
    args = ["ingest", tmp_path / "photos", "--index", tmp_path / "i", "--weights", "none", "--executor", "ray"]
    result = run_cli(*args, "--quiet")
    assert result.exit_code == 2 and "pip install 'retrieval[ray]'" in result.output, result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> str:
    """`ray start --head` and a second `ray start --address`, one CPU each, on 127.0.0.1, with Ray's token
    authentication (a token file of the test's own, named in the environment every process here inherits);
    both stopped afterwards, also when a test fails."""
    address = f"127.0.0.1:{free_port()}"
    common = ("--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=200000000", "--disable-usage-stats")
    token = tmp_path_factory.mktemp("ray") / "auth_token"
    token.write_text(secrets.token_hex(32))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "token")
        env.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        try:
            head = ray_cli("start", "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false", *common)
            assert head.returncode == 0, head.stderr
            worker = ray_cli("start", f"--address={address}", *common)
            assert worker.returncode == 0, worker.stderr
            yield address
        finally:
            ray_cli("stop", "--force")  # with the token still in the environment


def ray_ingest(folder: Path, index: Path, address: str | None) -> list[str]:
    """A real `retrieval ingest` in fp32 (vectors independent of batching), checkpointing every batch of 4."""
    executor = ["--executor", "ray", "--ray-address", address] if address else []
    return [
        sys.executable, "-m", "retrieval", "ingest", str(folder), "--index", str(index), "--weights", "none",
        "--precision", "fp32", "--batch-size", "4", "--checkpoint-every", "4", *executor,
    ]  # fmt: skip


def start_on_cluster(
    tmp_path: Path, photos: int, address: str, pieces_first: int
) -> tuple[Path, Path, subprocess.Popen]:
    """Write `photos` photos and start an ingest of them on the cluster; return once it has checkpointed
    `pieces_first` batches (mid-run, whatever its start-up took): (folder, index, the running ingest)."""
    folder, index = tmp_path / "photos", tmp_path / "index"
    write_photos(folder, photos, seed=1400 + photos)
    run = subprocess.Popen(
        ray_ingest(folder, index, address), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while len(pieces(index)) < pieces_first and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return folder, index, run


def actor_pids() -> list[int]:
    """The processes of Ray Data's embedding actors (their process title names the map function), read
    from /proc: no tool of the system's."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if b"MapBatches(_EmbedBatch)" in title:
            pids.append(int(entry.name))
    return pids


def test_on_two_nodes_the_work_spreads_a_killed_worker_is_retried_and_the_index_equals_a_local_one(tmp_path, cluster):
    folder, index, run = start_on_cluster(tmp_path, 48, cluster, pieces_first=1)
    victims = actor_pids()
    assert run.poll() is None and victims, "the ingest is running on its actors"
    os.kill(victims[0], signal.SIGKILL)
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    nodes = re.search(r"embedded on (\d+) Ray nodes: (.*)", out)
    assert nodes and nodes.group(1) == "2", out  # node ids as Ray's runtime context gives them to the actors
    per_node = [int(n) for n in re.findall(r" (\d+)(?:,|$)", nodes.group(2))]
    assert len(per_node) == 2 and min(per_node) >= 1 and sum(per_node) == 48, out  # each node's actors embedded
    print(f"killed actor process {victims[0]} of {len(victims)}; {nodes.group(0)}")
    subprocess.run(ray_ingest(folder, tmp_path / "local", None), check=True, capture_output=True)
    assert_same_index(index, tmp_path / "local")


def test_a_driver_killed_mid_run_leaves_the_index_and_a_local_run_resumes_from_its_checkpoints(tmp_path, cluster):
    folder, index, run = start_on_cluster(tmp_path, 40, cluster, pieces_first=2)
    run.send_signal(signal.SIGKILL)
    run.wait()
    held = checkpointed_paths(index)
    assert held and len(held) == len(set(held))
    decoded: list[str] = []

    def recording(path, size, max_pixels):  # the real decoder, noting each file the resume reads to embed
        decoded.append(path.name)
        return load_image(path, size, max_pixels)

    settings = Settings(index=index, weights="none", precision="fp32", batch_size=4, checkpoint_every=4)
    report = ingest(folder, settings, decode=recording)
    everything = {p.name for p in folder.iterdir()}
    assert (report.resumed, report.embedded) == (len(held), 40 - len(held))
    assert sorted(decoded) == sorted(everything - set(held)), "the resume embedded exactly what no checkpoint held"
    print(f"the killed driver had checkpointed {len(held)} of 40; the local run embedded the other {40 - len(held)}")
    subprocess.run(ray_ingest(folder, tmp_path / "reference", None), check=True, capture_output=True)
    assert_same_index(index, tmp_path / "reference")
