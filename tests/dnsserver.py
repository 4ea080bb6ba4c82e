"""A small fake DNS server for tests (spec sections 7, 8 and 16.6).

It answers from an in-memory zone, over UDP and TCP on one address and port,
from background threads, using dnspython's message API::

    with DNSServer() as srv:                       # 127.0.0.1, port chosen by the OS
        srv.add("mx.example", "MX", "10 a.example.", "20 b.example.")
        srv.add("a.example", "A", "127.0.0.2")
        srv.add("c.example", "CNAME", "d.example.")
        srv.behave("broken.example", "rcode", rcode="SERVFAIL")
        resolver = srv.resolver()                  # or use srv.host / srv.port
        ...
        assert srv.count("c.example", "CNAME") == 1

Answering rules (the server is authoritative for every name):

* the name has records of the query type -> NOERROR with them;
* else the name has a CNAME and the query type is not CNAME -> the CNAME
  alone; with ``chase_cname=True`` the chain is followed inside the zone (at
  most 16 hops) and the target's records are added, and a chain ending at an
  unknown name gives NXDOMAIN with the chain (RFC 6604);
* else the name has any record -> NOERROR, empty answer (NODATA);
* else NXDOMAIN.  (There are no empty non-terminals: only names that own
  records exist.)
* ANY gives every record of the name, CNAME included, without chasing.

Records go out in the order they were added, and names are written without
compression, so every name reaches the client exactly as written here, case
included (``C2.Example.`` stays ``C2.Example.``).

Over UDP, an answer longer than *udp_limit* bytes (512 by default, whatever
EDNS payload the query offers; ``udp_limit=None`` honours the EDNS payload)
is replaced by an empty answer with TC set, so the client must ask again over
TCP, which gets the whole answer.

Per-name behaviour (:meth:`DNSServer.behave`) replaces the normal answer:

``"rcode"``     ``rcode="SERVFAIL"`` (any rcode name or number), no records.
``"drop"``      never answer (the client times out).
``"truncate"``  TC and no records over UDP; the normal answer over TCP.
``"answer"``    ``answer=["owner 60 IN MX 10 x.example.", ...]``: exactly these
                records in the answer section (and ``rcode=``, default NOERROR);
                owners and types need not match the question.
``"raw"``       ``fn=callable(query, transport) -> bytes | None``: send these
                bytes (``None``: send nothing).  ``bad_rdlength_a``,
                ``bad_rdlength_mx``, ``ancount_too_large``, ``bad_compression``
                and ``cut_short`` below build malformed answers and can be
                passed directly as *fn*.

Every query received is logged in :attr:`DNSServer.queries` as
``(name, rdtype, transport)``: name lower-cased without the trailing dot
(``"."`` for the root), type as text (``"MX"``), transport ``"udp"`` or
``"tcp"``.  A query is logged before it is answered, so once a client has
its answer the log holds the query.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
from typing import Callable, Iterable, Mapping

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.renderer
import dns.rrset

__all__ = [
    "DNSServer", "name_key", "MODES", "RAW_HELPERS",
    "bad_rdlength", "bad_rdlength_a", "bad_rdlength_mx",
    "ancount_too_large", "bad_compression", "cut_short",
]

MODES = ("rcode", "drop", "truncate", "answer", "raw")
MAX_CHASE = 16


def _name(name: str | dns.name.Name) -> dns.name.Name:
    """An absolute name: "a.example" and "a.example." are the same."""
    if isinstance(name, dns.name.Name):
        return name.derelativize(dns.name.root)
    return dns.name.from_text(name, origin=dns.name.root)


def name_key(name: str | dns.name.Name) -> str:
    """Lower case, no trailing dot, root is ``"."``: the form in the query log."""
    n = _name(name)
    return "." if n == dns.name.root else n.to_text(omit_final_dot=True).lower()


def _rdtype(rdtype: str | int) -> dns.rdatatype.RdataType:
    if isinstance(rdtype, str):
        return dns.rdatatype.from_text(rdtype.upper())
    return dns.rdatatype.RdataType.make(rdtype)


def _rcode(rcode: str | int) -> dns.rcode.Rcode:
    if isinstance(rcode, str):
        return dns.rcode.from_text(rcode.upper())
    return dns.rcode.Rcode.make(rcode)


def _rdata(rdtype: int, text: str) -> dns.rdata.Rdata:
    """Parse rdata text; names in it are absolute whether or not they end in '.'."""
    return dns.rdata.from_text(dns.rdataclass.IN, rdtype, text,
                               origin=dns.name.root, relativize=False)


def _rrset_line(line: str) -> dns.rrset.RRset:
    """``"owner ttl IN type rdata..."`` -> a one-record RRset."""
    parts = line.split(None, 4)
    if len(parts) != 5 or parts[2].upper() != "IN":
        raise ValueError(f"expected 'owner ttl IN type rdata': {line!r}")
    owner, ttl, _, rdtype, text = parts
    rrset = dns.rrset.RRset(_name(owner), dns.rdataclass.IN, _rdtype(rdtype))
    rrset.add(_rdata(rrset.rdtype, text), int(ttl))
    return rrset


def _to_wire(msg: dns.message.Message) -> bytes:
    """Like ``msg.to_wire()``, but uncompressed and with records in order."""
    r = dns.renderer.Renderer(msg.id, msg.flags, 65535)
    r.compress = None  # dnspython's compression is case-insensitive
    for q in msg.question:
        r.add_question(q.name, q.rdtype, q.rdclass)
    for rrset in msg.answer:
        r.add_rrset(dns.renderer.ANSWER, rrset, want_shuffle=False)
    if msg.opt is not None:
        r.add_opt(msg.opt)
    r.write_header()
    return r.get_wire()


class DNSServer:
    """Fake authoritative DNS server on UDP and TCP, same host and port.

    *zone* is an optional ``{name: {rdtype: text or [texts]}}`` mapping,
    loaded with :meth:`add`.  *port* 0 lets the system choose a port free for
    both UDP and TCP; it is known (``.port``) once started.
    """

    def __init__(
        self,
        zone: Mapping[str, Mapping[str, str | Iterable[str]]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        chase_cname: bool = False,
        udp_limit: int | None = 512,
        ttl: int = 60,
    ) -> None:
        self.host = host
        self.port = port
        self._requested_port = port
        self.chase_cname = chase_cname
        self.udp_limit = udp_limit
        self.ttl = ttl
        self._lock = threading.Lock()
        self._zone: dict[str, dict[int, dns.rrset.RRset]] = {}
        self._behaviour: dict[tuple[str, int | None], dict] = {}
        self._queries: list[tuple[str, str, str]] = []
        #: Exceptions raised while answering (the client got SERVFAIL).
        self.errors: list[BaseException] = []
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._wake: tuple[socket.socket, socket.socket] | None = None  # stop() writes here
        for name, types in (zone or {}).items():
            for rdtype, texts in types.items():
                self.add(name, rdtype, *([texts] if isinstance(texts, str) else texts))

    # -- configuration ------------------------------------------------------

    def add(self, name: str, rdtype: str | int, *rdata: str, ttl: int | None = None) -> None:
        """Add records, e.g. ``add("mx.example", "MX", "10 a.", "20 b.")``.

        Records of one name and type accumulate in the order added.  Owner
        and rdata keep the case given.
        """
        owner, rdt = _name(name), _rdtype(rdtype)
        if rdt in (dns.rdatatype.ANY, dns.rdatatype.OPT):
            raise ValueError(f"cannot add records of type {rdt.name}")
        with self._lock:
            types = self._zone.setdefault(name_key(owner), {})
            rrset = types.setdefault(rdt, dns.rrset.RRset(owner, dns.rdataclass.IN, rdt))
            for text in rdata:
                rrset.add(_rdata(rdt, text), self.ttl if ttl is None else ttl)

    def behave(
        self,
        name: str,
        mode: str,
        *,
        rdtype: str | int | None = None,
        times: int | None = None,
        rcode: str | int | None = None,
        answer: Iterable[str] | None = None,
        fn: Callable[[dns.message.Message, str], bytes | None] | None = None,
    ) -> None:
        """Replace the normal answer to queries of *name* (see module doc).

        With *rdtype*, only queries of that type; a behaviour for one type
        wins over one for all types.  With *times*, only the next *times*
        such queries, after which the normal answer returns.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        allowed = {"rcode": {"rcode"}, "answer": {"rcode", "answer"}, "raw": {"fn"}}
        given = {k for k, v in (("rcode", rcode), ("answer", answer), ("fn", fn)) if v is not None}
        if given - allowed.get(mode, set()):
            raise TypeError(f"mode {mode!r} takes no {sorted(given - allowed.get(mode, set()))}")
        if (mode == "rcode" and rcode is None) or (mode == "raw" and not callable(fn)):
            raise TypeError("mode 'rcode' needs rcode=, mode 'raw' a callable fn=")
        b = {"mode": mode, "times": times, "fn": fn,
             "rcode": _rcode(rcode if rcode is not None else 0),
             "answer": [_rrset_line(line) for line in answer or ()]}
        key = (name_key(name), None if rdtype is None else int(_rdtype(rdtype)))
        with self._lock:
            self._behaviour[key] = b

    # -- query log ----------------------------------------------------------

    @property
    def queries(self) -> list[tuple[str, str, str]]:
        """A copy of the log: ``[(name, rdtype, transport), ...]``."""
        with self._lock:
            return list(self._queries)

    def clear_queries(self) -> None:
        with self._lock:
            self._queries.clear()

    def count(self, name: str | None = None, rdtype: str | None = None,
              transport: str | None = None) -> int:
        """How many logged queries match; ``None`` matches anything."""
        want = (None if name is None else name_key(name),
                None if rdtype is None else _rdtype(rdtype).name,
                transport)
        return sum(all(w is None or w == v for w, v in zip(want, q)) for q in self.queries)

    # -- life cycle ---------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> "DNSServer":
        """Bind both sockets and start the server threads."""
        if self._threads:
            raise RuntimeError("server already running")
        udp, tcp = self._bind()
        self._wake = socket.socketpair()
        self._socks = [udp, tcp, *self._wake]
        for target, sock in ((self._serve_udp, udp), (self._serve_tcp, tcp)):
            t = threading.Thread(target=target, args=(sock,), daemon=True,
                                 name=f"dnsserver-{self.port}")
            self._threads.append(t)
            t.start()
        return self

    def stop(self) -> None:
        """Stop every thread and close every socket.  Safe to call twice."""
        if self._threads:
            self._wake[1].send(b"x")  # stays unread: every select() sees it
        for t in self._threads:  # the TCP thread joins its connection threads
            t.join(2.0)
        self._threads = []
        for s in self._socks:
            s.close()
        self._socks = []

    def __enter__(self) -> "DNSServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def resolver(self, lifetime: float = 2.0):
        """A ``dns.resolver.Resolver`` that asks only this server."""
        import dns.resolver

        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [self.host]
        r.port = self.port
        r.timeout = r.lifetime = lifetime
        return r

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        tries = 20 if self._requested_port == 0 else 1
        for attempt in range(tries):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, self._requested_port))
                port = udp.getsockname()[1]
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, port))  # may be taken for TCP: try again
                tcp.listen(16)
            except OSError as e:
                udp.close()
                tcp.close()
                if e.errno == errno.EADDRINUSE and attempt + 1 < tries:
                    continue
                raise
            self.port = port
            return udp, tcp
        raise AssertionError("unreachable")

    # -- server threads -----------------------------------------------------

    def _readable(self, sock: socket.socket) -> bool:
        """Wait until *sock* is readable (True) or the server stops (False)."""
        ready = select.select([sock, self._wake[0]], [], [])[0]
        return self._wake[0] not in ready

    def _serve_udp(self, sock: socket.socket) -> None:
        while self._readable(sock):
            wire, peer = sock.recvfrom(65535)
            reply = self._handle(wire, "udp")
            if reply is not None:
                try:
                    sock.sendto(reply, peer)
                except OSError:  # e.g. the client went away
                    pass

    def _serve_tcp(self, sock: socket.socket) -> None:
        conns = []
        while self._readable(sock):
            try:
                conn, _ = sock.accept()
            except OSError:  # e.g. the client gave up already
                continue
            t = threading.Thread(target=self._serve_conn, args=(conn,), daemon=True)
            conns.append(t)
            t.start()
        for t in conns:
            t.join(2.0)

    def _serve_conn(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)  # bounds sendall() to a client that never reads
        buf = b""
        with conn:
            try:
                while self._readable(conn):
                    data = conn.recv(65537)
                    if not data:
                        return
                    buf += data
                    while len(buf) >= 2:
                        n = 2 + struct.unpack("!H", buf[:2])[0]
                        if len(buf) < n:
                            break
                        wire, buf = buf[2:n], buf[n:]
                        reply = self._handle(wire, "tcp")
                        if reply is not None:
                            conn.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                pass

    # -- answering ----------------------------------------------------------

    def _handle(self, wire: bytes, transport: str) -> bytes | None:
        """One query -> the bytes to send back, or ``None`` to send nothing."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return _bare_header(wire, dns.rcode.FORMERR)
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return _bare_header(wire, dns.rcode.FORMERR)
        try:
            return self._answer(query, transport)
        except Exception as e:  # a bug here or in a raw fn must not kill the thread
            with self._lock:
                self.errors.append(e)
            return _bare_header(wire, dns.rcode.SERVFAIL)

    def _answer(self, query: dns.message.Message, transport: str) -> bytes | None:
        q = query.question[0]
        key = name_key(q.name)
        with self._lock:
            self._queries.append((key, dns.rdatatype.to_text(q.rdtype), transport))
            b = self._take_behaviour(key, q.rdtype)
            mode = b["mode"] if b else None
            if mode not in ("drop", "raw"):
                response = dns.message.make_response(query)
                response.flags |= dns.flags.AA
                if mode == "truncate" and transport == "udp":
                    response.flags |= dns.flags.TC
                elif mode in ("rcode", "answer"):
                    response.set_rcode(b["rcode"])
                    response.answer = list(b["answer"])
                else:
                    rcode, response.answer = self._lookup(q.name, q.rdtype)
                    response.set_rcode(rcode)
        if mode == "drop":
            return None
        if mode == "raw":
            return b["fn"](query, transport)
        out = _to_wire(response)
        if transport == "udp" and len(out) > self._udp_limit(query):
            response.answer = []
            response.flags |= dns.flags.TC
            out = _to_wire(response)
        return out

    def _udp_limit(self, query: dns.message.Message) -> int:
        if self.udp_limit is not None:
            return self.udp_limit
        return 512 if query.edns < 0 else max(512, query.payload)

    def _take_behaviour(self, key: str, rdtype: int) -> dict | None:
        for k in ((key, int(rdtype)), (key, None)):
            b = self._behaviour.get(k)
            if b is not None:
                if b["times"] is not None:
                    b["times"] -= 1
                    if b["times"] <= 0:
                        del self._behaviour[k]
                return b
        return None

    def _lookup(self, qname: dns.name.Name, qtype: int) -> tuple[int, list]:
        """The normal authoritative answer: ``(rcode, answer rrsets)``."""
        types = self._zone.get(name_key(qname))
        if types is None:
            return dns.rcode.NXDOMAIN, []
        if qtype == dns.rdatatype.ANY:
            return dns.rcode.NOERROR, list(types.values())
        if qtype in types:
            return dns.rcode.NOERROR, [types[qtype]]
        cname = types.get(dns.rdatatype.CNAME)
        if cname is None:
            return dns.rcode.NOERROR, []
        answer = [cname]
        seen = {name_key(qname)}
        while self.chase_cname and len(answer) <= MAX_CHASE:
            target = name_key(cname[0].target)
            if target in seen:
                break
            seen.add(target)
            types = self._zone.get(target)
            if types is None:
                return dns.rcode.NXDOMAIN, answer
            if qtype in types:
                answer.append(types[qtype])
                break
            cname = types.get(dns.rdatatype.CNAME)
            if cname is None:
                break
            answer.append(cname)
        return dns.rcode.NOERROR, answer


def _bare_header(wire: bytes, rcode: int) -> bytes | None:
    """A header-only reply with *rcode*, for a query that cannot be parsed."""
    if len(wire) < 2:
        return None
    return wire[:2] + struct.pack("!HHHHH", dns.flags.QR | rcode, 0, 0, 0, 0)


# ---------------------------------------------------------------------------
# Malformed answers for the "raw" mode.  Each takes the parsed query (and the
# transport, ignored) and returns wire bytes with the query's id and question,
# so a client takes them for the reply and then fails to parse the rest:
#     srv.behave("x.example", "raw", fn=bad_rdlength_a)
#     srv.behave("x.example", "raw", fn=functools.partial(ancount_too_large, ancount=5))


def _header(query: dns.message.Message, ancount: int) -> bytes:
    flags = dns.flags.QR | dns.flags.AA | (query.flags & dns.flags.RD)
    return struct.pack("!HHHHHH", query.id, flags, 1, ancount, 0, 0)


def _question(query: dns.message.Message) -> bytes:
    q = query.question[0]
    return q.name.to_wire() + struct.pack("!HH", q.rdtype, q.rdclass)


def _rr(owner: bytes, rdtype: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rdtype, dns.rdataclass.IN, 60, len(rdata)) + rdata


_QNAME = b"\xc0\x0c"  # compression pointer to the question name


def bad_rdlength(query, transport=None, *, rdtype="A", rdata=b"\x7f\x00") -> bytes:
    """One answer record (owner: the query name) of *rdtype* whose rdata is *rdata*."""
    return _header(query, 1) + _question(query) + _rr(_QNAME, _rdtype(rdtype), rdata)


def bad_rdlength_a(query, transport=None) -> bytes:
    """An A record with rdlength 2 (an address needs 4)."""
    return bad_rdlength(query, rdtype="A", rdata=b"\x7f\x00")


def bad_rdlength_mx(query, transport=None) -> bytes:
    """An MX record with rdlength 2 (a preference and no exchange name)."""
    return bad_rdlength(query, rdtype="MX", rdata=b"\x00\x0a")


def ancount_too_large(query, transport=None, *, ancount: int = 3) -> bytes:
    """A header claiming *ancount* answers, followed by only one A record."""
    return (_header(query, ancount) + _question(query)
            + _rr(_QNAME, dns.rdatatype.A, b"\x7f\x00\x00\x01"))


def bad_compression(query, transport=None) -> bytes:
    """An A record whose owner is a compression pointer beyond the message end."""
    return (_header(query, 1) + _question(query)
            + _rr(b"\xc0\xff", dns.rdatatype.A, b"\x7f\x00\x00\x01"))


def cut_short(query, transport=None, *, keep: int = 6) -> bytes:
    """A one-A-record answer cut off *keep* bytes into the record (of 16)."""
    full = bad_rdlength(query, rdtype="A", rdata=b"\x7f\x00\x00\x01")
    return full[: len(full) - 16 + keep]


#: The helpers by name (used by scenario JSON in netns.py).
RAW_HELPERS = {f.__name__: f for f in (bad_rdlength_a, bad_rdlength_mx, ancount_too_large,
                                       bad_compression, cut_short)}
