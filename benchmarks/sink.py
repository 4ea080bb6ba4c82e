"""A fast loopback SMTP sink for benchmarks.

Speaks just enough SMTP for qmail-remote, smtplib and aiosmtplib (HELO or
EHLO, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT) and counts body bytes
instead of keeping them.  It is an ESMTP server whose EHLO reply offers,
per option:

* ``size``: ``None`` (default) does not offer SIZE; ``0`` offers it with no
  limit; ``n > 0`` offers ``SIZE n``, and a ``MAIL ... SIZE=m`` with
  ``m > n`` gets ``552 5.3.4`` (RFC 1870);
* ``pipelining``: PIPELINING (RFC 2920).  Whatever is offered, every
  complete command line in the input buffer is answered, in order, and the
  replies go out in one write when the sink is about to wait for input,
  as a real server flushes them;
* ``chunking``: CHUNKING (RFC 3030): ``BDAT n [LAST]`` reads exactly *n*
  bytes and answers ``250`` for each chunk; the message ends at ``LAST``;
* ``smtputf8``: SMTPUTF8 (RFC 6531);
* 8BITMIME is always offered.

The body of DATA is read with ``recv_into`` on a large reused buffer,
looking for the end of data only across chunk boundaries; BDAT data is read
straight into the same buffer, at most what the chunk has left, so the
next command stays in the socket.  Either way it runs near memchr speed and
is not the bottleneck.  One thread per connection.

Counters (totals over all connections): ``messages`` and ``body_bytes``
(DATA: everything after the DATA line through ``.\\r\\n``; BDAT: the sum
of the chunk sizes), ``received`` (every byte read from any client:
commands and body, added when the connection ends), ``connections``,
``closed`` (connections ended), ``refused`` (MAIL refused for SIZE).
"""

import socket
import threading

__all__ = ["Sink"]

_CHUNK = 1 << 20
_END = b"\r\n.\r\n"


class Sink:
    """``with Sink(...) as sink:`` listens on ``sink.port`` (127.0.0.1)."""

    def __init__(self, host="127.0.0.1", port=0, *, size=None,
                 pipelining=False, chunking=False, smtputf8=False):
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(64)
        self.host, self.port = self._listener.getsockname()[:2]
        self.size = size
        lines = [b"sink", b"8BITMIME"]
        if size is not None:
            lines.append(b"SIZE %d" % size if size else b"SIZE")
        if pipelining:
            lines.append(b"PIPELINING")
        if chunking:
            lines.append(b"CHUNKING")
        if smtputf8:
            lines.append(b"SMTPUTF8")
        self.ehlo_reply = b"".join(
            b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-", line)
            for i, line in enumerate(lines))
        self.messages = 0
        self.body_bytes = 0
        self.received = 0
        self.connections = 0
        self.refused = 0
        self.closed = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._listener.close()

    def _accept(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    def _serve(self, conn):
        with self._lock:
            self.connections += 1
        received = [0]
        try:
            with conn:
                self._dialogue(conn, received)
        except (ConnectionError, OSError):
            pass
        finally:
            with self._lock:
                self.received += received[0]
                self.closed += 1

    def _dialogue(self, conn, received):
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        pending = bytearray()   # input read but not yet consumed
        out = []                # replies not yet written

        def fill():
            """Flush the replies, then wait for more input; False at EOF."""
            if out:
                conn.sendall(b"".join(out))
                out.clear()
            n = conn.recv_into(view)
            received[0] += n
            if n:
                pending.extend(view[:n])
            return n

        out.append(b"220 sink ready\r\n")
        chunked = 0             # BDAT bytes of the message so far
        while True:
            end = pending.find(b"\n")
            if end < 0:
                if not fill():
                    return
                continue
            line = bytes(pending[:end + 1])
            del pending[:end + 1]
            verb = line[:4].upper()
            if verb == b"DATA":
                out.append(b"354 go ahead\r\n")
                first = bytes(pending)
                pending.clear()
                if out:
                    conn.sendall(b"".join(out))
                    out.clear()
                size = self._body(conn, view, first, received)
                self._count(size)
                out.append(b"250 ok %d bytes\r\n" % size)
            elif verb == b"BDAT":
                words = line.split()
                try:
                    n = int(words[1])
                except (IndexError, ValueError):
                    out.append(b"501 5.5.4 syntax: BDAT n [LAST]\r\n")
                    continue
                last = len(words) > 2 and words[2].upper() == b"LAST"
                take = min(n, len(pending))
                del pending[:take]
                remaining = n - take
                if remaining and out:
                    conn.sendall(b"".join(out))
                    out.clear()
                while remaining:
                    got = conn.recv_into(view, min(remaining, _CHUNK))
                    if not got:
                        return
                    received[0] += got
                    remaining -= got
                chunked += n
                if last:
                    self._count(chunked)
                    out.append(b"250 ok %d bytes\r\n" % chunked)
                    chunked = 0
                else:
                    out.append(b"250 ok %d octets\r\n" % n)
            elif verb == b"MAIL":
                chunked = 0
                out.append(self._mail(line))
            elif verb == b"QUIT":
                out.append(b"221 bye\r\n")
                conn.sendall(b"".join(out))
                return
            elif verb == b"EHLO":
                out.append(self.ehlo_reply)
            else:
                out.append(b"250 ok\r\n")

    def _mail(self, line):
        if self.size:
            for word in line.split()[1:]:
                if word[:5].upper() == b"SIZE=" and word[5:].isdigit() and \
                        int(word[5:]) > self.size:
                    with self._lock:
                        self.refused += 1
                    return b"552 5.3.4 message size exceeds fixed limit\r\n"
        return b"250 ok\r\n"

    def _count(self, size):
        with self._lock:
            self.messages += 1
            self.body_bytes += size

    @staticmethod
    def _body(conn, view, first, received):
        """Read through the end of data; return the body size in bytes.

        Clients wait for the reply after ``.\\r\\n``, and dot-stuffing keeps
        ``\\r\\n.\\r\\n`` out of the body, so the end of data is always the
        end of what has been received so far: only the last bytes of each
        read are looked at.
        """
        # "\r\n" stands for the end of the DATA line: ".\r\n" alone is an
        # empty body.
        tail = (b"\r\n" + first)[-5:]
        size = len(first)
        while tail != _END:
            n = conn.recv_into(view)
            if not n:
                raise ConnectionError("client went away mid-body")
            received[0] += n
            size += n
            tail = (tail + view[max(0, n - 5):n])[-5:]
        return size
