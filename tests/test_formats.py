"""The formats phones and cameras write: HEIC (pillow-heif), JPEG XL (pillow-jxl-plugin) and camera RAW (rawpy),
on files made here: pillow-heif and the JXL plugin write theirs, and tifffile writes DNGs (a Bayer mosaic, with
or without an embedded JPEG preview) the way cameras lay them out."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from retrieval.analysis.synthetic import photo
from retrieval.config import DEFAULT_MAX_PIXELS, Settings
from retrieval.errors import ImageError
from retrieval.ingestion.job import ERROR_REPORT, ingest
from retrieval.io.files import list_images
from retrieval.io.images import decoders, load_image_bytes, open_rgb
from retrieval.search.searcher import query

from .conftest import PHOTOS

ORIENTATION = 0x0112
# DNG tags (Adobe DNG 1.4): a camera's own layout, which LibRaw reads as it reads a camera's file.
DNG_TOP = [
    (50706, "B", 4, (1, 4, 0, 0)),  # DNGVersion
    (50708, "s", 0, "retrieval tests"),  # UniqueCameraModel
    (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1)),  # ColorMatrix1: identity
    (50728, "2I", 3, (1, 1, 1, 1, 1, 1)),  # AsShotNeutral: no white balance
]
DNG_RAW = [
    (33421, "H", 2, (2, 2)),  # CFARepeatPatternDim
    (33422, "B", 4, (0, 1, 1, 2)),  # CFAPattern: RGGB
    (50714, "H", 1, 0),  # BlackLevel
    (50717, "I", 1, 4095),  # WhiteLevel: 12 bits
]


def mosaic(rgb: np.ndarray) -> np.ndarray:
    """The 12-bit RGGB Bayer mosaic a sensor would have recorded of `rgb`."""
    v = rgb.astype(np.uint16) * 16
    cfa = np.empty(rgb.shape[:2], np.uint16)
    cfa[0::2, 0::2], cfa[0::2, 1::2] = v[0::2, 0::2, 0], v[0::2, 1::2, 1]
    cfa[1::2, 0::2], cfa[1::2, 1::2] = v[1::2, 0::2, 1], v[1::2, 1::2, 2]
    return cfa


def write_dng(path: Path, rgb: np.ndarray, preview: np.ndarray | None = None, orientation: int = 1) -> Path:
    """A DNG of `rgb`'s mosaic; with `preview`, laid out as cameras do: the JPEG preview first (IFD0),
    the raw data in its SubIFD."""
    top = DNG_TOP + [(274, "H", 1, orientation)]
    with tifffile.TiffWriter(path) as tif:
        if preview is None:
            tif.write(mosaic(rgb), photometric=32803, subfiletype=0, extratags=top + DNG_RAW)
        else:
            tif.write(preview, photometric="rgb", subfiletype=1, subifds=1, extratags=top, compression="jpeg",
                      rowsperstrip=preview.shape[0])  # fmt: skip
            tif.write(mosaic(rgb), photometric=32803, subfiletype=0, extratags=DNG_RAW)
    return path


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_heic_jxl_and_raw_decoders_register_at_the_first_decode():
    assert {"HEIF", "JXL"} <= set(decoders())


def test_heic_decodes_close_to_its_source_and_turned_by_its_orientation(tmp_path):
    source = photo(1, (120, 80))
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # the camera was turned: the picture is shown 90 degrees clockwise
    source.save(tmp_path / "phone.heic", quality=95, exif=exif.tobytes())
    decoded = open_rgb(tmp_path / "phone.heic", DEFAULT_MAX_PIXELS)
    upright = source.transpose(Image.Transpose.ROTATE_270)
    assert decoded.size == upright.size == (80, 120)
    assert np.abs(pixels(decoded) - pixels(upright)).mean() < 6


def test_jpeg_xl_decodes_close_to_its_source(tmp_path):
    source = photo(2, (96, 64))
    source.save(tmp_path / "a.jxl", quality=95)
    decoded = open_rgb(tmp_path / "a.jxl", DEFAULT_MAX_PIXELS)
    assert decoded.size == (96, 64)
    assert np.abs(pixels(decoded) - pixels(source)).mean() < 6


def test_a_heic_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    photo(3, (200, 100)).save(tmp_path / "big.heic")
    with pytest.raises(ImageError) as caught:
        open_rgb(tmp_path / "big.heic", max_pixels=10_000)
    assert caught.value.reason == "decompression bomb" and "200x100" in caught.value.detail


def test_a_mirrored_heic_finds_its_jpeg_original_first(tmp_path, indexed, make_embedder):
    for seed in range(PHOTOS):
        ImageOps.mirror(photo(seed)).save(tmp_path / f"mirrored-{seed}.heic", quality=90)
        result = query(tmp_path / f"mirrored-{seed}.heic", indexed, k=3, make_embedder=make_embedder)
        assert result.embedded and result.hits[0].path == f"photo-{seed:04d}.jpg"


def test_a_dng_with_a_full_size_preview_is_read_from_the_preview(tmp_path):
    """The preview here is the mosaic's mirror image, so which of the two was read shows in the pixels."""
    rgb = np.asarray(photo(4, (128, 96)))
    decoded = open_rgb(write_dng(tmp_path / "a.dng", rgb, preview=rgb[:, ::-1].copy()), DEFAULT_MAX_PIXELS)
    assert decoded.size == (128, 96)
    assert np.abs(pixels(decoded) - rgb[:, ::-1]).mean() < 6 < np.abs(pixels(decoded) - rgb).mean()


