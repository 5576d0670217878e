"""`retrieval dupes`: groups of near-duplicate images, found through the index itself, and acting on them.

What lives here: the groups and the evidence that links them (groups.py; hash pairs in hashes.py), the cut-off
measured on the collection (threshold.py), moving a group's extras under the lock (moves.py), and the whole
command as one call (run.py)."""
