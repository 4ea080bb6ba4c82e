"""``qmailremote send HOST SENDER RECIPIENT... < FILE``: one delivery for a
human.

The same :func:`qmailremote.deliver` that ``qmail-remote`` runs, with the
same control files, the message on stdin (or ``--file``); the reports come
out readably instead of NUL-separated, ``--transcript`` shows the SMTP
dialogue as it happens (the body as a byte count; inside TLS the
plaintext), and on a terminal a progress bar on stderr follows a large
body.  Exit status: 0 when every recipient was accepted, 75
(``EX_TEMPFAIL``) when the message or a recipient is to be tried again,
else 1 (the message or a recipient failed permanently); 2 for a usage
error.
"""

import os
import sys
import time


_BAR_MIN = 1 << 20      # no bar for bodies under 1 MiB
_BAR_EVERY = 0.1        # seconds between redraws
_LETTERS = {"r": "accepted", "h": "refused (permanent)",
            "s": "refused (temporary)", "K": "delivered",
            "D": "failed (permanent)", "Z": "deferred (temporary)"}
_STYLES = {"r": "ok", "K": "ok", "h": "bad", "D": "bad", "s": "warn",
           "Z": "warn"}


def add_arguments(parser):
    parser.add_argument("host", help="the domain or host, as qmail-remote's "
                                     "first argument")
    parser.add_argument("sender", help="envelope sender ('' for <>)")
    parser.add_argument("recipients", nargs="+", metavar="recipient")
    parser.add_argument("--file", metavar="PATH",
                        help="the message file (default: stdin)")
    parser.add_argument("--transcript", action="store_true",
                        help="show the SMTP dialogue")
    parser.add_argument("--no-progress", dest="progress",
                        action="store_false",
                        help="no progress bar, even on a terminal")
    parser.add_argument("--json", action="store_true",
                        help="one JSON document (reports and transcript)")


class Transcript:
    """Turns deliver()'s transcript events into readable lines.

    Commands and replies are shown line by line; a body (after ``DATA``
    and its 354, or the payload of a ``BDAT``) is shown as its size.
    """

    def __init__(self, out):
        self.out = out
        self.lines = []         # (kind, text) for JSON
        self._sent = bytearray()
        self._said = bytearray()
        self._data_sent = False  # DATA went out: a 354 starts the body
        self._in_body = False
        self._body = 0
        self._tail = b""
        self._payload = 0        # BDAT bytes still to come

    def _emit(self, kind, text, style=None):
        self.lines.append({"kind": kind, "text": text})
        label = {"C": "C: ", "S": "S: "}.get(kind, "-- ")
        self.out.line(label + text, style or {"C": "sent", "S": "said"}
                      .get(kind, "dim"))

    def __call__(self, kind, data):
        if kind == "C":
            self._client(data)
        elif kind == "S":
            self._server(data)
        elif kind == "connect":
            self._emit("note", "connecting to " + _text(data))
        elif kind == "tls":
            self._emit("note", "TLS established: " + _text(data))
        elif kind in ("timeout", "unreachable", "skipped"):
            reason = {"timeout": "timed out", "unreachable": "unreachable",
                      "skipped": "skipped (recent timeouts, tcpto)"}[kind]
            self._emit("note", _text(data) + ": " + reason)

    def _client(self, data):
        data = bytes(data)
        while data:
            if self._payload:
                taken = min(self._payload, len(data))
                self._payload -= taken
                self._body += taken
                data = data[taken:]
                if not self._payload:
                    self._emit("C", "[%d bytes of message]" % self._body)
                    self._body = 0
                continue
            if self._in_body:
                end = (self._tail + data).find(b"\r\n.\r\n")
                if end < 0:
                    self._body += len(data)
                    self._tail = (self._tail + data)[-4:]
                    return
                used = end + 5 - len(self._tail)
                self._body += used - 3
                self._emit("C", "[%d bytes of message]" % self._body)
                self._emit("C", ".")
                self._in_body, self._body, self._tail = False, 0, b""
                data = data[used:]
                continue
            self._sent += data
            data = b""
            while b"\n" in self._sent:
                line, _, rest = bytes(self._sent).partition(b"\n")
                self._sent = bytearray(rest)
                self._command(line.rstrip(b"\r"))
                if self._payload:
                    data, self._sent = bytes(self._sent), bytearray()
                    break

    def _command(self, line):
        self._emit("C", _text(line))
        verb = line[:5].upper()
        if verb == b"DATA":
            self._data_sent = True
        elif verb == b"BDAT ":
            words = line.split()
            if len(words) > 1 and words[1].isdigit():
                self._payload = int(words[1])
                self._body = 0

    def _server(self, data):
        self._said += data
        while b"\n" in self._said:
            line, _, rest = bytes(self._said).partition(b"\n")
            self._said = bytearray(rest)
            line = line.rstrip(b"\r")
            self._emit("S", _text(line))
            if self._data_sent and line[:3] == b"354" and line[3:4] != b"-":
                self._data_sent = False
                self._in_body = True
                self._tail = b"\r\n"  # a lone "." as the first line ends it


