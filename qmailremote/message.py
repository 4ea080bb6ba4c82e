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

ESMTP needs to know a few things about the message before ``MAIL``: its
size on the wire (``SIZE=``, BDAT), whether it ends in a partial line, and
whether a ``Received: ... with UTF8...`` header asks for SMTPUTF8.
:meth:`Message.survey` finds them without reading the source for sending
(``pread`` and fresh mappings leave a descriptor's offset alone); a source
that cannot be read twice (a pipe, a file object) has no survey.
"""

import errno
import mmap
import os
import stat

from ._kernel import body_counts, ends_line

__all__ = ["Message", "Survey", "CHUNK"]

# Bytes handed to the encoder at a time.
CHUNK = 1 << 20
# Bytes mapped at a time: resident memory of the message stays below this.
_WINDOW = 8 << 20
# Below this, one read costs less than setting up a mapping.
_MAP_MIN = 1 << 20
# How much of the message start is looked at for the header block.
_HEAD = 64 << 10


class Survey:
    """What ESMTP must know before ``MAIL``, found without sending.

    ``size`` is the message's length in bytes, ``lfs`` its LFs (each gains
    a CR on the wire), ``dots`` its line-start dots (doubled in DATA mode),
    ``complete`` whether it ends at a line boundary (an empty message does),
    ``utf8_header`` whether its header block has a ``Received:`` field
    saying ``with UTF8``: the other half of the SMTPUTF8 rule of the
    patched qmails.
    """

    __slots__ = ("size", "lfs", "dots", "complete", "utf8_header")

    def __init__(self, size, lfs, dots, complete, utf8_header):
        self.size = size
        self.lfs = lfs
        self.dots = dots
        self.complete = complete
        self.utf8_header = utf8_header

    @property
    def data_size(self):
        """Bytes the body takes on the wire in DATA mode, without ``.``."""
        return self.size + self.lfs + self.dots

    @property
    def bdat_size(self):
        """Bytes the body takes on the wire in BDAT chunks (no stuffing)."""
        return self.size + self.lfs


def utf8_header(head):
    """Whether a header block asks for SMTPUTF8 (``Received: ... with UTF8``).

    *head* is the start of the message; the header block ends at its first
    empty line.  Continuation lines belong to the field before them.
    """
    end = head.find(b"\n\n")
    if head.startswith(b"\n"):
        return False
    if end >= 0:
        head = head[:end + 1]
    field = b""
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            field += line
            continue
        if _says_utf8(field):
            return True
        field = line
    return _says_utf8(field)


def _says_utf8(field):
    """A ``Received:`` field with ``with UTF8...`` (any white space)."""
    if field[:9].lower() != b"received:":
        return False
    return b" with utf8" in b" ".join(field.lower().split())


class Message:
    """A message source; :meth:`chunks` yields memoryviews, OSError on I/O.

    *source* is bytes-like, a path (``str`` or path-like), a file
    descriptor (``int``, read from its current offset) or a binary file
    object with ``readinto`` or ``read``.  Each yielded chunk is valid only
    until the next one is asked for.
    """

    def __init__(self, source, progress=None):
        self._source = source
        self._opened = None
        self._counting = None
        # progress(done, total): message bytes handed to the connection so
        # far, and the message's size when known (else None).
        self._progress = progress

    def _surveyed_fd(self):
        """A descriptor of the message for surveying (the caller closes it)."""
        source = self._source
        if isinstance(source, int):
            return os.dup(source)
        if isinstance(source, (str, os.PathLike)):
            return os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        return None

    def count_ahead(self):
        """Start counting a large regular file's lines on another thread.

        The pass :meth:`survey` needs for ``SIZE=`` then overlaps the
        connection and the first round trips instead of adding to them.
        """
        try:
            fd = self._surveyed_fd()
        except (OSError, ValueError, OverflowError):
            return
        if fd is None:
            return
        try:
            span = _regular(fd)
            if span is not None and span[1] >= _MAP_MIN:
                self._counting = _Counting(fd, *span)
                fd = None
        except OSError:
            pass
        finally:
            if fd is not None:
                os.close(fd)

    def chunks(self):
        if self._progress is None:
            return self._chunks()
        return self._reported(self._chunks())

    def _total(self):
        source = self._source
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                with memoryview(source) as view:
                    return view.nbytes
            if isinstance(source, int):
                span = _regular(source)
                return None if span is None else span[1]
            if isinstance(source, (str, os.PathLike)):
                return os.stat(source).st_size
        except (OSError, ValueError, OverflowError):
            pass
        return None

    def _reported(self, chunks):
        """*chunks*, calling progress after each one is used (and at the
        end, however the sender stops asking)."""
        progress, total = self._progress, self._total()
        done = pending = 0
        progress(done, total)
        try:
            for chunk in chunks:
                pending = len(chunk)
                yield chunk
                done += pending
                pending = 0
                progress(done, total)
        finally:
            chunks.close()
            if pending:  # the sender stopped after using this chunk
                progress(done + pending, total)

    def _chunks(self):
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

    def survey(self, count=True):
        """A :class:`Survey` of the message, or None when it has none.

        Bytes and regular files (a path, or a descriptor from its current
        offset) are surveyed; a read error means no survey, and the real
        read after ``DATA`` then reports it as netqmail does.  Without
        *count* only the header block is read (``lfs`` and ``dots`` are
        then None): counting is a pass over the whole message.
        """
        source = self._source
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                with memoryview(source) as view, view.cast("B") as flat:
                    return _survey_memory(flat, count)
            fd = self._surveyed_fd()
            if fd is not None:
                try:
                    return _survey_fd(fd, count, self._counting)
                finally:
                    os.close(fd)
        except (OSError, ValueError, OverflowError):
            pass
        return None

    def close(self):
        if self._counting is not None:
            self._counting.cancelled = True
            self._counting = None
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
        # A small message gets a buffer its size (+1: never an empty one),
        # not CHUNK: zero-filling 1 MiB per delivery costs CPU, and a warm
        # qmail-rspawn worker's heap would keep those pages.
        size = min(CHUNK, max(info.st_size - offset, 0) + 1)
    else:
        size = CHUNK
    buffer = bytearray(size)
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
        try:
            mapped = mmap.mmap(fd, length, access=mmap.ACCESS_READ,
                               offset=start)
        except ValueError:  # the file is shorter now than when it was sized
            raise OSError(errno.EIO, "the message file shrank") from None
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


def _survey_memory(view, count):
    lfs, dots = body_counts(view, True) if count else (None, None)
    complete = ends_line(view)
    return Survey(len(view), lfs, dots, complete,
                  utf8_header(view[:_HEAD].tobytes()))


def _count(fd, offset, size, cancelled=None):
    """``(lfs, dots)`` of bytes offset..offset+size of *fd*, or None."""
    lfs = dots = 0
    at_line_start = True
    for chunk in _mapped_chunks(fd, offset, offset + size):
        if cancelled is not None and cancelled():
            return None
        a, b = body_counts(chunk, at_line_start)
        lfs += a
        dots += b
        at_line_start = ends_line(chunk)
    return lfs, dots


class _Counting:
    """:func:`_count` on its own thread, over its own descriptor.

    The count releases the GIL, so it runs beside the connection, the
    greeting and EHLO.  ``_thread``, not ``threading``: this is start-up.
    """

    def __init__(self, fd, offset, size):
        import _thread
        self.span = (offset, size)
        self.counts = None
        self.cancelled = False
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._run, (fd,))

    def _run(self, fd):
        try:
            self.counts = _count(fd, *self.span, lambda: self.cancelled)
        except BaseException:  # no count: the survey says so, SIZE is left out
            pass
        finally:
            os.close(fd)
            self._done.release()

    def result(self):
        with self._done:
            return self.counts


def _regular(fd):
    """``(offset, size)`` still to read of a regular file; None otherwise."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return None
    offset = os.lseek(fd, 0, os.SEEK_CUR)
    return offset, max(info.st_size - offset, 0)


def _survey_fd(fd, count, counting):
    span = _regular(fd)
    if span is None:
        return None
    offset, size = span
    if not size:
        return Survey(0, 0, 0, True, False)
    head = os.pread(fd, min(size, _HEAD), offset)
    complete = os.pread(fd, 1, offset + size - 1) == b"\n"
    if not count:
        return Survey(size, None, None, complete, utf8_header(head))
    if size < _MAP_MIN:
        data = head if size <= _HEAD else os.pread(fd, size, offset)
        return _survey_memory(memoryview(data), True) \
            if len(data) == size else None
    if counting is not None and counting.span == span:
        counts = counting.result()
    else:
        counts = _count(fd, offset, size)
    if counts is None:
        return None
    return Survey(size, counts[0], counts[1], complete, utf8_header(head))
