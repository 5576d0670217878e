"""`retrieval serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrieval.cli.app import (
    ConfigOption,
    EngineOption,
    IndexOption,
    PrecisionOption,
    TokenOption,
    reported,
    settings_from,
)
from retrieval.cli.output import say
from retrieval.errors import UsageError
from retrieval.io.files import printable


def serve(
    index: IndexOption = None,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    token: TokenOption = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without a token on a non-loopback address.")
    ] = False,
    move_to: Annotated[
        Path | None,
        typer.Option(
            help="Where the duplicates page (/dupes) moves a group's extras; without it the page is read-only.",
            file_okay=False,
        ),
    ] = None,
    metrics_public: Annotated[
        bool, typer.Option("--metrics-public", help="Answer /metrics without the token (for a scraper).")
    ] = False,
    engine: EngineOption = None,
    precision: PrecisionOption = None,
    config: ConfigOption = None,
) -> None:
    """Serve the index over HTTP: search by upload or by id, images and thumbnails, /info, /health, /metrics
    (Prometheus) and the duplicates page (/dupes).

    The index is loaded once; a later `retrieval ingest` is picked up without a restart.
    """
    settings = settings_from(config, index=index, engine=engine, precision=precision)
    with reported():
        if token is not None and no_auth:
            raise UsageError("--token and --no-auth contradict each other: give one of them")
        if not _is_loopback(host) and token is None and not no_auth:
            raise UsageError(f"binding {host} exposes the index beyond this machine: pass --token (or set "
                             "RETRIEVAL_TOKEN), or --no-auth to serve it to anyone who can reach it")  # fmt: skip
        from retrieval.maintenance.dupes.moves import check_target
        from retrieval.search.searcher import Searcher
        from retrieval.server import ServeOptions, create_app, listen, run

        sock = listen(host, port)
        searcher = Searcher(settings)
        target = check_target(searcher.root, move_to) if move_to else None
        app_ = create_app(searcher, ServeOptions(token=token, move_to=target, metrics_public=metrics_public))
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
    say(f"serving {printable(settings.index)} on http://{shown}:{port}/ (Ctrl-C stops)")
    run(app_, sock)


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
