"""End to end, IPv6: the installed ``qmail-remote`` in a private network namespace.

The ESMTP profile (no ``control/noesmtp``) asks every name for A then
AAAA, understands IPv6 literals, orders addresses by
``control/addresspreference``, counts every IPv6 address of an up
interface as "me" and keeps IPv6 timeouts in ``queue/lock/tcpto6``
(README, "IPv6"); under ``control/noesmtp`` none of that happens.

Addresses used (see tests/netns.py, ``addrs``, ``local_routes`` and
``blackhole``):

* ``fd00:5::/64`` is routed as local through ``lo``: a sink there is
  reachable and is *not* one of this host's interface addresses -- the
  IPv6 counterpart of 127.0.0.X; without a sink, connections are refused;
* ``fd00:2::5`` (on ``lo``), ``::1``, ``fd00:1::1`` and ``fe80::53`` (on
  one end of a veth pair) are interface addresses: "me";
* ``fd00:9::/64`` is black-holed: connects time out (``timeoutconnect``
  is 1 s in those tests).

Root only: without it every test skips, saying why.  Nothing here waits
on a clock: tests look at where the mail landed, the reports, the DNS
query log and the tcpto files.
"""

import os
import socket
import struct
import sys
import time

import pytest

from netns import require_netns, run_in_netns
from test_e2e_netns import (AMBIGMX, NOCONN, PERM_NOMX, SENDER, TEMP_DNS,
                            make_home, perm_dns, qmail_remote, run, tcpto_file,
                            tcpto_path)
from test_e2e_netns import record as record4
from test_e2e_netns import session as session_helo

pytestmark = pytest.mark.netns

RCPT = "c@example.test"
LITERAL_RCPT = "c@[1.2.3.4]"  # needs no CNAME lookup
LOCAL6 = ["fd00:5::/64"]  # reachable, not an interface address
BLACKHOLE6 = "fd00:9::/64"
ME6 = "fd00:2::5"  # added to lo where a test needs it
BADPREF = (b"ZSorry, control/addresspreference must say ipv4, ipv6 or any. "
           b"(#4.3.0)\n\0")


def nullmx(host: bytes) -> bytes:
    return b"DSorry, " + host + b" does not accept mail (null MX). (#5.1.10)\n\0"


def accepted(ip: str, nrcpt: int = 1) -> bytes:
    """r... then K, with the sink's default reply to the final dot."""
    return (b"r\0" * nrcpt + b"K" + ip.encode() + b" accepted message.\n"
            b"Remote host said: 250 ok " + ip.encode() + b"\n\0")


def session(recipients, sender=SENDER) -> bytes:
    """What a default sink receives in the ESMTP profile (no extensions)."""
    return b"EHLO" + session_helo(recipients, sender)[4:]


def esmtp_home(tmp_path, **control: bytes) -> str:
    """A qmail home in the ESMTP profile (no control/noesmtp)."""
    return make_home(tmp_path, esmtp=b"yes", **control)


def zone(host: str, *mx: tuple[int, str, list[str]]) -> dict:
    """*host* MX (pref, name, addresses): A for IPv4 text, AAAA for IPv6."""
    z = {host: {"MX": [f"{pref} {name}." for pref, name, _ in mx]}}
    for _, name, addresses in mx:
        for ip in addresses:
            rdtype = "AAAA" if ":" in ip else "A"
            z.setdefault(name, {}).setdefault(rdtype, []).append(ip)
    return z


def address_queries(r) -> list[tuple[str, str]]:
    """The A and AAAA queries, in order, as (name, type)."""
    return [q[:2] for q in r.queries if q[1] in ("A", "AAAA")]


def connected(r) -> dict[tuple[str, int], int]:
    """Every sink that saw a connection, with how many."""
    return {key: log.connections for key, log in r.smtp.items() if log.connections}


def run6(home, args, **scenario):
    """run() with fd00:5::/64 routed locally (plus whatever else is given)."""
    scenario.setdefault("local_routes", LOCAL6)
    return run(home, args, **scenario)


def tcpto6_path(home: str) -> str:
    return os.path.join(home, "queue", "lock", "tcpto6")


def record6(ip: str, count: int, when: int, pad: bytes = b"\0" * 7) -> bytes:
    """One 32-byte tcpto6 record (README, "IPv6", tcpto)."""
    return (socket.inet_pton(socket.AF_INET6, ip) + struct.pack("<b", count) + pad
            + struct.pack("<Q", when))


def tcpto6_file(*records: bytes) -> bytes:
    data = b"".join(records)
    return data + b"\0" * (2048 - len(data))


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------
# 0. the harness: IPv6 sinks, local routes, black holes, AAAA answers

PROBE = r"""
import socket, sys
import dns.resolver
def connect(addr, port=25):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect((addr, port))
        return s.makefile("rb").readline().decode().strip()
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "errno %d" % e.errno
    finally:
        s.close()
for addr in sys.argv[1:]:
    print(addr, connect(addr))
print("AAAA", [r.address for r in dns.resolver.resolve("v6.example", "AAAA")])
"""


def test_harness_ipv6_sinks_local_routes_and_black_holes():
    require_netns()
    r = run_in_netns({
        "command": [sys.executable, "-c", PROBE, "fd00:5::2", "fd00:5::3", "::1",
                    ME6, "fd00:1::1", "fd00:9::5", "10.9.9.5", "127.0.0.2"],
        "timeout": 20,
        "zone": {"v6.example": {"AAAA": ["fd00:5::2", "FD00:0:0::0:7"]}},
        "addrs": {"lo": [ME6], "veth0": ["fd00:1::1/64"]},
        "local_routes": LOCAL6,
        "blackhole": [BLACKHOLE6, "10.9.9.0/24"],
        "smtp": [{"addr": "fd00:5::2"}, {"addr": "::1"}, {"addr": ME6},
                 {"addr": "fd00:1::1"}, {"addr": "127.0.0.2"}],
    })
    assert (r.returncode, r.stderr) == (0, b""), r.stderr
    refused = "errno %d" % 111  # ECONNREFUSED
    assert r.stdout.decode().splitlines() == [
        "fd00:5::2 220 fd00:5::2 ESMTP sink",  # {addr} is the text given
        f"fd00:5::3 {refused}",
        "::1 220 ::1 ESMTP sink",
        f"{ME6} 220 {ME6} ESMTP sink",
        "fd00:1::1 220 fd00:1::1 ESMTP sink",
        "fd00:9::5 timeout",  # no RST, no ICMP error: the SYN vanishes
        "10.9.9.5 timeout",
        "127.0.0.2 220 127.0.0.2 ESMTP sink",
        "AAAA ['fd00:5::2', 'fd00::7']",
    ]
    assert r.queries == [("v6.example", "AAAA", "udp")]
    assert r.server("fd00:5::2").connections == 1


