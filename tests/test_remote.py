"""A folder on S3, standing for any filesystem pyarrow reaches: a real S3 server on loopback (moto's server
mode, from the project's environment, started and stopped here), read
through pyarrow's S3 client. The index equals a local ingest of the same files, first and incremental runs
alike, locally and on Ray; queries, collages and the server read the hits from the bucket."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.analysis.quality import evaluate_augmented
from retrieval.analysis.synthetic import near_duplicates, photo, write_photos
from retrieval.config import Settings
from retrieval.errors import RetrievalError, UsageError
from retrieval.index.store import Store
from retrieval.ingestion.job import ingest
from retrieval.io.sources import ArrowPath, location
from retrieval.maintenance.verify import verify
from retrieval.search.searcher import Searcher

from .conftest import no_hang
from .test_cli import run
from .test_ray import free_port
from .test_server import serving

# Loopback never goes through a proxy: urllib's global opener keeps the proxies of its first use, which may
# have been another test's dead one (test_embedders fails a weights download through a closed port).
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups on loopback
}


class Bucket:
    """One bucket on the test's S3 server. Files are put with plain HTTP (moto takes unsigned requests;
    pyarrow's multipart upload and moto's server disagree on its last step), so only reading and deleting go
    through pyarrow."""

    def __init__(self, port: int, name: str) -> None:
        self.port, self.name = port, name
        self._send("PUT", "")

    def uri(self, prefix: str) -> str:
        return f"s3://{self.name}/{prefix}?endpoint_override=127.0.0.1:{self.port}&scheme=http&region=us-east-1"

    def upload(self, folder: Path, prefix: str) -> None:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.put(f"{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())

    def put(self, key: str, data: bytes) -> None:
        self._send("PUT", key, data)

    def delete(self, key: str) -> None:
        """Through pyarrow: moto refuses an unsigned DELETE."""
        from pyarrow import fs

        s3 = fs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http", region="us-east-1")
        s3.delete_file(f"{self.name}/{key}")

    def _send(self, method: str, key: str, data: bytes | None = None) -> None:
        url = f"http://127.0.0.1:{self.port}/{self.name}/{key}".rstrip("/")
        headers = {"Content-Type": "application/octet-stream"}
        DIRECT.open(urllib.request.Request(url, data=data, method=method, headers=headers), timeout=30)


@contextmanager
def moto_server() -> Iterator[int]:
    """moto's S3 server on 127.0.0.1, from this environment (the `test` extra installs moto[server]); yields
    the port it serves; stopped on the way out, even on failure."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):  # at most 30 s
            try:
                DIRECT.open(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError as e:  # URLError, refused, reset, timed out: not up yet
                last = e
                assert server.poll() is None, "moto_server exited"
                time.sleep(0.1)
        else:
            pytest.fail(f"moto_server did not answer within 30 s: {last!r}")
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def s3() -> Iterator[int]:
    """One S3 server for the module, with the environment's credentials set for pyarrow's client."""
    with pytest.MonkeyPatch.context() as env, moto_server() as port:
        for key, value in CREDENTIALS.items():
            env.setenv(key, value)
        yield port


def assert_same_index(remote: Path, local: Path) -> None:
    ours, theirs = Store.load(remote), Store.load(local)
    facts = [[(e.path, e.size, e.sha256) for e in s.entries()] for s in (ours, theirs)]
    assert facts[0] == facts[1]  # mtimes differ: the bucket's are its own
    assert np.abs(ours.vectors() - theirs.vectors()).max() <= 1e-6


def test_an_s3_folder_gives_the_index_a_local_copy_gives_and_is_updated_the_same_way(tmp_path, s3, embedder):
    folder = tmp_path / "photos"
    write_photos(folder, 8, seed=1500)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not listed: not an image name")
    bucket = Bucket(s3, "pictures")
    bucket.upload(folder, "photos")
    uri = bucket.uri("photos")
    remote = Settings(index=tmp_path / "remote", weights="none", batch_size=4)
    local = Settings(index=tmp_path / "local", weights="none", batch_size=4)
    for run_ in ("first", "incremental"):
        if run_ == "incremental":
            write_photos(folder / "more", 2, seed=1600)
            bucket.upload(folder / "more", "photos/more")
            (folder / "photo-0003.jpg").unlink()
            bucket.delete("photos/photo-0003.jpg")
        by_s3, here = ingest(uri, remote, embedder=embedder), ingest(folder, local, embedder=embedder)
        counts = [(r.embedded, r.added, r.removed, r.unchanged) for r in (by_s3, here)]
        assert counts[0] == counts[1] == ((8, 8, 0, 0) if run_ == "first" else (2, 2, 1, 7))
        assert [(s.path, s.reason) for s in by_s3.skipped] == [(s.path, s.reason) for s in here.skipped]
        assert [s.path for s in by_s3.skipped] == ["broken.jpg"]
        assert_same_index(remote.index, local.index)
    assert Store.load(remote.index).record.root == uri, "the root is recorded with its options, to be read again"


def test_hits_from_s3_are_listed_drawn_served_evaluated_and_verified_from_the_bucket(tmp_path, s3, embedder):
    folder = tmp_path / "photos"
    write_photos(folder, 6, seed=1700)
    bucket = Bucket(s3, "served")
    bucket.upload(folder, "set")
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(bucket.uri("set"), settings, embedder=embedder)
    query = tmp_path / "query.png"
    near_duplicates(photo(1700 + 2))["mirrored"].save(query)  # write_photos' third photo, mirrored

    out = tmp_path / "collage.png"
    result = run("query", query, "--index", settings.index, "-k", "3", "--json", "--collage", out)
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["results"][0]["relative_path"] == "photo-0002.jpg"
    assert body["results"][0]["path"] == "s3://served/set/photo-0002.jpg"
    assert Image.open(out).size[0] > 4 * 256, "the query and its 3 hits, each drawn from its file"

    with serving(Searcher(settings, lambda _: embedder)) as client:
        assert client.get("/images/2").content == (folder / "photo-0002.jpg").read_bytes()
        assert client.get("/images/2").headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(client.get("/thumbnails/2").content)).format == "JPEG"
        assert verify(settings.index).healthy
        searcher = Searcher(settings, lambda _: embedder)
        report = evaluate_augmented(searcher, sample=6, transforms=["resize", "jpeg"])
        assert sorted(report.sample) == [f"photo-{i:04d}.jpg" for i in range(6)], "each original read from the bucket"
        assert report.recall_at_1 == {"resize": 1.0, "jpeg": 1.0}
        bucket.delete("set/photo-0002.jpg")
        assert client.get("/images/2").status_code == 404
    assert verify(settings.index).missing == ["photo-0002.jpg"]


