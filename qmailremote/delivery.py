"""One delivery, in netqmail 1.06's order of events (reference section 2).

home -> control files -> smtproutes -> address checks and mangling (with
CNAME canonicalisation of recipient domains when no route matched) ->
ipme -> address lookup -> the "listed as MX" rule -> connections with
tcpto -> the SMTP session.  The first failure wins and becomes the message
report.
"""

import os

from .control import open_home, read_controls
from .report import (PERM_AMBIGMX, PERM_CRLF, PERM_NOMX, PERM_USAGE,
                     TEMP_DNS, TEMP_DNSCANON, TEMP_NOCONN, TEMP_NOMEM,
                     TEMP_OSERR, Failure, Report, Result, perm_dns,
                     perm_nullmx)
from .routes import SMTP_PORT, build_table, find_route, find_sender_route

__all__ = ["deliver", "quote", "mangle", "listed_as_mx", "plan", "Plan",
           "ipme_of", "source_for"]

# quote.c's table of bytes that may appear unquoted in a local part.
_ATOM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                  b"0123456789!#$%&'*+-/=?^_`{|}~.")
# The "listed as MX" rule (qmail-remote.c main): preference ceilings.
_PREFME_NOT_ME = 100000
_PREFME_RELAY = 300000
_PREFME_ALL_ALIASES = 500000


def _quote_needed(box):
    return (not box or any(ch not in _ATOM for ch in box) or
            box[:1] == b"." or box[-1:] == b"." or b".." in box)


def quote(box):
    """quote.c: an RFC 821 local part, quoted only when it must be."""
    if not _quote_needed(box):
        return box
    escaped = bytearray(b'"')
    for ch in box:
        if ch in b'\r\n"\\':
            escaped.append(92)  # '\\'
        escaped.append(ch)
    escaped.append(34)  # '"'
    return bytes(escaped)


def mangle(address, domain=None):
    """addrmangle without DNS: quoted local part, ``@``, the domain.

    An address without ``@`` is sent as it is.  *domain* replaces the text
    after the last ``@`` (the canonical name of a recipient domain).
    """
    at = address.rfind(b"@")
    if at < 0:
        return address
    if domain is None:
        domain = address[at + 1:]
    return quote(address[:at]) + b"@" + domain


def _bytes(text):
    return text if isinstance(text, bytes) else os.fsencode(text)


def _canonical_recipients(recipients, resolver_of):
    """addrmangle with flagcname for every recipient, in argument order.

    Returns the mangled recipients and whether every one is an alias.
    """
    from .mx import SOFT, canonicalise

    mangled = []
    all_aliases = True
    for recipient in recipients:
        at = recipient.rfind(b"@")
        if at < 0:  # no lookup, yet an alias: netqmail's quirk
            mangled.append(recipient)
            continue
        result = canonicalise(resolver_of(), recipient[at + 1:])
        if result == SOFT:
            raise Failure(TEMP_DNSCANON)
        domain, rounds = result
        if rounds == 0:
            all_aliases = False
        mangled.append(mangle(recipient, domain))
    return mangled, all_aliases


def _addresses(route, host, resolver_of, esmtp):
    """The address lookup and its outcome (reference section 8).

    In the ESMTP profile (*esmtp*), RFC 7505's null MX is a bounce, and
    names have IPv6 addresses too (README, "IPv6").
    """
    from .mx import HARD, NULLMX, SOFT, lookup_ip, lookup_mx

    if route is not None:
        found = lookup_ip(resolver_of(), route.relay, esmtp)
        soft = False
    else:
        found = lookup_mx(resolver_of(), host, esmtp, esmtp)
        if found == NULLMX:
            raise Failure(perm_nullmx(host))
        if found not in (HARD, SOFT):
            found, soft = found
    if found == SOFT:
        raise Failure(TEMP_DNS)
    if found == HARD:
        raise Failure(perm_dns(route.relay if route is not None else host))
    if not found:
        raise Failure(TEMP_DNS if soft else PERM_NOMX)
    return found


