"""`retrieval serve`: the warm Searcher behind an HTTP API (FastAPI on uvicorn).

What lives here: the app factory (app.py), its routers by area (routers/: the page, health and info; search; images and
thumbnails), the batching of concurrent uploads (batching.py), the request and response models and the server's limits
(schemas.py), the per-request state (dependencies.py), the Prometheus metrics (metrics.py), binding and running
(listen.py), and the page itself (static/). It reaches the index only through `search.Searcher`; an import contract in
pyproject.toml forbids it the index (store, record, segments), the vector index kinds and FAISS.
"""

from retrieval.server.app import create_app
from retrieval.server.listen import listen, run
from retrieval.server.schemas import ServeOptions

__all__ = ["ServeOptions", "create_app", "listen", "run"]
