"""The message to send: bytes, a path, a descriptor or a binary file.

netqmail reads stdin only after the server has accepted ``DATA``, so a
message that cannot be read is noticed there (``ZUnable to read
message.``): nothing here is opened or read before :meth:`chunks` runs.

Under qmail the message is a regular file (qmail-rspawn hands over the
queue file), so a regular file is mapped in windows of a few MiB and its
pages go to the encoder straight from the page cache, without a copy into
a read buffer; the windows keep resident memory bounded whatever the
message size.  Anything else is read in large chunks into one reused
buffer.
"""

import mmap
import os
import stat

__all__ = ["Message", "CHUNK"]

# Bytes handed to the encoder at a time.
CHUNK = 1 << 20
# Bytes mapped at a time: resident memory of the message stays below this.
_WINDOW = 8 << 20
# Below this, one read costs less than setting up a mapping.
_MAP_MIN = 1 << 20


class Message:
    """A message source; :meth:`chunks` yields memoryviews, OSError on I/O.

    *source* is bytes-like, a path (``str`` or path-like), a file
    descriptor (``int``, read from its current offset) or a binary file
    object with ``readinto`` or ``read``.  Each yielded chunk is valid only
    until the next one is asked for.
    """

    def __init__(self, source):
        self._source = source
        self._opened = None

    def chunks(self):
        source = self._source
        if isinstance(source, (bytes, bytearray, memoryview)):
            yield from _memory_chunks(source)
        elif isinstance(source, int):
            yield from _fd_chunks(source)
        elif isinstance(source, (str, os.PathLike)):
            self._opened = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            yield from _fd_chunks(self._opened)
        else:
            yield from _file_chunks(source)

    def close(self):
        if self._opened is not None:
            os.close(self._opened)
            self._opened = None


def _memory_chunks(data):
    with memoryview(data) as view, view.cast("B") as flat:
        for start in range(0, len(flat), CHUNK):
            with flat[start:start + CHUNK] as chunk:
                yield chunk


def _file_chunks(file):
    buffer = bytearray(CHUNK)
    with memoryview(buffer) as view:
        if hasattr(file, "readinto"):
            while True:
                n = file.readinto(view)
                if not n:
                    return
                with view[:n] as chunk:
                    yield chunk
        while True:
            data = file.read(CHUNK)
            if not data:
                return
            yield memoryview(data)


def _fd_chunks(fd):
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode):
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        if info.st_size - offset >= _MAP_MIN:
            chunks = _mapped_chunks(fd, offset, info.st_size)
            try:
                first = next(chunks)
            except (OSError, ValueError):
                first = None  # this file cannot be mapped: read it
            if first is not None:
                yield first
                yield from chunks
                return
    buffer = bytearray(CHUNK)
    with memoryview(buffer) as view:
        while True:
            n = os.readv(fd, [view])
            if not n:
                return
            with view[:n] as chunk:
                yield chunk


def _mapped_chunks(fd, offset, size):
    """The bytes from *offset* to *size*, one mapped window at a time."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    skip = offset - start
    while start < size:
        length = min(_WINDOW, size - start)
        mapped = mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=start)
        try:
            mapped.madvise(mmap.MADV_SEQUENTIAL)
            with memoryview(mapped) as view:
                for pos in range(skip, length, CHUNK):
                    with view[pos:pos + CHUNK] as chunk:
                        yield chunk
        finally:
            mapped.close()
        start += length
        skip = 0