def test_dns_server_answers_aaaa_in_order():
    """tests/dnsserver.py is generic over rdata: AAAA needs nothing special."""
    import dns.rdatatype
    import dns.resolver

    from dnsserver import DNSServer

    with DNSServer({"h.example": {"A": "127.0.0.2",
                                  "AAAA": ["fd00:5::9", "fd00:5::1"]}}) as srv:
        res = srv.resolver()
        answer = res.resolve("h.example", "AAAA")
        assert answer.rdtype == dns.rdatatype.AAAA
        assert [r.address for r in answer] == ["fd00:5::9", "fd00:5::1"]
        with pytest.raises(dns.resolver.NoAnswer):
            res.resolve("h.example", "MX")
        assert srv.count("h.example", "AAAA") == 1


# ---------------------------------------------------------------------------
# 1. A then AAAA for every name; hard only when both are


def test_ipv6_only_mx_host_is_delivered(tmp_path):
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "mx6.example.test", ["fd00:5::2"])),
             smtp=[{"addr": "fd00:5::2"}])
    assert r.stdout == accepted("fd00:5::2")
    assert r.server("fd00:5::2").sessions == [session([RCPT])]
    assert r.queries == [("example.test", "CNAME", "udp"), ("example.test", "MX", "udp"),
                         ("mx6.example.test", "A", "udp"),
                         ("mx6.example.test", "AAAA", "udp")]


def test_ipv6_only_domain_without_mx_is_delivered(tmp_path):
    home = esmtp_home(tmp_path)
    r = run6(home, ["v6.example", SENDER, "c@v6.example"],
             zone={"v6.example": {"AAAA": "fd00:5::2"}},
             smtp=[{"addr": "fd00:5::2"}])
    assert r.stdout == accepted("fd00:5::2")
    assert r.server("fd00:5::2").sessions == [session(["c@v6.example"])]
    assert [q[:2] for q in r.queries] == [("v6.example", "CNAME"), ("v6.example", "MX"),
                                          ("v6.example", "A"), ("v6.example", "AAAA")]


def test_every_mx_host_is_asked_a_then_aaaa(tmp_path):
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (20, "b.example.test", ["127.0.0.3"]),
                       (10, "a.example.test", ["fd00:5::2", "127.0.0.2"]),
                       (30, "c.example.test", ["fd00:5::4"])),
             smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == accepted("127.0.0.2")
    assert address_queries(r) == [("a.example.test", "A"), ("a.example.test", "AAAA"),
                                  ("b.example.test", "A"), ("b.example.test", "AAAA"),
                                  ("c.example.test", "A"), ("c.example.test", "AAAA")]


def test_every_mx_host_without_any_address_is_perm_nomx(tmp_path):
    """Both lookups hard (NXDOMAIN, NODATA) for every MX host: #5.4.4."""
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, LITERAL_RCPT],
             zone={"example.test": {"MX": ["10 nx.example.test.", "20 txt.example.test."]},
                   "txt.example.test": {"TXT": '"no address"'}},
             smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == PERM_NOMX
    assert address_queries(r) == [("nx.example.test", "A"), ("nx.example.test", "AAAA"),
                                  ("txt.example.test", "A"), ("txt.example.test", "AAAA")]


SOFT_BEHAVIOURS = {
    "servfail": {"mode": "rcode", "rcode": "SERVFAIL"},
    "refused": {"mode": "rcode", "rcode": "REFUSED"},
    "malformed": {"mode": "raw", "fn": "cut_short"},
}


@pytest.mark.parametrize("how", list(SOFT_BEHAVIOURS))
@pytest.mark.parametrize("soft_type", ["A", "AAAA"])
def test_soft_mx_host_without_address_is_passed_over(tmp_path, soft_type, how):
    """One lookup soft, the other NODATA: no address from it; the next MX is used."""
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone={**zone("example.test", (10, "soft.example.test", []),
                          (20, "mx2.example.test", ["fd00:5::3"])),
                   "soft.example.test": {"TXT": '"x"'}},
             behave=[{"name": "soft.example.test", "rdtype": soft_type,
                      **SOFT_BEHAVIOURS[how]}],
             smtp=[{"addr": "fd00:5::3"}])
    assert r.stdout == accepted("fd00:5::3")
    assert r.server("fd00:5::3").sessions == [session([RCPT])]
    # A soft A lookup does not stop the AAAA lookup of the same name.
    assert address_queries(r)[:2] == [("soft.example.test", "A"),
                                      ("soft.example.test", "AAAA")]


@pytest.mark.parametrize("soft_type, found", [("A", "fd00:5::2"), ("AAAA", "127.0.0.2")])
def test_soft_mx_host_keeps_what_the_other_lookup_found(tmp_path, soft_type, found):
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "half.example.test", [found]),
                       (20, "mx2.example.test", ["127.0.0.3"])),
             behave=[{"name": "half.example.test", "rdtype": soft_type,
                      "mode": "rcode", "rcode": "SERVFAIL"}],
             smtp=[{"addr": found}, {"addr": "127.0.0.3"}])
    assert r.stdout == accepted(found)
    assert connected(r) == {(found, 25): 1}


@pytest.mark.parametrize("soft_type", ["A", "AAAA"])
def test_soft_only_mx_host_without_address_is_temp_dns(tmp_path, soft_type):
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, LITERAL_RCPT],
             zone={"example.test": {"MX": ["10 soft.example.test.", "20 nx.example.test."]},
                   "soft.example.test": {"TXT": '"x"'}},
             behave=[{"name": "soft.example.test", "rdtype": soft_type,
                      "mode": "rcode", "rcode": "SERVFAIL"}],
             smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == TEMP_DNS
    assert r.server("127.0.0.2").connections == 0


def test_aaaa_timeout_is_soft(tmp_path):
    """A dropped AAAA query (the resolver times out) is a soft failure too."""
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, LITERAL_RCPT],
             zone={"example.test": {"MX": ["10 slow.example.test."]},
                   "slow.example.test": {"TXT": '"x"'}},
             behave=[{"name": "slow.example.test", "rdtype": "AAAA", "mode": "drop"}],
             smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == TEMP_DNS
    assert address_queries(r) == [("slow.example.test", "A"),
                                  ("slow.example.test", "AAAA")]


