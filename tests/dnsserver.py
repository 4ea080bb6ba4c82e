"""A small fake DNS server for tests.

The server answers from an in-memory zone, over UDP and TCP on the same
address and port, from background threads.  It is built on dnspython's
message API and is meant to stand in for "the DNS" when testing the lookup
rules of qmailremote (spec sections 7 and 16.6)::

    with DNSServer() as srv:
        srv.add("mx.example", "MX", "10 a.example.", "20 b.example.")
        srv.add("a.example", "A", "127.0.0.2")
        srv.add("c.example", "CNAME", "d.example.")
        srv.behave("broken.example", "rcode", rcode="SERVFAIL")
        ...  # point the code under test at (srv.host, srv.port)
        assert srv.count("c.example", "CNAME") == 1

Answering rules (the server is authoritative for every name):

* the name has records of the query type -> NOERROR with them;
* otherwise, the name has a CNAME and the query type is not CNAME -> the
  CNAME alone (with ``chase_cname=True`` the chain is followed inside the
  zone, at most 16 hops, and the target's records are added; a chain that
  ends at an unknown name gives NXDOMAIN, as RFC 6604 says);
* otherwise, the name exists -> NOERROR with no answer (NODATA);
* otherwise -> NXDOMAIN.
* ANY returns every record of the name, CNAME included, without chasing.

Over UDP, an answer larger than 512 bytes (or than the EDNS payload size
of the query) is replaced by an empty answer with TC set, so the client
must ask again over TCP.

Per-name behaviour (``behave``) can replace the normal answer:

``"rcode"``     ``rcode="SERVFAIL"`` (or any rcode name): that rcode, no records.
``"drop"``      never answer (the client times out).
``"truncate"``  TC and no records over UDP; the normal answer over TCP.
``"answer"``    ``answer=["owner. 60 IN MX 10 x.example.", ...]``: exactly these
                records in the answer section (optional ``rcode=``), e.g. to
                give records whose owner is not the query name.
``"raw"``       ``fn=callable(query, wire, transport) -> bytes | None``: send
                these bytes as the answer (``None`` sends nothing).  The
                helpers ``bad_rdlength_a``, ``ancount_too_large``,
                ``bad_compression`` and friends build malformed answers.

Every query received is logged in ``srv.queries`` as a tuple
``(name, rdtype, transport)``: ``name`` lower-cased without the trailing
dot (``"."`` for the root), ``rdtype`` as text (``"MX"``), ``transport``
``"udp"`` or ``"tcp"``.  A query is logged before it is answered, so once
the client has its answer the log already holds the query.

Caveat: answers use ordinary (case-insensitive) name compression, so a
name in the answer whose suffix was already written, e.g. ``C2.Example.``
after a question for ``c1.example.``, reaches the client with that suffix
in the earlier case (``C2.example.``).  The first differing labels keep
their case.  Use ``"raw"`` if the exact case of a suffix matters.

glibc's resolver can only use port 53, so tests of code that goes through
the C library run the server at 127.0.0.1:53 inside a network namespace
and write a resolv.conf with ``write_resolv_conf``.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
from typing import Callable, Iterable, Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = [
    "DNSServer",
    "write_resolv_conf",
    "name_key",
    "bad_rdlength",
    "bad_rdlength_a",
    "bad_rdlength_mx",
    "ancount_too_large",
    "bad_compression",
    "cut_short",
    "junk",
    "MODES",
]

#: The behaviour modes accepted by :meth:`DNSServer.behave`.
MODES = ("rcode", "drop", "truncate", "answer", "raw")

#: Longest CNAME chain followed with ``chase_cname=True``.
MAX_CHASE = 16

#: How often the server threads look at the stop flag, in seconds.
_POLL = 0.05

RawFn = Callable[[dns.message.Message, bytes, str], "bytes | None"]


# ---------------------------------------------------------------------------
# Names


def _to_name(name: str | dns.name.Name) -> dns.name.Name:
    """Parse *name* as an absolute name ("a.example" and "a.example." agree)."""
    if isinstance(name, dns.name.Name):
        return name if name.is_absolute() else name.concatenate(dns.name.root)
    return dns.name.from_text(name, origin=dns.name.root)


def name_key(name: str | dns.name.Name) -> str:
    """The form used for matching and in the query log.

    Lower-cased, without the trailing dot; the root is ``"."``.
    """
    n = _to_name(name)
    if n == dns.name.root:
        return "."
    return n.to_text(omit_final_dot=True).lower()


def _rdtype(rdtype: str | int) -> dns.rdatatype.RdataType:
    if isinstance(rdtype, str):
        return dns.rdatatype.from_text(rdtype.upper())
    return dns.rdatatype.RdataType.make(rdtype)


def _rcode(rcode: str | int) -> dns.rcode.Rcode:
    if isinstance(rcode, str):
        return dns.rcode.from_text(rcode.upper())
    return dns.rcode.Rcode.make(rcode)


# ---------------------------------------------------------------------------
# The server


class DNSServer:
    """A fake authoritative DNS server on UDP and TCP, same host and port.

    *zone* is an optional mapping ``{name: {rdtype: rdata_text or [texts]}}``,
    e.g. ``{"mx.example": {"MX": ["10 a.example."]}, "a.example": {"A":
    "127.0.0.2"}}``.  *port* 0 lets the system choose a port that is free
    for both UDP and TCP.  With *chase_cname* the server follows CNAME
    chains inside its zone, like a recursive resolver would.
    """

    def __init__(
        self,
        zone: Mapping[str, Mapping[str, str | Iterable[str]]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        chase_cname: bool = False,
        ttl: int = 60,
    ) -> None:
        self.host = host
        self.port = port
        self.chase_cname = chase_cname
        self.default_ttl = ttl
        self._requested_port = port
        self._lock = threading.RLock()
        # name_key -> {rdtype: RRset}, in the order the types were added.
        self._zone: dict[str, dict[int, dns.rrset.RRset]] = {}
        # (name_key, rdtype or None) -> behaviour dict.
        self._behaviour: dict[tuple[str, int | None], dict] = {}
        self._queries: list[tuple[str, str, str]] = []
        #: Exceptions raised while answering (each answered SERVFAIL).
        self.errors: list[BaseException] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if zone:
            for name, types in zone.items():
                for rdtype, texts in types.items():
                    if isinstance(texts, str):
                        texts = [texts]
                    self.add(name, rdtype, *texts)

    # -- zone ---------------------------------------------------------------

    def add(
        self,
        name: str,
        rdtype: str | int,
        *rdata_texts: str,
        ttl: int | None = None,
    ) -> None:
        """Add records, e.g. ``add("mx.example", "MX", "10 a.", "20 b.")``.

        Records of the same name and type accumulate, in the order added.
        Relative names inside the rdata are taken as absolute.  The owner
        and rdata keep the case given here.
        """
        owner = _to_name(name)
        rdt = _rdtype(rdtype)
        if rdt in (dns.rdatatype.ANY, dns.rdatatype.OPT):
            raise ValueError(f"cannot add records of type {rdt.name}")
        with self._lock:
            types = self._zone.setdefault(name_key(owner), {})
            rrset = types.get(rdt)
            if rrset is None:
                rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, rdt)
                types[rdt] = rrset
            for text in rdata_texts:
                rrset.add(_rdata(rdt, text), self.default_ttl if ttl is None else ttl)

    def remove(self, name: str, rdtype: str | int | None = None) -> None:
        """Remove the records of *name* (only those of *rdtype* if given)."""
        key = name_key(name)
        with self._lock:
            if rdtype is None:
                self._zone.pop(key, None)
            else:
                types = self._zone.get(key, {})
                types.pop(_rdtype(rdtype), None)
                if not types:
                    self._zone.pop(key, None)

    # -- behaviour ----------------------------------------------------------

    def behave(
        self,
        name: str,
        mode: str,
        *,
        rdtype: str | int | None = None,
        times: int | None = None,
        **opts,
    ) -> None:
        """Replace the normal answer for queries of *name*.

        *mode* is one of :data:`MODES` (see the module docstring).  With
        *rdtype*, only queries of that type are affected; a behaviour for
        one type wins over one for all types.  With *times*, the behaviour
        applies to that many queries and is then removed.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        allowed = {"rcode": {"rcode"}, "drop": set(), "truncate": set(),
                   "answer": {"answer", "rcode"}, "raw": {"fn"}}[mode]
        extra = set(opts) - allowed
        if extra:
            raise TypeError(f"mode {mode!r} takes no option(s) {sorted(extra)}")
        b: dict = {"mode": mode, "times": times}
        if mode == "rcode":
            if "rcode" not in opts:
                raise TypeError('mode "rcode" needs rcode=')
            b["rcode"] = _rcode(opts["rcode"])
        elif mode == "answer":
            b["answer"] = [_rrset_line(line) for line in opts.get("answer", ())]
            b["rcode"] = _rcode(opts.get("rcode", "NOERROR"))
        elif mode == "raw":
            if not callable(opts.get("fn")):
                raise TypeError('mode "raw" needs a callable fn=')
            b["fn"] = opts["fn"]
        key = (name_key(name), None if rdtype is None else int(_rdtype(rdtype)))
        with self._lock:
            self._behaviour[key] = b

    def unbehave(self, name: str, rdtype: str | int | None = None) -> None:
        """Remove a behaviour set by :meth:`behave` (same *name*/*rdtype*)."""
        key = (name_key(name), None if rdtype is None else int(_rdtype(rdtype)))
        with self._lock:
            self._behaviour.pop(key, None)

    # -- query log ----------------------------------------------------------

    @property
    def queries(self) -> list[tuple[str, str, str]]:
        """A snapshot of the query log: ``[(name, rdtype, transport), ...]``."""
        with self._lock:
            return list(self._queries)

    def clear_queries(self) -> None:
        """Empty the query log."""
        with self._lock:
            self._queries.clear()

    def count(
        self,
        name: str | None = None,
        rdtype: str | None = None,
        transport: str | None = None,
    ) -> int:
        """How many logged queries match; ``None`` matches anything."""
        key = None if name is None else name_key(name)
        rdt = None if rdtype is None else _rdtype(rdtype).name
        return sum(
            1
            for n, t, tr in self.queries
            if (key is None or n == key)
            and (rdt is None or t == rdt)
            and (transport is None or tr == transport)
        )

    # -- life cycle ---------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the running server."""
        return (self.host, self.port)

    def start(self) -> "DNSServer":
        """Bind the sockets and start the server threads."""
        if self._threads:
            raise RuntimeError("server already running")
        self._bind()
        self._stop.clear()
        for target, name in ((self._serve_udp, "udp"), (self._serve_tcp, "tcp")):
            t = threading.Thread(
                target=target, name=f"dnsserver-{name}-{self.port}", daemon=True
            )
            self._threads.append(t)
            t.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the threads, close every socket.  Safe to call twice."""
        self._stop.set()
        # Connection threads are added by the TCP thread; join it first.
        while self._threads:
            t = self._threads.pop(0)
            t.join(timeout)
        for s in (self._udp, self._tcp):
            if s is not None:
                s.close()
        self._udp = self._tcp = None

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
        r.lifetime = lifetime
        r.timeout = lifetime
        return r

    def _bind(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        attempts = 20 if self._requested_port == 0 else 1
        for attempt in range(attempts):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, self._requested_port))
                port = udp.getsockname()[1]
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, port))
                tcp.listen(16)
            except OSError as e:
                udp.close()
                tcp.close()
                if e.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue
                raise
            self._udp, self._tcp, self.port = udp, tcp, port
            return

    # -- server threads -----------------------------------------------------

    def _serve_udp(self) -> None:
        sock = self._udp
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([sock], [], [], _POLL)
                if not ready:
                    continue
                wire, peer = sock.recvfrom(65535)
            except OSError:
                return
            reply = self._handle(wire, "udp")
            if reply is not None:
                try:
                    sock.sendto(reply, peer)
                except OSError:
                    pass

    def _serve_tcp(self) -> None:
        sock = self._tcp
        conns: list[threading.Thread] = []
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([sock], [], [], _POLL)
                if not ready:
                    continue
                conn, _ = sock.accept()
            except OSError:
                break
            t = threading.Thread(
                target=self._serve_conn, args=(conn,), daemon=True,
                name=f"dnsserver-conn-{self.port}",
            )
            conns = [c for c in conns if c.is_alive()]
            conns.append(t)
            t.start()
        for t in conns:
            t.join(1.0)

    def _serve_conn(self, conn: socket.socket) -> None:
        conn.settimeout(1.0)  # bounds sendall() to a client that never reads
        buf = b""
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([conn], [], [], _POLL)
                if not ready:
                    continue
                data = conn.recv(65537)
                if not data:
                    return
                buf += data
                while len(buf) >= 2:
                    (length,) = struct.unpack("!H", buf[:2])
                    if len(buf) < 2 + length:
                        break
                    wire, buf = buf[2 : 2 + length], buf[2 + length :]
                    reply = self._handle(wire, "tcp")
                    if reply is not None:
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            pass
        finally:
            conn.close()

    # -- answering ----------------------------------------------------------

    def _handle(self, wire: bytes, transport: str) -> bytes | None:
        """Turn one query into the bytes to send back, or ``None``.

        A bug in the server or in a ``raw`` callable must not kill the
        server thread: the exception is kept in ``self.errors`` and the
        client gets SERVFAIL.
        """
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return _error_header(wire, dns.rcode.FORMERR)
        if query.flags & dns.flags.QR or len(query.question) != 1:
            return _error_header(wire, dns.rcode.FORMERR)
        try:
            return self._answer(query, wire, transport)
        except Exception as e:
            with self._lock:
                self.errors.append(e)
            return _error_header(wire, dns.rcode.SERVFAIL)

    def _answer(self, query, wire: bytes, transport: str) -> bytes | None:
        q = query.question[0]
        key = name_key(q.name)
        with self._lock:
            self._queries.append((key, dns.rdatatype.to_text(q.rdtype), transport))
            b = self._take_behaviour(key, q.rdtype)
            mode = b["mode"] if b else None
            if mode == "drop":
                return None
            if mode == "raw":
                fn = b["fn"]
            else:
                response = self._response(query, q.name, q.rdtype, b, transport)
        if mode == "raw":
            return fn(query, wire, transport)
        out = response.to_wire(max_size=65535)
        if transport == "udp" and len(out) > _udp_limit(query):
            out = _truncated(query).to_wire(max_size=65535)
        return out

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

    def _response(self, query, qname, qtype, b, transport) -> dns.message.Message:
        mode = b["mode"] if b else None
        if mode == "truncate" and transport == "udp":
            return _truncated(query)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if mode == "rcode":
            response.set_rcode(b["rcode"])
        elif mode == "answer":
            response.answer = list(b["answer"])
            response.set_rcode(b["rcode"])
        else:
            rcode, answer = self._lookup(qname, qtype)
            response.answer = answer
            response.set_rcode(rcode)
        return response

    def _lookup(self, qname, qtype) -> tuple[int, list[dns.rrset.RRset]]:
        """The normal authoritative answer: (rcode, answer rrsets)."""
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
        if not self.chase_cname:
            return dns.rcode.NOERROR, answer
        seen = {name_key(qname)}
        for _ in range(MAX_CHASE):
            target = cname[0].target
            tkey = name_key(target)
            if tkey in seen:
                break
            seen.add(tkey)
            types = self._zone.get(tkey)
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


def _rdata(rdtype: int, text: str) -> dns.rdata.Rdata:
    """Parse rdata text; names in it are absolute, dot or not."""
    return dns.rdata.from_text(
        dns.rdataclass.IN, rdtype, text, origin=dns.name.root, relativize=False
    )


def _rrset_line(line: str) -> dns.rrset.RRset:
    """Parse ``"owner ttl IN type rdata..."`` into a one-record RRset."""
    parts = line.split(None, 4)
    if len(parts) != 5 or parts[2].upper() != "IN":
        raise ValueError(f"expected 'owner ttl IN type rdata': {line!r}")
    owner, ttl, _, rdtype, text = parts
    rrset = dns.rrset.RRset(_to_name(owner), dns.rdataclass.IN, _rdtype(rdtype))
    rrset.add(_rdata(rrset.rdtype, text), int(ttl))
    return rrset


def _udp_limit(query: dns.message.Message) -> int:
    if query.edns < 0:
        return 512
    return max(512, query.payload)


def _truncated(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA | dns.flags.TC
    return response


def _error_header(wire: bytes, rcode: int) -> bytes | None:
    """A bare header with *rcode*, for a query we cannot answer properly."""
    if len(wire) < 2:
        return None
    flags = dns.flags.QR | rcode
    return wire[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)


# ---------------------------------------------------------------------------
# Malformed answers, for "raw" behaviour.
#
# Each helper takes the parsed query and returns wire bytes that carry the
# query's id and question, so the client accepts them as the reply and then
# fails to parse the rest.  Use them as
#     srv.behave("x.example", "raw", fn=lambda q, w, t: bad_rdlength_a(q))


def _header(query, ancount: int, qdcount: int = 1, rcode: int = 0) -> bytes:
    flags = dns.flags.QR | dns.flags.AA | (query.flags & dns.flags.RD) | rcode
    return struct.pack("!HHHHHH", query.id, flags, qdcount, ancount, 0, 0)


def _question(query) -> bytes:
    q = query.question[0]
    return q.name.to_wire() + struct.pack("!HH", q.rdtype, q.rdclass)


def _rr(owner: bytes, rdtype: int, rdata: bytes, ttl: int = 60) -> bytes:
    return owner + struct.pack("!HHIH", rdtype, dns.rdataclass.IN, ttl,
                               len(rdata)) + rdata


def _owner(query, name) -> bytes:
    if name is None:
        return b"\xc0\x0c"  # pointer to the question name
    return _to_name(name).to_wire()


def bad_rdlength(query, rdtype: str | int, rdata: bytes, name=None) -> bytes:
    """One answer record of *rdtype* whose rdata is exactly *rdata* bytes.

    The owner is *name*, or the query name if ``None``.
    """
    return (_header(query, 1) + _question(query)
            + _rr(_owner(query, name), _rdtype(rdtype), rdata))


def bad_rdlength_a(query, name=None) -> bytes:
    """An A record with rdlength 2 (an address needs 4)."""
    return bad_rdlength(query, "A", b"\x7f\x00", name)


def bad_rdlength_mx(query, name=None) -> bytes:
    """An MX record with rdlength 2 (a preference and no exchange name)."""
    return bad_rdlength(query, "MX", b"\x00\x0a", name)


def ancount_too_large(query, ancount: int = 3) -> bytes:
    """A header claiming *ancount* answers, followed by only one A record."""
    return (_header(query, ancount) + _question(query)
            + _rr(b"\xc0\x0c", dns.rdatatype.A, b"\x7f\x00\x00\x01"))


def bad_compression(query) -> bytes:
    """An A record whose owner is a compression pointer past the message end."""
    return (_header(query, 1) + _question(query)
            + _rr(b"\xc0\xff", dns.rdatatype.A, b"\x7f\x00\x00\x01"))


def cut_short(query, keep: int = 6) -> bytes:
    """An A answer cut off *keep* bytes into its answer record."""
    full = bad_rdlength(query, "A", b"\x7f\x00\x00\x01")
    return full[: len(full) - 16 + keep]


def junk(query, payload: bytes = b"\xff" * 20) -> bytes:
    """The query id followed by *payload*: a header and then garbage."""
    return struct.pack("!H", query.id) + payload


# ---------------------------------------------------------------------------


def write_resolv_conf(path, host: str = "127.0.0.1", timeout: int = 1,
                      attempts: int = 1):
    """Write a resolv.conf naming only *host* (which must serve port 53)."""
    with open(path, "w") as f:
        f.write(f"nameserver {host}\noptions timeout:{timeout} attempts:{attempts}\n")
    return path
