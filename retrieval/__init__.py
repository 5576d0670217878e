"""Content-based image search: ResNet50 (or VGG16) features in a FAISS index.

The CLI in `cli/` is a thin layer over these functions; use them directly from Python the same way.

The names below are imported on first use, not with the package: `retrieval query --server` and `--help`
then start without numpy, Pillow or FAISS. What lives where is drawn in the README's layout section; each
subpackage's docstring says what it holds and what it may import.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Settings": "config",
    "load_settings": "config",
    "Embedder": "embedding.embedders",
    "create_embedder": "embedding.embedders",
    "IngestReport": "ingestion.job",
    "ingest": "ingestion.job",
    "Hit": "search.results",
    "QueryResult": "search.results",
    "Searcher": "search.searcher",
    "query": "search.searcher",
    "query_many": "search.searcher",
    "Store": "index.store",
    "verify": "maintenance.verify",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value
