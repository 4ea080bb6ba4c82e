"""The qmail-remote report protocol: recipient reports, one message report.

qmail-send reads qmail-remote's stdout as a sequence of reports, each one
letter, a text and a NUL (reference section 3).  Recipient reports (``r``,
``h``, ``s``) come first, in argument order, and exactly one message report
(``K``, ``Z``, ``D``) ends the output.  Every fixed text of netqmail 1.06
lives here, so the rest of the package never spells a report itself.
"""

__all__ = [
    "Report", "Result", "Failure", "outsafe", "smtptext_said",
    "recipient_report", "stage_report", "dropped",
    "TEMP_NOMEM", "TEMP_OSERR", "TEMP_NOCONN", "TEMP_READ", "TEMP_DNSCANON",
    "TEMP_DNS", "TEMP_CHDIR", "TEMP_CONTROL", "PERM_PARTIALLINE",
    "PERM_USAGE", "PERM_NOMX", "PERM_AMBIGMX", "PERM_CRLF", "perm_dns",
    "perm_size", "perm_smtputf8", "perm_nullmx", "internal_error",
    "temp_badip", "temp_bind", "temp_badpreference",
]


class Report:
    """One report: a letter and its text (bytes, without the final NUL)."""

    __slots__ = ("letter", "text")

    def __init__(self, letter, text=b""):
        self.letter = letter
        self.text = text

    @property
    def temporary(self):
        return self.letter in ("s", "Z")

    @property
    def permanent(self):
        return self.letter in ("h", "D")

    def render(self):
        """The exact bytes qmail-remote prints for this report."""
        return self.letter.encode("ascii") + self.text + b"\0"

    def __eq__(self, other):
        if not isinstance(other, Report):
            return NotImplemented
        return (self.letter, self.text) == (other.letter, other.text)

    def __repr__(self):
        return f"Report({self.letter!r}, {self.text!r})"


class Result:
    """The outcome of one delivery attempt.

    ``recipients`` holds one :class:`Report` per RCPT reply that was read
    (fewer than the recipients when the run ended early); ``message`` is the
    final ``K``/``Z``/``D`` report.
    """

    __slots__ = ("recipients", "message")

    def __init__(self, recipients, message):
        self.recipients = list(recipients)
        self.message = message

    @property
    def accepted(self):
        """True when the server accepted the message (a ``K`` report)."""
        return self.message.letter == "K"

    def render(self):
        """The exact bytes qmail-remote prints on stdout."""
        return b"".join(r.render() for r in self.recipients) + \
            self.message.render()

    def __repr__(self):
        return f"Result({self.recipients!r}, {self.message!r})"


class Failure(Exception):
    """Ends a run with a message report (netqmail's ``zerodie`` paths).

    ``recipients`` carries the recipient reports already produced.
    """

    def __init__(self, report, recipients=()):
        super().__init__(report)
        self.report = report
        self.recipients = list(recipients)


def outsafe(data):
    """netqmail ``outsafe``: bytes outside 33..126 printed as ``?``."""
    return bytes(ch if 33 <= ch <= 126 else 63 for ch in data)


def smtptext_said(smtptext):
    """netqmail ``outsmtptext``: ``Remote host said:`` plus the text.

    NUL is printed as ``?``; an empty text prints nothing.
    """
    if not smtptext:
        return b""
    return b"Remote host said: " + smtptext.replace(b"\0", b"?")


def recipient_report(code, digits, ip, smtptext):
    """The report for one RCPT reply (``r``, ``h`` or ``s``).

    A code whose three bytes were not all digits is temporary (deviation 2).
    """
    if code < 400 and digits:
        return Report("r")
    letter = "h" if code >= 500 and digits else "s"
    return Report(letter, ip + b" does not like recipient.\n" +
                  smtptext_said(smtptext))


def stage_report(letter, prepend, ip, append, smtptext):
    """netqmail ``quit()``'s report: letter, texts around ``<ip>``, said."""
    return Report(letter, prepend + ip + append + b".\n" +
                  smtptext_said(smtptext))


