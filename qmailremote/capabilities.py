"""What an ESMTP server says it can do: the keywords of its EHLO reply.

The reply text is the one :class:`ReplyReader` stored (CR dropped, up to
``MAX_REPLY_TEXT`` bytes, far more than a report keeps): one line per ``250-``/``250 `` line, the first of which names
the server.  Keywords are matched case-insensitively, and ``=`` is accepted
in place of the space before the parameters, as qmail-tls accepts it for
the broken ``AUTH=LOGIN`` lines some servers still send.  The dialogue and
:mod:`qmailremote.tls` read only the properties below; after STARTTLS, the
capabilities are those of the EHLO sent again.
"""

__all__ = ["Capabilities", "NONE"]

# SIZE limits longer than this are treated as no limit: 18 digits are
# beyond any message this program can send, and int() is never asked to
# convert a server's arbitrarily long digit string.
_SIZE_DIGITS = 18


class Capabilities:
    """Keywords (upper-case bytes) mapped to their parameter bytes."""

    __slots__ = ("keywords",)

    def __init__(self, keywords=None):
        self.keywords = dict(keywords or {})

    @classmethod
    def from_ehlo(cls, text, truncated=False):
        """Parse an EHLO reply text (``250-name\\n250-SIZE 10\\n250 ...``).

        When the text was cut short (*truncated*), its last line is left
        out: a half keyword or a half SIZE limit is worse than none.
        """
        keywords = {}
        lines = text.split(b"\n")[1:]
        if truncated:
            lines = lines[:-1]
        for line in lines:
            line = line[4:].strip(b" \t")
            if not line:
                continue
            cut = len(line)
            for sep in (b" ", b"="):
                at = line.find(sep)
                if 0 <= at < cut:
                    cut = at
            keyword = line[:cut].upper()
            keywords.setdefault(keyword, line[cut + 1:].strip(b" \t"))
        return cls(keywords)

    @property
    def size_offered(self):
        return b"SIZE" in self.keywords

    @property
    def size_limit(self):
        """The advertised SIZE limit; 0 when none (or none that parses)."""
        value = self.keywords.get(b"SIZE", b"").split(b" ", 1)[0]
        if not value.isdigit() or len(value.lstrip(b"0")) > _SIZE_DIGITS:
            return 0
        return int(value)

    @property
    def pipelining(self):
        return b"PIPELINING" in self.keywords

    @property
    def smtputf8(self):
        return b"SMTPUTF8" in self.keywords

    @property
    def chunking(self):
        return b"CHUNKING" in self.keywords

    @property
    def starttls(self):
        return b"STARTTLS" in self.keywords

    def __repr__(self):
        return f"Capabilities({self.keywords!r})"


# A server that answered HELO, not EHLO: no extension may be used.
NONE = Capabilities()
