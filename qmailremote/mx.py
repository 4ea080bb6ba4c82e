"""DNS: IP literals, MX and A lookups, CNAME canonicalisation, ipme.

Mirrors netqmail 1.06 ``dns.c`` and ``ipme.c`` (reference sections 7-9)
with deviations 5-7: random order among equal MX preferences, CNAME queries
instead of ANY, truncated answers asked again over TCP and used whole, and
every IPv4 address of every interface that is up in ipme.

With ``ipv6=True`` (the ESMTP profile; README, "IPv6") every name is also
asked for AAAA records, IPv6 literals are understood (addresses.py) and
ipme holds the interfaces' IPv6 addresses too.  An address is then 4 or 16
bytes.  A name's lookup fails hard only when both its A and its AAAA
lookups do; a soft failure of either is soft for the name, and the
addresses the other found are kept.

Names are encoded and decoded as glibc's resolver does (``ns_name_pton``,
``dn_expand``: escapes, compression, loop checks), here rather than through
dnspython, whose import alone costs more than the whole start-up budget of a
delivery; dnspython is what the tests check this code against and what the
test DNS server is built on.  The answer section is walked record by
record the way ``dns.c`` walks it (``findip``/``findmx``/``findname``), so a
broken record late in an answer does not hide the good ones before it, and
records of other types or owners are skipped, not rejected.

Every lookup returns SOFT, HARD or its result; SOFT and HARD are the
classes of reference section 7.4.
"""

import struct
import time

try:
    # The C module under `socket`: the same calls without socket.py's enum
    # and selectors imports, which cost several ms of every run's start-up.
    import _socket as socket
except ImportError:  # not CPython
    import socket

from .control import read_nonblocking, scan_ulong

__all__ = ["SOFT", "HARD", "Resolver", "ip_literal", "ip_text",
           "name_to_wire", "name_from_wire",
           "lookup_ip", "lookup_mx", "canonicalise", "ipme", "NULLMX"]

SOFT = "soft"
HARD = "hard"
NULLMX = "nullmx"

T_A = 1
T_CNAME = 5
T_MX = 15
T_AAAA = 28
_ADDRESS_SIZE = {T_A: 4, T_AAAA: 16}
C_IN = 1
# rcodes that make glibc's res_send try the next server, then fail softly.
_RC_SERVFAIL, _RC_NOTIMP, _RC_REFUSED = 2, 4, 5
_RETRY_RCODES = (_RC_SERVFAIL, _RC_NOTIMP, _RC_REFUSED)
_RC_NOERROR = 0
_HEADER = struct.Struct("!HHHHHH")
# glibc resolv.h: RES_TIMEOUT, RES_DFLRETRY, RES_MAXRETRANS, RES_MAXRETRY,
# MAXNS.
_DEFAULT_TIMEOUT, _DEFAULT_ATTEMPTS = 5, 2
_MAX_TIMEOUT, _MAX_ATTEMPTS, _MAXNS = 30, 5, 3
RESOLV_CONF = "/etc/resolv.conf"
# The CNAME canonicalisation gives up after this many rounds (dns_cname).
CNAME_ROUNDS = 10


def _scan_quad(text, pos):
    """ip.c ``ip_scan``: 4 bytes and the end offset, or None."""
    parts = []
    for n in range(4):
        if n:
            if pos >= len(text) or text[pos] != 46:  # '.'
                return None
            pos += 1
        value, end = scan_ulong(text, pos)
        if end == pos:
            return None
        parts.append(value % 256)
        pos = end
    return bytes(parts), pos


def ip_literal(text):
    """The address of an IP literal (``a.b.c.d`` or ``[a.b.c.d]``), or None.

    Each part is a decimal number taken modulo 256; the whole text must be
    the literal (``dns_ipplus``/``dns_mxip``: ip_scan, ip_scanbracket).
    """
    if not text:
        return None
    scanned = _scan_quad(text, 0)
    if scanned and scanned[1] == len(text):
        return scanned[0]
    if text[0] == 91:  # '['
        scanned = _scan_quad(text, 1)
        if scanned and scanned[1] == len(text) - 1 and text[-1] == 93:
            return scanned[0]
    return None


def ip_text(ip):
    """ip_fmt: dotted decimal with no leading zeros, as bytes.

    An IPv6 address (16 bytes) is printed in RFC 5952 form.
    """
    if len(ip) == 4:
        return b"%d.%d.%d.%d" % tuple(ip)
    from .addresses import text
    return text(ip)


