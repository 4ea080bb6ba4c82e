"""An in-process SMTP server behind a socket-like object, for ``Session``.

:class:`FakeSocket` has the methods :class:`qmailremote.session.Session`
uses (``settimeout``, ``send``, ``recv``, ``getsockopt``, ``close``).  It
parses the client's bytes line by line and answers each command with the
next reply from a :class:`Script` (a table per command), queuing the
replies so that ``recv`` hands them out whether the commands came one per
write (lock-step) or many per write (PIPELINING).  ``recv`` can hand the
queued bytes out in pieces of chosen sizes, down to one byte.

It understands ``DATA`` (a body up to the ``.`` line, entered only when
its DATA reply would make the client send a body: three digits below 400)
and ``BDAT n [LAST]`` (exactly n bytes follow, whatever the reply).  A
table entry may be :data:`DROP` (the server closes the connection instead
of answering) or :class:`Cut` (part of a reply, then the close).  A client
that waits for a reply the server was never asked for is recorded
(``starved``) and gets a timeout, as from a real socket.
"""

import re

__all__ = ["DROP", "Cut", "Script", "FakeSocket", "goes_ahead"]


class _Drop:
    def __repr__(self):
        return "DROP"


# A table entry: the server closes the connection instead of replying.
DROP = _Drop()


class Cut:
    """A table entry: *prefix* of a reply reaches the client, then a close."""

    def __init__(self, prefix):
        self.prefix = prefix

    def __repr__(self):
        return f"Cut({self.prefix!r})"


def goes_ahead(reply):
    """Whether a reply lets the client go on: three digits, below 400.

    That is the client's test for MAIL, DATA and BDAT replies (1.06's
    ``quit()`` classes with deviation 2), so the fake enters DATA's body
    mode exactly when the client will send a body.
    """
    if not isinstance(reply, bytes):
        return False
    code = reply[:3]
    return len(code) == 3 and code.isdigit() and int(code) < 400


class Script:
    """The server's answers, one table entry per command.

    ``rcpt`` and ``bdat`` are lists: the i-th RCPT (BDAT) gets the i-th
    entry, and ``rcpt_default`` (``bdat_default``) past their end.
    """

    def __init__(self, greeting=b"220 fake ESMTP\r\n",
                 ehlo=b"250 fake\r\n", helo=b"250 fake\r\n",
                 mail=b"250 ok\r\n", rcpt=(), data=b"354 go ahead\r\n",
                 final=b"250 queued\r\n", bdat=(),
                 rcpt_default=b"250 ok\r\n", bdat_default=b"250 ok\r\n"):
        self.greeting = greeting
        self.ehlo = ehlo
        self.helo = helo
        self.mail = mail
        self.rcpt = list(rcpt)
        self.data = data
        self.final = final
        self.bdat = list(bdat)
        self.rcpt_default = rcpt_default
        self.bdat_default = bdat_default

    def __repr__(self):
        return "Script(%s)" % ", ".join(
            f"{k}={v!r}" for k, v in vars(self).items())


_BDAT = re.compile(rb"BDAT ([0-9]+)( LAST)?\r\n\Z", re.IGNORECASE)


