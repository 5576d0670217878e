"""The application: a loaded Searcher behind the routers, with the server's state on `app.state`.

The index is loaded once and the model on the first upload; every request checks (one small file read)
whether an ingest has committed a newer generation and switches to it, and each answer comes from one
generation, which it names. Uploads that arrive together are embedded in one forward pass (batching.py).
The server only ever opens files listed in the live manifest, looked up by row id: never a path a client
sent. Blocking work (decoding, the model, FAISS) runs off the event loop.
"""

# No `from __future__ import annotations` in this package: FastAPI reads the route signatures, whose
# annotations refer to one server's limits (k, upload form fields) and must be evaluated where they are written.
import asyncio
from contextlib import asynccontextmanager
from time import perf_counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retrieval.errors import EmptyIndex, ImageError, NoSuchImage, RetrievalError, StoreError, UsageError
from retrieval.search.searcher import Searcher
from retrieval.server.batching import Batcher
from retrieval.server.metrics import Measured, Metrics
from retrieval.server.review import Review
from retrieval.server.routers import dupes, images, metrics, pages, search
from retrieval.server.routers.pages import STATIC
from retrieval.server.schemas import ServeOptions
from retrieval.server.thumbnails import Thumbnails


class Deadline:
    """A request still running after `seconds` gets a 504 and is cancelled, so one slow request never holds
    a client forever. Plain ASGI rather than `@app.middleware`, whose wrapping cost about 0.2 ms per request here."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            async with asyncio.timeout(self.seconds):
                await self.app(scope, receive, tracking)
        except TimeoutError:
            if started:  # too late for a status: the client sees the response cut short
                raise
            detail = JSONResponse({"detail": f"the request took over {self.seconds} s"}, status_code=504)
            await detail(scope, receive, send)


def create_app(searcher: Searcher, options: ServeOptions | None = None) -> FastAPI:
    """The application around a loaded `searcher`: tests build it around a tiny index. Its state, on
    `app.state`: the searcher, the options, the batcher of uploads, the thumbnail cache and the metrics."""
    options = options or ServeOptions()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await app.state.batcher.close()

    app = FastAPI(title="retrieval", summary="Content-based image search over one index.", lifespan=lifespan)
    app.state.searcher = searcher
    app.state.options = options
    app.state.metrics = measured = Metrics(app.state)

    def forward(batch):
        embedder = searcher.embedder()  # loaded on the first upload: not a forward pass's time
        started = perf_counter()
        vectors = embedder.embed(batch)
        measured.observe_forward(len(batch), perf_counter() - started)
        return vectors

    app.state.batcher = Batcher(forward, options.max_batch, options.max_wait_ms / 1000)
    app.state.thumbnails = Thumbnails(options.thumbnail_size, options.thumbnail_cache)
    app.state.review = Review(options.move_to)

    @app.exception_handler(RetrievalError)
    async def library_error(_: Request, error: RetrievalError) -> JSONResponse:
        measured.errors.labels(type(error).__name__).inc()
        return JSONResponse({"detail": str(error)}, status_code=_status(error))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Deadline, seconds=options.request_timeout_s)
    app.add_middleware(Measured, metrics=measured)  # added last: outermost, so it sees the deadline's 504
    for area in (pages, search, images, dupes, metrics):
        app.include_router(area.router(options))
    return app


def _status(error: RetrievalError) -> int:
    """The HTTP status of a library error: what is not there 404, a bad request 400, an index that is gone or
    damaged under the server 503 (the next ingest brings it back), anything else 500."""
    if isinstance(error, (EmptyIndex, NoSuchImage)):
        return 404
    if isinstance(error, (UsageError, ImageError)):
        return 400
    return 503 if isinstance(error, StoreError) else 500
