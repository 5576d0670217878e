"""Decoding: every image case of ../shared/BAD_INPUTS.md items 1-17, on files made here with Pillow,
numpy, struct and zlib."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from retrieval.analysis.synthetic import photo
from retrieval.config import DEFAULT_MAX_PIXELS
from retrieval.errors import ImageError
from retrieval.io.images import load_image

SIZE = (224, 224)


def decode(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    return load_image(path, SIZE, max_pixels)


def reason(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    with pytest.raises(ImageError) as caught:
        decode(path, max_pixels)
    return caught.value.reason


def jpeg_bytes(size=(160, 120), seed=1) -> bytes:
    buf = io.BytesIO()
    photo(seed, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims width x height: what a decompression bomb looks like on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# --- 1-4: not images, or cut short ----------------------------------------------------------------


def test_zero_byte_file_is_not_an_image(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert reason(tmp_path / "empty.jpg") == "not an image"


def test_text_file_named_png_is_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("shopping list: eggs, milk\n")
    assert reason(tmp_path / "notes.png") == "not an image"


def test_first_20_bytes_of_a_jpeg_are_skipped(tmp_path):
    (tmp_path / "stub.jpg").write_bytes(jpeg_bytes()[:20])
    assert reason(tmp_path / "stub.jpg") in {"truncated", "corrupt", "not an image"}


def test_jpeg_cut_at_half_is_truncated(tmp_path):
    data = jpeg_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    assert reason(tmp_path / "half.jpg") == "truncated"


# --- 5-7: sizes ----------------------------------------------------------------------------------


def test_tiny_png_claiming_40000_squared_is_a_bomb(tmp_path):
    data = png_header_only(40000, 40000)
    assert len(data) < 150
    (tmp_path / "bomb.png").write_bytes(data)
    assert reason(tmp_path / "bomb.png") == "decompression bomb"


def test_png_claiming_10000_squared_is_over_the_default_limit(tmp_path):
    (tmp_path / "big.png").write_bytes(png_header_only(10000, 10000))
    assert reason(tmp_path / "big.png") == "decompression bomb"


def test_pixel_limit_is_configurable(tmp_path):
    photo(0, (100, 100)).save(tmp_path / "small.png")
    assert reason(tmp_path / "small.png", max_pixels=5000) == "decompression bomb"
    assert decode(tmp_path / "small.png", max_pixels=10_000).shape == (224, 224, 3)


def test_extreme_strip_is_squashed_like_any_image(tmp_path):
    Image.new("RGB", (1, 20000), (10, 200, 30)).save(tmp_path / "strip.png")
    pixels = decode(tmp_path / "strip.png")
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert (pixels == (10, 200, 30)).all()


# --- 8-13: modes, frames, orientation ------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("RGB", (64, 64), (220, 30, 30)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    r, g, b = decode(tmp_path / "cmyk.jpg").reshape(-1, 3).mean(axis=0)
    assert r > 180 and g < 70 and b < 70


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 224).astype(np.uint16), (224, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = decode(tmp_path / "deep.png")
    expected = ((ramp.astype(np.int64) + 128) // 257).astype(np.uint8)
    assert np.abs(pixels[..., 0].astype(int) - expected).max() <= 1
    assert pixels[..., 0].max() == 255 and len(np.unique(pixels[..., 0])) > 200  # a full range, not a clip


def _half_transparent(mode: str) -> Image.Image:
    """A blue 64x64 picture whose left half is fully transparent, in `mode`."""
    if mode == "P":  # palette entry 0 is the transparent one
        im = Image.new("P", (64, 64), 1)
        im.putpalette([0, 0, 0, 0, 0, 255])
        im.paste(0, (0, 0, 32, 64))
        im.info["transparency"] = 0
        return im
    im = Image.new("RGBA", (64, 64), (0, 0, 255, 255))
    im.paste((0, 0, 0, 0), (0, 0, 32, 64))
    return im.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(tmp_path, mode):
    path = tmp_path / f"alpha-{mode}.png"
    _half_transparent(mode).save(path)
    pixels = decode(path)
    assert (pixels[:, :100] == 255).all(), "transparent pixels must be the fixed white background"
    assert (pixels[:, 130:] != 255).any()
    assert np.array_equal(pixels, decode(path)), "deterministic"


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_its_first_frame(tmp_path, fmt):
    frames = [Image.new("RGB", (64, 64), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    r, g, b = decode(path).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 50 and b < 50


def test_exif_orientation_6_equals_rotating_by_hand(tmp_path):
    pixels = photo(3, (120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    pixels.save(tmp_path / "tagged.png", exif=exif.tobytes())
    pixels.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "rotated.png")
    assert np.array_equal(decode(tmp_path / "tagged.png"), decode(tmp_path / "rotated.png"))
    assert not np.array_equal(decode(tmp_path / "tagged.png"), decode_plain(pixels, tmp_path))


@pytest.mark.parametrize("orientation", range(10))
def test_every_exif_orientation_decodes_as_pillows_exif_transpose(tmp_path, orientation):
    """The decoder skips Pillow's exif_transpose (and its copy) when nothing turns: the pixels must not change."""
    pixels = photo(3, (120, 80))
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels.save(tmp_path / "tagged.png", exif=exif.tobytes())
    ImageOps.exif_transpose(Image.open(tmp_path / "tagged.png")).save(tmp_path / "by-pillow.png")
    assert np.array_equal(decode(tmp_path / "tagged.png"), decode(tmp_path / "by-pillow.png"))


