"""A fast loopback SMTP sink for benchmarks.

Speaks just enough SMTP for qmail-remote, smtplib and aiosmtplib (HELO or
EHLO, MAIL, RCPT, DATA, QUIT), counts body bytes instead of keeping them,
and reads the body with ``recv_into`` on a large reused buffer, looking
for the end of data only across chunk boundaries, so it runs near memchr
speed and is not the bottleneck.  One thread per connection.
"""

import socket
import threading

__all__ = ["Sink"]

_CHUNK = 1 << 20
_END = b"\r\n.\r\n"


class Sink:
    """``with Sink() as sink:`` listens on ``sink.port`` (127.0.0.1)."""

    def __init__(self, host="127.0.0.1", port=0):
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(64)
        self.host, self.port = self._listener.getsockname()[:2]
        self.messages = 0
        self.body_bytes = 0
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
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        pending = b""
        with conn:
            conn.sendall(b"220 sink ready\r\n")
            while True:
                while b"\n" not in pending:
                    n = conn.recv_into(view)
                    if not n:
                        return
                    pending += view[:n]
                line, pending = pending.split(b"\n", 1)
                verb = line[:4].upper()
                if verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    size = self._body(conn, view, pending)
                    pending = b""
                    with self._lock:
                        self.messages += 1
                        self.body_bytes += size
                    conn.sendall(b"250 ok %d bytes\r\n" % size)
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                elif verb == b"EHLO":
                    conn.sendall(b"250-sink\r\n250 8BITMIME\r\n")
                else:
                    conn.sendall(b"250 ok\r\n")

    @staticmethod
    def _body(conn, view, first):
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
            size += n
            tail = (tail + view[max(0, n - 5):n])[-5:]
        return size
