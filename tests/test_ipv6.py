"""IPv6 in the ESMTP profile, in process (README, "IPv6"; issue 12).

Literals and their RFC 5952 text, the family order of
control/addresspreference, A+AAAA lookups and their SOFT/HARD classes
against the fake DNS server, bracketed smtproutes relays, ipme against
/proc/net/if_inet6, and deliveries to ``::1`` on a port the OS chose.
The network-namespace tests (tests/test_ipv6_netns.py) cover MX sets with
ULA addresses, black holes and tcpto6 through the installed command.
"""

import ipaddress
import os
import socket
import threading

import pytest

from dnsserver import DNSServer
from qmailremote import addresses, mx
from qmailremote.delivery import deliver
from qmailremote.mx import HARD, SOFT, Resolver
from qmailremote.report import Failure
from qmailremote.routes import Route, build_table, find_route, parse_route
from qmailremote.session import connect


def v6(text):
    return socket.inet_pton(socket.AF_INET6, text)


def v4(text):
    return socket.inet_aton(text)


def _ipv6_unavailable():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"no IPv6 loopback here: {exc}"
    return None


needs_ipv6 = pytest.mark.skipif(_ipv6_unavailable() is not None,
                                reason=str(_ipv6_unavailable()))


# ---------------------------------------------------------------------------
# Literals

@pytest.mark.parametrize("text, bare, address", [
    (b"[IPv6:2001:db8::1]", False, "2001:db8::1"),
    (b"[ipv6:2001:DB8::1]", False, "2001:db8::1"),
    (b"[IPV6:2001:db8:0:0:0:0:0:1]", False, "2001:db8::1"),
    (b"[2001:db8::1]", False, "2001:db8::1"),
    (b"[IPv6:::1]", False, "::1"),
    (b"[::]", False, "::"),
    (b"[IPv6:::1.2.3.4]", False, "::102:304"),       # IPv4-compatible
    (b"2001:db8::1", True, "2001:db8::1"),
    (b"[IPv6:fe80::1]", True, "fe80::1"),
])
def test_ipv6_literal(text, bare, address):
    assert addresses.ipv6_literal(text, bare) == v6(address)


@pytest.mark.parametrize("text", [
    b"[IPv6:::ffff:1.2.3.4]", b"[::ffff:1.2.3.4]", b"::ffff:1.2.3.4"])
def test_ipv4_mapped_literal_is_the_ipv4_address(text):
    assert addresses.ipv6_literal(text, bare=True) == v4("1.2.3.4")


@pytest.mark.parametrize("text, bare", [
    (b"2001:db8::1", False),          # bare only where asked for
    (b"[IPv6:1.2.3.4]", True),        # not an IPv6 address
    (b"[1.2.3.4]", True),             # IPv4's literal, not this one's
    (b"[IPv6:]", True), (b"[]", True), (b"", True), (b"[", True),
    (b"[IPv6:2001:db8::1", True), (b"IPv6:2001:db8::1]", True),
    (b"[IPv6:2001:db8::1] ", True), (b" [IPv6:2001:db8::1]", True),
    (b"[IPv6:fe80::1%lo]", True),     # no zone index
    (b"[IPv6:2001:db8::1::2]", True), (b"[IPv6:12345::]", True),
    (b"[IPv7:2001:db8::1]", True), (b"[IPv6: 2001:db8::1]", True),
    (b"[IPv6:2001:db8::\xe9]", True), (b"[IPv6:2001:db8::1\0]", True),
    (b"example.com", True), (b"a:b", True),
])
def test_not_ipv6_literal(text, bare):
    assert addresses.ipv6_literal(text, bare) is None


def test_ip_literal_of_1_06_is_unchanged():
    """mx.ip_literal is 1.06's ip_scan: IPv6 literals are not its."""
    assert mx.ip_literal(b"[IPv6:::1]") is None
    assert mx.ip_literal(b"[::1]") is None
    assert mx.ip_literal(b"[1.2.3.4]") == v4("1.2.3.4")