def test_a_uri_with_credentials_in_it_is_refused_so_that_the_index_never_records_them():
    with pytest.raises(UsageError, match="through the environment"):
        location("s3://KEY:SECRET@bucket/photos")
    assert isinstance(location("s3://bucket/photos/"), ArrowPath)
    assert location("file:///tmp/photos") == Path("/tmp/photos")


def test_a_missing_bucket_or_prefix_is_a_usage_error_and_writes_nothing(tmp_path, s3):
    settings = Settings(index=tmp_path / "index", weights="none")
    for uri in (Bucket(s3, "empty").uri("nothing"), f"s3://absent/x?endpoint_override=127.0.0.1:{s3}&scheme=http"):
        result = run("ingest", uri, "--index", settings.index, "--weights", "none", "--quiet")
        assert result.exit_code == 2, result.output
        assert "does not exist" in result.output
    assert not (settings.index / "CURRENT").exists()


def test_a_gcs_bucket_out_of_reach_is_a_usage_error_within_the_retry_bound(tmp_path):
    """BAD_INPUTS 60: pyarrow's GCS client retried for minutes (past 90 s measured) before the bound."""
    with no_hang(120):
        result = run("ingest", "gs://retrieval-no-such-bucket/photos", "--index", tmp_path / "i", "--quiet")
    assert result.exit_code == 2 and "cannot reach gs://retrieval-no-such-bucket/photos" in result.output, result.output
    assert not (tmp_path / "i" / "CURRENT").exists()


def test_a_ray_ingest_reads_the_bucket_on_its_workers_and_gives_the_same_index(tmp_path, s3, embedder):
    pytest.importorskip("ray")
    folder = tmp_path / "photos"
    write_photos(folder, 6, seed=1800)
    bucket = Bucket(s3, "distributed")
    bucket.upload(folder, "photos")
    # fp32: vectors independent of batching and of the engine's choice of precision
    by_ray = Settings(index=tmp_path / "ray", weights="none", executor="ray", precision="fp32", batch_size=4)
    local = Settings(index=tmp_path / "local", weights="none", precision="fp32", batch_size=4)
    report = ingest(bucket.uri("photos"), by_ray)
    ingest(folder, local)
    assert report.embedded == 6 and sum(report.nodes.values()) == 6, "embedded by Ray's actors"
    ours, theirs = Store.load(by_ray.index), Store.load(local.index)
    assert [(e.path, e.sha256) for e in ours.entries()] == [(e.path, e.sha256) for e in theirs.entries()]
    assert (ours.vectors() * theirs.vectors()).sum(axis=1).min() >= 0.9999


def test_verify_of_a_bucket_out_of_reach_is_an_error_and_repairs_nothing(tmp_path, s3, embedder):
    """The module's server sets the credentials; this test's own server is stopped under its index."""
    write_photos(tmp_path / "photos", 3, seed=1900)
    settings = Settings(index=tmp_path / "index", weights="none")
    with moto_server() as port:
        bucket = Bucket(port, "gone")
        bucket.upload(tmp_path / "photos", "p")
        ingest(bucket.uri("p"), settings, embedder=embedder)
    for repair in (False, True):
        with pytest.raises(RetrievalError, match="cannot reach the indexed folder s3://gone/p"):
            verify(settings.index, repair=repair)
    assert Store.load(settings.index).count == 3
