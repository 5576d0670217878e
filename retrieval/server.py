"""`retrieval serve`: the warm Searcher behind an HTTP API (FastAPI on uvicorn).

The index is loaded once and the model on the first upload; every request checks (one small file read)
whether an ingest has committed a newer generation and switches to it, and each answer comes from one
generation, which it names. Uploads that arrive together are embedded in one forward pass (`Batcher`).
The server only ever opens files listed in the live manifest, looked up by row id: never a path a
client sent. Blocking work (decoding, the model, FAISS) runs off the event loop.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures, whose annotations
# refer to this app's own limits (k, upload form fields) and must be evaluated where they are written.
import asyncio
import hmac
import io
import mimetypes
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .ann import AUTO_FLAT_BELOW
from .errors import EmptyIndex, ImageError, NoSuchImage, RetrievalError, ServerError, StoreError, UsageError
from .images import load_image_bytes, load_thumbnail
from .search import Hit, Searcher
from .sources import ArrowPath
from .store import Store

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ServeOptions:
    """Limits and access of one server."""

    token: str | None = None  # required on every route but /health when set
    max_upload_bytes: int = 20 * 2**20
    max_k: int = 100
    max_files: int = 32  # images in one POST /search
    max_batch: int = 32  # uploads embedded in one forward pass
    max_wait_ms: float = 5.0  # how long the first upload of a batch waits for others
    request_timeout_s: float = 30.0  # a request still running then gets a 504, and others go on
    thumbnail_size: int = 256
    thumbnail_cache: int = 512  # thumbnails kept in memory

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise UsageError("an empty token would let every request in: give a non-empty --token, or none")


class HitOut(BaseModel):
    rank: int
    score: float
    id: int
    path: str


class SearchOut(BaseModel):
    generation: str | None
    metric: str
    results: list[list[HitOut]]  # one list per query image (one for a search by id)


class InfoOut(BaseModel):
    count: int
    root: str  # the indexed folder, which hit paths are relative to
    model: str
    weights: dict[str, Any]
    metric: str
    index_type: str
    recall_at_10: float | None
    warning: str | None
    generation: str | None
    max_files: int  # images one POST /search takes


class Batcher:
    """Embeds single images arriving concurrently in shared forward passes, as model servers batch requests.

    A batch starts at once when no other upload is on its way (`incoming`: being read or decoded), so a lone
    client never waits; otherwise the first image waits at most `max_wait` seconds for the others, up to
    `max_batch`. Images that arrive during a forward pass form the next batch.
    """

    def __init__(self, embed: Callable[[np.ndarray], np.ndarray], max_batch: int, max_wait: float) -> None:
        self._embed = embed
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self._incoming = 0
        self._task: asyncio.Task[None] | None = None
        self.batches: list[int] = []  # size of each forward pass, for tests and the benchmark

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Around reading and decoding one upload: the batcher waits for it rather than start without it."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def embed(self, pixels: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (dim,) float32, unnormalized."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((pixels, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            deadline = loop.time() + self._max_wait
            while len(items) < self._max_batch and (self._incoming or not self._queue.empty()):
                if (left := deadline - loop.time()) <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            self.batches.append(len(items))
            try:
                vectors = await run_in_threadpool(self._embed, np.stack([pixels for pixels, _ in items]))
            except Exception as e:  # noqa: BLE001 - handed to every waiting request instead
                for _, future in items:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), vector in zip(items, vectors):
                if not future.done():
                    future.set_result(vector)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


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
    """The application around a loaded `searcher`: tests build it around a tiny index."""
    options = options or ServeOptions()

    def embed(batch: np.ndarray) -> np.ndarray:
        return searcher.embedder().embed(batch)

    batcher = Batcher(embed, options.max_batch, options.max_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await batcher.close()

    app = FastAPI(title="retrieval", summary="Content-based image search over one index.", lifespan=lifespan)
    app.state.searcher = searcher
    app.state.batcher = batcher
    thumbnails: OrderedDict[int, bytes] = OrderedDict()
    thumbnail_generation: list[str | None] = [searcher.generation]

    async def authorized(request: Request) -> None:
        if options.token is None:
            return
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        sent = credentials.strip() if scheme.lower() == "bearer" else ""  # RFC 7235: the scheme is case-insensitive
        sent = sent or request.query_params.get("token", "")
        if not sent or not hmac.compare_digest(sent.encode(), options.token.encode()):
            raise HTTPException(401, "a valid token is required: header 'Authorization: Bearer TOKEN'")

    async def fresh() -> Searcher:
        """The searcher, switched first to a generation committed since the last request (the check reads
        one small file here; loading a new generation runs off the event loop)."""
        if not searcher.is_current():
            await run_in_threadpool(searcher.refresh)
        return searcher

    Fresh = Annotated[Searcher, Depends(fresh)]
    K = Annotated[int, Query(ge=1, le=options.max_k, description="How many results.")]
    MIN_SCORE = "Leave out hits under this cosine similarity (-1 to 1)."
    MinScore = Annotated[float | None, Query(ge=-1, le=1, allow_inf_nan=False, description=MIN_SCORE)]
    guarded = [Depends(authorized)]

    @app.exception_handler(RetrievalError)
    async def library_error(_: Request, error: RetrievalError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=_status(error))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Deadline, seconds=options.request_timeout_s)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The search page: plain HTML, CSS and JS from the package, nothing fetched from elsewhere."""
        return FileResponse(STATIC / "index.html")

    @app.get("/health", responses={503: {"description": "The index is missing or corrupt; `detail` says why."}})
    async def health() -> JSONResponse:
        """Whether the index served is still on disk and whole (one small file read, no token needed)."""
        try:
            searcher.is_current()
        except StoreError as e:
            return JSONResponse({"status": "unavailable", "detail": str(e)}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/info", dependencies=guarded)
    async def info(s: Fresh) -> InfoOut:
        record = s.store.record
        return InfoOut(
            count=s.store.count,
            root=str(s.store.root),
            model=record.model,
            weights=record.weights,
            metric=record.metric,
            index_type=record.factory,
            recall_at_10=record.recall_at_10,
            warning=record.warning(),
            generation=s.generation,
            max_files=options.max_files,
        )

    @app.get("/search", dependencies=guarded)
    async def search_by_id(
        s: Fresh, id: Annotated[int, Query(ge=0)], k: K = 10, min_score: MinScore = None
    ) -> SearchOut:
        if _cheap(s.store):
            generation, hits = s.neighbours(id, k, min_score)
        else:
            generation, hits = await run_in_threadpool(s.neighbours, id, k, min_score)
        return SearchOut(generation=generation, metric=s.store.metric, results=[_out(hits)])

    @app.post("/search", dependencies=guarded)
    async def search_by_upload(
        s: Fresh,
        files: Annotated[list[UploadFile], File(description="One or more images.")],
        k: Annotated[int, Form(ge=1, le=options.max_k)] = 10,
        min_score: Annotated[float | None, Form(ge=-1, le=1, allow_inf_nan=False, description=MIN_SCORE)] = None,
    ) -> SearchOut:
        if len(files) > options.max_files:
            raise HTTPException(400, f"at most {options.max_files} images per request")
        size = (await run_in_threadpool(s.embedder)).spec.input_size

        async def embedded(upload: UploadFile) -> np.ndarray:
            with batcher.incoming():
                pixels = await _decoded(upload, size, s.settings.max_pixels, options)
            return await batcher.embed(pixels)

        vectors = np.stack(await asyncio.gather(*(embedded(upload) for upload in files)))
        generation, found = await run_in_threadpool(s.search_vectors, vectors, k, min_score)
        return SearchOut(generation=generation, metric=s.store.metric, results=[_out(hits) for hits in found])

    @app.get("/images/{id}", dependencies=guarded, response_class=FileResponse)
    async def image(s: Fresh, id: int) -> Response:
        store = s.store
        if not 0 <= id < store.count:
            raise HTTPException(404, f"no image with id {id}")
        path = store.root / store.entry(id).path  # from the manifest only
        if isinstance(path, ArrowPath):  # a remote root: fetched here, as the client cannot reach it
            return await run_in_threadpool(_fetched, path, id)
        if not path.is_file():
            raise HTTPException(404, f"image {id} is no longer on disk")
        return FileResponse(path)

    @app.get("/thumbnails/{id}", dependencies=guarded, response_class=Response)
    async def thumbnail(s: Fresh, id: int) -> Response:
        store = s.store
        if not 0 <= id < store.count:
            raise HTTPException(404, f"no image with id {id}")
        if thumbnail_generation[0] != s.generation:  # ids may mean other files now
            thumbnails.clear()
            thumbnail_generation[0] = s.generation
        if id not in thumbnails:
            path = store.root / store.entry(id).path
            picture = await run_in_threadpool(load_thumbnail, path, options.thumbnail_size, s.settings.max_pixels)
            encoded = io.BytesIO()
            picture.save(encoded, "JPEG", quality=85)
            thumbnails[id] = encoded.getvalue()
            while len(thumbnails) > options.thumbnail_cache:
                thumbnails.popitem(last=False)
        thumbnails.move_to_end(id)
        return Response(thumbnails[id], media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})

    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` and listening, or ServerError saying why not (the port in use, an
    address not on this machine): bound before anything says "serving", and before the model or the index
    has cost any time."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise ServerError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run(app: FastAPI, sock: socket.socket) -> None:
    """Serve `app` on uvicorn over the bound `sock` until Ctrl-C."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def _fetched(path: ArrowPath, id: int) -> Response:
    """A remote image's bytes as a response, typed by its name as FileResponse types a local one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HTTPException(404, f"image {id} is no longer in {path.uri}") from None
    except OSError as e:
        raise HTTPException(502, f"image {id} could not be fetched: {e}") from e
    return Response(data, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")


async def _decoded(upload: UploadFile, size: tuple[int, int], max_pixels: int, options: ServeOptions) -> np.ndarray:
    data = await upload.read(options.max_upload_bytes + 1)
    if len(data) > options.max_upload_bytes:
        raise HTTPException(413, f"{upload.filename}: over the upload limit of {options.max_upload_bytes} bytes")
    try:
        return await run_in_threadpool(load_image_bytes, data, size, max_pixels)
    except ImageError as e:
        status = 413 if e.reason == "decompression bomb" else 400
        raise HTTPException(status, f"{upload.filename}: {e}") from None


def _status(error: RetrievalError) -> int:
    """The HTTP status of a library error: what is not there 404, a bad request 400, an index that is gone or
    damaged under the server 503 (the next ingest brings it back), anything else 500."""
    if isinstance(error, (EmptyIndex, NoSuchImage)):
        return 404
    if isinstance(error, (UsageError, ImageError)):
        return 400
    return 503 if isinstance(error, StoreError) else 500


def _cheap(store: Store) -> bool:
    """Whether a lookup is cheap enough (well under a millisecond) to run on the event loop: an approximate
    index, or a small exact one. Handing it to a thread instead costs more than the lookup itself, and under
    load the threads' contention for the GIL cut the id-query rate from about 1,500/s to 700/s."""
    return not store.capabilities.exact or store.count <= AUTO_FLAT_BELOW


def _out(hits: list[Hit]) -> list[HitOut]:
    return [HitOut(rank=h.rank, score=h.score, id=h.row, path=h.path) for h in hits]
