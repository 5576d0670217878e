"""The index on disk, as one unit: the `Store` (store.py, the facade every command opens), its segments and
their fan-out search (segments.py), a generation's files (segment_files.py), generations and the CURRENT
pointer (generations.py), the typed record an index keeps of itself (record.py), the manifest of paths
(manifest.py), vectors on their way in (vectors.py: the one place they are normalized) and the writer's lock
(lock.py).

It builds on `ann`, `embedding` (only the backbone's identity, to check that a query's vectors match), `io`
and `errors`.
"""
