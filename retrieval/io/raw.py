"""Camera RAW files (DNG, CR2, CR3, NEF, ARW, RAF …) through LibRaw (rawpy): the embedded full-size preview
when the camera wrote one, otherwise the sensor data demosaiced.

The preview is what the camera itself rendered (its white balance, its tone curve) and takes milliseconds
to decode; demosaicing takes the better part of a second. Neither is a new preprocessing step for the
vectors: both end as the RGB image every other format gives, which `images` then resizes as always.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image

from retrieval.errors import ImageError

# A preview whose long side is at least this share of the sensor's is full-size: cameras write previews of
# the whole sensor (or nearly: some crop a border), where a 160-pixel thumbnail is not one.
FULL_SIZE = 0.5
# LibRaw's `flip` (from the RAW's own orientation tag) as the turn that undoes it.
_TURNS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def decode_raw(f: BinaryIO, max_pixels: int, decode_jpeg: Callable[[bytes], Image.Image]) -> Image.Image | None:
    """The RGB image of the RAW file `f`, or None when LibRaw does not recognise the bytes (a JPEG saved
    with a RAW extension, say: the format comes from the bytes, never the name, so the caller tries Pillow).

    `decode_jpeg` decodes the embedded preview the way every JPEG is decoded (the pixel limit, draft
    scaling, its own EXIF orientation). A file neither way works for raises ImageError saying both why.
    """
    rawpy: Any = importlib.import_module("rawpy")
    try:
        raw = rawpy.imread(f)
    except (rawpy.LibRawFileUnsupportedError, rawpy.LibRawIOError):  # what it says of bytes it cannot parse
        return None
    except rawpy.LibRawError as e:
        raise ImageError("corrupt", f"RAW: LibRaw cannot open it ({_said(e)})") from e
    with raw:
        width, height = raw.sizes.width, raw.sizes.height
        if width * height > max_pixels:
            raise ImageError(
                "decompression bomb", f"{width}x{height} pixels, over the limit of {max_pixels} (max_pixels)"
            )
        preview, why_not = _preview(raw, rawpy, max(width, height), decode_jpeg)
        if preview is not None:
            return preview
        try:
            rgb = raw.postprocess(use_camera_wb=True, half_size=True, output_bps=8)
        except (rawpy.LibRawError, MemoryError, ValueError) as e:
            raise ImageError("corrupt", f"RAW: {why_not}, and demosaicing failed ({_said(e)})") from e
    return Image.fromarray(np.ascontiguousarray(rgb))


def _preview(
    raw: Any, rawpy: Any, long_side: int, decode_jpeg: Callable[[bytes], Image.Image]
) -> tuple[Image.Image | None, str]:
    """The embedded preview when it is full-size and readable, turned upright; else None and why not."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None, "no embedded preview"
    except rawpy.LibRawError as e:
        return None, f"its preview is unreadable ({_said(e)})"
    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            with Image.open(io.BytesIO(thumb.data), formats=("JPEG",)) as header:
                size, upright = header.size, header.getexif().get(ExifTags.Base.Orientation, 1) != 1
        except Exception as e:  # noqa: BLE001 - Pillow raises many types on a bad header
            return None, f"its preview is unreadable ({type(e).__name__})"
        if max(size) < FULL_SIZE * long_side:
            return None, f"its preview is only {size[0]}x{size[1]}"
        try:
            image = decode_jpeg(thumb.data)
        except ImageError as e:
            return None, f"its preview is unreadable ({e.reason})"
        # a preview with its own orientation was turned by decode_jpeg; else the RAW's orientation applies
        return image if upright else _upright(image, raw.sizes.flip), ""
    image = Image.fromarray(np.ascontiguousarray(thumb.data)).convert("RGB")  # an uncompressed bitmap
    if max(image.size) < FULL_SIZE * long_side:
        return None, f"its preview is only {image.width}x{image.height}"
    return _upright(image, raw.sizes.flip), ""


def _upright(image: Image.Image, flip: int) -> Image.Image:
    turn = _TURNS.get(flip)
    return image if turn is None else image.transpose(turn)


def _said(e: BaseException) -> str:
    """LibRaw's message without the bytes literal rawpy wraps it in."""
    text = e.args[0] if e.args else type(e).__name__
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
