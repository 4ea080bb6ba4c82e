"""Pure-Python twin of the hot path: the executable specification.

``_fast.pyx`` exports the same names with byte-identical behaviour; only
``_kernel.py`` chooses between them.  Three pieces live here:

* :class:`Encoder` -- netqmail 1.06 ``blast()`` as a streaming transform:
  CR before every LF, ``.`` doubled at the start of every line, every other
  byte untouched, ``.\\r\\n`` at the end, :class:`PartialLineError` when the
  input does not end in LF.
* :class:`Writer` -- one output buffer shared by SMTP commands and the
  encoded body, flushed in large writes through a ``send`` callable.  While a
  body is being written it never sends past the point where qmail's
  1024-byte ``smtpto`` buffer would have been flushed, so that a message
  ending in a partial line leaves exactly the bytes on the wire that
  netqmail leaves there (reference section 13).
* :func:`body_counts` -- what the body adds on the wire (one CR per LF,
  one dot per line-start dot), counted without encoding: the ESMTP
  ``SIZE=`` declaration and the BDAT chunk sizes come from it.
* :class:`ReplyReader` -- netqmail ``smtpcode()``: the code from the first
  line's first three bytes, continuation while the fourth byte is ``-``, CR
  dropped from the stored text, which is capped at 5000 bytes.
"""

from .errors import ConnectionDied, PartialLineError

__all__ = ["Encoder", "Writer", "ReplyReader", "body_counts", "ends_line",
           "HUGESMTPTEXT", "MAX_REPLY_TEXT", "QMAIL_BLOCK"]

# qmail-remote.c HUGESMTPTEXT: how much reply text is kept.
HUGESMTPTEXT = 5000
# The most reply text any read may keep (an EHLO reply's keywords).
MAX_REPLY_TEXT = 65536
# qmail-remote.c smtptobuf[1024]: the size of netqmail's output buffer.
QMAIL_BLOCK = 1024
# Default flush threshold of the Writer: large writes, bounded memory
# (1 MiB sends beat 256 KiB ones by ~18% on a 1 GB loopback delivery).
DEFAULT_BUFFER = 1 << 20
# How many qmail blocks one strided scan looks at (see Writer._advance).
_SCAN_WINDOW = 4096


def _as_bytes(data):
    """*data* as bytes; TypeError for what has no buffer, as in Cython."""
    if isinstance(data, bytes):
        return data
    with memoryview(data) as view:
        return view.tobytes()


def _blast(data, at_line_start):
    """Encode one chunk; return (encoded bytes, line start after it).

    ``bytes.replace`` with a two-byte pattern runs at a third of the speed
    of a one-byte one, so the rare ``\\n.`` are found with ``find`` and
    their dots doubled by one join, then every LF gets its CR.
    """
    data = _as_bytes(data)
    if not data:
        return b"", at_line_start
    pieces = [b"."] if at_line_start and data[0] == 46 else []
    find = data.find
    dot = find(b"\n.")
    if dot >= 0 or pieces:
        # Two pieces per dot: past a few per KiB (dot-heavy input) the
        # slow replace costs less time and memory than the pieces.
        budget = 64 + (len(data) >> 10)
        with memoryview(data) as view:
            start = 0
            while dot >= 0 and budget:
                pieces.append(view[start:dot + 2])
                pieces.append(b".")
                start = dot + 2
                dot = find(b"\n.", start)
                budget -= 1
            rest = view[start:]
            pieces.append(rest if dot < 0 else
                          rest.tobytes().replace(b"\n.", b"\n.."))
            data = b"".join(pieces)
            pieces.clear()
            rest.release()
    return data.replace(b"\n", b"\r\n"), data[-1] == 10


def body_counts(data, at_line_start):
    """``(lfs, dots)`` for one chunk of a message.

    *lfs* is the number of LFs (each gains a CR on the wire), *dots* the
    number of dots that start a line (each is doubled in DATA mode; a dot
    at ``data[0]`` starts a line when *at_line_start*).
    """
    data = _as_bytes(data)
    dots = data.count(b"\n.")
    if at_line_start and data[:1] == b".":
        dots += 1
    return data.count(b"\n"), dots


def ends_line(data):
    """True when *data* is empty or its last byte is LF.

    The compiled kernel reads that byte under its fault guard, so a mapped
    message truncated meanwhile is an OSError, not a SIGBUS.
    """
    with memoryview(data) as view:
        return not view or view[-1] == 10

class Encoder:
    """Streaming ``blast()``: feed chunks of any size, then :meth:`finish`."""

    def __init__(self):
        self._at_line_start = True

    def encode(self, data):
        """Return the wire bytes for one chunk of the message."""
        out, self._at_line_start = _blast(data, self._at_line_start)
        return out

    def finish(self):
        """Return the terminator, or raise PartialLineError."""
        if not self._at_line_start:
            raise PartialLineError()
        return b".\r\n"


