"""Seeded, photo-like test images, so the demo, the tests and the benchmarks need nothing downloaded.

Each picture is a smooth colour field with a few random shapes and a little sensor-like noise: enough
structure that a resized, re-encoded or mirrored copy stays closest to its original even under random
weights, and JPEG-compressible like a real photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from retrieval.config import FAMILIES
from retrieval.io.changes import CHANGES, resized

CONE_SPREAD = 0.17  # gives a mean cosine to the centroid of about 0.99, as random-weight ResNet50 features have


def photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A deterministic RGB picture of `size` (width, height) for `seed`."""
    rng = np.random.default_rng(seed)
    width, height = size
    field = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(field)
    scale = min(width, height)
    for _ in range(int(rng.integers(4, 9))):
        x, y = rng.integers(0, width), rng.integers(0, height)
        r = int(rng.integers(scale // 12, scale // 3))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (x - r, y - r, x + r, y + int(r * rng.uniform(0.4, 1.6)))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=color)
        else:
            draw.rectangle(box, fill=color)
    field = field.filter(ImageFilter.GaussianBlur(radius=scale / 400))
    noise = rng.normal(0, 6, (height, width, 1))
    return Image.fromarray(np.clip(np.asarray(field, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def write_photos(folder: Path, count: int, *, seed: int = 0, size: tuple[int, int] = (320, 240)) -> list[Path]:
    """Write `count` JPEGs named photo-0000.jpg … into `folder`; returns their paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo-{i:04d}.jpg"
        photo(seed + i, size).save(path, quality=90)
        paths.append(path)
    return paths


def near_duplicates(original: Image.Image) -> dict[str, Image.Image]:
    """Copies a near-duplicate search must match to their original: resized, mirrored, re-encoded."""
    return {
        "resized": resized(original, 2 / 3),
        "mirrored": CHANGES["flip"](original),
        "reencoded": CHANGES["jpeg"](original),
    }


def feature_vectors(
    family: str, count: int, *, dim: int = 2048, queries: int = 0, seed: int = 0, chunk: int = 50_000
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stand-ins for pooled CNN features, for index tests and the search benchmark.

    - "clustered": like a photo collection: count/100 Gaussian clusters (spread drawn from 0.3-0.8) in a
      32-d latent space, mapped to `dim` by a fixed random matrix and a ReLU;
    - "hard": one Gaussian in a 96-d latent space, same mapping, no clusters;
    - "cone": the clustered family squeezed into a narrow cone, as a CNN's ReLU-pooled features are (all
      positive, mean cosine to their centroid about 0.99): each clustered vector, less the family's mean
      direction, is scaled by CONE_SPREAD and added to a fixed all-positive unit vector. Inner product
      after centring (PCA) no longer ranks these like cosine, which is what hid a bad default index.
    Each clustered or hard vector gets 5 % noise before its final normalization: a random direction
    with uniform [0, 1) components (all positive, like the features), normalized and scaled by 0.05.
    `queries` more are fresh draws from the same distribution.
    Returns (vectors (count, dim), queries (queries, dim)), float32, L2-normalized.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    rng = np.random.default_rng(seed)
    latent = {"clustered": 32, "hard": 96, "cone": 32}[family]
    clustered = family != "hard"
    clusters = max(1, count // 100) if clustered else 1
    centers = rng.normal(size=(clusters, latent)) * (1.0 if clustered else 0.0)
    spreads = rng.uniform(0.3, 0.8, clusters) if clustered else np.ones(1)
    mapping = (rng.normal(size=(latent, dim)) / np.sqrt(latent)).astype(np.float32)
    # the axis of the cone, and the mean direction of the clustered vectors that it replaces
    axis = rng.uniform(0.5, 1.0, dim).astype(np.float32)
    axis /= np.linalg.norm(axis)
    mean = np.maximum(rng.normal(size=(4096, latent)).astype(np.float32) @ mapping, 0).mean(axis=0)
    mean /= np.linalg.norm(mean)

    def draw(n: int) -> np.ndarray:
        which = rng.integers(clusters, size=n)
        z = (centers[which] + rng.normal(size=(n, latent)) * spreads[which, None]).astype(np.float32)
        x = np.maximum(z @ mapping, 0)
        x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        noise = rng.uniform(size=(n, dim)).astype(np.float32)
        x += 0.05 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        if family == "cone":
            x = axis + CONE_SPREAD * (x - np.outer(x @ mean, mean))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    vectors = np.empty((count, dim), np.float32)
    for start in range(0, count, chunk):
        vectors[start : start + chunk] = draw(min(chunk, count - start))
    return vectors, draw(queries) if queries else np.empty((0, dim), np.float32)
