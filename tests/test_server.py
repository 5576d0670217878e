"""`retrieval serve`'s API, on a real uvicorn bound to loopback, started and stopped by these tests: status
codes, the schema, every bad input (../shared/BAD_INPUTS.md item 43), the path and token rules, batching of
concurrent uploads, and a generation swap while requests run."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image
from typer.testing import CliRunner

from retrieval.analysis.synthetic import near_duplicates, photo, write_photos
from retrieval.cli import app as cli
from retrieval.config import Settings
from retrieval.errors import UsageError
from retrieval.index.store import Store
from retrieval.ingestion.job import ingest
from retrieval.search.client import query_server
from retrieval.search.searcher import Searcher
from retrieval.server import ServeOptions, create_app

from .conftest import PHOTOS, no_hang
from .test_images import png_header_only


def serving(searcher: Searcher, options: ServeOptions | None = None) -> AbstractContextManager[httpx.Client]:
    return serving_app(create_app(searcher, options or ServeOptions()))


@contextmanager
def serving_app(app: FastAPI) -> Iterator[httpx.Client]:
    """A real uvicorn on 127.0.0.1, on a port the OS gives it when it binds (no race for a free port), in a
    thread; stopped on the way out, even on failure."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert server.started, "uvicorn did not start within 60 s"
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def forward_passes(app: FastAPI) -> dict[str, float | None]:
    """How many forward passes the app's model made, of how many images in all, and how many of one image:
    from its metrics' batch-size histogram."""
    value = app.state.metrics.registry.get_sample_value
    return {
        "count": value("retrieval_forward_batch_size_count"),
        "images": value("retrieval_forward_batch_size_sum"),
        "single": value("retrieval_forward_batch_size_bucket", {"le": "1.0"}),
    }


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def client(indexed, embedder) -> Iterator[httpx.Client]:
    with serving(Searcher(indexed, lambda _: embedder)) as c:
        yield c