def _literal(text, ipv6, bare=False):
    """ip_literal, then (with *ipv6*) an IPv6 literal; or None."""
    literal = ip_literal(text)
    if literal is None and ipv6:
        from .addresses import ipv6_literal
        literal = ipv6_literal(text, bare)
    return literal


class Resolver:
    """Where and how queries are sent: glibc's plain ``res_query``.

    By default the name servers, ``timeout`` and ``attempts`` come from
    ``/etc/resolv.conf`` (no search list, no hosts file, no environment).
    Tests and bulk senders may give ``nameservers`` as ``(address, port)``
    pairs.
    """

    def __init__(self, nameservers=None, timeout=_DEFAULT_TIMEOUT,
                 attempts=_DEFAULT_ATTEMPTS):
        self.nameservers = list(nameservers or [("127.0.0.1", 53)])
        self.timeout = timeout
        self.attempts = attempts

    @classmethod
    def from_system(cls, path=RESOLV_CONF):
        """Read resolv.conf as glibc does; a missing file means defaults."""
        servers = []
        timeout, attempts = _DEFAULT_TIMEOUT, _DEFAULT_ATTEMPTS
        try:
            # Non-blocking: a FIFO with no writer is read as empty (the
            # defaults) instead of hanging the delivery, where glibc's
            # fopen would block.
            lines = read_nonblocking(path).splitlines()
        except (OSError, ValueError):
            lines = []
        for line in lines:
            words = line.split()
            if not words or words[0][:1] in (b"#", b";"):
                continue
            if words[0] == b"nameserver" and len(words) > 1:
                if len(servers) < _MAXNS and is_address(words[1]):
                    servers.append((words[1].decode("ascii"), 53))
            elif words[0] == b"options":
                for option in words[1:]:
                    name, _, value = option.partition(b":")
                    if name == b"timeout" and value.isdigit():
                        timeout = _capped(value, _MAX_TIMEOUT)
                    elif name == b"attempts" and value.isdigit():
                        attempts = _capped(value, _MAX_ATTEMPTS)
        return cls(servers, timeout, max(attempts, 1))

    def query(self, qname, qtype):
        """Send one query; return HARD, SOFT or the answer's wire bytes."""
        wire_name = name_to_wire(qname)
        if wire_name is None:
            return HARD  # res_mkquery fails: nothing is sent
        import random  # only when a query is made: start-up time
        qid = random.getrandbits(16)
        question = wire_name + struct.pack("!HH", qtype, C_IN)
        packet = _HEADER.pack(qid, 0x0100, 1, 0, 0, 0) + question  # RD
        for attempt in range(self.attempts):
            # res_send.c: the first round waits `timeout`; later rounds
            # double it, shared among the servers.
            wait = self.timeout << attempt
            if attempt:
                wait //= len(self.nameservers)
            wait = max(wait, 1)
            for server in self.nameservers:
                answer = _ask(server, packet, qid, question, wait)
                if answer is None:
                    continue
                rcode = answer[3] & 0x0F
                if rcode in _RETRY_RCODES:
                    continue
                ancount = _HEADER.unpack_from(answer)[3]
                if rcode != _RC_NOERROR or not ancount:
                    return HARD  # NXDOMAIN, NODATA, FORMERR, others
                return answer
        return SOFT


def _capped(digits, cap):
    """min(int(digits), cap) without int() on thousands of digits.

    A number with more significant digits than *cap* is larger than it.
    """
    digits = digits.lstrip(b"0")
    if len(digits) > len(str(cap)):
        return cap
    return min(int(digits or b"0"), cap)