@pytest.mark.parametrize("soft_type, present", [("A", "AAAA"), ("AAAA", "A")])
def test_no_mx_domain_soft_on_either_lookup_is_temp_dns(tmp_path, soft_type, present):
    """No MX: a soft A or AAAA lookup is #4.1.2 even with addresses found."""
    home = esmtp_home(tmp_path)
    address = "fd00:5::2" if present == "AAAA" else "127.0.0.2"
    r = run6(home, ["nomx.example", SENDER, LITERAL_RCPT],
             zone={"nomx.example": {present: address}},
             behave=[{"name": "nomx.example", "rdtype": soft_type,
                      "mode": "rcode", "rcode": "SERVFAIL"}],
             smtp=[{"addr": address}])
    assert r.stdout == TEMP_DNS
    assert r.server(address).connections == 0


def test_no_mx_domain_hard_on_both_is_perm_dns(tmp_path):
    home = esmtp_home(tmp_path)
    r = run6(home, ["nx.example", SENDER, LITERAL_RCPT], zone={})
    assert r.stdout == perm_dns(b"nx.example")
    assert r.queries == [("nx.example", "MX", "udp"), ("nx.example", "A", "udp"),
                         ("nx.example", "AAAA", "udp")]


def test_ipv4_mapped_aaaa_record_is_the_ipv4_address(tmp_path):
    home = esmtp_home(tmp_path, addresspreference=b"ipv6\n")
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "mapped.example.test", ["::ffff:127.0.0.2"])),
             smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == accepted("127.0.0.2")
    assert r.server("127.0.0.2").sessions == [session([RCPT])]


def test_ipv4_mapped_aaaa_record_of_me_is_me(tmp_path):
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "mapped.example.test", ["::ffff:127.0.0.1"]),
                       (20, "mx2.example.test", ["fd00:5::3"])),
             smtp=[{"addr": "127.0.0.1"}, {"addr": "fd00:5::3"}])
    assert r.stdout == AMBIGMX
    assert connected(r) == {}


# ---------------------------------------------------------------------------
# 2. control/addresspreference

# One MX host: two IPv4 then two IPv6 addresses, in answer order.
FOUR = ["127.0.0.2", "127.0.0.3", "fd00:5::2", "fd00:5::3"]
FOUR_ZONE = {"example.test": {"MX": ["10 dual.example.test."]},
             "dual.example.test": {"A": FOUR[:2], "AAAA": FOUR[2:]}}
ORDERS = {
    b"ipv4\n": FOUR,
    b"ipv6\n": FOUR[2:] + FOUR[:2],
    b"any\n": [FOUR[2], FOUR[0], FOUR[3], FOUR[1]],
}
CASES = [(preference, refused) for preference in ORDERS for refused in range(4)]
# Other spellings: one case each that tells the three orders apart.
SPELLINGS = {None: (b"ipv4\n", 0), b"": (b"ipv4\n", 0), b"IPv4\n": (b"ipv4\n", 0),
             b" IPV6 \nipv4\n": (b"ipv6\n", 1), b"Any": (b"any\n", 1),
             b"\tANY\r\n": (b"any\n", 1)}


def check_order(tmp_path, preference, order, refused):
    control = {} if preference is None else {"addresspreference": preference}
    home = esmtp_home(tmp_path, **control)
    r = run6(home, ["example.test", SENDER, RCPT], zone=FOUR_ZONE,
             smtp=[{"addr": ip, "listen": ip not in order[:refused]} for ip in FOUR])
    assert r.stdout == accepted(order[refused])
    assert connected(r) == {(order[refused], 25): 1}


@pytest.mark.parametrize("preference, refused", CASES,
                         ids=[f"{p.decode().strip()}-{n}-refused" for p, n in CASES])
def test_address_order(tmp_path, preference, refused):
    """The first *refused* addresses of the expected order refuse: the next gets it."""
    check_order(tmp_path, preference, ORDERS[preference], refused)


@pytest.mark.parametrize("spelling", list(SPELLINGS), ids=repr)
def test_address_preference_spellings(tmp_path, spelling):
    """Missing or empty: ipv4; case and surrounding blanks do not matter."""
    preference, refused = SPELLINGS[spelling]
    check_order(tmp_path, spelling, ORDERS[preference], refused)


def test_any_with_more_of_one_family_appends_the_rest(tmp_path):
    """any: v6, v4, v6, then the remaining v6 addresses."""
    home = esmtp_home(tmp_path, addresspreference=b"any\n")
    v6 = ["fd00:5::2", "fd00:5::3", "fd00:5::4"]
    r = run6(home, ["example.test", SENDER, RCPT],
             zone={"example.test": {"MX": ["10 h.example.test."]},
                   "h.example.test": {"A": "127.0.0.2", "AAAA": v6}},
             smtp=[{"addr": "127.0.0.2", "listen": False},
                   {"addr": "fd00:5::2", "listen": False},
                   {"addr": "fd00:5::3", "listen": False}, {"addr": "fd00:5::4"}])
    assert r.stdout == accepted("fd00:5::4")


# Two hosts at preference 10 (shuffled each run), one at 20.
MIXED = zone("example.test", (10, "a.example.test", ["127.0.0.2", "fd00:5::2"]),
             (10, "b.example.test", ["127.0.0.3", "fd00:5::3"]),
             (20, "c.example.test", ["127.0.0.4", "fd00:5::4"]))
HOSTS = {"a.example.test": ("127.0.0.2", "fd00:5::2"),
         "b.example.test": ("127.0.0.3", "fd00:5::3")}


def first_mx(r) -> str:
    """The preference-10 host this run asked first: the MX order it drew."""
    names = [name for name, _ in address_queries(r) if name in HOSTS]
    assert names[0] != names[-1] and len(names) == 4, names
    return names[0]


