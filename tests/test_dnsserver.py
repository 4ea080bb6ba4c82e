"""Tests of the fake DNS server in tests/dnsserver.py, using dnspython's client."""

import socket
import threading

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from dnsserver import (
    DNSServer,
    ancount_too_large,
    bad_compression,
    bad_rdlength_a,
    bad_rdlength_mx,
    cut_short,
    write_resolv_conf,
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


def answer_texts(response):
    return [rd.to_text() for rrset in response.answer for rd in rrset]


def test_udp_and_tcp_share_a_port(srv):
    assert srv.port > 0
    assert srv.address == ("127.0.0.1", srv.port)
    # Both sockets are bound: binding either again must fail.
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            with pytest.raises(OSError):
                s.bind((srv.host, srv.port))


def test_mx_answer_udp_and_tcp(srv):
    srv.add("mx.example", "MX", "10 a.example.", "20 b.example.")
    for ask in (udp, tcp):
        r = ask(srv, "MX.Example.", "MX")
        assert r.rcode() == dns.rcode.NOERROR
        assert r.flags & dns.flags.AA
        assert answer_texts(r) == ["10 a.example.", "20 b.example."]
        assert r.question[0].name.to_text() == "MX.Example."


def test_zone_dict_and_case_kept():
    zone = {"A.Example": {"A": ["127.0.0.2", "127.0.0.3"]},
            "c.example": {"CNAME": "Target.Example."}}
    with DNSServer(zone) as s:
        r = udp(s, "a.example.", "A")
        assert answer_texts(r) == ["127.0.0.2", "127.0.0.3"]
        assert r.answer[0].name.to_text() == "A.Example."
        r = udp(s, "c.example.", "CNAME")
        assert answer_texts(r) == ["Target.Example."]


def test_nxdomain_and_nodata(srv):
    srv.add("a.example", "A", "127.0.0.2")
    r = udp(srv, "nx.example.", "MX")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.answer == []
    r = udp(srv, "a.example.", "MX")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []


def test_cname_given_for_other_types_not_chased(srv):
    srv.add("c.example", "CNAME", "d.example.")
    srv.add("d.example", "A", "127.0.0.4")
    r = udp(srv, "c.example.", "MX")
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME]
    r = udp(srv, "c.example.", "ANY")
    assert answer_texts(r) == ["d.example."]


def test_cname_chase():
    with DNSServer(chase_cname=True) as s:
        s.add("c1.example", "CNAME", "c2.example.")
        s.add("c2.example", "CNAME", "d.example.")
        s.add("d.example", "A", "127.0.0.4")
        s.add("loop1.example", "CNAME", "loop2.example.")
        s.add("loop2.example", "CNAME", "loop1.example.")
        s.add("dangling.example", "CNAME", "nx.example.")
        r = udp(s, "c1.example.", "A")
        assert answer_texts(r) == ["c2.example.", "d.example.", "127.0.0.4"]
        r = udp(s, "loop1.example.", "A")
        assert r.rcode() == dns.rcode.NOERROR and len(r.answer) == 2
        r = udp(s, "dangling.example.", "A")
        assert r.rcode() == dns.rcode.NXDOMAIN and answer_texts(r) == ["nx.example."]


@pytest.mark.parametrize("rcode", ["SERVFAIL", "REFUSED", "NOTIMP", "FORMERR",
                                   "YXDOMAIN", "NXDOMAIN"])
def test_rcode_behaviour(srv, rcode):
    srv.add("a.example", "A", "127.0.0.2")
    srv.behave("a.example", "rcode", rcode=rcode)
    r = udp(srv, "a.example.", "A")
    assert r.rcode() == dns.rcode.from_text(rcode) and r.answer == []


def test_behaviour_per_type_and_times(srv):
    srv.add("a.example", "A", "127.0.0.2")
    srv.behave("a.example", "rcode", rcode="SERVFAIL", rdtype="MX")
    srv.behave("a.example", "rcode", rcode="REFUSED", times=1)
    assert udp(srv, "a.example.", "MX").rcode() == dns.rcode.SERVFAIL
    assert udp(srv, "a.example.", "A").rcode() == dns.rcode.REFUSED
    assert answer_texts(udp(srv, "a.example.", "A")) == ["127.0.0.2"]
    assert udp(srv, "a.example.", "MX").rcode() == dns.rcode.SERVFAIL
    srv.unbehave("a.example", rdtype="MX")
    assert udp(srv, "a.example.", "MX").answer == []


def test_answer_behaviour_with_foreign_owner(srv):
    srv.behave("x.example", "answer",
               answer=["other.example 60 IN MX 10 mx.other.example"])
    r = udp(srv, "x.example.", "MX")
    assert r.answer[0].name.to_text() == "other.example."
    assert answer_texts(r) == ["10 mx.other.example."]


