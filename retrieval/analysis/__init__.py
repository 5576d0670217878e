"""Measuring an index and the project: `eval` (quality.py: recall, precision and mAP with labels, or copy
recall without), the search benchmark behind `bench search` (bench.py), and the seeded photo-like images and
feature vectors both measure on (synthetic.py).

It sits above `index` and `search`, beside `maintenance`.
"""
