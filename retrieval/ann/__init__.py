"""Vector indexes, in memory: the kinds of FAISS index the project builds (kinds/, a registry: one module per kind),
building, searching, reading and writing one (indexes.py), the trained parts indexes share, a PCA and a scan codebook
(shared.py), a search among some rows only, planned by how many (filtered.py), and measuring and choosing one for a set
of vectors (tuning.py: recall against exact search, `auto`).

It knows vectors and nothing else: it imports no other room of the package.
"""
