"""GET /search by an indexed image's id (its stored vector, no model) and POST /search by uploads (embedded
in shared forward passes)."""

import asyncio
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from retrieval.errors import ImageError, UsageError
from retrieval.filters import Filter, parse_filter, within
from retrieval.io.images import load_image_bytes
from retrieval.server.dependencies import GUARDED, Fresh
from retrieval.server.schemas import SearchOut, ServeOptions, hits_out

MIN_SCORE = "Leave out hits under this cosine similarity (-1 to 1)."
FILTERS = {  # what each filter field says in the schema
    "folder": "Only files under this folder, relative to the indexed one.",
    "modified_after": "Only files modified at or after this ISO 8601 date or time (UTC without an offset).",
    "modified_before": "Only files modified before this ISO 8601 date or time.",
    "min_size": "Only files of at least this size: bytes, or with a unit (500kB, 2MiB).",
    "max_size": "Only files of at most this size.",
}


def router(options: ServeOptions) -> APIRouter:
    routes = APIRouter()
    K = Annotated[int, Query(ge=1, le=options.max_k, description="How many results.")]
    MinScore = Annotated[float | None, Query(ge=-1, le=1, allow_inf_nan=False, description=MIN_SCORE)]
    Folder, After, Before, MinSize, MaxSize = (
        Annotated[str | None, Query(max_length=4096, description=FILTERS[name])] for name in FILTERS
    )

    @routes.get("/search", dependencies=GUARDED)
    async def search_by_id(
        s: Fresh,
        id: Annotated[int, Query(ge=0)],
        k: K = 10,
        min_score: MinScore = None,
        folder: Folder = None,
        modified_after: After = None,
        modified_before: Before = None,
        min_size: MinSize = None,
        max_size: MaxSize = None,
    ) -> SearchOut:
        where = _filter(str(s.root), folder, modified_after, modified_before, min_size, max_size)
        if s.lookups_are_cheap() and not where:
            generation, hits = s.neighbours(id, k, min_score)
        else:
            generation, hits = await run_in_threadpool(s.neighbours, id, k, min_score, where)
        return SearchOut(generation=generation, metric=s.metric, results=[hits_out(hits)])

    @routes.post("/search", dependencies=GUARDED)
    async def search_by_upload(
        request: Request,
        s: Fresh,
        files: Annotated[list[UploadFile], File(description="One or more images.")],
        k: Annotated[int, Form(ge=1, le=options.max_k)] = 10,
        min_score: Annotated[float | None, Form(ge=-1, le=1, allow_inf_nan=False, description=MIN_SCORE)] = None,
        folder: Annotated[str | None, Form(max_length=4096, description=FILTERS["folder"])] = None,
        modified_after: Annotated[str | None, Form(max_length=64, description=FILTERS["modified_after"])] = None,
        modified_before: Annotated[str | None, Form(max_length=64, description=FILTERS["modified_before"])] = None,
        min_size: Annotated[str | None, Form(max_length=64, description=FILTERS["min_size"])] = None,
        max_size: Annotated[str | None, Form(max_length=64, description=FILTERS["max_size"])] = None,
    ) -> SearchOut:
        if len(files) > options.max_files:
            raise HTTPException(400, f"at most {options.max_files} images per request")
        where = _filter(str(s.root), folder, modified_after, modified_before, min_size, max_size)
        size = (await run_in_threadpool(s.embedder)).spec.input_size
        batcher, uploads = request.app.state.batcher, request.app.state.metrics.uploads

        async def embedded(upload: UploadFile) -> np.ndarray:
            with batcher.incoming():
                pixels = await _decoded(upload, size, s.settings.max_pixels, options)
            uploads.inc()
            return await batcher.embed(pixels)

        vectors = np.stack(await asyncio.gather(*(embedded(upload) for upload in files)))
        generation, found = await run_in_threadpool(s.search_vectors, vectors, k, min_score, where)
        return SearchOut(generation=generation, metric=s.metric, results=[hits_out(hits) for hits in found])

    return routes


def _filter(root: str, *given: str | None) -> Filter:
    """The request's filter fields as a Filter; 422 naming the field for one that cannot be read, or a
    folder outside the indexed one (checked here, before any search)."""
    try:
        where = parse_filter(*given)
        within(where.folder, root)
    except UsageError as e:
        raise HTTPException(422, str(e)) from None
    return where


async def _decoded(upload: UploadFile, size: tuple[int, int], max_pixels: int, options: ServeOptions) -> np.ndarray:
    data = await upload.read(options.max_upload_bytes + 1)
    if len(data) > options.max_upload_bytes:
        raise HTTPException(413, f"{upload.filename}: over the upload limit of {options.max_upload_bytes} bytes")
    try:
        return await run_in_threadpool(load_image_bytes, data, size, max_pixels)
    except ImageError as e:
        status = 413 if e.reason == "decompression bomb" else 400
        raise HTTPException(status, f"{upload.filename}: {e}") from None
