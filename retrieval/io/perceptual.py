"""Perceptual hashes: a 64-bit DCT hash (pHash, computed by imagehash) of an image and of its mirror image,
a second kind of evidence for `dupes` beside the vectors. Computed at ingest from the pixels already decoded
for the model (the squashed input, so a resized copy hashes like its original), and kept with each row.

A row's hash is 16 bytes as 32 hex digits: the image's pHash, then its mirror image's. Two images whose
pHashes differ in few bits (Hamming distance), or one's and the other's mirror's, look alike to the eye."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

BYTES = 16  # the hash and the mirrored hash, 8 bytes each


def perceptual_hash(pixels: np.ndarray) -> str:
    """The pHash of an RGB array (height, width, 3) and of its mirror image, as 32 hex digits."""
    import imagehash

    im = Image.fromarray(pixels)
    own, mirrored = imagehash.phash(im), imagehash.phash(ImageOps.mirror(im))
    return _hex(own.hash) + _hex(mirrored.hash)


def _hex(bits: np.ndarray) -> str:
    return np.packbits(bits.flatten()).tobytes().hex()
