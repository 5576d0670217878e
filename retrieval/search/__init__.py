"""Answering queries: the warm `Searcher` (searcher.py: a query image's vector, stored or embedded, and its
nearest rows mapped to files), what a query answers as plain data (results.py), the collage of a query and its
hits (collage.py), and the HTTP client that asks a running server instead (client.py, standard library only).

It sits above `index` and `embedding`; the server and the commands reach the index through it.
"""