def test_a_dng_preview_is_turned_by_the_raw_files_orientation(tmp_path):
    rgb = np.asarray(photo(5, (128, 96)))
    decoded = open_rgb(write_dng(tmp_path / "a.dng", rgb, preview=rgb, orientation=6), DEFAULT_MAX_PIXELS)
    assert decoded.size == (96, 128)
    assert np.abs(pixels(decoded) - np.rot90(rgb, k=-1)).mean() < 6


@pytest.mark.parametrize("preview", ["none", "thumbnail"])
def test_a_dng_without_a_full_size_preview_is_demosaiced(tmp_path, preview):
    """Half-size demosaicing (one RGB pixel per 2x2 Bayer cell): each channel follows the picture's, at half
    the size (LibRaw's colour matrix and tone curve change the levels, so correlation, not equality)."""
    rgb = np.asarray(photo(6, (128, 96)))
    small = np.asarray(photo(6, (32, 24))) if preview == "thumbnail" else None
    decoded = open_rgb(write_dng(tmp_path / "a.dng", rgb, preview=small), DEFAULT_MAX_PIXELS)
    assert decoded.size == (64, 48)
    source = pixels(Image.fromarray(rgb).resize((64, 48), Image.Resampling.BOX))
    channels = [np.corrcoef(pixels(decoded)[..., c].ravel(), source[..., c].ravel())[0, 1] for c in range(3)]
    assert min(channels) > 0.8


def test_a_dng_is_turned_by_its_orientation_when_demosaiced(tmp_path):
    rgb = np.asarray(photo(7, (128, 96)))
    decoded = open_rgb(write_dng(tmp_path / "a.dng", rgb, orientation=6), DEFAULT_MAX_PIXELS)
    assert decoded.size == (48, 64)


def test_a_raw_file_over_the_pixel_limit_is_refused_before_demosaicing(tmp_path):
    path = write_dng(tmp_path / "a.dng", np.asarray(photo(8, (128, 96))))
    with pytest.raises(ImageError) as caught:
        open_rgb(path, max_pixels=5_000)
    assert caught.value.reason == "decompression bomb" and "128x96" in caught.value.detail


def test_a_truncated_raw_without_a_preview_says_both_why(tmp_path):
    data = write_dng(tmp_path / "full.dng", np.asarray(photo(9, (128, 96)))).read_bytes()
    (tmp_path / "cut.dng").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as caught:
        open_rgb(tmp_path / "cut.dng", DEFAULT_MAX_PIXELS)
    assert caught.value.reason == "corrupt"
    assert "no embedded preview" in caught.value.detail and "demosaicing failed" in caught.value.detail


def test_a_jpeg_named_like_a_raw_file_decodes_as_the_jpeg_it_is(tmp_path):
    photo(10, (80, 60)).save(tmp_path / "renamed.nef", "JPEG")
    assert open_rgb(tmp_path / "renamed.nef", DEFAULT_MAX_PIXELS).size == (80, 60)


def test_an_uploaded_dng_decodes_like_the_file(tmp_path):
    path = write_dng(tmp_path / "a.dng", np.asarray(photo(11, (128, 96))))
    from_bytes = load_image_bytes(path.read_bytes(), (224, 224), DEFAULT_MAX_PIXELS)
    from_file = np.asarray(open_rgb(path, DEFAULT_MAX_PIXELS).resize((224, 224), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(from_bytes, from_file)


def test_a_folder_of_phone_and_camera_files_is_indexed_and_the_bad_ones_reported(tmp_path, embedder):
    """What the walk picks up and the ingest report says: a HEIC, a JXL and a DNG indexed; a truncated
    HEIC, random bytes named .cr2 and a truncated DNG skipped, each with its reason."""
    folder = tmp_path / "library"
    folder.mkdir()
    photo(12).save(folder / "phone.heic")
    photo(13).save(folder / "web.jxl")
    write_dng(folder / "camera.dng", np.asarray(photo(14, (128, 96))))
    heic = io.BytesIO()
    photo(15).save(heic, "HEIF")
    (folder / "cut.heic").write_bytes(heic.getvalue()[: len(heic.getvalue()) // 2])
    (folder / "noise.cr2").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    dng = write_dng(tmp_path / "whole.dng", np.asarray(photo(16, (128, 96)))).read_bytes()
    (folder / "cut.dng").write_bytes(dng[: len(dng) // 2])
    assert len(list_images(folder).paths) == 6

    settings = Settings(index=tmp_path / "index", weights="none")
    ingest(folder, settings, embedder=embedder)
    lines = (settings.index / ERROR_REPORT).read_text().splitlines()
    skipped = {e["path"]: e["reason"] for e in map(json.loads, lines)}
    assert skipped == {"cut.heic": "corrupt", "noise.cr2": "not an image", "cut.dng": "corrupt"}
    result = query(folder / "camera.dng", settings, k=1)
    assert not result.embedded and result.hits[0].path == "camera.dng"
