"""IPv6 next to IPv4 (ESMTP profile): literals, text, and family order.

netqmail 1.06 knows IPv4 only; under ``control/noesmtp`` nothing here is
used.  In the ESMTP profile an address is 4 bytes (IPv4) or 16 bytes
(IPv6), both in network order; the length is the family.  An IPv4-mapped
IPv6 address (``::ffff:a.b.c.d``) is taken as the IPv4 address it maps,
so that ipme, tcpto and the reports see one address, not two.

Literals (RFC 5321 4.1.3), for the host argument, MX exchanges and
smtproutes relays: ``[IPv6:2001:db8::1]`` (the tag in any case), the bare
``[2001:db8::1]`` s/qmail accepts, and, as the host argument only (which
1.06 also takes unbracketed), ``2001:db8::1``.  No zone index
(``%eth0``): DNS never gives one, and RFC 5321 has none.

``control/addresspreference`` orders each MX preference's addresses by
family: ``ipv4`` (the default: every IPv4 address of a preference before
its IPv6 ones, so a destination 1.06 reached is reached the same way),
``ipv6`` (the reverse), or ``any`` (the families interleaved, IPv6 first,
as RFC 8305 4 and Postfix's ``smtp_address_preference = any`` do).
Within a family the order is 1.06's: MX order, then answer order.
"""

try:
    import _socket as socket
except ImportError:  # not CPython
    import socket

from .control import first_line
from .report import Failure, temp_badpreference

__all__ = ["ipv6_literal", "normalise", "text", "order", "read_preference",
           "PREFERENCES", "DEFAULT_PREFERENCE", "ADDRESSPREFERENCE"]

ADDRESSPREFERENCE = "addresspreference"
PREFERENCES = (b"ipv4", b"ipv6", b"any")
DEFAULT_PREFERENCE = b"ipv4"
_MAPPED = b"\0" * 10 + b"\xff\xff"
_TAG = b"ipv6:"


def normalise(ip):
    """*ip* (16 bytes), or the IPv4 address an IPv4-mapped one maps."""
    return ip[12:] if ip[:12] == _MAPPED else ip


def _parse(text):
    try:
        return socket.inet_pton(socket.AF_INET6, text.decode("ascii"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def ipv6_literal(text, bare=False):
    """The address of an IPv6 literal in *text* (bytes), or None.

    ``[IPv6:addr]`` or ``[addr]``; with *bare*, also ``addr`` alone.
    The result is 16 bytes, or 4 for an IPv4-mapped address.
    """
    if text[:1] == b"[" and text[-1:] == b"]":
        inner = text[1:-1]
        if inner[:5].lower() == _TAG:
            inner = inner[5:]
    elif bare:
        inner = text
    else:
        return None
    if b":" not in inner:
        return None  # [1.2.3.4] is IPv4's, handled by ip_literal
    ip = _parse(inner)
    return None if ip is None else normalise(ip)


def text(ip):
    """An address as report texts print it (bytes): IPv6 in RFC 5952 form.

    Lower case, no leading zeros, the longest run of two or more zero
    groups (the first of equal ones) as ``::``, and mixed notation only
    for IPv4-mapped addresses (``::ffff:a.b.c.d``).  glibc's inet_ntop
    also writes ``::a.b.c.d`` for every address whose first 96 bits are
    zero, which RFC 5952 5 does not.
    """
    if len(ip) == 4:
        return b"%d.%d.%d.%d" % tuple(ip)
    if ip[:12] == _MAPPED:
        return b"::ffff:" + text(ip[12:])
    groups = [ip[i] << 8 | ip[i + 1] for i in range(0, 16, 2)]
    best, best_len, run = -1, 1, 0
    for i, group in enumerate(groups + [1]):
        if group == 0:
            run += 1
        else:
            if run > best_len:
                best, best_len = i - run, run
            run = 0
    words = [b"%x" % group for group in groups]
    if best < 0:
        return b":".join(words)
    return (b":".join(words[:best]) + b"::" +
            b":".join(words[best + best_len:]))


def read_preference(home_fd):
    """control/addresspreference's first line: ipv4, ipv6 or any (bytes).

    A missing or empty file means the default; any other value is a
    temporary failure naming the file, as a bad address in outgoingip is.
    """
    value = first_line(home_fd, ADDRESSPREFERENCE)
    if not value:
        return DEFAULT_PREFERENCE
    value = value.strip().lower()
    if value not in PREFERENCES:
        raise Failure(temp_badpreference(b"control/" +
                                         ADDRESSPREFERENCE.encode("ascii")))
    return value


def _interleave(first, second):
    out = []
    for i in range(max(len(first), len(second))):
        out.extend(family[i] for family in (first, second)
                   if i < len(family))
    return out


def order(addresses, preference):
    """*addresses* ([(ip, pref, name)], in MX order) ordered by family.

    Each run of equal preference is reordered by itself; preferences keep
    their order.
    """
    out = []
    start = 0
    while start < len(addresses):
        end = start
        while (end < len(addresses) and
               addresses[end][1] == addresses[start][1]):
            end += 1
        group = addresses[start:end]
        v4 = [a for a in group if len(a[0]) == 4]
        v6 = [a for a in group if len(a[0]) != 4]
        if preference == b"ipv6":
            out += v6 + v4
        elif preference == b"any":
            out += _interleave(v6, v4)
        else:
            out += v4 + v6
        start = end
    return out
