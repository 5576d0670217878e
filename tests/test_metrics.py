"""GET /metrics over a real uvicorn: scraped after a known load and parsed with prometheus-client's own parser,
every count equal to the load sent; the token rule, and --metrics-public."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from retrieval.analysis.synthetic import near_duplicates, photo
from retrieval.search.searcher import Searcher
from retrieval.server import ServeOptions, create_app

from .test_server import jpeg, serving_app

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def test_a_scrape_after_a_known_load_counts_exactly_that_load(indexed, embedder):
    """Load: 3 searches by id (200), 1 by an id past the end (404), 1 without the token (401), 1 upload of
    two images (200) and 1 undecodable upload (400), 1 request for a path no route has (404, counted as
    "unmatched", never by the path sent) and 1 PATCH (405); /metrics without the token (401)."""
    searcher = Searcher(indexed, lambda _: embedder)
    app = create_app(searcher, ServeOptions(token=TOKEN, max_wait_ms=200))
    images = [jpeg(near_duplicates(photo(seed))["mirrored"]) for seed in (1, 2)]
    with serving_app(app) as c:
        for _ in range(3):
            assert c.get("/search", params={"id": 0, "k": 2}, headers=AUTH).status_code == 200
        assert c.get("/search", params={"id": 10_000}, headers=AUTH).status_code == 404
        assert c.get("/search", params={"id": 0}).status_code == 401
        two = [("files", ("a.jpg", images[0])), ("files", ("b.jpg", images[1]))]
        assert c.post("/search", files=two, headers=AUTH).status_code == 200
        assert c.post("/search", files={"files": ("x.jpg", b"not an image")}, headers=AUTH).status_code == 400
        assert c.get("/no/such/path/12345", headers=AUTH).status_code == 404
        assert c.patch("/search", headers=AUTH).status_code == 405
        assert c.get("/metrics").status_code == 401
        scraped = c.get("/metrics", headers=AUTH)
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    samples = scrape(scraped.text)
    requests = "retrieval_http_requests_total"
    assert samples[(requests, labels(route="/search", method="GET", status="200"))] == 3
    assert samples[(requests, labels(route="/search", method="GET", status="404"))] == 1
    assert samples[(requests, labels(route="/search", method="GET", status="401"))] == 1
    assert samples[(requests, labels(route="/search", method="POST", status="200"))] == 1
    assert samples[(requests, labels(route="/search", method="POST", status="400"))] == 1
    assert samples[(requests, labels(route="unmatched", method="GET", status="404"))] == 1
    assert samples[(requests, labels(route="/search", method="PATCH", status="405"))] == 1
    assert samples[(requests, labels(route="/metrics", method="GET", status="401"))] == 1
    assert not any("12345" in str(key) for key in samples)
    latency = "retrieval_http_request_duration_seconds"
    assert samples[(f"{latency}_count", labels(route="/search", method="GET"))] == 5
    assert samples[(f"{latency}_bucket", labels(route="/search", method="GET", le="+Inf"))] == 5
    assert samples[(f"{latency}_sum", labels(route="/search", method="GET"))] > 0
    assert samples[("retrieval_uploaded_images_total", labels())] == 2
    assert samples[("retrieval_forward_batch_size_sum", labels())] == 2
    assert (
        samples[("retrieval_model_forward_seconds_count", labels())]
        == samples[("retrieval_forward_batch_size_count", labels())]
    )
    assert samples[("retrieval_model_forward_seconds_sum", labels())] > 0
    assert samples[("retrieval_errors_total", labels(kind="NoSuchImage"))] == 1
    assert samples[("retrieval_index_rows", labels())] == searcher.count
    served = labels(generation=searcher.generation, model="resnet50", metric="cosine")
    assert samples[("retrieval_index_info", served)] == 1
    assert samples[("retrieval_thumbnails_cached", labels())] == 0


def test_thumbnails_cached_and_metrics_public(indexed, embedder):
    app = create_app(Searcher(indexed, lambda _: embedder), ServeOptions(token=TOKEN, metrics_public=True))
    with serving_app(app) as c:
        for row in (0, 1, 0):
            assert c.get(f"/thumbnails/{row}", headers=AUTH).status_code == 200
        assert c.get("/info").status_code == 401  # only /metrics is opened
        scraped = c.get("/metrics")
    assert scraped.status_code == 200
    samples = scrape(scraped.text)
    assert samples[("retrieval_thumbnails_cached", labels())] == 2
    thumbnails = labels(route="/thumbnails/{id}", method="GET", status="200")
    assert samples[("retrieval_http_requests_total", thumbnails)] == 3


def test_a_method_outside_http_s_own_is_counted_as_other(indexed, embedder):
    """uvicorn's httptools parser refuses a made-up method before the app sees it; h11 lets one through, and
    the label set must not grow with it."""
    app = create_app(Searcher(indexed, lambda _: embedder))
    app.state.metrics.observe_request("/search", "FROBNICATE", 405, 0.001)
    value = app.state.metrics.registry.get_sample_value
    assert value("retrieval_http_requests_total", {"route": "/search", "method": "other", "status": "405"}) == 1