def _text(data):
    """Bytes as readable text: UTF-8 where it is, escapes elsewhere."""
    return data.decode("utf-8", "backslashreplace")


class Bar:
    """A progress bar on a terminal's stderr, redrawn at most 10 times a
    second."""

    def __init__(self, stream):
        self.stream = stream
        self._last = 0.0
        self._start = time.monotonic()
        self.drawn = False

    def __call__(self, done, total):
        if total is None or total < _BAR_MIN:
            return
        now = time.monotonic()
        if done < total and now - self._last < _BAR_EVERY:
            return
        self._last = now
        width = 30
        filled = width * done // total if total else width
        rate = done / max(now - self._start, 1e-6) / (1 << 20)
        self.stream.write("\r[%s%s] %5.1f%% %8.1f MiB/s" % (
            "#" * filled, "." * (width - filled), 100 * done / total, rate))
        self.stream.flush()
        self.drawn = True

    def end(self):
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _arg(text):
    return os.fsencode(text)


def run(args, out):
    from ..delivery import deliver
    if args.file is not None:
        source = args.file
    else:
        if os.isatty(0):
            print("qmailremote send: give the message on stdin "
                  "(qmailremote send HOST SENDER RECIPIENT... < FILE) "
                  "or with --file", file=sys.stderr)
            return 2
        source = 0
    transcript = Transcript(out) if args.transcript else None
    bar = None
    if args.progress and not args.json and sys.stderr.isatty():
        bar = Bar(sys.stderr)
    try:
        result = deliver(_arg(args.host), _arg(args.sender),
                         [_arg(r) for r in args.recipients], source,
                         home=args.home, progress=bar, transcript=transcript)
    finally:
        if bar is not None:
            bar.end()
    return _show(out, args.recipients, result, transcript)


def _show(out, recipients, result, transcript):
    shown = []
    if transcript is not None:
        out.line()
    out.heading("Recipients")
    for address, report in zip(recipients, result.recipients):
        text = _text(report.text).rstrip("\n")
        shown.append({"address": address, "letter": report.letter,
                      "verdict": _LETTERS[report.letter], "text": text})
        out.status(_STYLES[report.letter], address,
                   _LETTERS[report.letter] + (" -- " + text.replace(
                       "\n", " ") if text else ""))
    for address in recipients[len(result.recipients):]:
        shown.append({"address": address, "letter": None,
                      "verdict": "not tried", "text": ""})
        out.status("warn", address, "not tried")
    message = result.message
    text = _text(message.text).rstrip("\n")
    out.heading("Message")
    out.status(_STYLES[message.letter], _LETTERS[message.letter],
               text.replace("\n", " / "))
    out.record("recipients", shown)
    out.record("message", {"letter": message.letter,
                           "verdict": _LETTERS[message.letter],
                           "text": text})
    if transcript is not None:
        out.record("transcript", transcript.lines)
    letters = {r.letter for r in result.recipients} | {message.letter}
    if letters & {"s", "Z"}:
        return 75
    if letters & {"h", "D"}:
        return 1
    return 0
