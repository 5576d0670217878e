"""Listing a folder: sorted relative paths, image extensions only, usage errors for non-folders."""

from __future__ import annotations

import pytest

from retrieval.errors import UsageError
from retrieval.files import list_images


def test_lists_images_recursively_sorted_and_relative(tmp_path):
    for rel in ["b.jpg", "a/z.PNG", "a/readme.txt", "c/d/e.webp", "a.JPEG", "logo.svg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert list_images(tmp_path).paths == ["a.JPEG", "a/z.PNG", "b.jpg", "c/d/e.webp", "logo.svg"]


def test_a_missing_folder_or_a_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a folder"):
        list_images(tmp_path / "file.jpg")


def test_a_symlink_loop_ends_and_lists_each_file_once(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"x")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)
    assert list_images(tmp_path).paths == ["a/x.jpg"]
