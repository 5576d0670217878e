"""GET /metrics: the server's Prometheus metrics (metrics.py), under the token rule unless --metrics-public."""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from retrieval.server.dependencies import GUARDED
from retrieval.server.schemas import ServeOptions


def router(options: ServeOptions) -> APIRouter:
    routes = APIRouter()
    guard: list[Depends] = [] if options.metrics_public else GUARDED

    @routes.get("/metrics", dependencies=guard, response_class=Response)
    async def metrics(request: Request) -> Response:
        """Requests and latency per route and status, uploads, forward passes (batch sizes and seconds), library
        errors by kind, the generation served, its rows and the thumbnails cached: Prometheus' text format."""
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return routes
