"""An indexed image and its thumbnail, by row id: the server opens only files the live manifest lists."""

import mimetypes
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from retrieval.io.sources import ArrowPath
from retrieval.server.dependencies import GUARDED, Fresh
from retrieval.server.schemas import ServeOptions

# as GET /search's `id`: a negative id is a malformed request (422) on every route, one past the end a 404
RowId = Annotated[int, Path(ge=0, description="An indexed image's row id.")]


def router(options: ServeOptions) -> APIRouter:
    routes = APIRouter()

    @routes.get("/images/{id}", dependencies=GUARDED, response_class=FileResponse)
    async def image(s: Fresh, id: RowId) -> Response:
        path = s.image(id)
        if isinstance(path, ArrowPath):  # a remote root: fetched here, as the client cannot reach it
            return await run_in_threadpool(_fetched, path, id)
        if not path.is_file():
            raise HTTPException(404, f"image {id} is no longer on disk")
        return FileResponse(path)

    @routes.get("/thumbnails/{id}", dependencies=GUARDED, response_class=Response)
    async def thumbnail(request: Request, s: Fresh, id: RowId) -> Response:
        picture = await request.app.state.thumbnails.get(s, id)
        return Response(picture, media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})

    return routes


def _fetched(path: ArrowPath, id: int) -> Response:
    """A remote image's bytes as a response, typed by its name as FileResponse types a local one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HTTPException(404, f"image {id} is no longer in {path.uri}") from None
    except OSError as e:
        raise HTTPException(502, f"image {id} could not be fetched: {e}") from e
    return Response(data, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")