@pytest.mark.parametrize("preference, refused, lands", [
    # ipv4: both IPv4 addresses at 10 refuse -> IPv6 at 10 (not IPv4 at 20),
    # the first MX host's IPv6 address first.
    (b"ipv4", ["127.0.0.2", "127.0.0.3"], ("first", 1)),
    (b"ipv4", [], ("first", 0)),
    # ipv6: the first MX host's IPv6 address, then the second's.
    (b"ipv6", [], ("first", 1)),
    (b"ipv6", ["fd00:5::2", "fd00:5::3"], ("first", 0)),
    # any: v6 of the first host, v4 of the first host, v6 of the second.
    (b"any", [], ("first", 1)),
    (b"any", ["fd00:5::2", "fd00:5::3"], ("first", 0)),
])
def test_mixed_equal_preferences_follow_mx_order_within_family(
        tmp_path, preference, refused, lands):
    home = esmtp_home(tmp_path, addresspreference=preference)
    r = run6(home, ["example.test", SENDER, RCPT], zone=MIXED,
             smtp=[{"addr": ip, "listen": ip not in refused}
                   for ip in ("127.0.0.2", "127.0.0.3", "fd00:5::2", "fd00:5::3",
                              "127.0.0.4", "fd00:5::4")])
    want = HOSTS[first_mx(r)][lands[1]]
    assert r.stdout == accepted(want)
    assert connected(r) == {(want, 25): 1}


@pytest.mark.parametrize("preference, lands", [
    (b"ipv4", "127.0.0.4"), (b"ipv6", "fd00:5::4"), (b"any", "fd00:5::4")])
def test_preferences_keep_their_order_whatever_the_family(tmp_path, preference, lands):
    """Every address at 10 refuses: the family order starts again at 20."""
    home = esmtp_home(tmp_path, addresspreference=preference)
    at10 = ("127.0.0.2", "127.0.0.3", "fd00:5::2", "fd00:5::3")
    r = run6(home, ["example.test", SENDER, RCPT], zone=MIXED,
             smtp=[{"addr": ip, "listen": ip not in at10}
                   for ip in (*at10, "127.0.0.4", "fd00:5::4")])
    assert r.stdout == accepted(lands)
    assert connected(r) == {(lands, 25): 1}


def test_mixed_equal_preferences_order_is_drawn_afresh(tmp_path):
    """ipv6, 16 runs, two MX at 10 with one IPv6 address each: both get mail.

    A fixed MX order would send all 16 to one host (chance of a miss with
    a fair draw: 2 * 2**-16).
    """
    home = esmtp_home(tmp_path, addresspreference=b"ipv6\n")
    runs = 16
    script = ('for i in $(seq %d); do "$0" example.test %s %s </dev/null; done'
              % (runs, SENDER, LITERAL_RCPT))
    r = run_in_netns({
        "command": ["sh", "-c", script, qmail_remote()],
        "env": {"QMAILHOME": home}, "timeout": 40, "local_routes": LOCAL6,
        "zone": MIXED,
        "smtp": [{"addr": ip} for ip in ("127.0.0.2", "127.0.0.3", "fd00:5::2",
                                          "fd00:5::3", "127.0.0.4", "fd00:5::4")],
    })
    assert (r.returncode, r.stderr, r.timed_out) == (0, b"", False)
    got = connected(r)
    assert set(got) == {("fd00:5::2", 25), ("fd00:5::3", 25)}, got
    assert sum(got.values()) == runs
    assert r.stdout.count(accepted("fd00:5::2")) == got[("fd00:5::2", 25)]


@pytest.mark.parametrize("value", [b"ipv5\n", b"ipv4 ipv6\n", b"ipv4,ipv6\n", b"6\n",
                                   b"inet6\n", b"\xff\n", b"prefer-ipv6\n"])
def test_bad_address_preference(tmp_path, value):
    home = esmtp_home(tmp_path, addresspreference=value)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "mx.example.test", ["127.0.0.2", "fd00:5::2"])),
             smtp=[{"addr": "127.0.0.2"}, {"addr": "fd00:5::2"}])
    assert r.stdout == BADPREF
    assert connected(r) == {}


def test_bad_address_preference_with_literal_host(tmp_path):
    home = esmtp_home(tmp_path, addresspreference=b"both\n")
    r = run6(home, ["[IPv6:fd00:5::2]", SENDER, LITERAL_RCPT],
             smtp=[{"addr": "fd00:5::2"}])
    assert r.stdout == BADPREF
    assert connected(r) == {}


def test_noesmtp_ignores_address_preference_and_aaaa(tmp_path):
    """1.06: no AAAA query, no control/addresspreference (not even a bad one)."""
    home = make_home(tmp_path, addresspreference=b"bogus\n")
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "mx.example.test", ["fd00:5::2", "127.0.0.2"])),
             smtp=[{"addr": "127.0.0.2"}, {"addr": "fd00:5::2"}])
    assert r.stdout == accepted("127.0.0.2")
    assert r.server("127.0.0.2").sessions == [session_helo([RCPT])]
    assert r.count(None, "AAAA") == 0


def test_noesmtp_ipv6_only_host_has_no_address(tmp_path):
    home = make_home(tmp_path)
    r = run6(home, ["example.test", SENDER, LITERAL_RCPT],
             zone=zone("example.test", (10, "mx6.example.test", ["fd00:5::2"])),
             smtp=[{"addr": "fd00:5::2"}])
    assert r.stdout == PERM_NOMX
    assert r.count(None, "AAAA") == 0
    assert r.server("fd00:5::2").connections == 0


# ---------------------------------------------------------------------------
# 3. IPv6 literals


@pytest.mark.parametrize("host", [
    "[IPv6:fd00:5::2]", "[ipv6:fd00:5::2]", "[IPV6:fd00:5::2]", "[iPv6:fd00:5::2]",
    "[fd00:5::2]", "fd00:5::2", "[IPv6:FD00:0005:0000:0:0:0:0:0002]", "FD00:5:0::2",
])
def test_ipv6_literal_host_needs_no_dns(tmp_path, host):
    home = esmtp_home(tmp_path)
    r = run6(home, [host, SENDER, LITERAL_RCPT, "d@[IPv6:fd00:5::2]"],
             smtp=[{"addr": "fd00:5::2"}])
    # The report shows the address in RFC 5952 form, whatever was written.
    assert r.stdout == accepted("fd00:5::2", 2)
    assert r.server("fd00:5::2").sessions == [
        session([LITERAL_RCPT, "d@[IPv6:fd00:5::2]"])]
    assert r.queries == []


@pytest.mark.parametrize("host", ["[IPv6:::ffff:127.0.0.2]", "[::ffff:127.0.0.2]",
                                  "::ffff:127.0.0.2", "[IPv6:::FFFF:7f00:2]"])