@pytest.mark.parametrize("address, shown", [
    ("2001:db8:0:0:0:0:0:1", b"2001:db8::1"),
    ("2001:DB8::1", b"2001:db8::1"),
    ("2001:db8:0:0:1:0:0:1", b"2001:db8::1:0:0:1"),   # first longest run
    ("2001:0:0:1:0:0:0:1", b"2001:0:0:1::1"),         # longest run wins
    ("2001:db8:0:1:1:1:1:1", b"2001:db8:0:1:1:1:1:1"),  # no :: for one 0
    ("0:0:0:0:0:0:0:0", b"::"),
    ("0:0:0:0:0:0:0:1", b"::1"),
    ("fe80:0:0:0:0:0:0:1", b"fe80::1"),
    ("2001:0db8:00aa:0000:0000:0000:0000:0001", b"2001:db8:aa::1"),
    ("::30bb:0", b"::30bb:0"),                        # not ::48.187.0.0
    ("::1:0:0:0", b"::1:0:0:0"),
    ("1:0:0:2:0:0:0:0", b"1:0:0:2::"),
    ("::ffff:1.2.3.4", b"::ffff:1.2.3.4"),
])
def test_text_is_rfc_5952(address, shown):
    assert addresses.text(v6(address)) == shown
    assert mx.ip_text(v6(address)) == shown


def test_text_agrees_with_ipaddress_on_random_addresses():
    """ipaddress implements RFC 5952 for all but IPv4-mapped addresses;
    IPv4-compatible ones (first 96 bits zero) are drawn often, as glibc's
    inet_ntop prints them differently."""
    import random
    rng = random.Random(5952)
    for _ in range(2000):
        groups = [rng.choice([0, 0, 0, rng.randrange(1 << 16)])
                  for _ in range(8)]
        if rng.random() < 0.2:
            groups[:6] = [0] * 6
        raw = b"".join(g.to_bytes(2, "big") for g in groups)
        if raw[:12] == b"\0" * 10 + b"\xff\xff":
            continue
        expected = ipaddress.IPv6Address(raw).compressed.encode()
        assert addresses.text(raw) == expected


def test_text_of_ipv4():
    assert addresses.text(v4("10.0.0.1")) == b"10.0.0.1"


# ---------------------------------------------------------------------------
# control/addresspreference and the family order

A4, B4, C4 = v4("10.0.0.1"), v4("10.0.0.2"), v4("10.0.0.3")
A6, B6, C6 = v6("fd00::1"), v6("fd00::2"), v6("fd00::3")


def entries(*pairs):
    return [(ip, pref, b"n") for ip, pref in pairs]


@pytest.mark.parametrize("preference, expected", [
    (b"ipv4", [A4, B4, A6, B6, C4, C6]),
    (b"ipv6", [A6, B6, A4, B4, C6, C4]),
    (b"any", [A6, A4, B6, B4, C6, C4]),
])
def test_order_within_each_preference(preference, expected):
    found = entries((A6, 10), (A4, 10), (B6, 10), (B4, 10), (C6, 20),
                    (C4, 20))
    ordered = addresses.order(found, preference)
    assert [ip for ip, _, _ in ordered] == expected
    assert sorted(ordered) == sorted(found)


def test_order_any_with_unequal_families():
    found = entries((A4, 5), (B4, 5), (C4, 5), (A6, 5))
    assert [ip for ip, _, _ in addresses.order(found, b"any")] == \
        [A6, A4, B4, C4]


def test_order_keeps_runs_apart():
    """A literal MX exchange gets preference 0 wherever it stands: the
    runs of equal preference are reordered one by one, not merged."""
    found = entries((A6, 10), (A4, 0), (B6, 10), (B4, 10))
    assert [ip for ip, _, _ in addresses.order(found, b"ipv4")] == \
        [A6, A4, B4, B6]


