"""`executor: ray`: the embed step on a real local Ray instance (started and stopped by the ingest itself,
on 2 CPUs), giving the same index as a local ingest, first and incremental runs alike."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.config import Settings
from retrieval.ingest import ingest
from retrieval.store import Store
from retrieval.synthetic import write_photos

pytest.importorskip("ray")


def test_a_ray_ingest_gives_the_index_a_local_one_gives_and_updates_it_the_same_way(tmp_path):
    folder = tmp_path / "photos"
    write_photos(folder, 10, seed=1200)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    local = Settings(index=tmp_path / "local", weights="none")
    distributed = Settings(index=tmp_path / "ray", weights="none", executor="ray", batch_size=4)
    for run in ("first", "incremental"):
        if run == "incremental":
            write_photos(folder / "more", 3, seed=1300)
        by_ray = ingest(folder, distributed)
        here = ingest(folder, local)
        expected = (10, 10) if run == "first" else (3, 3)
        assert (by_ray.embedded, by_ray.added) == (here.embedded, here.added) == expected
        assert [(s.path, s.reason) for s in by_ray.skipped] == [(s.path, s.reason) for s in here.skipped]
        ours, theirs = Store.load(distributed.index), Store.load(local.index)
        assert ours.entries() == theirs.entries()  # paths, sizes, mtimes and content hashes, in listing order
        a, b = ours.vectors(), theirs.vectors()
        assert (a * b).sum(axis=1).min() >= 0.9999, run  # unit vectors: their cosines
    assert np.isfinite(ours.vectors()).all()
