"""The smtproutes table and its lookup (reference section 5), with the
patched qmails' credentials, and control/authsenders.

netqmail builds a case-insensitive ``constmap`` from ``key:value`` entries
(the last duplicate wins) and looks up the whole host, then every suffix
that starts at a ``.`` (longest first), then the empty key.  The first key
found ends the search; an empty value means "use MX as usual".

A value may carry SMTP AUTH credentials, in any of the three dialects the
patched qmails use; each line is recognised by itself (a relay host name
never holds ``|``, ``;`` or a space):

* sagredo: ``relay:port|user|password``;
* s/qmail: ``relay;port|user|password``;
* indimail and qmail-ldap: ``relay:port user password`` (``:port`` may be
  left out; further space-separated fields, indimail's ``envstr``, are
  ignored).

With ``|``, the user runs to the second ``|`` and the password is all the
rest, ``:`` and ``|`` included; with spaces, the user and the password are
the first two space-separated fields after the relay and its port, and a
password holds no space.  A value that does not have both a user and a
password in one of these forms keeps netqmail 1.06's meaning byte for byte.

In the ESMTP profile (*brackets*), a relay written in brackets ends at
the first ``]``: ``[IPv6:2001:db8::1]:2525`` is that IPv6 literal on
port 2525, ``[2001:db8::1]`` the same on port 25 (README, "IPv6").  Only
``:port`` (``;port`` in the s/qmail dialect) or nothing may follow the
``]``; otherwise the value is read as 1.06 reads it, which is also what
1.06 makes of every value whose brackets hold no ``:``.  A key is still
the text before the first ``:``, so an IPv6 literal cannot be a key.

``control/authsenders`` (sagredo, s/qmail) routes by envelope sender
instead, with the same values; its keys are a whole address, ``@domain``,
``.domain`` or empty, looked up in that order (longest suffix first), and
a match takes precedence over smtproutes.
"""

from .control import scan_ulong

__all__ = ["Route", "build_table", "find_route", "find_sender_route",
           "parse_route"]

SMTP_PORT = 25


class Route:
    """A matched non-empty route: the relay text, the port, credentials."""

    __slots__ = ("relay", "port", "user", "password")

    def __init__(self, relay, port=SMTP_PORT, user=None, password=None):
        self.relay = relay
        self.port = port
        # Both bytes, or both None: AUTH only with a user and a password.
        self.user = user
        self.password = password

    @property
    def has_credentials(self):
        return self.user is not None

    def __repr__(self):
        # Never the password: a repr ends up in logs and test reports.
        secret = ", user=%r, password=<hidden>" % (self.user,) \
            if self.has_credentials else ""
        return f"Route({self.relay!r}, {self.port}{secret})"


def build_table(entries):
    """constmap_init with flagcolon: key before the first ``:``."""
    table = {}
    for entry in entries:
        key, colon, value = entry.partition(b":")
        if colon:
            # Later entries shadow earlier ones, as constmap's hash chains
            # return the most recently inserted entry first.
            table[key.lower()] = value
    return table


def _scan_port(text):
    """scan_ulong of the port, as timeoutconn uses it: modulo 65536."""
    return scan_ulong(text)[0] % 65536


def _credentials(value):
    """(hostport, user, password, semicolon) when *value* has credentials.

    *semicolon* says the port follows ``;`` (s/qmail).  None otherwise.
    """
    bar = value.find(b"|")
    space = value.find(b" ")
    if bar >= 0 and (space < 0 or bar < space):
        user, second, password = value[bar + 1:].partition(b"|")
        if not (second and user and password):
            return None
        hostport = value[:bar]
        return hostport, user, password, b";" in hostport
    if space >= 0:
        fields = [f for f in value[space + 1:].split(b" ") if f]
        if len(fields) < 2:
            return None
        return value[:space], fields[0], fields[1], False
    return None


def _split(hostport, sep, brackets):
    """(relay, port) of *hostport*, the port after *sep*."""
    if brackets and hostport[:1] == b"[":
        close = hostport.find(b"]")
        if close > 0:
            relay, rest = hostport[:close + 1], hostport[close + 1:]
            if not rest:
                return relay, SMTP_PORT
            if rest[:1] == sep:
                return relay, _scan_port(rest[1:])
    relay, found, port = hostport.partition(sep)
    return relay, _scan_port(port) if found else SMTP_PORT


def parse_route(value, brackets=False):
    """The Route a non-empty smtproutes or authsenders value names.

    *brackets* (the ESMTP profile): a bracketed relay ends at its ``]``.
    """
    found = _credentials(value)
    if found is None:
        return Route(*_split(value, b":", brackets))
    hostport, user, password, semicolon = found
    relay, port = _split(hostport, b";" if semicolon else b":", brackets)
    return Route(relay, port, user, password)


def find_route(table, host, brackets=False):
    """The Route for *host*, or None to deliver by MX."""
    value = None
    for i in range(len(host) + 1):
        if i == 0 or i == len(host) or host[i] == 46:  # '.'
            value = table.get(host[i:].lower())
            if value is not None:
                break
    if not value:
        return None
    return parse_route(value, brackets)


def find_sender_route(table, sender, brackets=False):
    """control/authsenders: the Route for the (quoted) *sender*, or None.

    Keys are tried as sagredo's qmail-remote tries them: the whole
    address, then each suffix that starts at ``@`` or ``.``, then the
    empty key.
    """
    value = None
    for i in range(len(sender) + 1):
        if i == 0 or i == len(sender) or sender[i] in (46, 64):  # '.', '@'
            value = table.get(sender[i:].lower())
            if value is not None:
                break
    if not value:
        return None
    return parse_route(value, brackets)