def dropped(ip, critical):
    """netqmail ``dropped()``: the connection died, maybe mid-commit."""
    warning = b"Possible duplicate! " if critical else b""
    return Report("Z", b"Connected to " + ip + b" but connection died. " +
                  warning + b"(#4.4.2)\n")


def internal_error(critical):
    """Not a netqmail text: a bug in qmailremote must still mean "retry"."""
    warning = b"Possible duplicate! " if critical else b""
    return Report("Z", b"qmail-remote (qmailremote) hit an internal error. " +
                  warning + b"(#4.3.0)\n")


def perm_dns(host):
    return Report("D", b"Sorry, I couldn't find any host named " +
                  outsafe(host) + b". (#5.1.2)\n")


# ESMTP (not netqmail 1.06 texts; in its style, with enhanced status codes).
def perm_size(ip, size, limit):
    """SIZE: the message is over the limit the server advertised."""
    return Report("D", b"Connected to %s but the message is %d bytes, over "
                       b"the server's SIZE limit of %d. (#5.3.4)\n"
                  % (ip, size, limit))


def perm_nullmx(host):
    """RFC 7505: the domain publishes a null MX (ESMTP profile)."""
    return Report("D", b"Sorry, " + outsafe(host) + b" does not accept "
                       b"mail (null MX). (#5.1.10)\n")


def perm_smtputf8(ip):
    """SMTPUTF8 is needed and not offered (sagredo's text, with a code)."""
    return Report("D", b"Connected to " + ip + b" but server does not "
                       b"support unicode in email addresses. (#5.6.7)\n")


TEMP_NOMEM = Report("Z", b"Out of memory. (#4.3.0)\n")
TEMP_OSERR = Report("Z", b"System resources temporarily unavailable. "
                         b"(#4.3.0)\n")
TEMP_NOCONN = Report("Z", b"Sorry, I wasn't able to establish an SMTP "
                          b"connection. (#4.4.1)\n")
TEMP_READ = Report("Z", b"Unable to read message. (#4.3.0)\n")
TEMP_DNSCANON = Report("Z", b"CNAME lookup failed temporarily. (#4.4.3)\n")
TEMP_DNS = Report("Z", b"Sorry, I couldn't find any host by that name. "
                       b"(#4.1.2)\n")
TEMP_CHDIR = Report("Z", b"Unable to switch to home directory. (#4.3.0)\n")
TEMP_CONTROL = Report("Z", b"Unable to read control files. (#4.3.0)\n")
PERM_PARTIALLINE = Report("D", b"SMTP cannot transfer messages with partial "
                               b"final lines. (#5.6.2)\n")
PERM_USAGE = Report("D", b"I (qmail-remote) was invoked improperly. "
                         b"(#5.3.5)\n")
PERM_NOMX = Report("D", b"Sorry, I couldn't find a mail exchanger or IP "
                        b"address. (#5.4.4)\n")
PERM_AMBIGMX = Report("D", b"Sorry. Although I'm listed as a best-preference "
                           b"MX or A for that host,\nit isn't in my "
                           b"control/locals file, so I don't treat it as "
                           b"local. (#5.4.6)\n")
# Deviation 4 of the reference: refuse addresses that would inject commands.
PERM_CRLF = Report("D", b"Sorry, I won't send an address with a CR or LF "
                        b"in it. (#5.1.3)\n")


# Source-address binding (binding.py; ESMTP only).  Nothing but the file
# name and the address is printed.
def temp_badip(file):
    """An address in control/outgoingip or domainbindings is not a dotted
    quad (sagredo's text)."""
    return Report("Z", b"invalid ipaddr in " + file + b" (#4.3.0)\n")


def temp_badpreference(file):
    """control/addresspreference holds none of ipv4, ipv6, any."""
    return Report("Z", b"Sorry, " + file + b" must say ipv4, ipv6 or any. "
                       b"(#4.3.0)\n")


def temp_bind(ip, file):
    """bind() refused the address *ip* (a dotted quad) from *file*."""
    return Report("Z", b"Unable to bind to " + ip + b" from " + file +
                  b". (#4.3.0)\n")