def test_ipv4_mapped_literal_is_the_ipv4_address(tmp_path, host):
    home = esmtp_home(tmp_path, addresspreference=b"ipv6\n")
    r = run6(home, [host, SENDER, LITERAL_RCPT], smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == accepted("127.0.0.2")
    assert r.server("127.0.0.2").sessions == [session([LITERAL_RCPT])]
    assert r.queries == []


@pytest.mark.parametrize("host", ["[IPv6:::1]", "[::1]", "::1", "[IPv6:0:0::1]",
                                  f"[IPv6:{ME6}]", ME6, "[IPv6:::]", "::",
                                  "[IPv6:::ffff:127.0.0.1]", "[IPv6:fd00:1::1]",
                                  "[IPv6:fe80::53]"])
def test_ipv6_literal_host_that_is_me(tmp_path, host):
    home = esmtp_home(tmp_path)
    r = run6(home, [host, SENDER, LITERAL_RCPT],
             addrs={"lo": [ME6], "veth0": ["fd00:1::1/64", "fe80::53/64"]},
             smtp=[{"addr": "::1"}, {"addr": ME6}, {"addr": "127.0.0.1"}])
    assert r.stdout == AMBIGMX
    assert r.queries == []
    assert connected(r) == {}


@pytest.mark.parametrize("host", ["[IPv6:fd00:5::2]", "[ipv6:fd00:5::2]"])
def test_noesmtp_ipv6_tag_is_a_name(tmp_path, host):
    """1.06: [IPv6:...] is not a literal; DNS says there is no such name."""
    home = make_home(tmp_path)
    r = run6(home, [host, SENDER, LITERAL_RCPT], zone={}, smtp=[{"addr": "fd00:5::2"}])
    assert r.stdout == perm_dns(host.encode())
    assert r.queries == [(host.lower(), "MX", "udp"), (host.lower(), "A", "udp")]
    assert r.server("fd00:5::2").connections == 0


def test_noesmtp_bare_ipv6_host_is_a_name(tmp_path):
    home = make_home(tmp_path)
    r = run6(home, ["fd00:5::2", SENDER, LITERAL_RCPT], zone={},
             smtp=[{"addr": "fd00:5::2"}])
    assert r.stdout == perm_dns(b"fd00:5::2")
    assert r.count(None, "AAAA") == 0
    assert r.server("fd00:5::2").connections == 0


@pytest.mark.parametrize("host", ["[IPv6:fd00:5::2", "[IPv6:fd00:5::2]x", "[IPv6:]",
                                  "[IPv6:fd00:5::2%lo]", "[IPv6:fd00:5:::2]",
                                  "[IPv6:1.2.3.4]"])
def test_not_an_ipv6_literal_goes_to_dns(tmp_path, host):
    home = esmtp_home(tmp_path)
    r = run6(home, [host, SENDER, LITERAL_RCPT], zone={}, smtp=[{"addr": "fd00:5::2"}])
    assert r.stdout == perm_dns(host.encode())
    assert r.queries[0] == (host.lower(), "MX", "udp")
    assert r.server("fd00:5::2").connections == 0


def test_ipv6_literal_as_mx_exchange(tmp_path):
    """An MX exchange written as a literal needs no lookup (and keeps its
    place in MX order, as an IPv4 one does in 1.06)."""
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone={"example.test": {"MX": ["10 mx.example.test.", "50 [IPv6:fd00:5::2]."]},
                   "mx.example.test": {"A": "127.0.0.2"}},
             smtp=[{"addr": "127.0.0.2", "listen": False}, {"addr": "fd00:5::2"}])
    assert r.stdout == accepted("fd00:5::2")
    assert connected(r) == {("fd00:5::2", 25): 1}
    assert address_queries(r) == [("mx.example.test", "A"), ("mx.example.test", "AAAA")]


def test_ipv6_literal_mx_exchange_that_is_me_has_preference_zero(tmp_path):
    """MX 10 other, 50 [IPv6:::1]: the literal is preference 0, so it is the best."""
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone={"example.test": {"MX": ["10 mx.example.test.", "50 [IPv6:::1]."]},
                   "mx.example.test": {"AAAA": "fd00:5::2"}},
             smtp=[{"addr": "fd00:5::2"}, {"addr": "::1"}])
    assert r.stdout == AMBIGMX
    assert connected(r) == {}


# ---------------------------------------------------------------------------
# 4. smtproutes


@pytest.mark.parametrize("relay, port", [
    ("[IPv6:fd00:5::2]:2525", 2525), ("[fd00:5::2]:2525", 2525),
    ("[IPv6:fd00:5::2]", 25), ("[fd00:5::2]", 25), ("[IPV6:FD00:5::2]:2525", 2525),
])
def test_route_to_ipv6_literal_relay(tmp_path, relay, port):
    home = esmtp_home(tmp_path, smtproutes=b"example.com:" + relay.encode() + b"\n")
    r = run6(home, ["example.com", SENDER, "c@example.com"],
             zone=zone("example.com", (10, "mx.example.com", ["127.0.0.2"])),
             smtp=[{"addr": "fd00:5::2", "port": port}, {"addr": "127.0.0.2"}])
    assert r.stdout == accepted("fd00:5::2")
    assert r.server("fd00:5::2", port).sessions == [session(["c@example.com"])]
    assert connected(r) == {("fd00:5::2", port): 1}
    assert r.queries == []


def test_route_to_ipv6_only_relay_name(tmp_path):
    home = esmtp_home(tmp_path, smtproutes=b"example.com:relay6.example:2525\n")
    r = run6(home, ["example.com", SENDER, "c@example.com"],
             zone={"relay6.example": {"AAAA": "fd00:5::5"}},
             smtp=[{"addr": "fd00:5::5", "port": 2525}])
    assert r.stdout == accepted("fd00:5::5")
    assert r.server("fd00:5::5", 2525).sessions == [session(["c@example.com"])]
    assert r.queries == [("relay6.example", "A", "udp"), ("relay6.example", "AAAA", "udp")]