def listed_as_mx(addresses, me, route, all_aliases):
    """The "listed as MX" rule's ceiling: (prefme, mine).

    Only addresses of a preference below *prefme* are tried.  *mine* is
    the address of this host (in *me*) that set it, or None: a route or
    an all-aliases delivery lifts the ceiling above every preference.
    """
    prefme, mine = _PREFME_NOT_ME, None
    for ip, pref, _ in addresses:
        if ip in me and pref < prefme:
            prefme, mine = pref, ip
    if route is not None:
        prefme = _PREFME_RELAY
    if all_aliases:
        prefme = _PREFME_ALL_ALIASES
    return prefme, mine


def _candidates(addresses, me, route, all_aliases):
    """The "listed as MX" rule: the (ip, name) pairs to try, in order."""
    prefme, _ = listed_as_mx(addresses, me, route, all_aliases)
    candidates = [(ip, name) for ip, pref, name in addresses
                  if pref < prefme]
    if not candidates:
        raise Failure(PERM_AMBIGMX)
    return candidates


def _quiet(kind, ip, port=None):
    pass


def _noting(transcript):
    """note(kind, ip[, port]) for deliver()'s *transcript* hook; the text
    is made only when there is a hook."""
    if transcript is None:
        return _quiet
    from .mx import ip_text

    def note(kind, ip, port=None):
        text = ip_text(ip)
        transcript(kind, text if port is None else
                   b"%s port %d" % (text, port))
    return note


class Plan:
    """Where one run delivers, once its addresses are checked: the
    mangled sender and recipients, the route (None: MX), the port, the
    (ip, name) pairs to try in order, the relay's AUTH credentials."""

    __slots__ = ("sender", "recipients", "route", "port", "candidates",
                 "credentials")

    def __init__(self, sender, recipients, route, port, candidates,
                 credentials):
        self.sender = sender
        self.recipients = recipients
        self.route = route
        self.port = port
        self.candidates = candidates
        self.credentials = credentials


def plan(home_fd, controls, host, sender, recipients, me_of, resolver_of):
    """Everything qmail-remote does between reading its control files and
    its first connection, in its order (raises a Failure): the address
    checks and mangling, the route (authsenders, then smtproutes), the
    address lookup and its order, the "listed as MX" rule.

    *me_of()* gives ipme (called where qmail-remote calls it: after the
    route), *resolver_of()* the resolver (only if a query is needed).
    """
    # Deviation 4: an address with CR or LF would inject commands.
    if any(b"\r" in a or b"\n" in a for a in (sender, *recipients)):
        raise Failure(PERM_CRLF)
    sender = mangle(sender)
    # control/authsenders (ESMTP only) routes by sender, before
    # smtproutes, as in sagredo's and s/qmail's qmail-remote.
    route = None
    if controls.authsenders:
        route = find_sender_route(build_table(controls.authsenders),
                                  sender, brackets=True)
    if route is None:
        route = find_route(build_table(controls.routes), host,
                           brackets=controls.esmtp)
    preference = None
    if controls.esmtp:
        from .addresses import read_preference
        preference = read_preference(home_fd)
    me = me_of()
    if route is None:
        recipients, all_aliases = _canonical_recipients(recipients,
                                                        resolver_of)
    else:
        recipients, all_aliases = [mangle(r) for r in recipients], False
    addresses = _addresses(route, host, resolver_of, controls.esmtp)
    if preference is not None:
        from .addresses import order
        addresses = order(addresses, preference)
    port = route.port if route is not None else SMTP_PORT
    credentials = None
    if controls.esmtp and route is not None and route.has_credentials:
        from .auth import credentials_for
        credentials = credentials_for(home_fd, route)
    return Plan(sender, recipients, route, port,
                _candidates(addresses, me, route, all_aliases), credentials)


def source_for(home_fd, controls, sender):
    """The source address and the HELO name: (Source or None, helohost).

    ESMTP only (README, "Source address"), by the sender as given.
    """
    if not controls.esmtp:
        return None, controls.helohost
    from .binding import select_source
    source = select_source(home_fd, sender)
    if source is not None and source.helohost is not None:
        return source, source.helohost
    return source, controls.helohost


def ipme_of(esmtp):
    """ipme(), or Failure(TEMP_OSERR) when the interfaces cannot be read."""
    from .mx import ipme
    try:
        return ipme(esmtp)
    except OSError:
        raise Failure(TEMP_OSERR) from None


