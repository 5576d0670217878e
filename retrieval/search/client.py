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
from urllib.parse import urlsplit

from retrieval.errors import ServerError, UsageError
from retrieval.io.sources import open_regular
from retrieval.search.results import Hit, QueryResult

PROBE_TIMEOUT = 10.0  # seconds for /info: a server that is up answers it at once


def query_server(
    url: str,
    images: list[Path],
    k: int,
    token: str | None = None,
    timeout: float = 60,
    filters: dict[str, str] | None = None,
) -> list[QueryResult]:
    """The top-k hits for each of `images` from the server at `url`, as QueryResults with absolute paths
    under the server's indexed folder. Sent in requests of as many images as the server takes in one.
    `filters`: the filter fields as typed (folder, modified_after …), which the server reads."""
    _check_url(url)
    info = _call(url, "/info", token, timeout=min(timeout, PROBE_TIMEOUT))
    if not isinstance(info, dict) or not isinstance(info.get("root"), str) or not isinstance(info.get("count"), int):
        raise ServerError(f"{url} is not a retrieval server: its /info is not one (is the URL right?)")
    root, per_request = Path(info["root"]), max(1, int(info.get("max_files") or 1))
    results: list[QueryResult] = []
    for start in range(0, len(images), per_request):
        chunk = images[start : start + per_request]
        files = []
        for image in chunk:
            try:
                with open_regular(image) as f:
                    files.append((image.name, f.read()))
            except OSError as e:
                raise UsageError(f"cannot read {image}: {e.strerror or e}") from e
        body, content_type = multipart({"k": str(k), **(filters or {})}, files)
        answer = _call(url, "/search", token, body=body, content_type=content_type, timeout=timeout)
        try:
            results += [
                QueryResult(
                    image,
                    root,
                    answer["metric"],
                    [Hit(h["rank"], h["score"], h["path"], h["id"]) for h in hits],
                    True,
                    answer.get("generation"),
                )
                for image, hits in zip(chunk, answer["results"], strict=True)
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise ServerError(f"{url} is not a retrieval server: its /search answer lacks {e}") from None
    return results


def _check_url(url: str) -> None:
    """UsageError unless `url` is an http(s) URL with a host: urllib would otherwise try ftp:// or a file."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--server {url!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:8000)")


def _call(
    url: str, path: str, token: str | None, *, body: bytes | None = None, content_type: str = "", timeout: float
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type:
        headers["Content-Type"] = content_type
    call = request.Request(url.rstrip("/") + path, data=body, headers=headers, method="POST" if body else "GET")
    try:
        # an opener of its own, with the proxies the environment names now: urllib's global one keeps those of
        # its first use in the process for good (a library's caller may have changed them since)
        with request.build_opener().open(call, timeout=timeout) as response:
            data = response.read()
    except error.HTTPError as e:
        try:
            detail = json.loads(e.read())["detail"]
        except (ValueError, TypeError, KeyError):  # every error of `retrieval serve` is JSON with a detail
            raise ServerError(f"{url} is not a retrieval server: it answered {e.code} ({e.reason}) to {path}") from None
        raise ServerError(f"the server at {url} answered {e.code}: {detail}") from None
    except (error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ServerError(
            f"cannot reach a retrieval server at {url} ({reason}); is `retrieval serve` running?"
        ) from None
    try:
        return json.loads(data)
    except ValueError:
        raise ServerError(f"{url} is not a retrieval server: its {path} did not answer JSON") from None


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