@pytest.mark.parametrize("soft_type", ["A", "AAAA"])
def test_route_relay_soft_on_either_lookup_is_temp_dns(tmp_path, soft_type):
    home = esmtp_home(tmp_path, smtproutes=b"example.com:relay.example\n")
    r = run6(home, ["example.com", SENDER, "c@example.com"],
             zone={"relay.example": {"A": "127.0.0.2", "AAAA": "fd00:5::2"}},
             behave=[{"name": "relay.example", "rdtype": soft_type,
                      "mode": "rcode", "rcode": "SERVFAIL"}],
             smtp=[{"addr": "127.0.0.2"}, {"addr": "fd00:5::2"}])
    assert r.stdout == TEMP_DNS
    assert connected(r) == {}


def test_route_relay_hard_on_both_names_the_relay(tmp_path):
    home = esmtp_home(tmp_path, smtproutes=b".example.com:nxrelay.example\n")
    r = run6(home, ["x.example.com", SENDER, "c@x.example.com"], zone={})
    assert r.stdout == perm_dns(b"nxrelay.example")
    assert r.queries == [("nxrelay.example", "A", "udp"), ("nxrelay.example", "AAAA", "udp")]


def test_noesmtp_route_is_split_at_the_first_colon(tmp_path):
    """1.06: relay '[IPv6', port scan_ulong('fd00...') = 0."""
    home = make_home(tmp_path, smtproutes=b"example.com:[IPv6:fd00:5::2]:2525\n")
    r = run6(home, ["example.com", SENDER, "c@example.com"], zone={},
             smtp=[{"addr": "fd00:5::2", "port": 2525}])
    assert r.stdout == perm_dns(b"[IPv6")
    assert r.queries == [("[ipv6", "A", "udp")]
    assert connected(r) == {}


# ---------------------------------------------------------------------------
# 5. reports print IPv6 addresses in RFC 5952 form


def test_recipient_and_message_reports_name_the_ipv6_address(tmp_path):
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, "x@example.test", "y@example.test",
                    "z@example.test"],
             zone=zone("example.test", (10, "mx.example.test",
                                        ["FD00:5:0:0:0:0:0:A"])),
             smtp=[{"addr": "fd00:5::a",
                    "replies": {"RCPT": ["550 no such user", "451 later", "250 ok"],
                                "BODY": "250-queued\n250 as 42"}}])
    assert r.stdout == (
        b"hfd00:5::a does not like recipient.\nRemote host said: 550 no such user\n\0"
        b"sfd00:5::a does not like recipient.\nRemote host said: 451 later\n\0"
        b"r\0"
        b"Kfd00:5::a accepted message.\nRemote host said: 250-queued\n250 as 42\n\0")


def test_greeting_failure_report_names_the_ipv6_address(tmp_path):
    """Two equal runs of zero groups: the first one is written as ``::``."""
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "mx.example.test", ["fd00:5:0:0:1:0:0:2"]),
                       (20, "mx2.example.test", ["127.0.0.3"])),
             smtp=[{"addr": "fd00:5::1:0:0:2", "greeting": "421 busy, try later"},
                   {"addr": "127.0.0.3"}])
    assert r.stdout == (b"ZConnected to fd00:5::1:0:0:2 but greeting failed.\n"
                        b"Remote host said: 421 busy, try later\n\0")
    assert r.server("fd00:5::1:0:0:2").sessions == [b"QUIT\r\n"]
    assert r.server("127.0.0.3").connections == 0


def test_report_of_an_address_in_the_zero_slash_96_is_not_dotted(tmp_path):
    """::5:6 is not IPv4-mapped: RFC 5952 hex, not glibc's ``::0.5.0.6``."""
    home = esmtp_home(tmp_path)
    r = run6(home, ["[IPv6:0:0:0:0:0:0:5:6]", SENDER, LITERAL_RCPT],
             local_routes=[*LOCAL6, "::5:0/112"],
             smtp=[{"addr": "::5:6", "replies": {"RCPT": "553 no"}}])
    assert r.stdout == (b"h::5:6 does not like recipient.\nRemote host said: 553 no\n\0"
                        b"DGiving up on ::5:6.\n\0")
    assert r.server("::5:6").connections == 1


# ---------------------------------------------------------------------------
# 6. ipme: every IPv6 address of every up interface, and ::


@pytest.mark.parametrize("me", ["::1", ME6, "fd00:1::1", "fe80::53", "::"])
def test_best_mx_with_an_ipv6_address_of_mine(tmp_path, me):
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             addrs={"lo": [ME6], "veth0": ["fd00:1::1/64", "fe80::53/64"]},
             zone=zone("example.test", (10, "self.example", [me]),
                       (20, "mx2.example.test", ["127.0.0.2", "fd00:5::2"])),
             smtp=[{"addr": "127.0.0.2"}, {"addr": "fd00:5::2"}])
    assert r.stdout == AMBIGMX
    assert connected(r) == {}


def test_ula_is_not_me_without_the_address(tmp_path):
    """The control case: fd00:5::2 is on no interface, so it gets the mail."""
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             addrs={"lo": [ME6]},
             zone=zone("example.test", (10, "mx.example", ["fd00:5::2"])),
             smtp=[{"addr": "fd00:5::2"}])
    assert r.stdout == accepted("fd00:5::2")


def test_only_mx_better_than_my_ipv6_address_are_tried(tmp_path):
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             addrs={"lo": [ME6]},
             zone=zone("example.test", (10, "mx1.example.test", ["fd00:5::2"]),
                       (20, "self.example", [ME6]),
                       (30, "mx3.example.test", ["127.0.0.3", "fd00:5::3"])),
             smtp=[{"addr": "fd00:5::2", "listen": False}, {"addr": ME6},
                   {"addr": "127.0.0.3"}, {"addr": "fd00:5::3"}])
    assert r.stdout == NOCONN
    assert connected(r) == {}


def test_my_ipv4_address_limits_ipv6_mx_too(tmp_path):
    """v4 127.0.0.1 at 20 is me: the IPv6 MX at 10 is tried, the one at 30 not."""
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "mx1.example.test", ["fd00:5::2"]),
                       (20, "self.example", ["127.0.0.1"]),
                       (30, "mx3.example.test", ["fd00:5::3"])),
             smtp=[{"addr": "fd00:5::2"}, {"addr": "127.0.0.1"}, {"addr": "fd00:5::3"}])
    assert r.stdout == accepted("fd00:5::2")
    assert connected(r) == {("fd00:5::2", 25): 1}


