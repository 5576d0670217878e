"""Listing a folder: sorted relative paths, image extensions only, usage errors for non-folders."""

from __future__ import annotations

import os
import socket

import pytest

from retrieval.errors import UsageError
from retrieval.io.files import list_images
from retrieval.io.sources import SpecialFile, open_regular

from .conftest import no_hang


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


def test_a_fifo_a_socket_and_a_device_are_reported_not_listed(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "null.png").symlink_to("/dev/null")  # a character device, as a link to it
    os.mkfifo(tmp_path / "pipe.jpg")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock.png"))
        listing = list_images(tmp_path)
    assert listing.paths == ["a.jpg"]
    assert sorted((e.path, e.reason, e.detail) for e in listing.errors) == [
        ("null.png", "not a regular file", "a device"),
        ("pipe.jpg", "not a regular file", "a FIFO (named pipe)"),
        ("sock.png", "not a regular file", "a socket"),
    ]


def test_opening_a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    with no_hang(30), pytest.raises(SpecialFile, match="FIFO"):
        open_regular(tmp_path / "pipe.jpg")
    with no_hang(30), pytest.raises(SpecialFile, match="folder"):
        open_regular(tmp_path)
