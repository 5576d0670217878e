"""GET /search by an indexed image's id (its stored vector, no model) and POST /search by uploads (embedded
in shared forward passes)."""

import asyncio
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from retrieval.errors import ImageError
from retrieval.io.images import load_image_bytes
from retrieval.server.dependencies import GUARDED, Fresh
from retrieval.server.schemas import SearchOut, ServeOptions, hits_out

MIN_SCORE = "Leave out hits under this cosine similarity (-1 to 1)."


def router(options: ServeOptions) -> APIRouter:
    routes = APIRouter()
    K = Annotated[int, Query(ge=1, le=options.max_k, description="How many results.")]
    MinScore = Annotated[float | None, Query(ge=-1, le=1, allow_inf_nan=False, description=MIN_SCORE)]

    @routes.get("/search", dependencies=GUARDED)
    async def search_by_id(
        s: Fresh, id: Annotated[int, Query(ge=0)], k: K = 10, min_score: MinScore = None
    ) -> SearchOut:
        if s.lookups_are_cheap():
            generation, hits = s.neighbours(id, k, min_score)
        else:
            generation, hits = await run_in_threadpool(s.neighbours, id, k, min_score)
        return SearchOut(generation=generation, metric=s.metric, results=[hits_out(hits)])

    @routes.post("/search", dependencies=GUARDED)
    async def search_by_upload(
        request: Request,
        s: Fresh,
        files: Annotated[list[UploadFile], File(description="One or more images.")],
        k: Annotated[int, Form(ge=1, le=options.max_k)] = 10,
        min_score: Annotated[float | None, Form(ge=-1, le=1, allow_inf_nan=False, description=MIN_SCORE)] = None,
    ) -> SearchOut:
        if len(files) > options.max_files:
            raise HTTPException(400, f"at most {options.max_files} images per request")
        size = (await run_in_threadpool(s.embedder)).spec.input_size
        batcher, uploads = request.app.state.batcher, request.app.state.metrics.uploads

        async def embedded(upload: UploadFile) -> np.ndarray:
            with batcher.incoming():
                pixels = await _decoded(upload, size, s.settings.max_pixels, options)
            uploads.inc()
            return await batcher.embed(pixels)

        vectors = np.stack(await asyncio.gather(*(embedded(upload) for upload in files)))
        generation, found = await run_in_threadpool(s.search_vectors, vectors, k, min_score)
        return SearchOut(generation=generation, metric=s.metric, results=[hits_out(hits) for hits in found])

    return routes


async def _decoded(upload: UploadFile, size: tuple[int, int], max_pixels: int, options: ServeOptions) -> np.ndarray:
    data = await upload.read(options.max_upload_bytes + 1)
    if len(data) > options.max_upload_bytes:
        raise HTTPException(413, f"{upload.filename}: over the upload limit of {options.max_upload_bytes} bytes")
    try:
        return await run_in_threadpool(load_image_bytes, data, size, max_pixels)
    except ImageError as e:
        status = 413 if e.reason == "decompression bomb" else 400
        raise HTTPException(status, f"{upload.filename}: {e}") from None