def test_drop_times_out(srv):
    srv.behave("slow.example", "drop")
    q = dns.message.make_query("slow.example.", "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(q, srv.host, port=srv.port, timeout=0.2)
    assert srv.queries == [("slow.example", "A", "udp")]


def test_truncate_then_tcp(srv):
    srv.add("t.example", "A", "127.0.0.2")
    srv.behave("t.example", "truncate")
    r = udp(srv, "t.example.", "A")
    assert r.flags & dns.flags.TC and r.answer == []
    r = tcp(srv, "t.example.", "A")
    assert not r.flags & dns.flags.TC
    assert answer_texts(r) == ["127.0.0.2"]
    # udp_with_fallback does the same dance.
    q = dns.message.make_query("t.example.", "A")
    r, used_tcp = dns.query.udp_with_fallback(q, srv.host, port=srv.port,
                                              timeout=TIMEOUT)
    assert used_tcp and answer_texts(r) == ["127.0.0.2"]


def test_large_answers_need_tcp(srv):
    srv.add("big.example", "MX",
            *(f"{i} mx{i:03d}.some-long-name.example." for i in range(300)))
    srv.add("many.example", "A", *(f"10.0.{i // 256}.{i % 256}" for i in range(100)))
    # No EDNS: over 512 bytes -> TC, no records.
    r = udp(srv, "big.example.", "MX")
    assert r.flags & dns.flags.TC and r.answer == []
    # EDNS 1232 is still too small for 300 MX records.
    r = udp(srv, "big.example.", "MX", use_edns=0, payload=1232)
    assert r.flags & dns.flags.TC and r.answer == []
    r = tcp(srv, "big.example.", "MX", use_edns=0, payload=1232)
    assert len(answer_texts(r)) == 300
    # 100 A records: 1600+ bytes, fine over UDP with a large EDNS payload.
    r = udp(srv, "many.example.", "A", use_edns=0, payload=4096)
    assert not r.flags & dns.flags.TC and len(answer_texts(r)) == 100
    assert len(answer_texts(tcp(srv, "many.example.", "A"))) == 100


def test_several_queries_on_one_tcp_connection(srv):
    srv.add("a.example", "A", "127.0.0.2")
    with socket.create_connection((srv.host, srv.port), timeout=TIMEOUT) as s:
        for name in ("a.example.", "nx.example.", "a.example."):
            q = dns.message.make_query(name, "A")
            dns.query.send_tcp(s, q)
            r, _ = dns.query.receive_tcp(s)
            assert r.id == q.id
    assert srv.count(transport="tcp") == 3


@pytest.mark.parametrize("maker", [
    lambda q, w, t: bad_rdlength_a(q),
    lambda q, w, t: bad_rdlength_mx(q),
    lambda q, w, t: ancount_too_large(q),
    lambda q, w, t: bad_compression(q),
    lambda q, w, t: cut_short(q),
])
def test_malformed_raw_answers_are_refused(srv, maker):
    srv.behave("bad.example", "raw", fn=maker)
    for ask in (udp, tcp):
        with pytest.raises(dns.exception.DNSException):
            ask(srv, "bad.example.", "A")


def test_raw_gets_query_and_transport(srv):
    seen = []

    def fn(query, wire, transport):
        seen.append((query.question[0].name.to_text(), len(wire) > 12, transport))
        r = dns.message.make_response(query)
        return r.to_wire()

    srv.behave("raw.example", "raw", fn=fn)
    assert udp(srv, "raw.example.", "A").answer == []
    assert tcp(srv, "raw.example.", "A").answer == []
    assert seen == [("raw.example.", True, "udp"), ("raw.example.", True, "tcp")]


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
    srv.clear_queries()
    assert srv.queries == []


def test_resolver_helper(srv):
    srv.add("mx.example", "MX", "10 a.example.")
    ans = srv.resolver().resolve("mx.example.", "MX")
    assert [rd.to_text() for rd in ans] == ["10 a.example."]


def test_stop_is_clean_and_idempotent():
    before = threading.active_count()
    s = DNSServer().start()
    # Leave a TCP connection open across stop().
    conn = socket.create_connection((s.host, s.port), timeout=TIMEOUT)
    q = dns.message.make_query("x.example.", "A")
    dns.query.send_tcp(conn, q)
    dns.query.receive_tcp(conn)
    s.stop()
    s.stop()
    assert threading.active_count() == before
    assert conn.recv(1) == b""  # the server closed its end
    conn.close()
    # Restartable.
    with s:
        assert udp(s, "x.example.", "A").rcode() == dns.rcode.NXDOMAIN


def test_write_resolv_conf(tmp_path):
    p = write_resolv_conf(tmp_path / "resolv.conf", timeout=2, attempts=3)
    assert p.read_text() == "nameserver 127.0.0.1\noptions timeout:2 attempts:3\n"
