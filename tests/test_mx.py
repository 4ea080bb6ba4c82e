"""DNS: IP literals, MX/A lookups, CNAME canonicalisation, ipme, and the
outcomes of the address lookup through deliver() (reference sections 2, 3,
5, 7, 8, 9 and deviations 5, 6, 7).

Every lookup goes to the fake server of tests/dnsserver.py on loopback, with
one try and a one-second timeout; only loopback addresses are ever contacted.
"""

import shutil
import socket
import struct
import subprocess

import pytest

from dnsserver import (DNSServer, ancount_too_large, bad_compression,
                       bad_rdlength_a, bad_rdlength_mx, cut_short)
from qmailremote.delivery import deliver
from qmailremote import mx
from qmailremote.mx import HARD, SOFT, Resolver, canonicalise, ip_literal, ipme


def lookup_mx(resolver, host):
    """mx.lookup_mx with (ip, pref) pairs: most tests look at no name."""
    found = mx.lookup_mx(resolver, host)
    if found in (HARD, SOFT):
        return found
    return [(address, pref) for address, pref, _ in found[0]], found[1]


def lookup_ip(resolver, name):
    found = mx.lookup_ip(resolver, name)
    if found in (HARD, SOFT):
        return found
    return [(address, pref) for address, pref, _ in found]


def ip(text):
    """Dotted quad -> 4 bytes, without the socket module."""
    parts = [int(p) for p in text.split(".")]
    assert len(parts) == 4
    return bytes(parts)


@pytest.fixture
def srv():
    with DNSServer() as server:
        yield server
    assert server.errors == []  # a raw fn or the server itself went wrong


@pytest.fixture
def res(srv):
    return Resolver([(srv.host, srv.port)], timeout=1, attempts=1)


def a_then_broken(query, transport=None):
    """Two good A records (127.0.0.41, 127.0.0.42), then an A of rdlength 2."""
    q = query.question[0]
    header = struct.pack("!HHHHHH", query.id, 0x8400 | (query.flags & 0x0100),
                         1, 3, 0, 0)
    question = q.name.to_wire() + struct.pack("!HH", q.rdtype, q.rdclass)

    def rr(rdata):
        return b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, len(rdata)) + rdata

    return (header + question + rr(ip("127.0.0.41")) + rr(ip("127.0.0.42"))
            + rr(b"\x7f\x00"))


def a_broken_a(query, transport=None):
    """A 127.0.0.51, an A of rdlength 2, then A 127.0.0.52 (not at the end)."""
    q = query.question[0]
    header = struct.pack("!HHHHHH", query.id, 0x8400 | (query.flags & 0x0100),
                         1, 3, 0, 0)
    question = q.name.to_wire() + struct.pack("!HH", q.rdtype, q.rdclass)

    def rr(rdata):
        return b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, len(rdata)) + rdata

    return (header + question + rr(ip("127.0.0.51")) + rr(b"\x7f\x00")
            + rr(ip("127.0.0.52")))


def mx_then(broken_rdata):
    """A raw answer: MX 10 a.example, then an MX with rdata *broken_rdata*."""
    def fn(query, transport=None):
        q = query.question[0]
        header = struct.pack("!HHHHHH", query.id,
                             0x8400 | (query.flags & 0x0100), 1, 2, 0, 0)
        question = q.name.to_wire() + struct.pack("!HH", q.rdtype, q.rdclass)

        def rr(rdata):
            return (b"\xc0\x0c" + struct.pack("!HHIH", 15, 1, 60, len(rdata))
                    + rdata)

        return (header + question + rr(b"\x00\x0a\x01a\x07example\x00")
                + rr(broken_rdata))
    return fn


# ---------------------------------------------------------------------------
# 7.1 IP literals

@pytest.mark.parametrize("text, address", [
    (b"127.0.0.257", "127.0.0.1"),
    (b"010.0.0.1", "10.0.0.1"),
    (b"[1.2.3.4]", "1.2.3.4"),
    (b"1.2.3.4", "1.2.3.4"),
    (b"[127.0.0.1]", "127.0.0.1"),
    (b"0.0.0.0", "0.0.0.0"),
    (b"256.512.768.1025", "0.0.0.1"),
])
def test_ip_literal(text, address):
    assert ip_literal(text) == ip(address)


@pytest.mark.parametrize("text", [
    b"1.2.3.4x", b"[1.2.3.4", b"[1.2.3.4] x", b"1.2.3", b"[IPv6:::1]", b"",
    b"1.2.3.4.", b"[1.2.3.4]x", b" 1.2.3.4", b"+1.2.3.4", b"1.2.3.-4",
    b"[]", b"[", b"1..2.3",
])
def test_not_ip_literal(text):
    assert ip_literal(text) is None


def test_not_a_literal_is_looked_up_and_fails_hard(srv, res):
    for text in (b"1.2.3.4x", b"[1.2.3.4", b"1.2.3", b"[IPv6:::1]"):
        assert lookup_mx(res, text) == HARD
        assert srv.count(text.decode(), "MX") == 1
        assert srv.count(text.decode(), "A") == 1


# ---------------------------------------------------------------------------
# 7.2 lookup_mx

def test_literal_host_needs_no_dns(srv, res):
    assert lookup_mx(res, b"[127.0.0.3]") == ([(ip("127.0.0.3"), 0)], False)
    assert lookup_mx(res, b"127.0.0.259") == ([(ip("127.0.0.3"), 0)], False)
    assert srv.queries == []