class Writer:
    """Buffered writer for commands and the encoded body.

    ``send(data)`` must send all of ``data`` or raise; the writer knows
    nothing about sockets.  ``size`` is the flush threshold.
    """

    def __init__(self, send, size=DEFAULT_BUFFER):
        if size < QMAIL_BLOCK:
            size = QMAIL_BLOCK
        self._send = send
        self._size = size
        self._buf = bytearray()
        self._sent = 0          # bytes handed to send() so far
        self._in_body = False
        self._at_line_start = True
        self._block = 0         # where qmail's current 1024-byte block starts

    @property
    def pending(self):
        """Bytes buffered and not yet sent."""
        return len(self._buf)

    @property
    def sent(self):
        """Bytes handed to ``send`` so far."""
        return self._sent

    def write(self, data):
        """Buffer raw bytes (an SMTP command)."""
        self._buf += data

    def flush(self):
        """Send everything that is buffered."""
        self._send_upto(self._sent + len(self._buf))

    def begin_body(self):
        """Start a message body: the next byte is at a line start."""
        self._in_body = True
        self._at_line_start = True
        self._block = self._sent + len(self._buf)

    def body(self, data):
        """Encode one chunk of the message into the buffer."""
        out, self._at_line_start = _blast(data, self._at_line_start)
        self._buf += out
        if len(self._buf) >= self._size:
            self.flush_committed()

    def chunk(self, data, last):
        """Buffer one BDAT chunk: its command, then *data* with CRLF lines.

        RFC 3030 bodies are not dot-stuffed and have no terminator; every
        LF still becomes CRLF, exactly as in :meth:`body`.  Nothing is sent.
        """
        out = _as_bytes(data).replace(b"\n", b"\r\n")
        self._buf += b"BDAT %d%s\r\n" % (len(out), b" LAST" if last else b"")
        self._buf += out

    def flush_committed(self):
        """Send the body bytes netqmail would already have written."""
        self._advance()
        self._send_upto(self._block)

    def end_body(self):
        """Finish the body: buffer ``.\\r\\n``, or raise PartialLineError.

        On a partial final line the bytes netqmail would have written are
        sent first (a send error then propagates as ConnectionDied, as the
        same write would have failed first in netqmail).
        """
        if not self._at_line_start:
            self.flush_committed()
            self._in_body = False
            raise PartialLineError()
        self._in_body = False
        self._buf += b".\r\n"

    def _advance(self):
        # qmail's substdio flushes its 1024-byte buffer when a put does not
        # fit.  Every put in blast() is one byte except the "\r\n" for an
        # input LF, so a block is 1023 bytes when its byte 1023 is the CR of
        # such a pair (i.e. byte 1024 is LF) and 1024 bytes otherwise.  A
        # block is flushed only once a further put arrives, hence "> 1024".
        # Strided slices test many block boundaries per Python call.
        base = self._sent
        end = base + len(self._buf)
        block = self._block
        buf = self._buf
        while end - block > QMAIL_BLOCK:
            start = block - base + QMAIL_BLOCK
            probe = buf[start:start + QMAIL_BLOCK * _SCAN_WINDOW:QMAIL_BLOCK]
            k = probe.find(b"\n")
            if k < 0:
                block += QMAIL_BLOCK * len(probe)
            else:
                block += QMAIL_BLOCK * k + QMAIL_BLOCK - 1
        self._block = block

    def _send_upto(self, offset):
        n = offset - self._sent
        if n <= 0:
            return
        with memoryview(self._buf) as view:
            self._send(view[:n])
        del self._buf[:n]
        self._sent += n


class ReplyReader:
    """Reads SMTP replies with netqmail ``smtpcode()`` semantics.

    ``recv()`` returns the next bytes from the server, ``b""`` at EOF (a
    drop: ConnectionDied), or raises.  Bytes after a reply are kept for the
    next one, as qmail's 128-byte ``smtpfrom`` buffer keeps them.
    """

    # Parser states, in the order smtpcode() walks through them.
    _CODE, _NEXT, _CONT_LINE, _SKIP3, _LAST_LINE = range(5)

    def __init__(self, recv):
        self._recv = recv
        self._data = b""
        self._pos = 0

    def read(self, limit=HUGESMTPTEXT):
        """Return ``(code, text, digits)`` for the next reply.

        *code* is netqmail's value (unsigned 64-bit arithmetic on whatever
        the first three bytes are), *text* the stored reply text (CR
        dropped, at most 5000 bytes), *digits* whether the first three bytes
        were all ASCII digits (deviation 2 of the reference).
        """
        self._limit = max(0, min(limit, MAX_REPLY_TEXT))
        self._state = self._CODE
        self._count = 0
        self._code = 0
        self._digits = True
        self._text = bytearray()
        while True:
            if self._pos < len(self._data):
                if self._scan():
                    return self._code, bytes(self._text), self._digits
            data = self._recv()
            if not data:
                raise ConnectionDied()
            self._data = data
            self._pos = 0

    def _store(self, segment):
        room = self._limit - len(self._text)
        if room > 0:
            self._text += segment.replace(b"\r", b"")[:room]

    def _scan(self):
        """Consume bytes from the buffer; True once a reply is complete."""
        data = self._data
        n = len(data)
        pos = self._pos
        while pos < n:
            state = self._state
            if state == self._CODE:
                ch = data[pos]
                self._code = (self._code * 10 + ch - 48) % (1 << 64)
                if not 48 <= ch <= 57:
                    self._digits = False
                self._store(data[pos:pos + 1])
                pos += 1
                self._count += 1
                if self._count == 3:
                    self._state = self._NEXT
            elif state == self._NEXT:
                ch = data[pos]
                self._store(data[pos:pos + 1])
                pos += 1
                if ch == 45:  # '-': a continuation line follows
                    self._state = self._CONT_LINE
                elif ch == 10:
                    self._pos = pos
                    return True
                else:
                    self._state = self._LAST_LINE
            elif state == self._SKIP3:
                take = min(3 - self._count, n - pos)
                self._store(data[pos:pos + take])
                pos += take
                self._count += take
                if self._count == 3:
                    self._state = self._NEXT
            else:
                lf = data.find(b"\n", pos)
                end = n if lf < 0 else lf + 1
                self._store(data[pos:end])
                pos = end
                if lf >= 0:
                    if state == self._LAST_LINE:
                        self._pos = pos
                        return True
                    self._state = self._SKIP3
                    self._count = 0
        self._pos = pos
        return False