def test_me_among_equal_preference_mixed_family_hosts(tmp_path):
    """::1 at 10 with other hosts (v4 and v6) at 10: the best preference is me."""
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "a.example.test", ["127.0.0.2"]),
                       (10, "self.example", ["::1"]),
                       (10, "c.example.test", ["fd00:5::3"]),
                       (20, "d.example.test", ["127.0.0.4"])),
             smtp=[{"addr": "127.0.0.2"}, {"addr": "::1"}, {"addr": "fd00:5::3"},
                   {"addr": "127.0.0.4"}])
    assert r.stdout == AMBIGMX
    assert connected(r) == {}


def test_my_address_in_a_dual_stack_mx_host(tmp_path):
    """One MX at 10 with 127.0.0.2 and ::1: ::1 is me, so nothing is tried."""
    home = esmtp_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "dual.example.test", ["127.0.0.2", "::1"]),
                       (20, "mx2.example.test", ["fd00:5::3"])),
             smtp=[{"addr": "127.0.0.2"}, {"addr": "::1"}, {"addr": "fd00:5::3"}])
    assert r.stdout == AMBIGMX
    assert connected(r) == {}


def test_noesmtp_ipme_has_no_ipv6(tmp_path):
    """1.06 never asks AAAA, so an MX host whose only address is ::1 has none."""
    home = make_home(tmp_path)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "self.example", ["::1"]),
                       (20, "mx2.example.test", ["127.0.0.2"])),
             smtp=[{"addr": "127.0.0.2"}, {"addr": "::1"}])
    assert r.stdout == accepted("127.0.0.2")
    assert connected(r) == {("127.0.0.2", 25): 1}


# ---------------------------------------------------------------------------
# 7. connecting: one socket per family; black-holed IPv6


@pytest.mark.parametrize("preference", [b"any\n", b"ipv6\n"])
def test_dual_stack_black_holed_ipv6_falls_back_to_ipv4(tmp_path, preference):
    v4_before = tcpto_file(record4("127.0.0.77", 1, 12345))
    home = esmtp_home(tmp_path, tcpto=v4_before, timeoutconnect=b"1\n",
                      addresspreference=preference)
    start = int(time.time())
    r = run6(home, ["example.test", SENDER, RCPT],
             blackhole=[BLACKHOLE6],
             zone=zone("example.test", (10, "dual.example.test", ["127.0.0.2", "fd00:9::5"])),
             smtp=[{"addr": "127.0.0.2"}])
    end = int(time.time())
    assert r.stdout == accepted("127.0.0.2")
    assert r.server("127.0.0.2").sessions == [session([RCPT])]
    assert read(tcpto_path(home)) == v4_before
    after = read(tcpto6_path(home))
    assert len(after) == 2048 and after[32:] == bytes(2016)
    assert after[:24] == socket.inet_pton(socket.AF_INET6, "fd00:9::5") + b"\x01" + bytes(7)
    assert start <= struct.unpack("<Q", after[24:32])[0] <= end


def test_dual_stack_ipv4_first_never_touches_the_black_hole(tmp_path):
    home = esmtp_home(tmp_path, tcpto=tcpto_file(), timeoutconnect=b"1\n")
    r = run6(home, ["example.test", SENDER, RCPT],
             blackhole=[BLACKHOLE6],
             zone=zone("example.test", (10, "dual.example.test", ["fd00:9::5", "127.0.0.2"])),
             smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == accepted("127.0.0.2")
    assert not os.path.exists(tcpto6_path(home))
    assert read(tcpto_path(home)) == tcpto_file()


# ---------------------------------------------------------------------------
# 8. tcpto6


def test_tcpto6_skips_a_listed_ipv6_address(tmp_path):
    now = int(time.time())
    v4 = tcpto_file(record4("127.0.0.77", 3, now))
    v6 = tcpto6_file(record6("fd00:5::77", 0, 5), record6("fd00:5::2", 2, now))
    home = esmtp_home(tmp_path, tcpto=v4)
    with open(tcpto6_path(home), "wb") as f:
        f.write(v6)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "mx1.example.test", ["fd00:5::2"]),
                       (20, "mx2.example.test", ["fd00:5::3"])),
             smtp=[{"addr": "fd00:5::2"}, {"addr": "fd00:5::3"}])
    assert r.stdout == accepted("fd00:5::3")
    assert connected(r) == {("fd00:5::3", 25): 1}
    assert read(tcpto6_path(home)) == v6
    assert read(tcpto_path(home)) == v4


def test_tcpto6_skip_goes_to_the_next_address_of_the_same_host(tmp_path):
    now = int(time.time())
    v6 = tcpto6_file(record6("fd00:5::2", 10, now - 60))
    home = esmtp_home(tmp_path, tcpto=tcpto_file(), addresspreference=b"any\n")
    with open(tcpto6_path(home), "wb") as f:
        f.write(v6)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "dual.example.test", ["127.0.0.2", "fd00:5::2"])),
             smtp=[{"addr": "fd00:5::2"}, {"addr": "127.0.0.2"}])
    assert r.stdout == accepted("127.0.0.2")
    assert connected(r) == {("127.0.0.2", 25): 1}


def test_tcpto6_record_of_an_ipv4_address_in_tcpto_does_not_skip_ipv6(tmp_path):
    """The families are apart: a tcpto record never skips an IPv6 address."""
    now = int(time.time())
    # The first 4 bytes of fd00:5::2 as an IPv4 address: 253.0.0.5.
    v4 = tcpto_file(record4("253.0.0.5", 5, now))
    home = esmtp_home(tmp_path, tcpto=v4)
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "mx1.example.test", ["fd00:5::2"])),
             smtp=[{"addr": "fd00:5::2"}])
    assert r.stdout == accepted("fd00:5::2")
    assert read(tcpto_path(home)) == v4
    assert not os.path.exists(tcpto6_path(home))


@pytest.mark.parametrize("count, age", [(1, 10), (2, 6000), (10, 6000)],
                         ids=["count-1-recent", "count-2-old", "count-10-old"])
def test_tcpto6_successful_connection_clears_the_count(tmp_path, count, age):
    when = int(time.time()) - age
    other = record6("fd00:5::77", 3, when - 5, b"\x01\x02\x03\x04\x05\x06\x07")
    v4 = tcpto_file(record4("127.0.0.77", 2, when))
    home = esmtp_home(tmp_path, tcpto=v4)
    with open(tcpto6_path(home), "wb") as f:
        f.write(tcpto6_file(other, record6("fd00:5::2", count, when)))
    r = run6(home, ["example.test", SENDER, RCPT],
             zone=zone("example.test", (10, "mx1.example.test", ["fd00:5::2"]),
                       (20, "mx2.example.test", ["fd00:5::3"])),
             smtp=[{"addr": "fd00:5::2"}, {"addr": "fd00:5::3"}])
    assert r.stdout == accepted("fd00:5::2")
    assert connected(r) == {("fd00:5::2", 25): 1}
    assert read(tcpto6_path(home)) == tcpto6_file(other, record6("fd00:5::2", 0, when))
    assert read(tcpto_path(home)) == v4