def test_health_info_and_the_openapi_schema(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["count"] == PHOTOS and info["model"] == "resnet50" and info["generation"].startswith("gen-")
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/images/{id}", "/thumbnails/{id}", "/info", "/health"} <= set(paths)
    assert set(paths["/search"]) == {"get", "post"}


def test_search_by_id_needs_no_model_and_finds_itself_first(indexed):
    def no_model(_):
        raise AssertionError("a search by id must not build a model")

    with serving(Searcher(indexed, no_model)) as c:
        body = c.get("/search", params={"id": 3, "k": 4}).json()
    [hits] = body["results"]
    assert len(hits) == 4 and hits[0]["id"] == 3 and hits[0]["path"] == "photo-0003.jpg"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_uploads_find_their_originals_one_or_several_per_request(client):
    copies = near_duplicates(photo(7))
    one = client.post("/search", files={"files": ("m.jpg", jpeg(copies["mirrored"]))}, data={"k": "3"})
    assert one.status_code == 200, one.text
    assert one.json()["results"][0][0]["path"] == "photo-0007.jpg"
    files = [
        ("files", ("a.jpg", jpeg(copies["resized"]))),
        ("files", ("b.jpg", jpeg(near_duplicates(photo(2))["mirrored"]))),
    ]
    both = client.post("/search", files=files, data={"k": "2"}).json()["results"]
    assert [r[0]["path"] for r in both] == ["photo-0007.jpg", "photo-0002.jpg"]
    everything = client.post("/search", files=files[:1], data={"k": "12"}).json()["results"][0]
    cut = everything[2]["score"]  # random weights: near ties are possible, so compare with what reaches the cut
    filtered = client.post("/search", files=files[:1], data={"k": "12", "min_score": str(cut)}).json()["results"]
    assert filtered == [[h for h in everything if h["score"] >= cut]] and len(filtered[0]) >= 3
    by_id = client.get("/search", params={"id": 7, "k": 12}).json()["results"][0]
    cut = by_id[3]["score"]
    filtered = client.get("/search", params={"id": 7, "k": 12, "min_score": cut}).json()["results"]
    assert filtered == [[h for h in by_id if h["score"] >= cut]] and len(filtered[0]) >= 4


def test_bad_requests_get_clear_json_errors(client):
    cases = {
        "empty": (client.post("/search", files={"files": ("e.jpg", b"")}), 400),
        "text": (client.post("/search", files={"files": ("t.png", b"not an image at all")}), 400),
        "bomb": (client.post("/search", files={"files": ("b.png", png_header_only(40000, 40000))}), 413),
        "k=0": (client.get("/search", params={"id": 1, "k": 0}), 422),
        "k too big": (client.get("/search", params={"id": 1, "k": 10_000}), 422),
        "no such id": (client.get("/search", params={"id": 999}), 404),
        "no files": (client.post("/search", data={"k": "3"}), 422),
    }
    for bad in ("2", "-1.5", "nan", "inf", "-inf", "high"):  # BAD_INPUTS 53: the same on every route
        upload = {"files": ("q.jpg", jpeg(photo(1)))}
        cases[f"GET min_score={bad}"] = (client.get("/search", params={"id": 1, "min_score": bad}), 422)
        cases[f"POST min_score={bad}"] = (client.post("/search", files=upload, data={"min_score": bad}), 422)
    for name, (response, status) in cases.items():
        assert response.status_code == status, (name, response.text)
        assert "detail" in response.json(), name
    assert client.get("/health").status_code == 200  # and the server is still up


def test_an_upload_over_the_size_limit_is_413(indexed, embedder):
    with serving(Searcher(indexed, lambda _: embedder), ServeOptions(max_upload_bytes=1000)) as c:
        response = c.post("/search", files={"files": ("big.jpg", jpeg(photo(1)))})
    assert response.status_code == 413 and "upload limit" in response.json()["detail"]


def test_images_and_thumbnails_come_only_from_the_manifest_by_id(client, photos):
    assert client.get("/images/5").content == (photos / "photo-0005.jpg").read_bytes()
    thumb = Image.open(io.BytesIO(client.get("/thumbnails/5").content))
    assert thumb.format == "JPEG" and max(thumb.size) <= 256
    # BAD_INPUTS 53: the same answer on every route that takes an id: past the end 404, negative 422
    for path in ("/images/999", "/thumbnails/999", "/search?id=999"):
        assert client.get(path).status_code == 404, path
    for path in ("/images/-1", "/thumbnails/-1", "/search?id=-1"):
        assert client.get(path).status_code == 422, path
    for path in ("/images/..%2F..%2Fetc%2Fpasswd", "/images/photo-0005.jpg", "/thumbnails/%2Fetc%2Fpasswd"):
        assert client.get(path).status_code in (404, 422), path


def test_a_request_over_the_time_limit_gets_504_and_the_server_goes_on(indexed, embedder):
    slow_embedder = type("Slow", (), {"spec": embedder.spec, "embedding": embedder.embedding})()
    slow_embedder.embed = lambda images: (time.sleep(1.0), embedder.embed(images))[1]
    with serving(Searcher(indexed, lambda _: slow_embedder), ServeOptions(request_timeout_s=0.3)) as c:
        response = c.post("/search", files={"files": ("q.jpg", jpeg(photo(1)))})
        assert response.status_code == 504 and "over 0.3 s" in response.json()["detail"]
        assert c.get("/search", params={"id": 1}).status_code == 200


def test_a_token_guards_every_route_but_health(indexed, embedder):
    with serving(Searcher(indexed, lambda _: embedder), ServeOptions(token="s3cret")) as c:
        assert c.get("/health").status_code == 200
        assert [c.get(page).status_code for page in ("/", "/dupes")] == [401, 401]
        assert [c.get(page, params={"token": "s3cret"}).status_code for page in ("/", "/dupes")] == [200, 200]
        assert c.get("/info").status_code == 401
        assert c.get("/search", params={"id": 1}).status_code == 401
        assert c.get("/images/1").status_code == 401
        assert c.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        for spelling in ("bearer s3cret", "BEARER  s3cret", "bEaReR s3cret"):  # RFC 7235: any case
            assert c.get("/info", headers={"Authorization": spelling}).status_code == 200, spelling
        assert c.get("/info", headers={"Authorization": "Basic s3cret"}).status_code == 401
        assert c.get("/info", headers={"Authorization": "Bearer"}).status_code == 401


def test_eight_concurrent_uploads_through_uvicorn_share_forward_passes(indexed, embedder):
    """Eight clients' uploads at once, over loopback to the real uvicorn: every one answered right, in fewer
    forward passes than uploads."""
    searcher = Searcher(indexed, lambda _: embedder)
    app = create_app(searcher, ServeOptions(max_wait_ms=200))
    bodies = [jpeg(near_duplicates(photo(seed))["mirrored"]) for seed in range(8)]

    async def send_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            return await asyncio.gather(
                *(c.post("/search", files={"files": ("q.jpg", b)}, data={"k": "1"}) for b in bodies)
            )

    with serving_app(app) as client:
        responses = asyncio.run(send_all(str(client.base_url)))
    assert [r.json()["results"][0][0]["path"] for r in responses] == [f"photo-{s:04d}.jpg" for s in range(8)]
    passes = forward_passes(app)
    assert passes["images"] == 8 and passes["count"] < 8, passes


def test_the_batcher_waits_only_for_uploads_on_their_way(indexed, embedder):
    """With a batch wait (60 s) far past the request limit (20 s), a lone upload still answers, in a forward
    pass of its own, and a request of two images waits for its second one: one forward pass of two."""
    app = create_app(Searcher(indexed, lambda _: embedder), ServeOptions(max_wait_ms=60_000, request_timeout_s=20))
    with serving_app(app) as c:
        alone = c.post("/search", files={"files": ("q.jpg", jpeg(photo(1)))}, data={"k": "1"})
        pair = c.post("/search", files=[("files", ("a.jpg", jpeg(photo(2)))), ("files", ("b.jpg", jpeg(photo(3))))])
    assert alone.status_code == 200 and pair.status_code == 200, (alone.text, pair.text)
    assert [hits[0]["path"] for hits in pair.json()["results"]] == ["photo-0002.jpg", "photo-0003.jpg"]
    assert forward_passes(app) == {"count": 2, "images": 3, "single": 1}


def test_a_generation_swap_while_requests_run(tmp_path, embedder):
    """Requests keep coming while ingests commit twice: none fails, the answers come from at least 2
    generations, and each equals brute force over the generation it names (all its rows, exact scores); the
    server ends on the newest."""
    folder = tmp_path / "photos"
    write_photos(folder, 6, seed=800)
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(folder, settings, embedder=embedder)
    generations: dict[str, dict[str, float]] = {}  # name -> path -> cosine to row 0, as committed

    def remember() -> None:
        store = Store.load(settings.index)
        vectors = store.vectors()
        generations[store.generation] = {e.path: float(v @ vectors[0]) for e, v in zip(store.entries(), vectors)}

    remember()
    failures, answers = [], []
    done = threading.Event()
    with serving(Searcher(settings, lambda _: embedder)) as c:

        def ask() -> None:
            while not done.is_set() and len(answers) < 3000:
                response = c.get("/search", params={"id": 0, "k": 50})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    answers.append(response.json())

        thread = threading.Thread(target=ask)
        thread.start()
        try:
            for i in range(2):
                photo(850 + i).save(folder / f"new-{i}.jpg")
                ingest(folder, settings, embedder=embedder)
                remember()
                time.sleep(0.3)
        finally:
            done.set()
            thread.join(timeout=60)
        final = c.get("/info").json()
    assert failures == [] and answers
    answered_by = {body["generation"] for body in answers}
    assert len(answered_by) >= 2 and answered_by <= generations.keys(), (answered_by, generations.keys())
    for body in answers:
        exact = generations[body["generation"]]
        hits = body["results"][0]
        assert sorted(h["path"] for h in hits) == sorted(exact)
        assert all(h["score"] == pytest.approx(exact[h["path"]], abs=1e-5) for h in hits)
    assert final["count"] == 8


def test_serving_beyond_loopback_needs_a_token_or_no_auth(indexed):
    result = CliRunner().invoke(cli, ["serve", "--index", str(indexed.index), "--host", "0.0.0.0"], env={})
    assert result.exit_code == 2 and "--token" in result.output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--host", "0.0.0.0", "--token", ""], "empty token"),
        (["--token", "  "], "empty token"),
        (["--host", "0.0.0.0", "--token", "t", "--no-auth"], "--token and --no-auth contradict"),
    ],
)
def test_an_empty_token_or_a_token_with_no_auth_is_refused_at_start(indexed, flags, message):
    """BAD_INPUTS 51: an empty token would match an empty header and let every request in."""
    result = CliRunner().invoke(cli, ["serve", "--index", str(indexed.index), *flags], env={})
    assert result.exit_code == 2 and message in result.output, result.output
    with pytest.raises(UsageError, match="empty token"):
        ServeOptions(token="")


