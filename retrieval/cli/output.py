"""How the commands write: messages and progress on stderr (Rich, imported at the first message), JSON on
stdout, so that stdout stays parseable."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from retrieval.ingestion.job import ProgressCallback


@cache
def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def say(message: str, label: str = "", style: str = "") -> None:
    """A line on stderr: `label` ("error: ", "warning: ") styled, then `message` as plain text, never read
    as Rich markup (a file name may hold brackets)."""
    from rich.text import Text

    stderr().print(Text(label, style=style) + Text(message))


def warn(warning: str | None) -> None:
    if warning:
        say(warning, "warning: ", "bold yellow")


def echo_json(value: Any) -> None:
    """JSON on stdout; ASCII-escaped so that file names that are not UTF-8 survive any locale."""
    typer.echo(json.dumps(value, indent=2, ensure_ascii=True))


@contextmanager
def progress_for(quiet: bool) -> Iterator[ProgressCallback | None]:
    """On a terminal, a bar with files done, img/s and time left; otherwise (a batch job's log) a line
    every LOG_EVERY seconds. Both on stderr, so that stdout stays parseable."""
    if quiet:
        yield None
    elif stderr().is_terminal:
        with progress_bars("img") as start:
            yield start("embedding")
    else:
        yield _log_lines()


LOG_EVERY = 5.0


def _log_lines() -> ProgressCallback:
    started = time.monotonic()
    last = started

    def update(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < LOG_EVERY and done < total:
            return
        last = now
        rate = done / (now - started) if now > started else 0.0
        left = f", about {(total - done) / rate:.0f} s left" if rate and done < total else ""
        say(f"ingest: {done}/{total} files ({rate:.1f} files/s{left})")

    return update


@contextmanager
def progress_bars(unit: str) -> Iterator[Callable[[str], ProgressCallback]]:
    """Progress bars on stderr: `start(label)` adds one (done/total, `unit`s per second, time left)
    and returns the callback that moves it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=stderr(),
    )

    def start(label: str) -> ProgressCallback:
        task = bars.add_task(label, total=None, rate="")

        def update(done: int, total: int) -> None:
            speed = next(t.speed for t in bars.tasks if t.id == task)
            bars.update(task, completed=done, total=total, rate=f"{speed:.1f} {unit}/s" if speed else "")

        return update

    with bars:
        yield start