def test_tcpto6_timeout_creates_the_file_like_tcpto(tmp_path):
    """First IPv6 timeout: tcpto6 made (2048 bytes) with tcpto's owner, group, mode."""
    v4 = tcpto_file(record4("127.0.0.77", 1, 12345))
    home = esmtp_home(tmp_path, tcpto=v4, timeoutconnect=b"1\n")
    os.chown(tcpto_path(home), 4321, 8765)
    os.chmod(tcpto_path(home), 0o640)
    start = int(time.time())
    r = run6(home, ["example.test", SENDER, RCPT],
             blackhole=[BLACKHOLE6],
             zone=zone("example.test", (10, "slow.example.test", ["fd00:9::5"]),
                       (20, "mx2.example.test", ["fd00:5::3"])),
             smtp=[{"addr": "fd00:5::3"}])
    end = int(time.time())
    assert r.stdout == accepted("fd00:5::3")
    st = os.stat(tcpto6_path(home))
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (4321, 8765, 0o640)
    after = read(tcpto6_path(home))
    assert len(after) == 2048
    assert after[:24] == socket.inet_pton(socket.AF_INET6, "fd00:9::5") + b"\x01" + bytes(7)
    assert start <= struct.unpack("<Q", after[24:32])[0] <= end
    assert after[32:] == bytes(2016)
    assert read(tcpto_path(home)) == v4
    assert sorted(os.listdir(os.path.dirname(tcpto_path(home)))) == ["tcpto", "tcpto6"]


def test_tcpto6_timeout_counts_in_an_existing_record(tmp_path):
    """A listed address (count 1, long ago) times out again: count 2, time now."""
    old = int(time.time()) - 100000
    pad = b"\x11\x22\x33\x44\x55\x66\x77"
    before = tcpto6_file(record6("fd00:5::77", 0, 9), record6("fd00:9::5", 1, old, pad))
    v4 = tcpto_file()
    home = esmtp_home(tmp_path, tcpto=v4, timeoutconnect=b"1\n")
    with open(tcpto6_path(home), "wb") as f:
        f.write(before)
    start = int(time.time())
    r = run6(home, ["example.test", SENDER, RCPT],
             blackhole=[BLACKHOLE6],
             zone=zone("example.test", (10, "slow.example.test", ["fd00:9::5"]),
                       (20, "mx2.example.test", ["fd00:5::3"])),
             smtp=[{"addr": "fd00:5::3"}])
    end = int(time.time())
    assert r.stdout == accepted("fd00:5::3")
    after = read(tcpto6_path(home))
    assert after[:32] == before[:32] and after[64:] == before[64:]
    rec = after[32:64]
    assert rec[:24] == socket.inet_pton(socket.AF_INET6, "fd00:9::5") + b"\x02" + pad
    assert start <= struct.unpack("<Q", rec[24:32])[0] <= end
    assert read(tcpto_path(home)) == v4


def test_tcpto6_not_created_without_tcpto(tmp_path):
    home = esmtp_home(tmp_path, timeoutconnect=b"1\n")
    os.makedirs(os.path.join(home, "queue", "lock"))
    r = run6(home, ["example.test", SENDER, RCPT],
             blackhole=[BLACKHOLE6],
             zone=zone("example.test", (10, "slow.example.test", ["fd00:9::5"]),
                       (20, "mx2.example.test", ["fd00:5::3"])),
             smtp=[{"addr": "fd00:5::3"}])
    assert r.stdout == accepted("fd00:5::3")
    assert os.listdir(os.path.join(home, "queue", "lock")) == []


# ---------------------------------------------------------------------------
# 9. null MX (RFC 7505) with AAAA lookups; tests/test_mx.py has the rest


def test_null_mx_asks_no_address(tmp_path):
    home = esmtp_home(tmp_path)
    r = run6(home, ["nullmx.example", SENDER, LITERAL_RCPT],
             zone={"nullmx.example": {"MX": "0 .", "A": "127.0.0.2", "AAAA": "fd00:5::2"}},
             smtp=[{"addr": "127.0.0.2"}, {"addr": "fd00:5::2"}])
    assert r.stdout == nullmx(b"nullmx.example")
    assert r.queries == [("nullmx.example", "MX", "udp")]
    assert connected(r) == {}


def test_null_mx_among_other_mx_is_not_null_mx(tmp_path):
    """'0 .' with another MX: the root is an exchange without addresses."""
    home = esmtp_home(tmp_path)
    r = run6(home, ["mixed.example", SENDER, LITERAL_RCPT],
             zone={"mixed.example": {"MX": ["0 .", "10 mx6.example."]},
                   "mx6.example": {"AAAA": "fd00:5::2"}},
             smtp=[{"addr": "fd00:5::2"}])
    assert r.stdout == accepted("fd00:5::2")
    assert address_queries(r) == [(".", "A"), (".", "AAAA"), ("mx6.example", "A"),
                                  ("mx6.example", "AAAA")]


def test_root_mx_at_preference_10_is_not_null_mx(tmp_path):
    home = esmtp_home(tmp_path)
    r = run6(home, ["ten.example", SENDER, LITERAL_RCPT],
             zone={"ten.example": {"MX": "10 .", "AAAA": "fd00:5::2"}},
             smtp=[{"addr": "fd00:5::2"}])
    assert r.stdout == PERM_NOMX
    assert address_queries(r) == [(".", "A"), (".", "AAAA")]
    assert connected(r) == {}


def test_noesmtp_null_mx_is_1_06s_perm_nomx(tmp_path):
    home = make_home(tmp_path)
    r = run6(home, ["nullmx.example", SENDER, LITERAL_RCPT],
             zone={"nullmx.example": {"MX": "0 .", "A": "127.0.0.2"}},
             smtp=[{"addr": "127.0.0.2"}])
    assert r.stdout == PERM_NOMX
    assert [q[:2] for q in r.queries] == [("nullmx.example", "MX"), (".", "A")]
    assert connected(r) == {}