def is_address(text):
    """Whether *text* (bytes) is an IPv4 or IPv6 address (resolv.conf)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text.decode("ascii"))
            return True
        except (OSError, UnicodeDecodeError):
            pass
    return False


_DIGITS = b"0123456789"
_MAXCDNAME = 255  # longest name in wire form
# ns_name_ntop: bytes written with a backslash in front.
_SPECIAL = frozenset(b'".;\\()@$')


def name_to_wire(text):
    """glibc ``ns_name_pton``: a name as given (bytes) in wire form.

    RFC 1035 escapes (``\\.``, ``\\DDD``) are understood; an empty label,
    a label over 63 bytes or a name over 255 bytes gives None: the query
    cannot be made (HARD, nothing is sent).  ``""`` and ``"."`` are the
    root.
    """
    wire = bytearray()
    label = bytearray()
    pos = 0
    end = len(text)
    while pos < end:
        ch = text[pos]
        pos += 1
        if ch == 92:  # '\\'
            if pos >= end:
                break  # a final lone backslash is dropped, as in glibc
            ch = text[pos]
            pos += 1
            if ch in _DIGITS:
                code = text[pos - 1:pos + 2]
                if len(code) < 3 or not code.isdigit() or int(code) > 255:
                    return None
                ch = int(code)
                pos += 2
        elif ch == 46:  # '.'
            if len(label) > 63:
                return None
            if pos >= end and (label or not wire):
                break  # the final dot of an absolute name, or "."
            if not label or text[pos] == 46:
                return None  # an empty label
            wire.append(len(label))
            wire += label
            label.clear()
            continue
        label.append(ch)
    if len(label) > 63:
        return None
    if label:
        wire.append(len(label))
        wire += label
    wire.append(0)
    return bytes(wire) if len(wire) <= _MAXCDNAME else None


def name_from_wire(wire, pos):
    """glibc ``dn_expand``: (text, bytes used at *pos*) of a packed name.

    Compression pointers are followed anywhere inside the message, with
    glibc's loop check; the text has no final dot, escapes what
    ``ns_name_ntop`` escapes, and is ``.`` for the root.  A broken name
    raises ValueError.
    """
    size = len(wire)
    if pos >= size:
        raise ValueError("name outside the message")
    start = pos
    after_pointer = -1
    labels = []
    length = 1  # the name's uncompressed size so far, final zero included
    checked = 0
    while True:
        n = wire[pos]
        pos += 1
        if n == 0:
            break
        kind = n & 0xC0
        if kind == 0:
            if length + n + 1 > _MAXCDNAME or pos + n >= size:
                raise ValueError("name too long or cut short")
            labels.append(wire[pos:pos + n])
            length += n + 1
            checked += n + 1
            pos += n
        elif kind == 0xC0:
            if pos >= size:
                raise ValueError("pointer cut short")
            if after_pointer < 0:
                after_pointer = pos + 1
            pos = ((n & 0x3F) << 8) | wire[pos]
            checked += 2
            if pos >= size or checked >= size:
                raise ValueError("bad pointer or compression loop")
        else:
            raise ValueError("unknown label type")
    text = b".".join(_escape(label) for label in labels) or b"."
    return text, (after_pointer if after_pointer >= 0 else pos) - start


def _escape(label):
    out = bytearray()
    for ch in label:
        if ch in _SPECIAL:
            out += b"\\%c" % ch
        elif 0x20 < ch < 0x7F:
            out.append(ch)
        else:
            out += b"\\%03d" % ch
    return bytes(out)


def _matches(answer, qid, question):
    """res_send's checks: our id, a response, the same question."""
    if len(answer) < 12 + len(question):
        return False
    ident, flags, qdcount = _HEADER.unpack_from(answer)[:3]
    return (ident == qid and flags & 0x8000 and qdcount == 1 and
            answer[12:12 + len(question)].lower() == question.lower())


def _ask(server, packet, qid, question, wait):
    """One server, one try: UDP, then TCP when truncated; None on failure."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    deadline = time.monotonic() + wait
    udp = socket.socket(family, socket.SOCK_DGRAM)
    try:
        udp.connect(server)
        udp.send(packet)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            udp.settimeout(left)
            answer = udp.recv(65535)
            if _matches(answer, qid, question):
                break
    except OSError:
        return None  # timeout, unreachable (ICMP refused), ...
    finally:
        udp.close()
    if answer[2] & 0x02:  # TC: ask again over TCP, use the whole answer
        return _ask_tcp(server, family, packet, qid, question, wait)
    return answer


def _ask_tcp(server, family, packet, qid, question, wait):
    tcp = socket.socket(family, socket.SOCK_STREAM)
    try:
        tcp.settimeout(wait)
        tcp.connect(server)
        tcp.sendall(struct.pack("!H", len(packet)) + packet)
        size = struct.unpack("!H", _recv_exactly(tcp, 2))[0]
        answer = _recv_exactly(tcp, size)
    except (OSError, EOFError):
        return None
    finally:
        tcp.close()
    return answer if _matches(answer, qid, question) else None


def _recv_exactly(sock, size):
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


class _Answers:
    """Walks the answer section like dns.c's find* routines."""

    def __init__(self, wire):
        self.wire = wire
        qdcount, self.left = _HEADER.unpack_from(wire)[2:4]
        pos = 12
        for _ in range(qdcount):
            pos = self._skip_name(pos) + 4  # QFIXEDSZ
            if pos > len(wire):
                raise ValueError("question cut short")
        self.pos = pos

    def _skip_name(self, pos):
        return pos + name_from_wire(self.wire, pos)[1]

    def name_at(self, pos):
        """dn_expand's text of the name at *pos*: no final dot, ``.`` root."""
        return name_from_wire(self.wire, pos)[0]

    def __iter__(self):
        """Yield (type, rdata offset, rdlength); ValueError when broken."""
        wire = self.wire
        while self.left > 0:
            self.left -= 1
            if self.pos >= len(wire):
                raise ValueError("answer cut short")
            pos = self._skip_name(self.pos)
            if len(wire) - pos < 10:
                raise ValueError("record cut short")
            rrtype, _, _, rdlength = struct.unpack_from("!HHIH", wire, pos)
            pos += 10
            self.pos = pos + rdlength
            yield rrtype, pos, rdlength