def test_a_move_to_folder_inside_the_indexed_folder_is_refused_at_start(indexed):
    """The review page would move extras into the folder the next ingest indexes again."""
    root = Store.load(indexed.index).root
    result = CliRunner().invoke(cli, ["serve", "--index", str(indexed.index), "--move-to", str(root / "x")], env={})
    assert result.exit_code == 2 and "inside the indexed folder" in result.output, result.output
    assert "serving" not in result.output


def test_a_bind_that_fails_exits_1_with_the_reason_and_no_serving_line(indexed):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        in_use = CliRunner().invoke(cli, ["serve", "--index", str(indexed.index), "--port", port], env={})
    elsewhere = CliRunner().invoke(  # TEST-NET-1 (RFC 5737): an address no machine here has
        cli, ["serve", "--index", str(indexed.index), "--host", "192.0.2.1", "--token", "t"], env={}
    )
    assert in_use.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in in_use.output, in_use.output
    assert elsewhere.exit_code == 1 and "cannot listen on 192.0.2.1" in elsewhere.output, elsewhere.output
    assert "serving" not in in_use.output + elsewhere.output


def test_a_served_index_never_reads_a_path_from_the_client(client, tmp_path: Path):
    secret = tmp_path / "secret.jpg"
    photo(1).save(secret)
    for params in ({"id": str(secret)}, {"path": str(secret)}):
        assert client.get("/search", params=params).status_code == 422


