"""Index kinds as a registry (txtai's `ann/` is the model): one class per kind in a module of its own,
declaring its FAISS structure, the search parameter tuning raises, the memory its search keeps busy, its
capabilities, and the configurations the test battery builds and `bench search` sweeps. The rest of the
package asks the registry instead of testing a kind's name: indexes.py (factory, metric, parameters, tuning,
warnings), config (the index types offered), the bench and the test battery. Adding a kind is a new module
here and one line in KINDS. It imports nothing else of the package."""

from retrieval.ann.kinds.base import Kind
from retrieval.ann.kinds.flat import Flat
from retrieval.ann.kinds.hnsw import Hnsw
from retrieval.ann.kinds.hnsw_sq import HnswSq
from retrieval.ann.kinds.ivf import Ivf
from retrieval.ann.kinds.scan import Scan

KINDS: dict[str, Kind] = {kind.name: kind for kind in (Flat(), Hnsw(), HnswSq(), Ivf(), Scan())}
AUTO = "auto"  # not a kind: tuning.build_measured chooses one, measured (flat below a size, else tuned)
OFFERED = (AUTO, *(name for name, kind in KINDS.items() if kind.offered))  # what index_type may say


def kind_of(name: str) -> Kind:
    """The registered kind `name`; ValueError naming the known ones for any other."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"no index kind {name!r}; the kinds are {', '.join(KINDS)}") from None


__all__ = ["AUTO", "KINDS", "OFFERED", "Kind", "kind_of"]
