"""The search page, /health and /info."""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from retrieval.errors import StoreError
from retrieval.server.dependencies import GUARDED, Fresh
from retrieval.server.schemas import InfoOut, ServeOptions

STATIC = Path(__file__).parents[1] / "static"


def router(options: ServeOptions) -> APIRouter:
    routes = APIRouter()

    @routes.get("/", include_in_schema=False, dependencies=GUARDED)
    async def page() -> FileResponse:
        """The search page: plain HTML, CSS and JS from the package, nothing fetched from elsewhere. Under the
        token rule like every route but /health (open it as /?token=...; the page sends it on)."""
        return FileResponse(STATIC / "index.html")

    @routes.get("/health", responses={503: {"description": "The index is missing or corrupt; `detail` says why."}})
    async def health(request: Request) -> JSONResponse:
        """Whether the index served is still on disk and whole (one small file read, no token needed)."""
        try:
            request.app.state.searcher.is_current()
        except StoreError as e:
            return JSONResponse({"status": "unavailable", "detail": str(e)}, status_code=503)
        return JSONResponse({"status": "ok"})

    @routes.get("/info", dependencies=GUARDED)
    async def info(s: Fresh) -> InfoOut:
        record = s.record
        return InfoOut(
            count=s.count,
            root=str(s.root),
            model=record.model,
            weights=record.weights,
            metric=record.metric,
            index_type=record.factory,
            recall_at_10=record.recall_at_10,
            warning=record.warning(),
            generation=s.generation,
            max_files=options.max_files,
        )

    return routes
