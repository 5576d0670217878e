"""Decoding any image a user's folder holds into the exact RGB array the model expects, or a clear reason why not.

Every step here is part of the index's recorded preprocessing (`PREPROCESSING`): change one and bump
its version, so that old indexes are refused instead of silently compared with differently made vectors.
"""

from __future__ import annotations

import importlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from retrieval.errors import ImageError
from retrieval.io.files import FOREIGN_EXTENSIONS, NOT_REGULAR, RAW_EXTENSIONS
from retrieval.io.raw import decode_raw
from retrieval.io.sources import ArrowPath, Location, SpecialFile, open_regular

# Transparent pixels are laid on this colour, so a logo on alpha embeds the same wherever it came from.
BACKGROUND = (255, 255, 255)
# Decoders we let Pillow use. Others (EPS, which runs Ghostscript; PSD; ICO …) are refused by design.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "AVIF", "HEIF", "JXL")


@lru_cache(maxsize=1)
def decoders() -> tuple[str, ...]:
    """The allowed formats this Pillow offers. Image.init() registers every plugin first, and HEIF's and
    JPEG XL's plugins register themselves, all at the first decode, never at import (which changes no
    global state): Image.open fails on a listed format it has not loaded yet, and a build of Pillow without
    one of these (AVIF, say) simply does not offer it."""
    Image.init()
    importlib.import_module("pillow_heif").register_heif_opener()
    importlib.import_module("pillow_jxl")  # registers "JXL" with Pillow as it is imported
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def quiet_pillow_bomb_warnings() -> None:
    """Pillow only warns between its pixel limit and twice it, where `max_pixels` decides instead (and says
    so in the skip report). For the command line, which owns the process's warning filters: a library
    leaves them to its caller, and `warnings.catch_warnings` per call is not thread-safe."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


PREPROCESSING: dict[str, Any] = {
    "version": 1,
    "orientation": "exif",
    "frame": "first",
    "color": "RGB; 16-bit scaled by 1/257; alpha over white",
    "jpeg_draft": "DCT scaling to the smallest size >= input",
    "resize": "squash to input size, bilinear with antialias",
}


def load_image(path: Location, size: tuple[int, int], max_pixels: int, *, jpeg_draft: bool = True) -> np.ndarray:
    """Decode `path` into a (height, width, 3) uint8 array of exactly `size` (width, height).

    The whole image is squashed to the model's input rather than centre-cropped, so nothing at the
    edges is lost from the search. Raises ImageError with a short reason for anything unusable.
    `jpeg_draft=False` decodes JPEGs at full size first: only for measuring what the draft saves.
    """
    im = open_rgb(path, max_pixels, draft=size if jpeg_draft else None)
    return np.asarray(im.resize(size, Image.Resampling.BILINEAR))


def load_image_bytes(data: bytes, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """`load_image` for an image held in memory (an upload): the same decoding, checks and reasons."""
    if not data:
        raise ImageError("not an image", "empty file")
    with _as_image_errors(foreign=False):
        try:
            im = _decode(io.BytesIO(data), max_pixels, draft=size)
        except UnidentifiedImageError:  # no name to go by: a RAW upload is known by LibRaw knowing it
            im = _decode(io.BytesIO(data), max_pixels, draft=size, raw=True)
    return np.asarray(im.resize(size, Image.Resampling.BILINEAR))


def load_thumbnail(path: Location, box: int, max_pixels: int) -> Image.Image:
    """An RGB image fitting in a `box` x `box` square, aspect kept: for drawing, not for embedding."""
    im = open_rgb(path, max_pixels, draft=(box, box))
    im.thumbnail((box, box), Image.Resampling.BILINEAR)
    return im


def fetched(path: Location) -> Location:
    """A remote file with its bytes fetched once, so that decoding and hashing it make one request; a local
    path as it is (its second read comes from the page cache)."""
    if not isinstance(path, ArrowPath):
        return path
    with _as_image_errors(foreign=path.suffix.lower() in FOREIGN_EXTENSIONS):
        return path.fetched()


def open_rgb(path: Location, max_pixels: int, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open, fully decode, orient and convert one image to RGB, translating every failure to ImageError.

    `draft` lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is at least that much larger
    than needed, which is most of the decoding time saved on camera-sized photos.
    """
    with _as_image_errors(foreign=path.suffix.lower() in FOREIGN_EXTENSIONS):
        # Our own file object, closed on every path, so a failing decoder never leaks a descriptor.
        with open_regular(path) as f:
            if f.seek(0, io.SEEK_END) == 0:
                raise ImageError("not an image", "empty file")
            f.seek(0)
            return _decode(f, max_pixels, draft, raw=path.suffix.lower() in RAW_EXTENSIONS)


