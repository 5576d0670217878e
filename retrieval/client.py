"""`retrieval query --server URL`: the same query, answered by a running `retrieval serve`.

Standard library only (urllib), so that the command starts in the time of a small client and leaves the
index and the model to the warm server. The images are sent as one multipart request and embedded there.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from urllib import error, request

from .errors import ServerError, UsageError
from .results import Hit, QueryResult
from .sources import open_regular


def query_server(
    url: str, images: list[Path], k: int, token: str | None = None, timeout: float = 60
) -> list[QueryResult]:
    """The top-k hits for each of `images` from the server at `url`, as QueryResults with absolute paths
    under the server's indexed folder."""
    root = Path(_call(url, "/info", token, timeout=timeout)["root"])
    fields = {"k": str(k)}
    files = []
    for image in images:
        try:
            with open_regular(image) as f:
                files.append((image.name, f.read()))
        except OSError as e:
            raise UsageError(f"cannot read {image}: {e.strerror or e}") from e
    body, content_type = multipart(fields, files)
    answer = _call(url, "/search", token, body=body, content_type=content_type, timeout=timeout)
    return [
        QueryResult(image, root, answer["metric"], [Hit(h["rank"], h["score"], h["path"], h["id"]) for h in hits], True)
        for image, hits in zip(images, answer["results"])
    ]


def _call(
    url: str, path: str, token: str | None, *, body: bytes | None = None, content_type: str = "", timeout: float
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type:
        headers["Content-Type"] = content_type
    call = request.Request(url.rstrip("/") + path, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with request.urlopen(call, timeout=timeout) as response:
            return json.loads(response.read())
    except error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("detail", e.reason)
        except (ValueError, AttributeError):
            detail = e.reason
        raise ServerError(f"the server at {url} answered {e.code}: {detail}") from None
    except (error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServerError(
            f"cannot reach a retrieval server at {url} ({reason}); is `retrieval serve` running?"
        ) from None


def multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body: `fields` as text parts, each of `files` as a part named `files`."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for filename, data in files:
        safe = filename.replace('"', "_").encode("ascii", "replace").decode()  # the server only shows it
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{safe}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
