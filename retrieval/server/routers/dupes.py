"""The review page of duplicate groups: GET /dupes (the page), GET /dupes/groups (a page of groups, JSON) and
POST /dupes/move (a group's extras moved, keeping the member a user chose), under the token rule."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from retrieval.errors import IndexMismatch
from retrieval.maintenance.dupes.moves import LOG
from retrieval.server.dependencies import GUARDED, Fresh
from retrieval.server.routers.pages import STATIC
from retrieval.server.schemas import DupesOut, GroupOut, MemberOut, MovedOut, MoveIn, MoveOut, ServeOptions


def router(options: ServeOptions) -> APIRouter:
    routes = APIRouter()

    @routes.get("/dupes", include_in_schema=False, dependencies=GUARDED)
    async def page() -> FileResponse:
        """The review page: groups as rows of thumbnails, the keeper changeable, the extras movable."""
        return FileResponse(STATIC / "dupes.html")

    @routes.get(
        "/dupes/groups",
        dependencies=GUARDED,
        response_model=DupesOut,
        responses={202: {"description": "The groups are still being found: ask again in a second."}},
    )
    async def groups(
        request: Request,
        s: Fresh,
        offset: Annotated[int, Query(ge=0, description="The first group to return (0: the largest).")] = 0,
        limit: Annotated[int, Query(ge=1, le=500, description="How many groups.")] = 50,
    ) -> DupesOut | JSONResponse:
        """A page of the index's duplicate groups, as `retrieval dupes` finds them by default (once per
        generation: the first request starts finding them and gets 202, as do those before they are found)."""
        ready = await run_in_threadpool(request.app.state.review.groups, s)
        if ready is None:
            return JSONResponse({"detail": f"finding the duplicate groups of {s.generation}"}, status_code=202)
        generation, found = ready
        page = [
            GroupOut(
                number=offset + n + 1,
                keep=g.keep.row,
                members=[MemberOut(id=m.row, path=m.path, score=m.score, evidence=m.evidence) for m in g.members],
            )
            for n, g in enumerate(found.groups[offset : offset + limit])
        ]
        return DupesOut(
            generation=generation, total=len(found.groups), offset=offset, limit=limit,
            threshold=found.rule.threshold, notes=found.notes, movable=options.move_to is not None, groups=page,
        )  # fmt: skip

    @routes.post(
        "/dupes/move",
        dependencies=GUARDED,
        responses={
            403: {"description": "The server moves nothing (no --move-to)."},
            409: {"description": "The index changed since the group was shown: reload."},
        },  # fmt: skip
    )
    async def move(request: Request, s: Fresh, body: MoveIn) -> MoveOut:
        """Move the group's members but `keep` out of the indexed folder, as `dupes --move-to DIR --apply`
        does: never deleted, every move logged, the index saved without them under its write lock."""
        if body.keep not in body.ids:
            raise HTTPException(422, f"keep ({body.keep}) must be one of the group's ids")
        try:
            moves = await run_in_threadpool(request.app.state.review.move, s, body.generation, body.ids, body.keep)
        except (LookupError, IndexMismatch) as e:
            raise HTTPException(409, str(e)) from None
        except PermissionError as e:
            raise HTTPException(403, str(e)) from None
        out = [
            MovedOut(id=m.row, source=m.source, destination=m.destination, done=m.done, problem=m.problem)
            for m in moves
        ]
        return MoveOut(moves=out, log=str(options.move_to / LOG))

    return routes
