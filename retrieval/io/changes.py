"""Changed copies of an image, as copies of a photo change: resized, re-encoded, cropped, mirrored, rotated,
brightened, greyed, captioned. One set of changes for everything that measures how well copies are found:
`eval`'s label-free recall (every change here), the int8 gate and the synthetic near-duplicates of the demo
and the tests (a few of them, with their own parameters)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps


def resized(im: Image.Image, scale: float = 0.5, resample: int = Image.Resampling.LANCZOS) -> Image.Image:
    """`scale` times the size each way, rounded down (at least a pixel)."""
    return im.resize((max(1, int(im.width * scale + 1e-9)), max(1, int(im.height * scale + 1e-9))), resample)


def cropped(im: Image.Image) -> Image.Image:
    """The central 80 % each way."""
    w, h = im.size
    return im.crop((w // 10, h // 10, w - w // 10, h - h // 10))


def rotated(im: Image.Image) -> Image.Image:
    return im.rotate(10, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=(0, 0, 0))


def brightened(im: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(im).enhance(1.4)


def greyscale(im: Image.Image) -> Image.Image:
    return ImageOps.grayscale(im).convert("RGB")


def captioned(im: Image.Image) -> Image.Image:
    """A caption across the middle, white with a dark outline, a tenth of the height tall."""
    out = im.copy()
    size = max(12, im.height // 10)
    font = ImageFont.load_default(size=size)
    position = (im.width // 20, im.height // 2)
    outline = {"stroke_width": max(1, size // 12), "stroke_fill": "black"}
    ImageDraw.Draw(out).text(position, "© retrieval 2026", fill="white", font=font, **outline)
    return out


def unchanged(im: Image.Image) -> Image.Image:
    return im


@dataclass(frozen=True)
class Change:
    """One way a copy differs from its original: `apply` to the pixels, then saved as `encoding` (a JPEG at
    `quality` is itself a change: the re-encoded copy)."""

    apply: Callable[[Image.Image], Image.Image]
    encoding: str = "PNG"
    quality: int = 75

    def __call__(self, im: Image.Image) -> Image.Image:
        """The copy as a reader of its file decodes it (a JPEG round-tripped in memory)."""
        out = self.apply(im)
        if self.encoding != "JPEG":
            return out
        encoded = io.BytesIO()
        out.save(encoded, "JPEG", quality=self.quality)
        return Image.open(encoded)

    def save(self, im: Image.Image, stem: Path) -> Path:
        """The copy written beside `stem` as a file of its encoding (a JPEG stays one: decoders treat it so)."""
        path = stem.with_suffix(".jpg" if self.encoding == "JPEG" else ".png")
        options = {"quality": self.quality} if self.encoding == "JPEG" else {}
        self.apply(im).save(path, self.encoding, **options)
        return path


CHANGES: dict[str, Change] = {
    "resize": Change(resized),
    "jpeg": Change(unchanged, "JPEG", 30),
    "crop": Change(cropped),
    "flip": Change(ImageOps.mirror),
    "rotate": Change(rotated),
    "brightness": Change(brightened),
    "greyscale": Change(greyscale),
    "text": Change(captioned),
}
