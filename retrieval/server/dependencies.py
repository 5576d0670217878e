"""What each request needs, from the app's state: the token check and the searcher, switched first to a
generation an ingest has committed since the last request."""

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from retrieval.search.searcher import Searcher


async def authorized(request: Request) -> None:
    """401 unless the request carries the server's token (when it has one): `Authorization: Bearer TOKEN`, the
    scheme in any case (RFC 7235), or `?token=` (the page's images)."""
    token = request.app.state.options.token
    if token is None:
        return
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    sent = credentials.strip() if scheme.lower() == "bearer" else ""
    sent = sent or request.query_params.get("token", "")
    if not sent or not hmac.compare_digest(sent.encode(), token.encode()):
        raise HTTPException(401, "a valid token is required: header 'Authorization: Bearer TOKEN'")


async def fresh(request: Request) -> Searcher:
    """The searcher, switched first to a generation committed since the last request (the check reads one
    small file here; loading a new generation runs off the event loop)."""
    searcher: Searcher = request.app.state.searcher
    if not searcher.is_current():
        await run_in_threadpool(searcher.refresh)
    return searcher


Fresh = Annotated[Searcher, Depends(fresh)]
GUARDED = [Depends(authorized)]
