"""The source address of the outgoing connection (ESMTP profile only).

``control/domainbindings`` (indimail's format) binds by envelope sender:
``sender-address:ip``, ``domain:ip``, ``.domain:ip`` and ``:ip`` (every
sender).  Without a matching entry, ``control/outgoingip`` (sagredo's:
one IPv4 address on its first line) binds every delivery.  An empty
address or ``0.0.0.0`` lets the system pick, as an absent file does.
When an address is bound, ``control/helohostbyip`` (``ip:helohost``)
may name the host for EHLO/HELO instead of ``control/helohost``.

Addresses are strict dotted quads (four decimal numbers 0..255, no sign,
no leading zero, nothing around them); anything else is a temporary
failure naming the file.  Under ``control/noesmtp`` none of these files
is read (the caller does not call :func:`select_source`).

The address binds IPv4 connections only; an IPv6 connection (README,
"IPv6") takes the source address the system picks, as Postfix's does
when only ``smtp_bind_address`` is set.
"""

import sys

try:
    import _socket as socket
except ImportError:  # not CPython
    import socket

from .control import first_line, read_control, route_entries
from .report import Failure, temp_badip, temp_bind
from .routes import build_table

__all__ = ["Source", "parse_ipv4", "sender_keys", "lookup_binding",
           "select_source", "DOMAINBINDINGS", "OUTGOINGIP", "HELOHOSTBYIP"]

DOMAINBINDINGS = "domainbindings"
OUTGOINGIP = "outgoingip"
HELOHOSTBYIP = "helohostbyip"

_ANY = b"\0\0\0\0"
# Linux: take the port at connect() time, not at bind() time, so that a
# bound address keeps the whole ephemeral range for every destination.
# Python < 3.11 lacks the name; 24 is Linux's value (linux/in.h).
_BIND_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT",
                        24 if sys.platform.startswith("linux") else None)


class Source:
    """An address to bind, the control file it came from, a HELO name."""

    __slots__ = ("ip", "file", "helohost")

    def __init__(self, ip, file, helohost=None):
        self.ip = ip                # 4 bytes, network order
        self.file = file            # bytes, e.g. b"control/outgoingip"
        self.helohost = helohost    # bytes from helohostbyip, or None

    @property
    def text(self):
        """The address as a dotted quad (bytes)."""
        return b"%d.%d.%d.%d" % tuple(self.ip)

    def bind(self, sock):
        """Bind *sock* to this address, port 0.  Raises OSError."""
        if _BIND_NO_PORT is not None:
            try:
                sock.setsockopt(socket.IPPROTO_IP, _BIND_NO_PORT, 1)
            except OSError:
                pass
        sock.bind((self.text.decode("ascii"), 0))

    def unbindable(self):
        """The report for a failed bind()."""
        return temp_bind(self.text, self.file)

    def __eq__(self, other):
        if not isinstance(other, Source):
            return NotImplemented
        return ((self.ip, self.file, self.helohost) ==
                (other.ip, other.file, other.helohost))

    def __repr__(self):
        return f"Source({self.text!r}, {self.file!r}, {self.helohost!r})"


def parse_ipv4(text):
    """The 4 bytes of a strict dotted quad, or None.

    Four decimal numbers 0..255 separated by dots; each is ``0`` or starts
    with a nonzero digit (``010`` would be 8 to inet_aton, 10 to qmail's
    ip_scan); nothing before, between or after them.
    """
    parts = text.split(b".")
    if len(parts) != 4:
        return None
    out = bytearray()
    for part in parts:
        if not (1 <= len(part) <= 3 and part.isdigit()):
            return None
        if len(part) > 1 and part[0] == 48:  # '0'
            return None
        value = int(part)
        if value > 255:
            return None
        out.append(value)
    return bytes(out)


def sender_keys(sender):
    """The domainbindings keys for *sender*, in the order they are tried.

    The whole address; then, when it has an ``@``, its domain (after the
    last ``@``) and each ``.suffix`` of the domain, longest first; then the
    empty key.
    """
    keys = [sender]
    at = sender.rfind(b"@")
    if at >= 0:
        domain = sender[at + 1:]
        keys.append(domain)
        keys.extend(domain[i:] for i in range(1, len(domain))
                    if domain[i] == 46)  # '.'
    keys.append(b"")
    return keys


def lookup_binding(entries, sender):
    """The value domainbindings *entries* give *sender*, or None.

    Keys compare case-insensitively; a later duplicate key wins.
    """
    table = build_table(entries)
    for key in sender_keys(sender):
        value = table.get(key.lower())
        if value is not None:
            return value
    return None


def _entries(home_fd, name):
    data = read_control(home_fd, name)
    return route_entries(data) if data else []


def _address(value, file):
    """The 4 bytes to bind for *value* from *file*; None: no bind."""
    if not value:
        return None
    ip = parse_ipv4(value)
    if ip is None:
        raise Failure(temp_badip(file))
    return None if ip == _ANY else ip


def select_source(home_fd, sender):
    """The Source for a delivery by *sender* (bytes), or None.

    Reads control/domainbindings; control/outgoingip only when no
    domainbindings entry matched; control/helohostbyip only when an
    address is to be bound.  Raises Failure for an unreadable file
    (TEMP_CONTROL) or an address that is not a dotted quad.
    """
    name = DOMAINBINDINGS
    value = lookup_binding(_entries(home_fd, name), sender)
    if value is None:
        name = OUTGOINGIP
        value = first_line(home_fd, name)
    file = b"control/" + name.encode("ascii")
    ip = _address(value, file)
    if ip is None:
        return None
    source = Source(ip, file)
    helohost = build_table(_entries(home_fd, HELOHOSTBYIP)).get(source.text)
    if helohost:
        source.helohost = helohost
    return source