def _run(host, sender, recipients, message, home, resolver, transcript):
    from .mx import Resolver, ip_text
    from .session import Session, classic, connect
    from .tcpto import TcpTo
    from .tls import TlsControls

    if not recipients:
        raise Failure(PERM_USAGE)
    home_fd = open_home(home)
    try:
        controls = read_controls(home_fd)
        source, controls.helohost = source_for(home_fd, controls, sender)
        if controls.esmtp:
            # SIZE= needs a pass over the message: it runs beside DNS, the
            # connection and EHLO (nothing is read from a pipe here).
            message.count_ahead()

        def resolver_of():
            # /etc/resolv.conf is read only if a query is needed.
            nonlocal resolver
            if resolver is None:
                resolver = Resolver.from_system()
            return resolver

        where = plan(home_fd, controls, host, sender, recipients,
                     lambda: ipme_of(controls.esmtp), resolver_of)
        sender, recipients, port = where.sender, where.recipients, where.port
        credentials = where.credentials
        tcpto = TcpTo(home_fd)
        tls = TlsControls(home_fd) if controls.esmtp else None
        note = _noting(transcript)
        for ip, name in where.candidates:
            if tcpto.skip(ip):
                note("skipped", ip)
                continue
            starter = tls.starter(name, port) if tls is not None else None
            note("connect", ip, port)
            sock, timed_out = connect(ip, port, controls.timeoutconnect,
                                      source)
            if sock is None:
                note("timeout" if timed_out else "unreachable", ip)
                tcpto.update(ip, timed_out)
                continue
            tcpto.update(ip, False)
            session = Session(sock, ip_text(ip), controls.timeoutremote,
                              transcript)
            if not controls.esmtp:
                return session.run(classic, controls.helohost, sender,
                                   recipients, message)
            from .esmtp import dialogue
            args = (controls.helohost, sender, recipients, message,
                    controls.chunking)
            result = session.run(dialogue, *args, starter, credentials)
            if starter is not None and starter.fell_back:
                # The opportunistic handshake failed: once more, in clear.
                note("connect", ip, port)
                sock, timed_out = connect(ip, port, controls.timeoutconnect,
                                          source)
                if sock is None:
                    note("timeout" if timed_out else "unreachable", ip)
                    tcpto.update(ip, timed_out)
                    continue
                session = Session(sock, ip_text(ip), controls.timeoutremote,
                                  transcript)
                return session.run(dialogue, *args, None, credentials)
            if starter is not None and result.accepted:
                result.message = Report("K", result.message.text +
                                        starter.report_line())
            return result
        raise Failure(TEMP_NOCONN)
    finally:
        os.close(home_fd)


def deliver(host, sender, recipients, message, *, home=None, resolver=None,
            progress=None, transcript=None):
    """Deliver *message* to *recipients* at *host*, as qmail-remote does.

    *host*, *sender* and *recipients* are bytes (or str, encoded with the
    file system encoding); *message* is bytes, a path, a file descriptor
    or a binary file, read only after the server accepts DATA.  *home* is
    the qmail home directory (default ``$QMAILHOME`` or ``/var/qmail``);
    *resolver* a :class:`qmailremote.Resolver` (default: the name servers
    of ``/etc/resolv.conf``).

    Returns a :class:`Result`; it never raises for a failed delivery.
    TLS, like everything else, follows the control files (README, "TLS").

    For tools (``qmailremote send``), both unused by ``qmail-remote``:
    *progress(done, total)* is called as the body goes out, with the
    message bytes handed to the connection so far and the message's size
    (None when unknown: a pipe); *transcript(kind, data)* sees the
    connection: ``"connect"`` (address and port), ``"skipped"`` (tcpto),
    ``"timeout"``, ``"unreachable"``, ``"C"``/``"S"`` (every byte sent
    and received, the plaintext inside TLS), ``"tls"`` (version and
    cipher).  Neither may raise.
    """
    from .message import Message
    source = Message(message, progress)
    try:
        return _run(_bytes(host), _bytes(sender),
                    [_bytes(r) for r in recipients], source, home, resolver,
                    transcript)
    except Failure as failure:
        return Result(failure.recipients, failure.report)
    except MemoryError:
        return Result([], TEMP_NOMEM)
    finally:
        source.close()
