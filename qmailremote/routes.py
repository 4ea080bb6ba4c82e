"""The smtproutes table and its lookup (reference section 5).

netqmail builds a case-insensitive ``constmap`` from ``key:value`` entries
(the last duplicate wins) and looks up the whole host, then every suffix
that starts at a ``.`` (longest first), then the empty key.  The first key
found ends the search; an empty value means "use MX as usual".
"""

from .control import scan_ulong

__all__ = ["Route", "build_table", "find_route"]

SMTP_PORT = 25


class Route:
    """A matched non-empty route: the relay text and the port."""

    __slots__ = ("relay", "port")

    def __init__(self, relay, port=SMTP_PORT):
        self.relay = relay
        self.port = port

    def __repr__(self):
        return f"Route({self.relay!r}, {self.port})"


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


def find_route(table, host):
    """The Route for *host*, or None to deliver by MX."""
    value = None
    for i in range(len(host) + 1):
        if i == 0 or i == len(host) or host[i] == 46:  # '.'
            value = table.get(host[i:].lower())
            if value is not None:
                break
    if not value:
        return None
    relay, colon, port = value.partition(b":")
    return Route(relay, _scan_port(port) if colon else SMTP_PORT)
