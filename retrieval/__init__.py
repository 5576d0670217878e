"""Content-based image search: ResNet50 (or VGG16) features in a FAISS index.

The CLI in `cli.py` is a thin layer over these functions; use them directly from Python the same way.
"""

from .config import Settings, load_settings
from .embedders import Embedder, create_embedder
from .ingest import IngestReport, ingest
from .search import Hit, QueryResult, Searcher, query, query_many
from .store import Store
from .verify import verify

__all__ = [
    "Embedder",
    "Hit",
    "IngestReport",
    "create_embedder",
    "QueryResult",
    "Searcher",
    "Settings",
    "Store",
    "ingest",
    "load_settings",
    "query",
    "query_many",
    "verify",
]