def _resolve(resolver, name, qtype):
    """HARD, SOFT or an _Answers walker (a malformed header is SOFT)."""
    wire = resolver.query(name, qtype)
    if wire in (HARD, SOFT):
        return wire
    try:
        return _Answers(wire)
    except ValueError:
        return SOFT


def _find_ips(answers, pref, name, out, qtype=T_A):
    """findip(T_A), or the same for AAAA, over a whole answer; SOFT or None.
    """
    size = _ADDRESS_SIZE[qtype]
    if size == 16:
        from .addresses import normalise
    try:
        for rrtype, pos, rdlength in answers:
            if rrtype == qtype:
                if rdlength < size or pos + size > len(answers.wire):
                    return SOFT
                ip = answers.wire[pos:pos + size]
                out.append((normalise(ip) if size == 16 else ip, pref,
                            name))
    except ValueError:
        return SOFT
    return None


def _lookup_one(resolver, name, pref, out, qtype):
    answers = _resolve(resolver, name, qtype)
    if answers in (HARD, SOFT):
        return answers
    return _find_ips(answers, pref, name, out, qtype)


def _lookup_a(resolver, name, pref, out, ipv6=False, bare=False):
    """dns_ipplus: a literal, or the A records of *name*, into *out*.

    Returns None, SOFT or HARD; on SOFT the addresses read before the
    broken record stay in *out*.  With *ipv6* the AAAA records follow the
    A records, and the result is HARD only when both lookups are.
    """
    literal = _literal(name, ipv6, bare)
    if literal is not None:
        out.append((literal, 0, None))
        return None
    status = _lookup_one(resolver, name, pref, out, T_A)
    if not ipv6:
        return status
    status6 = _lookup_one(resolver, name, pref, out, T_AAAA)
    if SOFT in (status, status6):
        return SOFT
    return HARD if status == status6 == HARD else None


def lookup_ip(resolver, name, ipv6=False):
    """dns_ip: the relay's [(ip, 0, name)] (as lookup_mx); or SOFT/HARD.

    With *ipv6*, A and AAAA: SOFT when either failed softly (as a soft
    A lookup is in 1.06, even with some addresses read), HARD when both
    failed hard.
    """
    out = []
    status = _lookup_a(resolver, name, 0, out, ipv6)
    return status or out


def _find_mx(answers):
    """findmx(T_MX) over a whole answer: [(pref, name)] or SOFT."""
    found = []
    wire = answers.wire
    try:
        for rrtype, pos, rdlength in answers:
            if rrtype == T_MX:
                if rdlength < 3:
                    return SOFT
                found.append((struct.unpack_from("!H", wire, pos)[0],
                              answers.name_at(pos + 2)))
    except (ValueError, struct.error):
        return SOFT
    return found


def _mx_order(found):
    """Increasing preference; a fresh random order within one (dev. 5)."""
    import random
    shuffled = list(found)
    random.shuffle(shuffled)
    return sorted(shuffled, key=lambda mx: mx[0])


def lookup_mx(resolver, host, null_mx=False, ipv6=False):
    """dns_mxip: (addresses, soft) with addresses as [(ip, pref, name)].

    *name* is the host name the address was found for (the MX, or *host*
    itself when it has no MX): qmail-tls's ``fqdn``, the key of the TLS
    policy files.  It is None for an IP literal.

    Returns SOFT or HARD when the lookup as a whole failed, and, when
    *null_mx* is set, NULLMX for RFC 7505's null MX: the answer's only MX
    record has preference 0 and the root as its exchange.  A ``0 .``
    among other MX records is not one (RFC 7505 3 forbids the mix): the
    root is then an exchange without addresses, as in netqmail.

    With *ipv6*, each name's AAAA records follow its A records, and
    IPv6 literals are literals (the host argument also unbracketed).
    """
    literal = _literal(host, ipv6, bare=True)
    if literal is not None:
        return [(literal, 0, None)], False
    answers = _resolve(resolver, host, T_MX)
    if answers == SOFT:
        return SOFT
    found = [] if answers == HARD else _find_mx(answers)
    if found == SOFT:
        return SOFT
    if null_mx and found == [(0, b".")]:
        return NULLMX
    if not found:  # no MX (HARD, or e.g. only a CNAME): the A records
        addresses = lookup_ip(resolver, host, ipv6)
        return addresses if addresses in (HARD, SOFT) else (addresses, False)
    out = []
    soft = False
    for pref, name in _mx_order(found):
        if _lookup_a(resolver, name, pref, out, ipv6) == SOFT:
            soft = True
    return out, soft


