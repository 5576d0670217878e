"""What an index kind declares: the one place its name is looked at."""

from __future__ import annotations

from typing import Any, ClassVar


class Kind:
    """An index kind: the FAISS structure it searches, the parameter tuning raises, what its search keeps in
    memory, and what it can do. Subclasses set the class attributes and `structure`; `choice` arguments are
    ann.IndexChoice (read by attribute, so that this package imports nothing of the index module)."""

    name: ClassVar[str]
    exact: ClassVar[bool] = False  # results equal exhaustive search
    offered: ClassVar[bool] = True  # a user may ask for it (config's index_type); else the store's own
    compresses: ClassVar[bool] = True  # searched codes, not the vectors: wrapped in an exact re-rank (RFlat)
    parameter: ClassVar[str | None] = None  # the IndexChoice field tuning raises to reach a recall target
    values: ClassVar[tuple[int, ...]] = ()  # the values tuning tries, in order
    faiss_parameter: ClassVar[str | None] = None  # that parameter's name in faiss.ParameterSpace, if it has one
    scanned_as_group: ClassVar[bool] = False  # segments coded alike are scanned as one (segments.ScanGroup)
    range_searched: ClassVar[bool] = True  # FAISS range-searches its structure; else its stored vectors are
    selects: ClassVar[bool] = True  # its search takes an ID selector (a filter inside it); fast scan's does not
    # the configurations the test battery builds (at 256 dimensions) and `bench search` sweeps (at 2048):
    # label -> IndexChoice fields
    tested: ClassVar[dict[str, dict[str, Any]]] = {}
    swept: ClassVar[dict[str, dict[str, Any]]] = {}

    def structure(self, choice: Any, width: int, count: int) -> str:
        """The factory string of the searched structure for `count` vectors of `width` dimensions (after the
        PCA, if any), without the PCA in front or the re-rank behind."""
        raise NotImplementedError

    def resident_bytes(self, choice: Any, width: int, count: int) -> int:
        """Memory a search keeps busy: the searched codes (and graph or lists); the exact vectors a re-rank
        reads stay memory-mapped on disk."""
        raise NotImplementedError
