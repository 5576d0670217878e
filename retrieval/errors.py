"""The exceptions the library raises, and the exit code the CLI maps each one to.

The library never calls ``sys.exit``: it raises one of these, and only ``cli/app.py`` turns it into an exit
code, so every command reports the same fault with the same code.
"""

from __future__ import annotations

# Exit codes, documented in the README. 2 is also what typer uses for a malformed command line.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INDEX = 3
EXIT_NOTHING = 4
EXIT_BUSY = 5


class RetrievalError(Exception):
    """Base class: a fault the user can act on. The message says what happened and what to do."""

    exit_code = EXIT_ERROR


class UsageError(RetrievalError):
    """An argument or setting that can never work (k < 1, a folder that is a file, an unknown model)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """config.yaml is unreadable, or one of its keys is unknown or of the wrong type."""


class ImageError(RetrievalError):
    """One image could not be decoded. ``reason`` is a short, fixed label used to group skipped files."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class NoSuchImage(UsageError):
    """A row id that the index does not hold."""


class WeightsUnavailable(RetrievalError):
    """The model's weights cannot be loaded (no network for ImageNet weights, a missing or bad file)."""


class StoreError(RetrievalError):
    """The index on disk is missing, corrupt, or does not match what the caller needs."""

    exit_code = EXIT_INDEX


class IndexMissing(StoreError):
    """No index exists at the given folder."""


class IndexCorrupt(StoreError):
    """Index files exist but cannot be read or disagree with each other."""


class IndexMismatch(StoreError):
    """The index was built with another model, weights, preprocessing, dimension or format version."""


class IndexBusy(StoreError):
    """Another ingest holds the index's write lock."""

    exit_code = EXIT_BUSY


class ServerError(RetrievalError):
    """A `retrieval serve` could not be reached, refused the request, or answered with an error."""


class NothingToIndex(RetrievalError):
    """A folder held no image that could be embedded; no index is written."""

    exit_code = EXIT_NOTHING


class NoMatch(RetrievalError):
    """A filter kept no indexed file, so a search has no results."""

    exit_code = EXIT_NOTHING


class EmptyIndex(RetrievalError):
    """The index holds no vectors, so a query has no results."""

    exit_code = EXIT_NOTHING