def decode_plain(im: Image.Image, folder: Path) -> np.ndarray:
    im.save(folder / "plain.png")
    return decode(folder / "plain.png")


def test_malformed_exif_means_no_rotation(tmp_path):
    im = photo(4, (120, 80))
    im.save(tmp_path / "bad-exif.jpg", quality=95, exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff\x01")
    im.save(tmp_path / "no-exif.jpg", quality=95)
    assert np.array_equal(decode(tmp_path / "bad-exif.jpg"), decode(tmp_path / "no-exif.jpg"))


# --- 14-17: formats --------------------------------------------------------------------------------


def test_png_named_jpg_is_sniffed(tmp_path):
    photo(5, (64, 64)).save(tmp_path / "actually-png.jpg", format="PNG")
    photo(5, (64, 64)).save(tmp_path / "honest.png")
    assert np.array_equal(decode(tmp_path / "actually-png.jpg"), decode(tmp_path / "honest.png"))


@pytest.mark.parametrize(
    "name, options",
    [
        ("a.jpg", {}),
        ("a.png", {}),
        ("a.gif", {}),
        ("a.bmp", {}),
        ("a.tiff", {}),
        ("a.webp", {}),
        ("a.ppm", {}),
        ("a.pgm", {"mode": "L"}),
        ("a.pbm", {"mode": "1"}),
    ],
)
def test_supported_formats_decode(tmp_path, name, options):
    im = photo(6, (80, 60))
    if "mode" in options:
        im = im.convert(options["mode"])
    im.save(tmp_path / name)
    pixels = decode(tmp_path / name)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


def test_svg_is_an_unsupported_format(tmp_path):
    (tmp_path / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    assert reason(tmp_path / "logo.svg") == "unsupported format"


def test_a_heic_brand_without_an_image_is_not_an_image(tmp_path):
    (tmp_path / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    assert reason(tmp_path / "phone.heic") == "not an image"


@pytest.mark.parametrize("ext", ["jpg", "jpeg", "png", "gif", "bmp", "tif", "webp", "ppm"])
def test_random_bytes_under_an_image_extension_are_skipped(tmp_path, ext):
    path = tmp_path / f"noise.{ext}"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError):
        decode(path)


def test_png_with_a_bad_crc_is_skipped(tmp_path):
    buf = io.BytesIO()
    photo(8, (64, 64)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[29] ^= 0xFF  # last byte of the IHDR CRC
    (tmp_path / "bad-crc.png").write_bytes(bytes(data))
    with pytest.raises(ImageError):
        decode(tmp_path / "bad-crc.png")


def test_a_missing_file_is_reported_not_raised_raw(tmp_path):
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    assert reason(tmp_path / "dangling.jpg") == "file not found"


def test_jpeg_draft_stays_close_to_a_full_decode(tmp_path):
    """DCT-domain downscaling is part of the recorded preprocessing; it must not change the picture."""
    photo(9, (1024, 768)).save(tmp_path / "big.jpg", quality=92)
    drafted = decode(tmp_path / "big.jpg").astype(int)
    full = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize(SIZE, Image.Resampling.BILINEAR))
    assert np.abs(drafted - full.astype(int)).mean() < 3
