"""Message sources: every way of giving the message yields the same bytes."""

import io
import os

import pytest

from qmailremote import message as message_module
from qmailremote.message import Message

BIG = bytes(range(256)) * (3 * 4096 + 17)  # ~3 MiB: mapped, several chunks


def collect(source):
    msg = Message(source)
    try:
        return b"".join(bytes(chunk) for chunk in msg.chunks())
    finally:
        msg.close()


@pytest.mark.parametrize("data", [b"", b"x\n", BIG])
def test_bytes_like(data):
    assert collect(data) == data
    assert collect(bytearray(data)) == data
    assert collect(memoryview(data)) == data


@pytest.mark.parametrize("data", [b"", b"x\n", BIG])
def test_path_and_file_objects(tmp_path, data):
    path = tmp_path / "m"
    path.write_bytes(data)
    assert collect(str(path)) == data
    assert collect(path) == data
    with open(path, "rb") as f:
        assert collect(f) == data
    assert collect(io.BytesIO(data)) == data


class ReadOnly:
    def __init__(self, data):
        self._file = io.BytesIO(data)

    def read(self, n):
        return self._file.read(n)


def test_object_with_only_read():
    assert collect(ReadOnly(BIG)) == BIG


@pytest.mark.parametrize("offset", [0, 1, 4095, 4096, 5000, len(BIG) - 10])
def test_descriptor_from_its_offset(tmp_path, offset):
    path = tmp_path / "m"
    path.write_bytes(BIG)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        assert collect(fd) == BIG[offset:]
    finally:
        os.close(fd)


def test_large_file_is_mapped_in_windows(tmp_path, monkeypatch):
    monkeypatch.setattr(message_module, "_WINDOW", 1 << 20)
    path = tmp_path / "m"
    path.write_bytes(BIG)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = Message(fd).chunks()
        first = next(chunks)
        assert isinstance(first.obj, message_module.mmap.mmap)
        first = bytes(first)  # a chunk is valid until the next is asked for
        rest = b"".join(bytes(c) for c in chunks)
        assert first + rest == BIG
    finally:
        os.close(fd)


def test_pipe_descriptor():
    read_end, write_end = os.pipe()
    os.write(write_end, b"piped\n")
    os.close(write_end)
    try:
        assert collect(read_end) == b"piped\n"
    finally:
        os.close(read_end)


def test_missing_path_is_an_oserror_when_read(tmp_path):
    msg = Message(str(tmp_path / "missing"))  # nothing happens yet
    with pytest.raises(OSError):
        next(msg.chunks())


@pytest.mark.parametrize("head, needs", [
    (b"Received: from a by b with UTF8SMTP id 1\n\nbody\n", True),
    (b"received: from a by b WITH utf8smtps;\n\n", True),
    (b"Received: from a by b with\n\tUTF8SMTPA id 1\n\n", True),   # folded
    (b"Received: from a\n by b\n with  UTF8LMTP\n\n", True),
    (b"Subject: x\nReceived: by b with UTF8SMTP\n", True),          # no body
    (b"Received: by b with ESMTP\n\nReceived: by b with UTF8SMTP\n", False),
    (b"X-Received: by b with UTF8SMTP\n\n", False),
    (b"Received: by b withUTF8SMTP\n\n", False),
    (b"\nReceived: by b with UTF8SMTP\n", False),                  # no header
    (b"", False),
])
def test_utf8_header(head, needs):
    from qmailremote.message import utf8_header
    assert utf8_header(head) is needs
