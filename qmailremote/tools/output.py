"""Output of the ``qmailremote`` tools: colour on a terminal, plain when
piped, or one JSON document for scripts.

Text mode writes as it goes (a probe shows each step as it happens); JSON
mode collects what the subcommand :meth:`Output.record`\\ s and prints one
object at :meth:`Output.finish`.  Colour is ANSI SGR, used only when the
stream is a terminal (``--color auto``), ``NO_COLOR`` is unset and
``TERM`` is not ``dumb``; ``--color always`` forces it.
"""

import json as _json
import os

__all__ = ["Output"]

_SGR = {"ok": "32", "warn": "33", "bad": "31;1", "head": "1", "dim": "2",
        "sent": "36", "said": "35"}
_MARKS = {"ok": "ok", "warn": "warning", "bad": "FAIL"}


class Output:
    """Where a tool writes: text (maybe coloured) or JSON."""

    def __init__(self, stream, color="auto", json=False):
        self.stream = stream
        self.json = json
        if color == "always":
            self.colour = True
        elif color == "never" or json:
            self.colour = False
        else:
            self.colour = (hasattr(stream, "isatty") and stream.isatty() and
                           not os.environ.get("NO_COLOR") and
                           os.environ.get("TERM") != "dumb")
        self.document = {}

    def paint(self, style, text):
        """*text* in *style* (a key of the palette) when colour is on."""
        if not self.colour or style not in _SGR:
            return text
        return f"\x1b[{_SGR[style]}m{text}\x1b[0m"

    def line(self, text="", style=None):
        """One line of text (nothing in JSON mode)."""
        if self.json:
            return
        self.stream.write((self.paint(style, text) if style else text) +
                          "\n")
        self.stream.flush()

    def heading(self, text):
        self.line(text, "head")

    def status(self, kind, label, detail=""):
        """``  ok|warning|FAIL  label: detail`` (kind: ok, warn, bad)."""
        mark = self.paint(kind, f"{_MARKS[kind]:7}")
        self.line(f"  {mark} {label}" + (f": {detail}" if detail else ""))

    def item(self, label, value):
        self.line(f"  {label}: {value}")

    def record(self, key, value):
        """Put *value* (JSON-able) under *key* in the JSON document."""
        self.document[key] = value

    def finish(self):
        if self.json:
            self.stream.write(_json.dumps(self.document, indent=2,
                                          sort_keys=True) + "\n")
            self.stream.flush()
