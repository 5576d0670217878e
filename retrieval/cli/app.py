"""The `retrieval` typer app, the options several commands share, and the one place library errors become
exit codes (see errors.py): 0 ok, 1 error, 2 usage, 3 index missing/corrupt/mismatched, 4 nothing to index or
no results, 5 index busy, 130 interrupted."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from retrieval.cli.output import say
from retrieval.config import ENGINES, Settings, load_settings
from retrieval.errors import RetrievalError
from retrieval.io.files import printable
from retrieval.io.system import PRECISIONS

# The library is imported inside each command, not here: `retrieval query --server` and `--help` then
# start without numpy, Pillow or FAISS, in the time of a small client. Rich (messages and progress bars on
# stderr, about 40 ms to import) waits for the first message.

app = typer.Typer(
    help="Content-based image search: index a folder of images, then find the ones most like a query image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main() -> None:
    """Content-based image search: index a folder of images, then find the ones most like a query image."""
    # Pillow warns between its pixel limit and twice it, where max_pixels decides instead (and the skip
    # report says so); the command line owns the process's warning filters, so it silences that one here.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="Settings file (default: ./config.yaml when present).", exists=True, dir_okay=False),
]
IndexOption = Annotated[Path | None, typer.Option("--index", help="Index folder (config: index).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
WaitOption = Annotated[bool, typer.Option("--wait", help="Wait for another ingest into the index to finish.")]
EngineOption = Annotated[str | None, typer.Option(help=f"{' | '.join(ENGINES)} (config: engine).")]
TokenOption = Annotated[
    str | None,
    typer.Option(envvar="RETRIEVAL_TOKEN", help="The server's token (env: RETRIEVAL_TOKEN)."),
]
PrecisionOption = Annotated[str | None, typer.Option(help=f"{' | '.join(PRECISIONS)} (config: precision).")]
# The filters (retrieval/filters.py): read by the library, so that the command line and the server agree
FolderOption = Annotated[
    str | None,
    typer.Option("--folder", help="Only files under this folder (relative to the indexed one, or inside it)."),
]
AfterOption = Annotated[
    str | None, typer.Option("--modified-after", help="Only files modified at or after this date (2024-05-01; UTC).")
]
BeforeOption = Annotated[str | None, typer.Option("--modified-before", help="Only files modified before this date.")]
MinSizeOption = Annotated[
    str | None, typer.Option("--min-size", help="Only files of at least this size (500kB, 2MiB).")
]
MaxSizeOption = Annotated[str | None, typer.Option("--max-size", help="Only files of at most this size.")]


@contextmanager
def reported() -> Iterator[None]:
    """Turn the library's exceptions into a one-line message on stderr and the exception's exit code."""
    try:
        yield
    except RetrievalError as e:
        say(printable(str(e)), "error: ", "bold red")
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        say("interrupted; the index on disk is unchanged (an interrupted ingest resumes when run again)")
        raise typer.Exit(130) from None


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    with reported():
        return load_settings(config, **overrides)
