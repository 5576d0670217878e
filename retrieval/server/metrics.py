"""What a monitor scrapes from a server that runs for weeks: Prometheus metrics through prometheus-client, in a
registry of the app's own (a process may hold several apps: the tests do).

Requests are counted by route template, never by the path a client sent, and by a known method: a hostile
client cannot grow the label sets. The index's rows, its generation and the thumbnails cached are read when
scraped, so they are never stale.
"""

from collections.abc import Iterator
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The server's metrics. `state` is the app's state, read at each scrape (searcher, thumbnails)."""

    def __init__(self, state: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "retrieval_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "retrieval_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.uploads = Counter(
            "retrieval_uploaded_images", "Images uploaded to POST /search and decoded.", registry=self.registry
        )
        self.batch_size = Histogram(
            "retrieval_forward_batch_size",
            "Images per forward pass of the model (uploads that arrived together share one).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.forward = Histogram(
            "retrieval_model_forward_seconds",
            "Seconds per forward pass of the model.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "retrieval_errors",
            "Requests refused or failed by a library error, by its kind (the exception's class).",
            ["kind"],
            registry=self.registry,
        )
        self.registry.register(_Served(state))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def observe_forward(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.forward.observe(seconds)


class _Served(Collector):
    """What the server holds now: the index's rows and generation, the thumbnails in memory."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        searcher = self._state.searcher
        yield GaugeMetricFamily("retrieval_index_rows", "Rows of the generation served.", value=searcher.count)
        served = InfoMetricFamily("retrieval_index", "The index served: its generation, model and metric.")
        record = searcher.record
        served.add_metric([], {"generation": searcher.generation or "", "model": record.model, "metric": record.metric})
        yield served
        yield GaugeMetricFamily(
            "retrieval_thumbnails_cached", "Thumbnails held in memory.", value=len(self._state.thumbnails)
        )


class Measured:
    """Counts and times every HTTP request by the route it matched. Plain ASGI, outermost, so that a 504 from
    the deadline and a 500 from an unexpected error are counted too."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            self.metrics.errors.labels("unhandled").inc()
            raise
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(route, scope["method"], status, perf_counter() - started)
