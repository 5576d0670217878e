"""Commands that check or change an index as a whole after it was built: `verify` (is it whole, do its files still
exist), `compact` (its segments merged without deleted rows), `export` (its rows for other tools: Parquet or npy) and
`dupes` (groups of near-duplicates, found through the index, and moving their extras under the lock).

It sits above `index` and `search`, beside `analysis`.
"""
