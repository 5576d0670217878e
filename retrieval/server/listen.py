"""Binding the server's socket before anything says "serving", and running uvicorn on it."""

import socket

from fastapi import FastAPI

from retrieval.errors import ServerError


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