def _find_cname(answers):
    """findname(T_CNAME): the first CNAME target, None, or SOFT."""
    try:
        for rrtype, pos, _ in answers:
            if rrtype == T_CNAME:
                return answers.name_at(pos)
    except ValueError:
        return SOFT
    return None


def canonicalise(resolver, domain):
    """dns_cname with CNAME queries: (domain, rounds) or SOFT.

    *rounds* is the number of rounds used, or None when all 10 were
    (an alias loop: the domain stays what it had become).
    """
    for rounds in range(CNAME_ROUNDS):
        if not domain or domain[-1] == 93:  # ']'
            return domain, rounds
        if domain[-1] == 46:  # '.': drop it, which uses up a round
            domain = domain[:-1]
            continue
        answers = _resolve(resolver, domain, T_CNAME)
        if answers == SOFT:
            return SOFT
        if answers == HARD:
            return domain, rounds
        target = _find_cname(answers)
        if target == SOFT:
            return SOFT
        if target is None:
            return domain, rounds
        domain = target
    return domain, None


# ipme through rtnetlink: RTM_GETLINK for the flags of each interface,
# RTM_GETADDR for every IPv4 address (deviation 7: labelled or not) and,
# in the ESMTP profile, every IPv6 address.
_NLMSG_DONE, _NLMSG_ERROR = 3, 2
_RTM_GETLINK, _RTM_GETADDR = 18, 22
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_IFF_UP = 0x1
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_NLMSG = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBi")


def _netlink_dump(sock, msgtype, family_header, seq):
    sock.send(_NLMSG.pack(_NLMSG.size + len(family_header), msgtype,
                          _NLM_F_REQUEST_DUMP, seq, 0) + family_header)
    while True:
        data = sock.recv(1 << 16)
        pos = 0
        while pos + _NLMSG.size <= len(data):
            length, kind, _, _, _ = _NLMSG.unpack_from(data, pos)
            if length < _NLMSG.size:
                raise OSError("bad netlink message")
            if kind == _NLMSG_DONE:
                return
            if kind == _NLMSG_ERROR:
                raise OSError("netlink error")
            yield data[pos + _NLMSG.size:pos + length]
            pos += (length + 3) & ~3


def _attributes(payload, start):
    pos = (start + 3) & ~3
    while pos + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, pos)
        if length < 4:
            break
        yield kind, payload[pos + 4:pos + length]
        pos += (length + 3) & ~3


def ipme(ipv6=False):
    """This host's IPv4 addresses (interfaces that are up), plus 0.0.0.0.

    With *ipv6*, also every IPv6 address of those interfaces (``::1``,
    link-local ones, tentative ones), plus ``::``.  A link-local address
    is matched without its scope: an address from DNS has none.
    Raises OSError when the interface list cannot be read.
    """
    addresses = {b"\0\0\0\0"}
    families = [(socket.AF_INET, 4)]
    if ipv6:
        addresses.add(b"\0" * 16)
        families.append((socket.AF_INET6, 16))
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                         socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        up = set()
        for payload in _netlink_dump(sock, _RTM_GETLINK,
                                     _IFINFOMSG.pack(0, 0, 0, 0, 0), 1):
            _, _, index, flags, _ = _IFINFOMSG.unpack_from(payload)
            if flags & _IFF_UP:
                up.add(index)
        for seq, (wanted, size) in enumerate(families, 2):
            for payload in _netlink_dump(sock, _RTM_GETADDR,
                                         _IFADDRMSG.pack(wanted, 0, 0, 0, 0),
                                         seq):
                family, _, _, _, index = _IFADDRMSG.unpack_from(payload)
                if family != wanted or index not in up:
                    continue
                attrs = dict(_attributes(payload, _IFADDRMSG.size))
                address = attrs.get(_IFA_LOCAL, attrs.get(_IFA_ADDRESS))
                if address and len(address) == size:
                    addresses.add(bytes(address))
    finally:
        sock.close()
    return addresses