def test_mx_by_preference_addresses_in_answer_order(srv, res):
    # Added out of preference order; the server keeps record order.
    srv.add("mx.example", "MX", "30 c.example.", "10 a.example.",
            "20 b.example.")
    srv.add("a.example", "A", "127.0.0.12", "127.0.0.11", "127.0.0.13")
    srv.add("b.example", "A", "127.0.0.22", "127.0.0.21")
    srv.add("c.example", "A", "127.0.0.11")  # same address as an a record
    assert lookup_mx(res, b"mx.example") == ([
        (ip("127.0.0.12"), 10), (ip("127.0.0.11"), 10),
        (ip("127.0.0.13"), 10),
        (ip("127.0.0.22"), 20), (ip("127.0.0.21"), 20),
        (ip("127.0.0.11"), 30),
    ], False)
    assert srv.count("mx.example", "MX") == 1
    assert srv.count("mx.example", "A") == 0
    for name in ("a.example", "b.example", "c.example"):
        assert srv.count(name, "A") == 1
        assert srv.count(name, "MX") == 0


def test_duplicate_addresses_in_one_answer_are_kept(srv, res):
    srv.add("mx.example", "MX", "10 a.example.")
    srv.behave("a.example", "answer", rdtype="A", answer=[
        "a.example 60 IN A 127.0.0.5", "a.example 60 IN A 127.0.0.6",
        "a.example 60 IN A 127.0.0.5"])
    assert lookup_mx(res, b"mx.example") == ([
        (ip("127.0.0.5"), 10), (ip("127.0.0.6"), 10), (ip("127.0.0.5"), 10),
    ], False)