def test_order_of_one_family_is_unchanged():
    found = entries((C4, 10), (A4, 10), (B4, 20))
    for preference in addresses.PREFERENCES:
        assert addresses.order(found, preference) == found


@pytest.fixture
def home(tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    (control / "me").write_bytes(b"me.example\n")
    (control / "timeoutconnect").write_bytes(b"2\n")
    (control / "timeoutremote").write_bytes(b"5\n")
    return tmp_path


def home_fd(home):
    return os.open(str(home), os.O_PATH | os.O_DIRECTORY)


@pytest.mark.parametrize("content, expected", [
    (None, b"ipv4"), (b"", b"ipv4"), (b"\n", b"ipv4"),
    (b"ipv4\n", b"ipv4"), (b"ipv6\n", b"ipv6"), (b"any\n", b"any"),
    (b"IPv6\n", b"ipv6"), (b" any \t\n", b"any"), (b"any\nipv4\n", b"any"),
])
def test_read_preference(home, content, expected):
    if content is not None:
        (home / "control" / "addresspreference").write_bytes(content)
    fd = home_fd(home)
    try:
        assert addresses.read_preference(fd) == expected
    finally:
        os.close(fd)


@pytest.mark.parametrize("content", [b"both\n", b"ipv46\n", b"ip v4\n",
                                     b"\0any\n", b"ipv4,ipv6\n"])
def test_bad_preference_is_a_clear_z(home, content):
    (home / "control" / "addresspreference").write_bytes(content)
    fd = home_fd(home)
    try:
        with pytest.raises(Failure) as caught:
            addresses.read_preference(fd)
    finally:
        os.close(fd)
    assert caught.value.report.render() == (
        b"ZSorry, control/addresspreference must say ipv4, ipv6 or any. "
        b"(#4.3.0)\n\0")


# ---------------------------------------------------------------------------
# A and AAAA lookups

@pytest.fixture
def srv():
    with DNSServer() as server:
        yield server
    assert server.errors == []


@pytest.fixture
def res(srv):
    return Resolver([(srv.host, srv.port)], timeout=1, attempts=1)


def ips(found):
    return [(ip, pref, name) for ip, pref, name in found]


def test_mx_hosts_get_a_then_aaaa(srv, res):
    srv.add("d.example", "MX", "10 a.example.", "20 b.example.")
    srv.add("a.example", "A", "10.0.0.1")
    srv.add("a.example", "AAAA", "fd00::1", "fd00::2")
    srv.add("b.example", "AAAA", "fd00::3")
    found, soft = mx.lookup_mx(res, b"d.example", ipv6=True)
    assert not soft
    assert found == [(A4, 10, b"a.example"), (A6, 10, b"a.example"),
                     (B6, 10, b"a.example"), (C6, 20, b"b.example")]
    assert [q[:2] for q in srv.queries] == [
        ("d.example", "MX"), ("a.example", "A"), ("a.example", "AAAA"),
        ("b.example", "A"), ("b.example", "AAAA")]


def test_without_ipv6_no_aaaa_is_asked(srv, res):
    srv.add("d.example", "MX", "10 a.example.")
    srv.add("a.example", "AAAA", "fd00::1")
    assert mx.lookup_mx(res, b"d.example") == ([], False)
    assert ("a.example", "AAAA") not in [q[:2] for q in srv.queries]


def test_aaaa_mapped_address_is_ipv4(srv, res):
    srv.add("a.example", "AAAA", "::ffff:10.0.0.1")
    assert mx.lookup_ip(res, b"a.example", ipv6=True) == [(A4, 0,
                                                           b"a.example")]


def test_no_mx_falls_back_to_a_and_aaaa(srv, res):
    srv.add("d.example", "AAAA", "fd00::1")
    assert mx.lookup_mx(res, b"d.example", ipv6=True) == (
        [(A6, 0, b"d.example")], False)


@pytest.mark.parametrize("a, aaaa, expected", [
    ("nx", "nx", HARD),
    ("nodata", "nodata", HARD),
    ("ok", "nodata", [A4]),
    ("nodata", "ok", [A6]),
    ("ok", "ok", [A4, A6]),
    ("SERVFAIL", "ok", SOFT),       # as a soft A lookup in 1.06
    ("ok", "SERVFAIL", SOFT),
    ("SERVFAIL", "nodata", SOFT),
    ("nodata", "REFUSED", SOFT),
])
def test_relay_lookup_classes(srv, res, a, aaaa, expected):
    name = "r.example"
    if a == "ok":
        srv.add(name, "A", "10.0.0.1")
    if aaaa == "ok":
        srv.add(name, "AAAA", "fd00::1")
    if "nodata" in (a, aaaa):
        srv.add(name, "TXT", '"x"')
    for rdtype, how in (("A", a), ("AAAA", aaaa)):
        if how.isupper():
            srv.behave(name, "rcode", rdtype=rdtype, rcode=how)
    found = mx.lookup_ip(res, name.encode(), ipv6=True)
    if isinstance(expected, list):
        assert [ip for ip, _, _ in found] == expected
    else:
        assert found == expected


def test_soft_aaaa_of_one_mx_host_keeps_the_others(srv, res):
    srv.add("d.example", "MX", "10 a.example.", "20 b.example.")
    srv.add("a.example", "A", "10.0.0.1")
    srv.behave("a.example", "rcode", rdtype="AAAA", rcode="SERVFAIL")
    srv.add("b.example", "AAAA", "fd00::3")
    found, soft = mx.lookup_mx(res, b"d.example", ipv6=True)
    assert soft
    assert [ip for ip, _, _ in found] == [A4, C6]


def test_every_mx_host_soft_or_hard_without_addresses(srv, res):
    srv.add("d.example", "MX", "10 a.example.", "20 b.example.")
    srv.behave("a.example", "rcode", rdtype="AAAA", rcode="SERVFAIL")
    assert mx.lookup_mx(res, b"d.example", ipv6=True) == ([], True)


def test_short_aaaa_rdata_is_soft(srv, res):
    from dnsserver import bad_rdlength
    import functools
    srv.add("r.example", "A", "10.0.0.1")
    srv.behave("r.example", "raw", rdtype="AAAA",
               fn=functools.partial(bad_rdlength, rdtype="AAAA",
                                    rdata=b"\xfd\0" * 4))
    assert mx.lookup_ip(res, b"r.example", ipv6=True) == SOFT


def test_ipv6_literal_host_needs_no_dns(srv, res):
    for host in (b"[IPv6:fd00::1]", b"[fd00::1]", b"fd00::1"):
        assert mx.lookup_mx(res, host, ipv6=True) == ([(A6, 0, None)],
                                                      False)
    assert srv.queries == []


def test_ipv6_literal_mx_exchange(srv, res):
    srv.add("d.example", "MX", "10 [IPv6:fd00::1].")
    found, _ = mx.lookup_mx(res, b"d.example", ipv6=True)
    assert found == [(A6, 0, None)]


def test_ipv6_literal_is_a_name_without_ipv6(srv, res):
    assert mx.lookup_mx(res, b"[IPv6:fd00::1]") == HARD
    assert ("[ipv6:fd00::1]", "MX") in [q[:2] for q in srv.queries]


# ---------------------------------------------------------------------------
# Bracketed relays in smtproutes (ESMTP profile)

@pytest.mark.parametrize("value, relay, port", [
    (b"[IPv6:fd00::1]:2525", b"[IPv6:fd00::1]", 2525),
    (b"[IPv6:fd00::1]", b"[IPv6:fd00::1]", 25),
    (b"[fd00::1]:587", b"[fd00::1]", 587),
    (b"[fd00::1]:", b"[fd00::1]", 0),           # scan_ulong of nothing
    (b"[1.2.3.4]:2525", b"[1.2.3.4]", 2525),
    (b"relay.example:2525", b"relay.example", 2525),
    (b"[fd00::1]x", b"[fd00", 0),               # not ']' then ':': 1.06
    (b"[fd00::1", b"[fd00", 0),
    (b"[1.2.3.4]x:25", b"[1.2.3.4]x", 25),
    (b"[fd00::1]:99999", b"[fd00::1]", 99999 % 65536),
])
def test_bracketed_relay(value, relay, port):
    route = parse_route(value, brackets=True)
    assert (route.relay, route.port) == (relay, port)


@pytest.mark.parametrize("value, relay, port", [
    (b"[IPv6:fd00::1]:2525", b"[IPv6", 0),      # 1.06: first ':' ends it
    (b"[fd00::1]:587", b"[fd00", 0),
    (b"[1.2.3.4]:2525", b"[1.2.3.4]", 2525),
])
def test_noesmtp_relay_is_1_06s(value, relay, port):
    route = parse_route(value)
    assert (route.relay, route.port) == (relay, port)


@pytest.mark.parametrize("value, port", [
    (b"[IPv6:fd00::1]:587|user|pa:ss|w", 587),       # sagredo
    (b"[IPv6:fd00::1];587|user|pa:ss|w", 587),       # s/qmail
    (b"[IPv6:fd00::1]:587 user pa:ss|w", 587),       # indimail
    (b"[IPv6:fd00::1] user pa:ss|w", 25),
])
def test_bracketed_relay_with_credentials(value, port):
    route = parse_route(value, brackets=True)
    assert (route.relay, route.port, route.user) == (b"[IPv6:fd00::1]", port,
                                                     b"user")
    assert route.password == b"pa:ss|w"


def test_find_route_brackets():
    table = build_table([b"d.example:[IPv6:fd00::1]:2525"])
    route = find_route(table, b"d.example", brackets=True)
    assert isinstance(route, Route)
    assert (route.relay, route.port) == (b"[IPv6:fd00::1]", 2525)
    assert find_route(table, b"d.example").relay == b"[IPv6"


# ---------------------------------------------------------------------------
# ipme

def if_inet6():
    """Every (address, interface index) the kernel lists."""
    try:
        with open("/proc/net/if_inet6") as f:
            lines = f.read().split("\n")
    except OSError:
        return None
    out = set()
    for line in lines:
        if line.strip():
            fields = line.split()
            out.add((bytes.fromhex(fields[0]), int(fields[1], 16)))
    return out


def up_indexes():
    up = set()
    for index, name in socket.if_nameindex():
        with open(f"/sys/class/net/{name}/flags") as f:
            if int(f.read(), 16) & 1:
                up.add(index)
    return up


def test_ipme_has_every_ipv6_address_of_every_interface_that_is_up():
    listed = if_inet6()
    if listed is None:
        pytest.skip("no /proc/net/if_inet6: IPv6 is off in this kernel")
    up = up_indexes()
    me = mx.ipme(ipv6=True)
    expected = {addr for addr, index in listed if index in up}
    assert {a for a in me if len(a) == 16} == expected | {b"\0" * 16}
    assert mx.ipme() | expected | {b"\0" * 16} == me


def test_ipme_without_ipv6_is_ipv4_only():
    assert all(len(a) == 4 for a in mx.ipme())


# ---------------------------------------------------------------------------
# Connecting and delivering over ::1


class OneShotSmtp:
    """Accepts one connection on ::1, speaks a fixed ESMTP dialogue and
    keeps what it read."""

    def __init__(self):
        self.sock = socket.create_server(("::1", 0), family=socket.AF_INET6)
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self.peer = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, self.peer = self.sock.accept()
        except OSError:  # closed by close() before a client came
            return
        try:
            self._session(conn)
        except OSError:  # the client hung up
            pass

    def _session(self, conn):
        with conn, conn.makefile("rb") as f:
            conn.sendall(b"220 v6 ESMTP\r\n")
            in_data = False
            for line in f:
                self.received += line
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        conn.sendall(b"250 ok v6\r\n")
                    continue
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-v6\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    in_data = True
                    conn.sendall(b"354 go\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")

    def close(self):
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def server():
    s = OneShotSmtp()
    yield s
    s.close()


@needs_ipv6
def test_connect_ipv6(server):
    sock, timed_out = connect(v6("::1"), server.port, 5)
    assert timed_out is None and sock is not None
    assert sock.family == socket.AF_INET6
    sock.close()


@needs_ipv6
def test_connect_ipv6_refused_is_not_a_timeout():
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as s:
        port = s.getsockname()[1]
    assert connect(v6("::1"), port, 5) == (None, False)


@needs_ipv6
@pytest.mark.parametrize("relay", [b"[IPv6:::1]", b"[::1]"])
def test_deliver_to_ipv6_literal_relay(home, server, relay):
    (home / "control" / "smtproutes").write_bytes(
        b"d.example:" + relay + b":%d\n" % server.port)
    result = deliver(b"d.example", b"s@example.org", [b"r@d.example"],
                     b"Subject: x\n\nhello\n", home=str(home),
                     resolver=Resolver([("127.0.0.1", 9)], timeout=1,
                                       attempts=1))
    assert result.render() == (b"r\0K::1 accepted message.\n"
                               b"Remote host said: 250 ok v6\n\0")
    assert b"\r\nSubject: x\r\n\r\nhello\r\n.\r\n" in server.received
    assert server.received.startswith(b"EHLO me.example\r\n")


@needs_ipv6
def test_ipv6_literal_relay_under_noesmtp_is_1_06s(home):
    """1.06 reads [IPv6 as the relay: a name, asked for, not found."""
    (home / "control" / "noesmtp").write_bytes(b"")
    (home / "control" / "smtproutes").write_bytes(
        b"d.example:[IPv6:::1]:25\n")
    with DNSServer() as srv:
        result = deliver(b"d.example", b"s@example.org", [b"r@d.example"],
                         b"x\n", home=str(home),
                         resolver=Resolver([(srv.host, srv.port)], timeout=1,
                                           attempts=1))
        assert [q[:2] for q in srv.queries] == [("[ipv6", "A")]
    assert result.render() == (b"DSorry, I couldn't find any host named "
                               b"[IPv6. (#5.1.2)\n\0")


@needs_ipv6
def test_ipv6_literal_host_that_is_me(home):
    result = deliver(b"[IPv6:::1]", b"s@example.org", [b"r@[IPv6:::1]"],
                     b"x\n", home=str(home),
                     resolver=Resolver([("127.0.0.1", 9)]))
    assert result.message.letter == "D"
    assert b"listed as a best-preference MX" in result.message.text


# ---------------------------------------------------------------------------
# Null MX with IPv6 on: still no address lookup at all

def test_null_mx_asks_neither_a_nor_aaaa(srv, res):
    srv.add("d.example", "MX", "0 .")
    srv.add("d.example", "AAAA", "fd00::1")
    assert mx.lookup_mx(res, b"d.example", null_mx=True, ipv6=True) == \
        mx.NULLMX
    assert [q[:2] for q in srv.queries] == [("d.example", "MX")]


def test_root_among_other_mx_is_asked_for_a_and_aaaa(srv, res):
    """RFC 7505 3: "0 ." beside other MX records is no null MX; as in 1.06
    the root is an exchange like any other (and has no addresses)."""
    srv.add("d.example", "MX", "0 .", "10 a.example.")
    srv.add("a.example", "AAAA", "fd00::1")
    found, soft = mx.lookup_mx(res, b"d.example", null_mx=True, ipv6=True)
    assert (found, soft) == ([(A6, 10, b"a.example")], False)
    assert [q[:2] for q in srv.queries][1:3] == [(".", "A"), (".", "AAAA")]