def test_query_with_server_prints_what_a_local_query_prints(indexed, embedder, tmp_path, make_embedder):
    """`retrieval query --server URL`, a real subprocess, against a real server: the same table and the same
    --json (paths, ranks; scores within rounding) as the local query of the same index."""
    copy = tmp_path / "m.jpg"
    near_duplicates(photo(4))["mirrored"].convert("RGB").save(copy)
    same_engine = ["--engine", "tensorflow", "--precision", "fp32"]  # as the server's embedder: the same vectors
    local = CliRunner().invoke(
        cli, ["query", str(copy), "--index", str(indexed.index), "-k", "4", "--json", *same_engine]
    )

    def client(*args: str, token: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "RETRIEVAL_TOKEN"} | (
            {"RETRIEVAL_TOKEN": token} if token else {}
        )
        command = [sys.executable, "-m", "retrieval", "query", str(copy), "--server", url, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    with serving(Searcher(indexed, lambda _: embedder), ServeOptions(token="t0k")) as c:
        url = str(c.base_url)
        assert c.get("/health").status_code == 200
        remote = client("-k", "4", "--json", token="t0k")
        table = client("--token", "t0k", "-k", "2")
        refused = client()
    assert local.exit_code == 0 and remote.returncode == 0, (local.output, remote.stderr)
    mine, theirs = json.loads(local.output), json.loads(remote.stdout)
    assert [r["path"] for r in theirs["results"]] == [r["path"] for r in mine["results"]]
    assert theirs["results"][0]["relative_path"] == "photo-0004.jpg" and theirs["metric"] == "cosine"
    for a, b in zip(theirs["results"], mine["results"]):
        assert a["rank"] == b["rank"] and a["score"] == pytest.approx(b["score"], abs=1e-4)
    assert table.returncode == 0 and "photo-0004.jpg" in table.stdout.splitlines()[1]
    assert refused.returncode == 1 and "401" in refused.stderr


def test_query_with_a_server_that_is_not_there_exits_1(tmp_path):
    photo(1).save(tmp_path / "q.png")
    result = CliRunner().invoke(cli, ["query", str(tmp_path / "q.png"), "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "is `retrieval serve` running?" in result.output


@pytest.mark.parametrize("url", ["notaurl", "ftp://127.0.0.1/", "http://", "file:///etc/passwd"])
def test_query_with_a_server_that_is_not_an_http_url_is_a_usage_error(tmp_path, url):
    photo(1).save(tmp_path / "q.png")
    with no_hang(30):
        result = CliRunner().invoke(cli, ["query", str(tmp_path / "q.png"), "--server", url])
    assert result.exit_code == 2 and "is not an http:// or https:// URL" in result.output, result.output


def test_query_with_a_server_that_is_some_other_http_server_exits_1(tmp_path):
    photo(1).save(tmp_path / "q.png")
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{other.server_address[1]}"
        with no_hang(60):
            result = CliRunner().invoke(cli, ["query", str(tmp_path / "q.png"), "--server", url])
    finally:
        other.shutdown()
        other.server_close()
    assert result.exit_code == 1 and "is not a retrieval server" in result.output, result.output


def test_query_with_server_sends_more_images_than_one_request_takes_in_several(indexed, embedder, tmp_path):
    """BAD_INPUTS 55: five images to a server that takes two per request: three requests, five answers, each
    finding its original first, as a local query does."""
    for seed in range(5):
        near_duplicates(photo(seed))["mirrored"].convert("RGB").save(tmp_path / f"q{seed}.jpg")
    searcher = Searcher(indexed, lambda _: embedder)
    with serving(searcher, ServeOptions(max_files=2)) as c:
        results = query_server(str(c.base_url), sorted(tmp_path.glob("q*.jpg")), 3)
    assert [r.hits[0].path for r in results] == [f"photo-{seed:04d}.jpg" for seed in range(5)]
    assert [r.query.name for r in results] == [f"q{seed}.jpg" for seed in range(5)]


@pytest.mark.parametrize(("damage", "message"), [("deleted", "no index in"), ("corrupted", "is corrupt")])
def test_an_index_deleted_or_corrupted_under_the_server_answers_503_and_health_says_so_until_an_ingest(
    tmp_path, embedder, damage, message
):
    """BAD_INPUTS 54: every route answers 503 with the reason, /health too, until an ingest (--full for the
    corrupt one, as its message says) brings the index back."""
    folder = tmp_path / "photos"
    write_photos(folder, 4, seed=900)
    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(folder, settings, embedder=embedder)
    with serving(Searcher(settings, lambda _: embedder)) as c:
        assert c.get("/health").json() == {"status": "ok"}
        if damage == "deleted":
            shutil.rmtree(settings.index)
        else:
            (settings.index / "CURRENT").write_bytes(b"\xff\xfe garbage")
        gone = [c.get("/search", params={"id": 0}), c.get("/info"), c.get("/thumbnails/0"), c.get("/health")]
        assert [r.status_code for r in gone] == [503] * 4, [r.text for r in gone]
        assert all(message in r.json()["detail"] for r in gone)
        assert gone[-1].json()["status"] == "unavailable"
        ingest(folder, settings, embedder=embedder, full=damage == "corrupted")
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/search", params={"id": 0}).status_code == 200
