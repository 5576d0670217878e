"""Seeded, photo-like test images, so the demo, the tests and the benchmarks need nothing downloaded.

Each picture is a smooth colour field with a few random shapes and a little sensor-like noise: enough
structure that a resized, re-encoded or mirrored copy stays closest to its original even under random
weights, and JPEG-compressible like a real photo.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps


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
    w, h = original.size
    encoded = io.BytesIO()
    original.save(encoded, "JPEG", quality=30)
    return {
        "resized": original.resize((w * 2 // 3, h * 2 // 3), Image.Resampling.LANCZOS),
        "mirrored": ImageOps.mirror(original),
        "reencoded": Image.open(encoded),
    }