@contextmanager
def _as_image_errors(foreign: bool) -> Iterator[None]:
    """Every way reading or decoding can fail, as an ImageError with a short reason. `foreign`: the file's
    name says it is of a format we do not decode (HEIC, SVG …), so an unknown one is 'unsupported'."""
    try:
        yield
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError("decompression bomb", str(e)) from e
    except UnidentifiedImageError as e:
        raise ImageError("unsupported format" if foreign else "not an image", "no decoder recognises it") from e
    except SpecialFile as e:
        raise ImageError(NOT_REGULAR, e.strerror) from e
    except PermissionError as e:
        raise ImageError("permission denied", e.strerror or "") from e
    except FileNotFoundError as e:
        raise ImageError("file not found", "deleted, or a broken link") from e
    except IsADirectoryError as e:
        raise ImageError("not an image", "is a folder") from e
    except ConnectionError as e:  # a remote file that could not be fetched (sources.ArrowPath)
        raise ImageError("unreadable", str(e)) from e
    except OSError as e:
        reason = "truncated" if "truncated" in str(e) else "corrupt"
        raise ImageError(reason, str(e)) from e
    except Exception as e:  # decoders raise anything (SyntaxError, ValueError, struct.error …)
        raise ImageError("corrupt", f"{type(e).__name__}: {str(e).strip()}") from e


def _decode(f: BinaryIO, max_pixels: int, draft: tuple[int, int] | None, *, raw: bool = False) -> Image.Image:
    """Open, check the pixel count from the header, decode fully, orient and convert `f` to RGB. `raw`: ask
    LibRaw first; bytes it does not recognise go to Pillow like any file's."""
    if raw:
        developed = decode_raw(f, max_pixels, lambda jpeg: _decode(io.BytesIO(jpeg), max_pixels, draft))
        if developed is not None:
            return _to_rgb(developed)
        f.seek(0)
    im = Image.open(f, formats=decoders())
    if im.width * im.height > max_pixels:
        raise ImageError(
            "decompression bomb",
            f"{im.width}x{im.height} pixels, over the limit of {max_pixels} (max_pixels)",
        )
    if draft is not None:
        im.draft(None, draft)
    im.load()  # decoding errors (truncation, bad data) surface here, not at open
    return _to_rgb(_orient(im))


def _orient(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block means no rotation, not a lost image.

    Pillow's exif_transpose returns a copy even when there is nothing to turn: 0.55 ms of the ~5 ms a
    1024x768 JPEG takes to decode and resize (measured), time the forward pass shares the cores with. So it
    is called only for an orientation that turns the image.
    """
    try:
        if im.getexif().get(ExifTags.Base.Orientation, 1) == 1:
            return im
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises many types on bad data
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, deterministically."""
    if im.mode.startswith("I"):
        # 16-bit (and 32-bit integer) greyscale: scale 0..65535 onto 0..255 instead of clipping at 255.
        wide = np.asarray(im).astype(np.int64)
        im = Image.fromarray(((np.clip(wide, 0, 65535) + 128) // 257).astype(np.uint8), mode="L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")
