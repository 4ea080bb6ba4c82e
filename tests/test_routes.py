"""smtproutes table and lookup (reference section 5)."""

import pytest

from qmailremote.routes import build_table, find_route

TABLE = build_table([b"a.b.example:r1", b".b.example:r2", b".example:r3",
                     b":r4", b".:dot", b" :space"])


@pytest.mark.parametrize("host, relay", [
    (b"a.b.example", b"r1"), (b"A.B.EXAMPLE", b"r1"),
    (b"x.a.b.example", b"r2"), (b"c.b.example", b"r2"),
    (b"b.example", b"r3"), (b"example", b"r4"),
    (b"a.b.example.", b"dot"), (b" ", b"space"), (b"", b"r4"),
])
def test_lookup_order(host, relay):
    assert find_route(TABLE, host).relay == relay


def test_trailing_dot_without_dot_key_uses_default():
    table = build_table([b"a.b.example:r1", b".b.example:r2", b":r4"])
    assert find_route(table, b"a.b.example.").relay == b"r4"


def test_empty_value_stops_search():
    table = build_table([b"example.com:", b":fallback"])
    assert find_route(table, b"example.com") is None
    assert find_route(table, b"other").relay == b"fallback"


def test_no_table_no_route():
    assert find_route(build_table([]), b"example.com") is None


def test_last_duplicate_wins_case_insensitively():
    table = build_table([b"x.example:first", b"X.EXAMPLE:second",
                         b"no colon here"])
    assert find_route(table, b"x.Example").relay == b"second"
    assert len(table) == 1


@pytest.mark.parametrize("value, relay, port", [
    (b"relay", b"relay", 25), (b"relay:2501", b"relay", 2501),
    (b"relay:2501x", b"relay", 2501), (b"relay:2501\r", b"relay", 2501),
    (b"relay:90037", b"relay", 24501), (b"relay:", b"relay", 0),
    (b"relay:+2501", b"relay", 0), (b"relay: 2501", b"relay", 0),
    (b"[127.0.0.1]\r", b"[127.0.0.1]\r", 25), (b":2525", b"", 2525),
    (b"r:1:2", b"r", 1),
])
def test_relay_and_port(value, relay, port):
    route = find_route(build_table([b"h:" + value]), b"h")
    assert (route.relay, route.port) == (relay, port)