class FakeSocket:
    """The socket :class:`Session` talks to; see the module docstring.

    After a run:

    * ``sends``: ``(reply bytes handed out so far, data)`` per send call;
    * ``commands``: ``(verb, line, send index)`` per command line;
    * ``replies``: ``(name, end offset in the reply stream)`` per reply;
    * ``mail_line``, ``data_wire`` (the DATA body as sent, stuffed, without
      the ``.`` line), ``data_done``, ``bdat_body``, ``bdat_sizes``,
      ``bdat_last``, ``starved``, ``closed``, ``unknown`` (lines that were
      no command the fake knows).
    """

    def __init__(self, script, pieces=None):
        self.script = script
        self._pieces = list(pieces or [])
        self._piece = 0
        self._in = bytearray()
        self._out = bytearray()
        self._queued = 0          # reply bytes queued so far
        self.handed = 0           # reply bytes handed out by recv
        self._mode = "command"
        self._bdat_left = 0
        self._bdat_is_last = False
        self._rcpts = 0
        self._bdats = 0
        self.dropped = False
        self.closed = False
        self.starved = False
        self.timeout = None
        self.sends = []
        self.commands = []
        self.replies = []
        self.unknown = []
        self.mail_line = None
        self.data_wire = bytearray()
        self.data_done = False
        self.bdat_body = bytearray()
        self.bdat_sizes = []
        self.bdat_last = False
        self._queue(script.greeting, "greeting")

    # -- the socket --------------------------------------------------------

    def settimeout(self, timeout):
        self.timeout = timeout

    def getsockopt(self, level, option):
        return 0

    def close(self):
        self.closed = True

    def send(self, data):
        data = bytes(data)
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        self.sends.append((self.handed, data))
        if not self.dropped:
            self._in += data
            self._parse()
        return len(data)

    def recv(self, size):
        if self.closed:
            raise OSError(9, "Bad file descriptor")
        if not self._out:
            if self.dropped:
                return b""
            # A real server would say nothing: the client would time out.
            self.starved = True
            raise TimeoutError("timed out")
        take = min(size, len(self._out))
        if self._pieces:
            take = min(take, self._pieces[self._piece % len(self._pieces)])
            self._piece += 1
        data = bytes(self._out[:take])
        del self._out[:take]
        self.handed += take
        return data

    # -- the server --------------------------------------------------------

    @property
    def sent(self):
        """Every byte the client sent."""
        return b"".join(data for _, data in self.sends)

    def reply_end(self, name):
        """Where the first reply called *name* ends in the reply stream."""
        for reply, end in self.replies:
            if reply == name:
                return end
        return None

    def _queue(self, entry, name):
        if self.dropped:
            return
        if entry is DROP:
            self.dropped = True
            return
        if isinstance(entry, Cut):
            self._out += entry.prefix
            self._queued += len(entry.prefix)
            self.dropped = True
            return
        self._out += entry
        self._queued += len(entry)
        self.replies.append((name, self._queued))

    def _parse(self):
        buf = self._in
        while buf and not self.dropped:
            if self._mode == "bdat":
                take = min(self._bdat_left, len(buf))
                self.bdat_body += buf[:take]
                del buf[:take]
                self._bdat_left -= take
                if self._bdat_left:
                    return
                self._end_bdat()
                continue
            lf = buf.find(b"\n")
            if lf < 0:
                return
            line = bytes(buf[:lf + 1])
            del buf[:lf + 1]
            if self._mode == "data":
                if line == b".\r\n":
                    self._mode = "command"
                    self.data_done = True
                    self._queue(self.script.final, "final")
                else:
                    self.data_wire += line
                continue
            self._command(line)

    def _command(self, line):
        verb = line[:4].upper()
        self.commands.append((verb, line, len(self.sends) - 1))
        script = self.script
        if verb == b"EHLO":
            self._queue(script.ehlo, "ehlo")
        elif verb == b"HELO":
            self._queue(script.helo, "helo")
        elif verb == b"MAIL":
            self.mail_line = line
            self._queue(script.mail, "mail")
        elif verb == b"RCPT":
            i = self._rcpts
            self._rcpts += 1
            entry = script.rcpt[i] if i < len(script.rcpt) \
                else script.rcpt_default
            self._queue(entry, "rcpt")
        elif verb == b"DATA":
            self._queue(script.data, "data")
            if goes_ahead(script.data):
                self._mode = "data"
        elif verb == b"BDAT" and _BDAT.match(line):
            match = _BDAT.match(line)
            self._bdat_left = int(match.group(1))
            self._bdat_is_last = bool(match.group(2))
            self.bdat_sizes.append(self._bdat_left)
            self._mode = "bdat"
            if not self._bdat_left:
                self._end_bdat()
        elif verb == b"QUIT":
            self._queue(b"221 bye\r\n", "quit")
        else:
            self.unknown.append(line)
            self._queue(b"500 unknown command\r\n", "unknown")

    def _end_bdat(self):
        self._mode = "command"
        i = self._bdats
        self._bdats += 1
        entry = self.script.bdat[i] if i < len(self.script.bdat) \
            else self.script.bdat_default
        if self._bdat_is_last:
            self.bdat_last = True
        self._queue(entry, "bdat")
