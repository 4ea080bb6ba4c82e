"""Tests of the fake DNS server in tests/dnsserver.py, using dnspython as client."""

import functools
import socket
import threading

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from dnsserver import (
    RAW_HELPERS,
    DNSServer,
    ancount_too_large,
    bad_compression,
    bad_rdlength_a,
    bad_rdlength_mx,
    cut_short,
)

TIMEOUT = 2.0


@pytest.fixture
def srv():
    with DNSServer() as s:
        yield s


def udp(srv, name, rdtype="A", **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    return dns.query.udp(q, srv.host, port=srv.port, timeout=TIMEOUT)


def tcp(srv, name, rdtype="A", **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    return dns.query.tcp(q, srv.host, port=srv.port, timeout=TIMEOUT)


def tcp_wire_length(srv, name, rdtype):
    """Length of the server's answer as sent (a parsed message re-compresses)."""
    q = dns.message.make_query(name, rdtype).to_wire()
    with socket.create_connection(srv.address, timeout=TIMEOUT) as s:
        s.sendall(len(q).to_bytes(2, "big") + q)
        with s.makefile("rb") as f:
            return int.from_bytes(f.read(2), "big")


def texts(response):
    return [rd.to_text() for rrset in response.answer for rd in rrset]


def test_udp_and_tcp_share_an_os_chosen_port(srv):
    assert srv.port > 0 and srv.address == ("127.0.0.1", srv.port)
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            with pytest.raises(OSError):
                s.bind((srv.host, srv.port))


def test_mx_answer_in_order_over_udp_and_tcp(srv):
    srv.add("mx.example", "MX", "30 c.example.", "10 a.example.", "20 b.example.")
    for ask in (udp, tcp):
        for _ in range(5):  # dnspython shuffles rdatasets unless told not to
            r = ask(srv, "MX.Example.", "MX")
            assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
            assert r.question[0].name.to_text() == "MX.Example."
            assert texts(r) == ["30 c.example.", "10 a.example.", "20 b.example."]


def test_zone_mapping_and_exact_case():
    zone = {"A.Example": {"A": ["127.0.0.2", "127.0.0.3"]},
            "c1.example": {"CNAME": "C2.Example."},
            "hinfo.example": {"HINFO": '"RFC8482" ""', "TXT": '"hello"'}}
    with DNSServer(zone) as s:
        r = udp(s, "a.example.", "A")
        assert r.answer[0].name.to_text() == "A.Example."
        assert texts(r) == ["127.0.0.2", "127.0.0.3"]
        # No compression, so the suffix keeps its case after "c1.example.".
        assert texts(udp(s, "c1.example.", "CNAME")) == ["C2.Example."]
        assert texts(udp(s, "hinfo.example.", "HINFO")) == ['"RFC8482" ""']
        assert texts(udp(s, "hinfo.example.", "TXT")) == ['"hello"']
        assert texts(udp(s, "hinfo.example.", "ANY")) == ['"RFC8482" ""', '"hello"']


def test_nxdomain_and_nodata(srv):
    srv.add("a.example", "A", "127.0.0.2")
    r = udp(srv, "nx.example.", "MX")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.answer == []
    r = udp(srv, "a.example.", "MX")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []


def test_cname_given_for_other_types_not_chased(srv):
    srv.add("c.example", "CNAME", "d.example.")
    srv.add("d.example", "A", "127.0.0.4")
    for qtype in ("MX", "A", "CNAME", "ANY"):
        r = udp(srv, "c.example.", qtype)
        assert r.rcode() == dns.rcode.NOERROR
        assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME]
        assert texts(r) == ["d.example."]


def test_cname_chase():
    with DNSServer(chase_cname=True) as s:
        s.add("c1.example", "CNAME", "c2.example.")
        s.add("c2.example", "CNAME", "d.example.")
        s.add("d.example", "A", "127.0.0.4")
        s.add("loop1.example", "CNAME", "loop2.example.")
        s.add("loop2.example", "CNAME", "loop1.example.")
        s.add("dangling.example", "CNAME", "nx.example.")
        s.add("nodata.example", "CNAME", "d.example.")
        assert texts(udp(s, "c1.example.", "A")) == ["c2.example.", "d.example.", "127.0.0.4"]
        assert texts(udp(s, "c1.example.", "CNAME")) == ["c2.example."]
        r = udp(s, "loop1.example.", "A")
        assert r.rcode() == dns.rcode.NOERROR and texts(r) == ["loop2.example.", "loop1.example."]
        r = udp(s, "dangling.example.", "A")
        assert r.rcode() == dns.rcode.NXDOMAIN and texts(r) == ["nx.example."]
        r = udp(s, "nodata.example.", "MX")
        assert r.rcode() == dns.rcode.NOERROR and texts(r) == ["d.example."]


@pytest.mark.parametrize("rcode", ["SERVFAIL", "REFUSED", "NOTIMP", "FORMERR",
                                   "YXDOMAIN", "NXDOMAIN"])
def test_rcode_behaviour(srv, rcode):
    srv.add("a.example", "A", "127.0.0.2")
    srv.behave("a.example", "rcode", rcode=rcode)
    for ask in (udp, tcp):
        r = ask(srv, "a.example.", "A")
        assert r.rcode() == dns.rcode.from_text(rcode) and r.answer == []


def test_behaviour_per_type_and_times(srv):
    srv.add("a.example", "A", "127.0.0.2")
    srv.behave("a.example", "rcode", rcode="SERVFAIL", rdtype="MX")
    srv.behave("A.EXAMPLE.", "rcode", rcode="REFUSED", times=2)
    assert udp(srv, "a.example.", "MX").rcode() == dns.rcode.SERVFAIL  # type wins
    assert udp(srv, "a.example.", "A").rcode() == dns.rcode.REFUSED
    assert udp(srv, "a.example.", "A").rcode() == dns.rcode.REFUSED
    assert texts(udp(srv, "a.example.", "A")) == ["127.0.0.2"]  # used up
    assert udp(srv, "a.example.", "MX").rcode() == dns.rcode.SERVFAIL  # no times: stays


def test_behave_checks_its_arguments(srv):
    with pytest.raises(ValueError):
        srv.behave("a.example", "explode")
    with pytest.raises(TypeError):
        srv.behave("a.example", "rcode")
    with pytest.raises(TypeError):
        srv.behave("a.example", "drop", rcode="SERVFAIL")
    with pytest.raises(TypeError):
        srv.behave("a.example", "raw")
    with pytest.raises(ValueError):
        srv.behave("a.example", "answer", answer=["no ttl here"])


def test_answer_behaviour_with_foreign_owners_and_junk(srv):
    srv.add("x.example", "MX", "10 real.example.")
    srv.behave("x.example", "answer", answer=[
        "other.example 60 IN MX 10 mx.other.example",
        "x.example 60 IN HINFO \"junk\" \"junk\"",
        "x.example 60 IN MX 20 second.example.",
    ])
    r = udp(srv, "x.example.", "MX")
    assert [rr.name.to_text() for rr in r.answer] == ["other.example.", "x.example.", "x.example."]
    assert texts(r) == ["10 mx.other.example.", '"junk" "junk"', "20 second.example."]
    srv.behave("y.example", "answer", answer=[], rcode="SERVFAIL")
    r = udp(srv, "y.example.", "A")
    assert r.rcode() == dns.rcode.SERVFAIL and r.answer == []


def test_drop_times_out(srv):
    srv.behave("slow.example", "drop")
    q = dns.message.make_query("slow.example.", "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(q, srv.host, port=srv.port, timeout=0.2)
    with pytest.raises(dns.exception.Timeout):
        dns.query.tcp(q, srv.host, port=srv.port, timeout=0.2)
    assert srv.queries == [("slow.example", "A", "udp"), ("slow.example", "A", "tcp")]


def test_truncate_then_tcp(srv):
    srv.add("t.example", "A", "127.0.0.2")
    srv.behave("t.example", "truncate")
    r = udp(srv, "t.example.", "A")
    assert r.flags & dns.flags.TC and r.answer == []
    r = tcp(srv, "t.example.", "A")
    assert not r.flags & dns.flags.TC and texts(r) == ["127.0.0.2"]
    ans = srv.resolver().resolve("t.example.", "A")
    assert [rd.to_text() for rd in ans] == ["127.0.0.2"]
    assert srv.queries[-2:] == [("t.example", "A", "udp"), ("t.example", "A", "tcp")]


def test_udp_answers_over_512_bytes_are_truncated(srv):
    srv.add("big.example", "MX", *(f"{i} mx{i:02d}.a-rather-long-name.example." for i in range(12)))
    srv.add("small.example", "MX", "10 mx.example.")
    assert tcp_wire_length(srv, "big.example.", "MX") > 512
    assert tcp_wire_length(srv, "small.example.", "MX") < 512
    for kw in ({}, {"use_edns": 0, "payload": 4096}):  # EDNS does not raise the limit
        r = udp(srv, "big.example.", "MX", **kw)
        assert r.flags & dns.flags.TC and r.answer == []
        assert not udp(srv, "small.example.", "MX", **kw).flags & dns.flags.TC
    assert len(texts(tcp(srv, "big.example.", "MX"))) == 12
    # A dnspython resolver (EDNS on by default) retries over TCP by itself.
    assert len(srv.resolver().resolve("big.example.", "MX")) == 12
    assert srv.queries[-2:] == [("big.example", "MX", "udp"), ("big.example", "MX", "tcp")]


def test_udp_limit_none_honours_edns():
    with DNSServer(udp_limit=None) as s:
        s.add("many.example", "A", *(f"10.0.0.{i}" for i in range(40)))
        assert udp(s, "many.example.", "A").flags & dns.flags.TC
        r = udp(s, "many.example.", "A", use_edns=0, payload=1232)
        assert not r.flags & dns.flags.TC and len(texts(r)) == 40


def test_several_queries_on_one_tcp_connection(srv):
    srv.add("a.example", "A", "127.0.0.2")
    with socket.create_connection(srv.address, timeout=TIMEOUT) as s:
        for name, rcode in (("a.example.", 0), ("nx.example.", 3), ("a.example.", 0)):
            q = dns.message.make_query(name, "A")
            dns.query.send_tcp(s, q)
            r, _ = dns.query.receive_tcp(s)
            assert r.id == q.id and r.rcode() == rcode
    assert srv.count(transport="tcp") == 3


@pytest.mark.parametrize("fn", [
    bad_rdlength_a,
    bad_rdlength_mx,
    ancount_too_large,
    functools.partial(ancount_too_large, ancount=2),
    bad_compression,
    cut_short,
    functools.partial(cut_short, keep=0),
])
def test_malformed_raw_answers_are_refused_by_dnspython(srv, fn):
    assert set(RAW_HELPERS.values()) >= {getattr(fn, "func", fn)}
    srv.behave("bad.example", "raw", fn=fn)
    for ask in (udp, tcp):
        with pytest.raises(dns.exception.FormError):
            ask(srv, "bad.example.", "A")


def test_what_dnspythons_resolver_makes_of_malformed_answers(srv):
    # Over UDP it ignores a malformed reply and waits for a good one: timeout.
    srv.behave("u.example", "raw", fn=bad_rdlength_a)
    with pytest.raises(dns.resolver.LifetimeTimeout):
        srv.resolver(lifetime=0.3).resolve("u.example.", "A")

    # Over TCP (after TC) it gives up on the server at once.
    def tc_then_bad(query, transport):
        if transport == "udp":
            r = dns.message.make_response(query)
            r.flags |= dns.flags.TC
            return r.to_wire()
        return bad_rdlength_mx(query)

    srv.behave("t.example", "raw", fn=tc_then_bad)
    with pytest.raises(dns.resolver.NoNameservers):
        srv.resolver().resolve("t.example.", "MX")
    assert srv.queries[-2:] == [("t.example", "MX", "udp"), ("t.example", "MX", "tcp")]


def test_raw_gets_query_and_transport(srv):
    seen = []

    def fn(query, transport):
        seen.append((query.question[0].name.to_text(), transport))
        r = dns.message.make_response(query)
        r.set_rcode(dns.rcode.REFUSED)
        return r.to_wire()

    srv.behave("raw.example", "raw", fn=fn)
    assert udp(srv, "raw.example.", "A").rcode() == dns.rcode.REFUSED
    assert tcp(srv, "raw.example.", "A").rcode() == dns.rcode.REFUSED
    assert seen == [("raw.example.", "udp"), ("raw.example.", "tcp")]


def test_errors_become_servfail_and_bad_queries_formerr(srv):
    srv.behave("oops.example", "raw", fn=lambda q, t: 1 / 0)
    assert udp(srv, "oops.example.", "A").rcode() == dns.rcode.SERVFAIL
    assert [type(e) for e in srv.errors] == [ZeroDivisionError]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(b"\x12\x34garbage", srv.address)
        reply = s.recv(512)
    assert reply[:2] == b"\x12\x34" and reply[3] & 0xF == dns.rcode.FORMERR
    udp(srv, "still.alive.example.", "A")
    assert srv.count() == 2


def test_query_log(srv):
    srv.add("c.example", "CNAME", "d.example.")
    udp(srv, "C.Example.", "CNAME")
    udp(srv, "c.example.", "CNAME")
    tcp(srv, "c.example.", "MX")
    udp(srv, ".", "MX")
    assert srv.queries == [
        ("c.example", "CNAME", "udp"),
        ("c.example", "CNAME", "udp"),
        ("c.example", "MX", "tcp"),
        (".", "MX", "udp"),
    ]
    assert srv.count("c.example", "CNAME") == 2
    assert srv.count("C.EXAMPLE.") == 3
    assert srv.count(rdtype="mx") == 2 and srv.count(".", "MX", "udp") == 1
    srv.clear_queries()
    assert srv.queries == [] and srv.count() == 0


def test_stop_is_clean_idempotent_and_restartable():
    before = threading.active_count()
    s = DNSServer().start()
    conn = socket.create_connection(s.address, timeout=TIMEOUT)  # open across stop()
    q = dns.message.make_query("x.example.", "A")
    dns.query.send_tcp(conn, q)
    dns.query.receive_tcp(conn)
    s.stop()
    s.stop()
    assert threading.active_count() == before
    assert conn.recv(1) == b""  # the server closed its end
    conn.close()
    with s:
        assert udp(s, "x.example.", "A").rcode() == dns.rcode.NXDOMAIN
