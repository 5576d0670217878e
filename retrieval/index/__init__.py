"""The index on disk, as one unit. `Store` (store.py) is the facade every command opens; behind it, one module per
concern: the segments themselves (segments.py), row numbers across them (rows.py), what a new segment is built as and
when segments merge (building.py), searching them together (fanout.py), a generation's files (segment_files.py) and its
folder and CURRENT pointer (generations.py), the typed record an index keeps of itself (record.py) and what `info` shows
of it (facts.py), the manifest of paths (manifest.py), the arrays a large build is assembled in (assembly.py), the rows
a filter keeps (selection.py), and the one write transaction under the writer's lock (writing.py, lock.py).

It builds on `ann`, `embedding` (only the backbone's identity, to check that vectors match), `io`, `vectors`, `filters`
and `errors`.
"""