def test_equal_preferences_random_order(srv, res):
    """Deviation 5: preferences increase, ties in a fresh random order."""
    srv.add("mx.example", "MX", "10 a.example.", "20 e.example.",
            "10 b.example.", "5 d.example.", "10 c.example.")
    for n, name in enumerate("abcde", 1):
        srv.add(f"{name}.example", "A", f"127.0.0.{n}")
    equal = {ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3")}
    orders = set()
    for _ in range(30):
        found, soft = lookup_mx(res, b"mx.example")
        assert soft is False
        assert found[0] == (ip("127.0.0.4"), 5)
        assert found[4] == (ip("127.0.0.5"), 20)
        assert {pref for _, pref in found[1:4]} == {10}
        middle = tuple(address for address, _ in found[1:4])
        assert set(middle) == equal
        orders.add(middle)
    # P(30 runs all in one order) = 6 * (1/6)**30: negligible.
    assert len(orders) > 1


def test_literal_mx_names_get_preference_zero_and_keep_their_place(srv, res):
    srv.add("mx.example", "MX", "10 a.example.", "30 [127.0.0.32].",
            "50 127.0.0.31.")
    srv.add("a.example", "A", "127.0.0.10")
    assert lookup_mx(res, b"mx.example") == ([
        (ip("127.0.0.10"), 10), (ip("127.0.0.32"), 0), (ip("127.0.0.31"), 0),
    ], False)
    assert srv.count("a.example", "A") == 1
    assert len(srv.queries) == 2  # the literals need no DNS


def test_mx_records_with_foreign_owners_are_used(srv, res):
    srv.behave("mx.example", "answer", rdtype="MX", answer=[
        "cname.example 60 IN CNAME other.example.",
        "other.example 60 IN MX 10 a.example.",
        "mx.example 60 IN A 127.0.0.99",
        "elsewhere.example 60 IN MX 20 b.example."])
    srv.add("a.example", "A", "127.0.0.1")
    srv.add("b.example", "A", "127.0.0.2")
    assert lookup_mx(res, b"mx.example") == (
        [(ip("127.0.0.1"), 10), (ip("127.0.0.2"), 20)], False)
    assert srv.count("mx.example", "A") == 0


def test_only_a_cname_falls_back_to_a(srv, res):
    srv.behave("mx.example", "answer", rdtype="MX", answer=[
        "mx.example 60 IN CNAME other.example."])
    srv.add("mx.example", "A", "127.0.0.7", "127.0.0.8")
    assert lookup_mx(res, b"mx.example") == (
        [(ip("127.0.0.7"), 0), (ip("127.0.0.8"), 0)], False)
    assert srv.count("mx.example", "MX") == 1
    assert srv.count("mx.example", "A") == 1


def test_cname_zone_without_target_a_gives_no_address(srv, res):
    srv.add("cname.example", "CNAME", "target.example.")
    srv.add("target.example", "TXT", '"no address"')
    assert lookup_mx(res, b"cname.example") == ([], False)
    assert srv.count("cname.example", "A") == 1


def test_nxdomain_on_mx_falls_back_to_a_with_preference_zero(srv, res):
    srv.behave("nxmx.example", "rcode", rdtype="MX", rcode="NXDOMAIN")
    srv.add("nxmx.example", "A", "127.0.0.9", "127.0.0.10")
    assert lookup_mx(res, b"nxmx.example") == (
        [(ip("127.0.0.9"), 0), (ip("127.0.0.10"), 0)], False)
    assert srv.count("nxmx.example", "MX") == 1
    assert srv.count("nxmx.example", "A") == 1


def test_nodata_on_mx_falls_back_to_a(srv, res):
    srv.add("aonly.example", "A", "127.0.0.9")
    assert lookup_mx(res, b"aonly.example") == ([(ip("127.0.0.9"), 0)], False)
    assert [q[:2] for q in srv.queries] == [("aonly.example", "MX"),
                                            ("aonly.example", "A")]


def test_nxdomain_everywhere_is_hard(srv, res):
    assert lookup_mx(res, b"nx.example") == HARD
    assert srv.count("nx.example", "MX") == 1
    assert srv.count("nx.example", "A") == 1


@pytest.mark.parametrize("rcode", ["SERVFAIL", "REFUSED", "NOTIMP"])
def test_soft_rcode_on_mx_is_soft(srv, res, rcode):
    srv.behave("mx.example", "rcode", rdtype="MX", rcode=rcode)
    srv.add("mx.example", "A", "127.0.0.1")
    assert lookup_mx(res, b"mx.example") == SOFT
    assert srv.count("mx.example", "A") == 0


@pytest.mark.parametrize("fn", [bad_rdlength_mx, ancount_too_large,
                                bad_compression, cut_short])
def test_malformed_mx_answer_is_soft(srv, res, fn):
    srv.behave("mx.example", "raw", rdtype="MX", fn=fn)
    srv.add("mx.example", "A", "127.0.0.1")
    assert lookup_mx(res, b"mx.example") == SOFT
    assert srv.count("mx.example", "A") == 0


@pytest.mark.parametrize("broken", [
    b"\x00\x14",                # rdlength 2
    b"\x00\x14\xc0\xff",        # exchange: pointer beyond the end
    b"\x00\x14\x05ab",           # exchange: label runs past the rdata
])
def test_good_mx_then_broken_mx_is_soft_as_a_whole(srv, res, broken):
    srv.behave("mx.example", "raw", rdtype="MX", fn=mx_then(broken))
    srv.add("a.example", "A", "127.0.0.1")
    srv.add("mx.example", "A", "127.0.0.1")
    assert lookup_mx(res, b"mx.example") == SOFT
    assert srv.count(None, "A") == 0


def test_short_mx_record_before_a_good_one_is_soft(srv, res):
    """An MX rdlength 2 is broken even when a valid name follows it."""
    def fn(query, transport=None):
        both = mx_then(b"\x00\x0a")(query)  # MX 10 a.example, MX rdlength 2
        head = 12 + len(query.question[0].name.to_wire()) + 4
        size = 2 + 10 + 13  # pointer, fixed part, rdata of MX 10 a.example
        good, short = both[head:head + size], both[head + size:]
        assert len(short) == 2 + 10 + 2
        return both[:head] + short + good
    srv.behave("mx.example", "raw", rdtype="MX", fn=fn)
    srv.add("a.example", "A", "127.0.0.1")
    srv.add("mx.example", "A", "127.0.0.1")
    assert lookup_mx(res, b"mx.example") == SOFT


def test_raw_good_mx_is_read(srv, res):
    srv.behave("mx.example", "raw", rdtype="MX",
               fn=mx_then(b"\x00\x14\x01b\x07example\x00"))
    srv.add("a.example", "A", "127.0.0.1")
    srv.add("b.example", "A", "127.0.0.2")
    assert lookup_mx(res, b"mx.example") == (
        [(ip("127.0.0.1"), 10), (ip("127.0.0.2"), 20)], False)


def test_timeout_on_mx_is_soft(srv, res):
    srv.behave("mx.example", "drop", rdtype="MX")
    srv.add("mx.example", "A", "127.0.0.1")
    assert lookup_mx(res, b"mx.example") == SOFT
    assert srv.count("mx.example", "A") == 0


def test_unreachable_server_is_soft():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = Resolver([("127.0.0.1", port)], timeout=1, attempts=1)
    assert lookup_mx(dead, b"mx.example") == SOFT
    assert lookup_ip(dead, b"relay.example") == SOFT
    assert canonicalise(dead, b"c.example") == SOFT


@pytest.mark.parametrize("rcode", ["FORMERR", "YXDOMAIN"])
def test_hard_rcode_on_mx_falls_back_to_a(srv, res, rcode):
    srv.behave("mx.example", "rcode", rdtype="MX", rcode=rcode)
    srv.add("mx.example", "A", "127.0.0.6")
    assert lookup_mx(res, b"mx.example") == ([(ip("127.0.0.6"), 0)], False)
    assert srv.count("mx.example", "A") == 1


@pytest.mark.parametrize("rcode", ["NXDOMAIN", "FORMERR", "YXDOMAIN",
                                   "NXRRSET", "NOTAUTH", 15])
def test_hard_rcode_with_answer_records_is_hard(srv, res, rcode):
    """Any rcode but NOERROR is HARD, whatever the answer section holds."""
    srv.behave("mx.example", "answer", rdtype="MX", rcode=rcode,
               answer=["mx.example 60 IN MX 10 a.example."])
    srv.add("a.example", "A", "127.0.0.1")
    srv.add("mx.example", "A", "127.0.0.6")
    assert lookup_mx(res, b"mx.example") == ([(ip("127.0.0.6"), 0)], False)
    assert srv.count("a.example", "A") == 0
    srv.behave("relay.example", "answer", rdtype="A", rcode=rcode,
               answer=["relay.example 60 IN A 127.0.0.1"])
    assert lookup_ip(res, b"relay.example") == HARD
    srv.behave("x.example", "answer", rdtype="CNAME", rcode=rcode,
               answer=["x.example 60 IN CNAME t.example."])
    assert canonicalise(res, b"x.example") == (b"x.example", 0)


@pytest.mark.parametrize("rcode", ["FORMERR", "YXDOMAIN"])
def test_hard_rcode_on_mx_and_a_is_hard(srv, res, rcode):
    srv.behave("mx.example", "rcode", rcode=rcode)
    assert lookup_mx(res, b"mx.example") == HARD


def test_a_fallback_soft_is_soft(srv, res):
    srv.behave("mx.example", "rcode", rdtype="A", rcode="SERVFAIL")
    srv.add("mx.example", "TXT", '"x"')
    assert lookup_mx(res, b"mx.example") == SOFT


def test_a_fallback_soft_as_a_whole_even_with_addresses_read(srv, res):
    srv.add("mx.example", "TXT", '"x"')
    srv.behave("mx.example", "raw", rdtype="A", fn=a_then_broken)
    assert lookup_mx(res, b"mx.example") == SOFT


def test_soft_mx_host_marks_soft_and_keeps_others(srv, res):
    srv.add("mx.example", "MX", "10 a.example.", "20 soft.example.",
            "30 b.example.")
    srv.add("a.example", "A", "127.0.0.1")
    srv.add("b.example", "A", "127.0.0.2")
    srv.behave("soft.example", "rcode", rcode="SERVFAIL")
    assert lookup_mx(res, b"mx.example") == (
        [(ip("127.0.0.1"), 10), (ip("127.0.0.2"), 30)], True)
    assert srv.count("b.example", "A") == 1


def test_soft_mx_host_keeps_addresses_read_before_the_broken_record(srv, res):
    srv.add("mx.example", "MX", "10 broken.example.", "20 b.example.")
    srv.behave("broken.example", "raw", rdtype="A", fn=a_then_broken)
    srv.add("b.example", "A", "127.0.0.2")
    assert lookup_mx(res, b"mx.example") == ([
        (ip("127.0.0.41"), 10), (ip("127.0.0.42"), 10), (ip("127.0.0.2"), 20),
    ], True)


def test_short_a_record_inside_the_answer_is_soft(srv, res):
    srv.add("mx.example", "MX", "10 broken.example.", "20 b.example.")
    srv.behave("broken.example", "raw", rdtype="A", fn=a_broken_a)
    srv.add("b.example", "A", "127.0.0.2")
    assert lookup_mx(res, b"mx.example") == (
        [(ip("127.0.0.51"), 10), (ip("127.0.0.2"), 20)], True)
    srv.behave("relay.example", "raw", rdtype="A", fn=a_broken_a)
    assert lookup_ip(res, b"relay.example") == SOFT


@pytest.mark.parametrize("fn", [bad_rdlength_a, bad_compression, cut_short])
def test_malformed_a_answer_of_mx_host_is_soft(srv, res, fn):
    srv.add("mx.example", "MX", "10 broken.example.", "20 b.example.")
    srv.behave("broken.example", "raw", rdtype="A", fn=fn)
    srv.add("b.example", "A", "127.0.0.2")
    assert lookup_mx(res, b"mx.example") == ([(ip("127.0.0.2"), 20)], True)


def test_ancount_too_large_keeps_the_record_present(srv, res):
    srv.add("mx.example", "MX", "10 broken.example.")
    srv.behave("broken.example", "raw", rdtype="A", fn=ancount_too_large)
    assert lookup_mx(res, b"mx.example") == ([(ip("127.0.0.1"), 10)], True)


def test_soft_mx_path_with_no_address(srv, res):
    srv.add("mx.example", "MX", "10 soft.example.")
    srv.behave("soft.example", "drop")
    assert lookup_mx(res, b"mx.example") == ([], True)


def test_hard_mx_host_is_skipped(srv, res):
    srv.add("mx.example", "MX", "10 nx.example.", "20 nodata.example.",
            "30 b.example.")
    srv.add("nodata.example", "TXT", '"x"')
    srv.add("b.example", "A", "127.0.0.2")
    assert lookup_mx(res, b"mx.example") == ([(ip("127.0.0.2"), 30)], False)
    assert srv.count("nx.example", "A") == 1
    assert srv.count("nodata.example", "A") == 1


def test_every_mx_host_hard_gives_no_address(srv, res):
    srv.add("mx.example", "MX", "10 nx1.example.", "20 nx2.example.")
    assert lookup_mx(res, b"mx.example") == ([], False)
    assert srv.count("mx.example", "A") == 0  # no fallback to the host's A


def test_null_mx(srv, res):
    srv.add("mx.example", "MX", "0 .")
    srv.add("mx.example", "A", "127.0.0.1")
    assert lookup_mx(res, b"mx.example") == ([], False)
    assert srv.count(".", "A") == 1
    assert srv.count("mx.example", "A") == 0


def test_null_mx_recognised_when_asked(srv, res):
    """RFC 7505: the only MX is preference 0 with the root as exchange;
    nothing else is asked (no A for the root, none for the host)."""
    srv.add("mx.example", "MX", "0 .")
    srv.add("mx.example", "A", "127.0.0.1")
    assert mx.lookup_mx(res, b"mx.example", null_mx=True) == mx.NULLMX
    assert srv.count(".", "A") == 0
    assert srv.count("mx.example", "A") == 0


@pytest.mark.parametrize("records", [
    ["10 ."],                          # a preference other than 0
    ["0 .", "10 a.example."],          # mixed with a real MX: not null MX
    ["0 .", "0 ."],                    # two records (duplicates)
    ["0 a.example."],                  # an ordinary exchange
])
def test_not_null_mx(srv, res, records):
    srv.behave("mx.example", "answer", rdtype="MX", answer=[
        "mx.example 60 IN MX " + r for r in records])
    srv.add("a.example", "A", "127.0.0.7")
    found = mx.lookup_mx(res, b"mx.example", null_mx=True)
    assert found != mx.NULLMX
    assert found == mx.lookup_mx(res, b"mx.example")  # as without the rule


def test_big_mx_answer_over_tcp_is_used_whole(srv, res):
    """Deviation 6: no 512-byte cut."""
    names = [f"mx{n:03d}.example" for n in range(200)]
    srv.add("big.example", "MX", *(f"{n} {name}." for n, name in
                                   enumerate(names)))
    for n, name in enumerate(names):
        srv.add(name, "A", f"127.0.{n // 100}.{n % 100 + 1}")
    assert lookup_mx(res, b"big.example") == ([
        (ip(f"127.0.{n // 100}.{n % 100 + 1}"), n) for n in range(200)
    ], False)
    assert srv.count("big.example", "MX", "udp") == 1
    assert srv.count("big.example", "MX", "tcp") == 1


FORTY = [f"127.0.1.{n}" for n in range(1, 41)]


def test_big_a_answer_for_host_over_tcp(srv, res):
    srv.add("big.example", "A", *FORTY)
    assert lookup_mx(res, b"big.example") == (
        [(ip(a), 0) for a in FORTY], False)
    assert srv.count("big.example", "A", "tcp") == 1


def test_big_a_answer_for_mx_host_over_tcp(srv, res):
    srv.add("mx.example", "MX", "10 big.example.", "20 b.example.")
    srv.add("big.example", "A", *FORTY)
    srv.add("b.example", "A", "127.0.0.2")
    assert lookup_mx(res, b"mx.example") == (
        [(ip(a), 10) for a in FORTY] + [(ip("127.0.0.2"), 20)], False)
    assert srv.count("big.example", "A", "tcp") == 1


def test_truncate_mode_retries_over_tcp(srv, res):
    srv.add("mx.example", "MX", "10 a.example.")
    srv.add("a.example", "A", "127.0.0.1")
    srv.behave("mx.example", "truncate")
    assert lookup_mx(res, b"mx.example") == ([(ip("127.0.0.1"), 10)], False)
    assert [q for q in srv.queries if q[0] == "mx.example"] == [
        ("mx.example", "MX", "udp"), ("mx.example", "MX", "tcp")]


@pytest.mark.parametrize("name", [b"a..b", b"x" * 64 + b".example",
                                  b".example"])
def test_names_that_cannot_be_encoded_are_hard_with_no_query(srv, res, name):
    assert lookup_mx(res, name) == HARD
    assert lookup_ip(res, name) == HARD
    assert canonicalise(res, name) == (name, 0)
    assert srv.queries == []


def test_63_byte_label_is_queried(srv, res):
    name = "x" * 63 + ".example"
    srv.add(name, "A", "127.0.0.63")
    assert lookup_mx(res, name.encode()) == ([(ip("127.0.0.63"), 0)], False)
    assert srv.count(name, "MX") == 1


# ---------------------------------------------------------------------------
# The host names kept beside the addresses (the TLS policy's key)

def test_mx_addresses_carry_the_mx_name(srv, res):
    srv.add("mx.example", "MX", "20 b.example.", "10 a.example.")
    srv.add("a.example", "A", "127.0.0.12")
    srv.add("b.example", "A", "127.0.0.21", "127.0.0.22")
    assert mx.lookup_mx(res, b"mx.example") == ([
        (ip("127.0.0.12"), 10, b"a.example"),
        (ip("127.0.0.21"), 20, b"b.example"),
        (ip("127.0.0.22"), 20, b"b.example"),
    ], False)


def test_no_mx_addresses_carry_the_host_name(srv, res):
    srv.add("aonly.example", "A", "127.0.0.9")
    assert mx.lookup_mx(res, b"aonly.example") == (
        [(ip("127.0.0.9"), 0, b"aonly.example")], False)


def test_literals_carry_no_name(srv, res):
    srv.add("mx.example", "MX", "10 127.0.0.7.")
    assert mx.lookup_mx(res, b"[127.0.0.3]") == (
        [(ip("127.0.0.3"), 0, None)], False)
    assert mx.lookup_ip(res, b"[127.0.0.2]") == [(ip("127.0.0.2"), 0, None)]
    # dns_ipplus gives a literal preference 0, even as an MX target.
    assert mx.lookup_mx(res, b"mx.example") == (
        [(ip("127.0.0.7"), 0, None)], False)


def test_relay_addresses_carry_the_relay_name(srv, res):
    srv.add("relay.example", "A", "127.0.0.3")
    assert mx.lookup_ip(res, b"relay.example") == [
        (ip("127.0.0.3"), 0, b"relay.example")]


# lookup_ip: the relay

def test_lookup_ip_asks_a_only(srv, res):
    srv.add("relay.example", "MX", "10 a.example.")
    srv.add("relay.example", "A", "127.0.0.3", "127.0.0.2", "127.0.0.3")
    srv.add("a.example", "A", "127.0.0.1")
    assert lookup_ip(res, b"relay.example") == [(ip("127.0.0.3"), 0),
                                                (ip("127.0.0.2"), 0)]
    assert [q[:2] for q in srv.queries] == [("relay.example", "A")]


def test_lookup_ip_literal_needs_no_dns(srv, res):
    assert lookup_ip(res, b"[127.0.0.2]") == [(ip("127.0.0.2"), 0)]
    assert lookup_ip(res, b"010.0.0.257") == [(ip("10.0.0.1"), 0)]
    assert srv.queries == []


def test_lookup_ip_hard_and_soft(srv, res):
    srv.add("nodata.example", "MX", "10 a.example.")
    srv.behave("soft.example", "rcode", rcode="REFUSED")
    srv.behave("formerr.example", "rcode", rcode="FORMERR")
    srv.behave("broken.example", "raw", fn=a_then_broken)
    assert lookup_ip(res, b"nx.example") == HARD
    assert lookup_ip(res, b"nodata.example") == HARD
    assert lookup_ip(res, b"formerr.example") == HARD
    assert lookup_ip(res, b"soft.example") == SOFT
    assert lookup_ip(res, b"broken.example") == SOFT
    assert srv.count(None, "MX") == 0


def test_lookup_ip_big_answer(srv, res):
    srv.add("relay.example", "A", *FORTY)
    assert lookup_ip(res, b"relay.example") == [(ip(a), 0) for a in FORTY]


def test_lookup_ip_empty_name_queries_the_root(srv, res):
    assert lookup_ip(res, b"") == HARD
    assert [q[:2] for q in srv.queries] == [(".", "A")]


# ---------------------------------------------------------------------------
# 7.3 canonicalise (deviation 6: CNAME queries)

@pytest.fixture
def cnames(srv):
    srv.add("cname.example", "CNAME", "aonly.example.")
    srv.add("aonly.example", "A", "127.0.0.2")
    srv.add("C1.example", "CNAME", "C2.Example.")
    srv.add("C2.Example", "CNAME", "c3.example.")
    srv.add("c3.example", "CNAME", "final.example.")
    srv.add("final.example", "A", "127.0.0.2")
    srv.add("cnx.example", "CNAME", "nx.example.")
    srv.add("la.example", "CNAME", "lb.example.")
    srv.add("lb.example", "CNAME", "la.example.")
    for n in range(12):
        srv.add(f"h{n}.example", "CNAME", f"h{n + 1}.example.")
    srv.add("h12.example", "A", "127.0.0.12")
    srv.add("rfc.example", "CNAME", "aonly.example.")
    srv.behave("rfc.example", "answer", rdtype="ANY",
               answer=['rfc.example 60 IN HINFO "RFC8482" ""'])
    srv.behave("servfail.example", "rcode", rcode="SERVFAIL")
    return srv


@pytest.mark.parametrize("domain, queries, result, rounds", [
    (b"cname.example", 2, b"aonly.example", 1),
    (b"C1.example", 4, b"final.example", 3),
    (b"aonly.example", 1, b"aonly.example", 0),
    (b"nx.example", 1, b"nx.example", 0),
    (b"cnx.example", 2, b"nx.example", 1),
    (b"aonly.example.", 1, b"aonly.example", 1),
    (b"aonly.example..", 1, b"aonly.example", 2),
    (b"[1.2.3.4]", 0, b"[1.2.3.4]", 0),
    (b"", 0, b"", 0),
    (b"[1.2.3.4]x", 1, b"[1.2.3.4]x", 0),
    (b"a..b", 0, b"a..b", 0),
    (b"la.example", 10, b"la.example", None),
    (b"h0.example", 10, b"h10.example", None),
    (b"h3.example", 10, b"h12.example", 9),
    (b"rfc.example", 2, b"aonly.example", 1),
    (b"cname.example.", 2, b"aonly.example", 2),
    (b".........", 0, b"", 9),
    (b"..........", 0, b"", None),
])
def test_canonicalise_table(cnames, res, domain, queries, result, rounds):
    assert canonicalise(res, domain) == (result, rounds)
    assert cnames.count(None, "CNAME") == queries
    assert len(cnames.queries) == queries  # CNAME only: no ANY, MX or A


def test_canonicalise_keeps_the_answers_case(srv, res):
    srv.add("C1.example", "CNAME", "C2.Example.")
    srv.add("C2.Example", "TXT", '"end"')
    assert canonicalise(res, b"C1.example") == (b"C2.Example", 1)
    assert canonicalise(res, b"c1.EXAMPLE") == (b"C2.Example", 1)
    assert [q[0] for q in srv.queries] == ["c1.example", "c2.example"] * 2


def test_canonicalise_takes_the_first_cname_whatever_its_owner(srv, res):
    srv.behave("x.example", "answer", rdtype="CNAME", answer=[
        "x.example 60 IN A 127.0.0.1",
        "other.example 60 IN CNAME T1.example.",
        "x.example 60 IN CNAME t2.example."])
    assert canonicalise(res, b"x.example") == (b"T1.example", 1)


def test_canonicalise_no_cname_in_answer(srv, res):
    srv.behave("x.example", "answer", rdtype="CNAME",
               answer=["x.example 60 IN A 127.0.0.1"])
    assert canonicalise(res, b"x.example") == (b"x.example", 0)


@pytest.mark.parametrize("rcode, expected", [
    ("SERVFAIL", SOFT), ("REFUSED", SOFT), ("NOTIMP", SOFT),
    ("NXDOMAIN", (b"x.example", 0)), ("FORMERR", (b"x.example", 0)),
    ("YXDOMAIN", (b"x.example", 0)),
])
def test_canonicalise_rcodes(srv, res, rcode, expected):
    srv.behave("x.example", "rcode", rcode=rcode)
    assert canonicalise(res, b"x.example") == expected


def test_canonicalise_soft_later_in_the_chain(cnames, res):
    cnames.add("s.example", "CNAME", "servfail.example.")
    assert canonicalise(res, b"s.example") == SOFT


@pytest.mark.parametrize("fn", [bad_compression, cut_short,
                                ancount_too_large])
def test_canonicalise_malformed_is_soft(srv, res, fn):
    srv.behave("x.example", "raw", fn=fn)
    assert canonicalise(res, b"x.example") == SOFT


def test_canonicalise_big_answer_over_tcp(srv, res):
    answer = [f"x.example 60 IN A 127.0.1.{n}" for n in range(1, 41)]
    answer.append("x.example 60 IN CNAME target.example.")
    srv.behave("x.example", "answer", rdtype="CNAME", answer=answer)
    assert canonicalise(res, b"x.example") == (b"target.example", 1)
    assert srv.count("x.example", "CNAME", "tcp") == 1


def test_canonicalise_does_not_cache(cnames, res):
    for _ in range(3):
        assert canonicalise(res, b"cname.example") == (b"aonly.example", 1)
    assert cnames.count("cname.example", "CNAME") == 3


# ---------------------------------------------------------------------------
# Sections 8 and 9 through deliver()

NOMX = b"DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n\0"
DNS_SOFT = b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n\0"
CANON_SOFT = b"ZCNAME lookup failed temporarily. (#4.4.3)\n\0"
AMBIGMX = (b"DSorry. Although I'm listed as a best-preference MX or A for "
           b"that host,\nit isn't in my control/locals file, so I don't treat"
           b" it as local. (#5.4.6)\n\0")
CRLF = b"DSorry, I won't send an address with a CR or LF in it. (#5.1.3)\n\0"
NOCONN = (b"ZSorry, I wasn't able to establish an SMTP connection. "
          b"(#4.4.1)\n\0")
# A partial final line: should anything on loopback port 25 accept DATA, the
# message is refused before its end (D #5.6.2), so nothing is delivered.
MESSAGE = b"x"


def named(host):
    return (b"DSorry, I couldn't find any host named " + host +
            b". (#5.1.2)\n\0")


@pytest.fixture
def home(tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    (control / "me").write_bytes(b"me.example\n")
    (control / "noesmtp").write_bytes(b"")  # 1.06 bytes are pinned
    (control / "timeoutconnect").write_bytes(b"2\n")
    (control / "timeoutremote").write_bytes(b"2\n")
    return tmp_path


@pytest.fixture
def run(home, res):
    def run(host, recipients=(b"c@[1.2.3.4]",), sender=b"s@example.org"):
        return deliver(host, sender, list(recipients), MESSAGE,
                       home=str(home), resolver=res).render()
    return run


def test_deliver_soft_mx_is_4_1_2(srv, run):
    srv.behave("mx.example", "rcode", rdtype="MX", rcode="SERVFAIL")
    assert run(b"mx.example") == DNS_SOFT


def test_deliver_soft_mx_path_without_addresses_is_4_1_2(srv, run):
    srv.add("mx.example", "MX", "10 soft.example.", "20 nx.example.")
    srv.behave("soft.example", "rcode", rcode="SERVFAIL")
    assert run(b"mx.example") == DNS_SOFT


def test_deliver_soft_a_fallback_is_4_1_2(srv, run):
    srv.add("mx.example", "TXT", '"x"')
    srv.behave("mx.example", "raw", rdtype="A", fn=a_then_broken)
    assert run(b"mx.example") == DNS_SOFT


@pytest.mark.parametrize("host, shown", [
    (b"nx.example", b"nx.example"),
    (b"nx.example.", b"nx.example."),  # "...named nx.example.. (#5.1.2)"
    (b"n x\x7f\xc3\xa9.example", b"n?x???.example"),
    (b"1.2.3", b"1.2.3"),
    (b"a..b", b"a..b"),
])
def test_deliver_hard_is_5_1_2_with_outsafe_host(srv, run, host, shown):
    assert run(host) == named(shown)
    if host == b"nx.example.":
        assert run(host).endswith(b" named nx.example.. (#5.1.2)\n\0")
    assert srv.count(None, "CNAME") == 0  # c@[1.2.3.4] needs no lookup


def test_deliver_hard_host_with_cr_is_not_refused(srv, run):
    """Deviation 4 checks addresses only: host never reaches the wire."""
    assert run(b"nx\r.example") == named(b"nx?.example")


def test_deliver_null_mx_is_5_4_4(srv, run):
    srv.add("mx.example", "MX", "0 .")
    assert run(b"mx.example") == NOMX


def test_deliver_null_mx_bounces_in_the_esmtp_profile(srv, run, home):
    (home / "control" / "noesmtp").unlink()
    srv.add("mx.example", "MX", "0 .")
    assert run(b"mx.example") == (b"DSorry, mx.example does not accept mail "
                                  b"(null MX). (#5.1.10)\n\0")
    assert [q[:2] for q in srv.queries] == [("mx.example", "MX")]


def test_deliver_every_mx_host_hard_is_5_4_4(srv, run):
    srv.add("mx.example", "MX", "10 nx1.example.", "20 nx2.example.")
    assert run(b"mx.example") == NOMX


def test_deliver_cname_to_name_without_a_is_5_4_4(srv, run):
    srv.add("cname.example", "CNAME", "noa.example.")
    srv.add("noa.example", "TXT", '"x"')
    assert run(b"cname.example") == NOMX


def test_deliver_cname_lookup_soft_is_4_4_3(cnames, run):
    assert run(b"mx.example", [b"c@cname.example",
                               b"d@servfail.example"]) == CANON_SOFT
    assert [q[:2] for q in cnames.queries] == [
        ("cname.example", "CNAME"), ("aonly.example", "CNAME"),
        ("servfail.example", "CNAME")]


@pytest.mark.parametrize("host", [b"[127.0.0.1]", b"127.0.0.1",
                                  b"127.0.0.257", b"[0.0.0.0]", b"0.0.0.0"])
def test_deliver_literal_me_is_5_4_6(srv, run, host):
    assert run(host) == AMBIGMX
    assert srv.queries == []


def test_deliver_other_loopback_literal_is_tried(srv, run):
    """[127.0.0.2] is not this host's address (unless assigned): tried."""
    if ip("127.0.0.2") in ipme():
        pytest.skip("127.0.0.2 is assigned to this host")
    out = run(b"[127.0.0.2]")
    assert out not in (AMBIGMX, DNS_SOFT, NOMX)
    assert out[:1] in b"ZDK"
    assert srv.queries == []


def test_deliver_mx_10_me_20_other_is_5_4_6(srv, run):
    srv.add("mx.example", "MX", "20 other.example.", "10 me.example.")
    srv.add("me.example", "A", "127.0.0.1")
    srv.add("other.example", "A", "127.0.0.2")
    assert run(b"mx.example") == AMBIGMX


def test_deliver_literal_mx_me_has_preference_zero_so_5_4_6(srv, run):
    srv.add("mx.example", "MX", "10 other.example.", "50 127.0.0.1.")
    srv.add("other.example", "A", "127.0.0.2")
    assert run(b"mx.example") == AMBIGMX


def test_deliver_me_and_a_non_alias_is_5_4_6(cnames, run):
    assert run(b"127.0.0.1", [b"c@nx.example"]) == AMBIGMX
    assert run(b"127.0.0.1", [b"c@cname.example",
                              b"d@aonly.example"]) == AMBIGMX


@pytest.mark.parametrize("recipients", [
    [b"c@cname.example"], [b"c@nx.example."], [b"c@cnx.example"],
    [b"cnameexample"], [b"c@cname.example", b"cnameexample"],
])
def test_deliver_all_aliases_try_me(cnames, run, recipients):
    """127.0.0.1 is tried: a connection outcome, whatever is on port 25."""
    out = run(b"127.0.0.1", recipients)
    assert out != AMBIGMX
    assert out[:1] in b"ZDK"
    assert not out.startswith(b"DSorry. Although")
    assert cnames.count(None, "MX") == 0


def test_deliver_alias_quirk_needs_no_lookup(srv, run):
    out = run(b"127.0.0.1", [b"cnameexample"])
    assert out != AMBIGMX
    assert srv.queries == []


def test_deliver_refused_connection_to_mx_is_4_4_1(srv, run):
    # Nothing listens on 127.0.0.X:25 for an address picked at random; but
    # the test only relies on "not D #5.4.6 and not a DNS report".
    srv.add("mx.example", "MX", "10 soft.example.", "20 other.example.")
    srv.behave("soft.example", "rcode", rcode="SERVFAIL")
    srv.add("other.example", "A", "127.0.0.2")
    out = run(b"mx.example")
    assert out not in (AMBIGMX, DNS_SOFT, NOMX)
    assert out[:1] in b"ZDK"


@pytest.mark.parametrize("sender, recipients", [
    (b"s\r@example.org", [b"c@cname.example"]),
    (b"s@example.org", [b"c@cname.example", b"d\n@x.example"]),
    (b"s@example.org", [b"d@x.example\r"]),
    (b"\n", [b"c@cname.example"]),
])
def test_deliver_cr_or_lf_refused_before_any_dns(srv, home, res, sender,
                                                 recipients):
    srv.add("mx.example", "MX", "10 a.example.")
    out = deliver(b"mx.example", sender, recipients, MESSAGE, home=str(home),
                  resolver=res).render()
    assert out == CRLF
    assert srv.queries == []


def test_deliver_relay_name_is_looked_up_with_a_only(srv, home, run):
    (home / "control" / "smtproutes").write_bytes(
        b"mx.example:relay.example\n")
    srv.add("relay.example", "MX", "10 a.example.")
    srv.add("a.example", "A", "127.0.0.2")
    srv.add("mx.example", "MX", "10 a.example.")
    srv.add("cname.example", "CNAME", "aonly.example.")
    out = run(b"mx.example", [b"c@cname.example"])
    assert out == named(b"relay.example")
    assert [q[:2] for q in srv.queries] == [("relay.example", "A")]


def test_deliver_relay_soft_is_4_1_2(srv, home, run):
    (home / "control" / "smtproutes").write_bytes(b":relay.example:2525\n")
    srv.behave("relay.example", "rcode", rcode="SERVFAIL")
    assert run(b"mx.example") == DNS_SOFT
    assert [q[:2] for q in srv.queries] == [("relay.example", "A")]


def test_deliver_empty_relay_with_port_queries_the_root(srv, home, run):
    (home / "control" / "smtproutes").write_bytes(b"x::2525\n")
    assert run(b"x") == named(b"")
    assert named(b"") == (b"DSorry, I couldn't find any host named . "
                          b"(#5.1.2)\n\0")
    assert [q[:2] for q in srv.queries] == [(".", "A")]


def test_deliver_empty_route_value_uses_mx_and_cnames(cnames, home, run):
    (home / "control" / "smtproutes").write_bytes(b"mx.example:\n:relay\n")
    assert run(b"mx.example", [b"c@cname.example"]) == named(b"mx.example")
    assert cnames.count("cname.example", "CNAME") == 1
    assert cnames.count("mx.example", "MX") == 1
    assert cnames.count("relay", "A") == 0


# ---------------------------------------------------------------------------
# ipme (section 9, deviation 7)

def _ip_addr_show_up():
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "up"],
                         capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        words = line.split()
        if "inet" in words:
            found.add(ip(words[words.index("inet") + 1].split("/")[0]))
    return found


def test_ipme_has_the_fixed_addresses():
    me = ipme()
    assert ip("0.0.0.0") in me
    assert ip("127.0.0.1") in me
    assert all(isinstance(a, bytes) and len(a) == 4 for a in me)


@pytest.mark.skipif(shutil.which("ip") is None,
                    reason="the ip(8) command is not installed")
def test_ipme_is_every_address_of_up_interfaces():
    listed = _ip_addr_show_up()
    me = ipme()
    assert listed <= me
    assert me == listed | {ip("0.0.0.0")}
