"""Content-based image search: ResNet50 (or VGG16) features in a FAISS index.

The CLI in `cli/` is a thin layer over these functions; use them directly from Python the same way.

The names below are imported on first use, not with the package: `retrieval query --server` and `--help`
then start without numpy, Pillow or FAISS. Two of them, `ingest` and `verify`, are functions named like
the modules that hold them; the package keeps the function under that name even after the module is
imported (which would otherwise rebind the attribute to the module).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_HOMES = {
    "Settings": "config",
    "load_settings": "config",
    "Embedder": "embedders",
    "create_embedder": "embedders",
    "IngestReport": "ingest",
    "ingest": "ingest",
    "Hit": "results",
    "QueryResult": "results",
    "Searcher": "search",
    "query": "search",
    "query_many": "search",
    "Store": "store",
    "verify": "verify",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # importing the submodule `ingest` (or `verify`) must not hide the function of the same name
        if isinstance(value, types.ModuleType) and _HOMES.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
