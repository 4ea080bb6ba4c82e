"""smtproutes table and lookup (reference section 5), with the SMTP AUTH
credentials of the patched qmails' three dialects and control/authsenders
(issue 11; the splitting rules are routes.py's docstring)."""

import pytest

from qmailremote.auth import Credentials
from qmailremote.control import route_entries
from qmailremote.routes import Route, build_table, find_route, \
    find_sender_route

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


# --- credentials (issue 11): the three dialects ------------------------------

SECRET = b"S3cret"


@pytest.mark.parametrize("value, relay, port, user, password", [
    # sagredo: relay:port|user|password
    (b"relay.example:587|alice|S3cret", b"relay.example", 587, b"alice",
     b"S3cret"),
    (b"relay.example|alice|S3cret", b"relay.example", 25, b"alice",
     b"S3cret"),
    (b"relay.example:587|alice|pa:ss|wo|rd:", b"relay.example", 587,
     b"alice", b"pa:ss|wo|rd:"),
    (b"relay.example:587|alice|pass word", b"relay.example", 587, b"alice",
     b"pass word"),
    (b"relay.example:587|al:ice@x.example|S3cret", b"relay.example", 587,
     b"al:ice@x.example", b"S3cret"),
    (b"relay.example:587|al ice|S3cret", b"relay.example", 587, b"al ice",
     b"S3cret"),
    (b"relay.example:90037|u|p", b"relay.example", 24501, b"u", b"p"),
    (b"relay.example:587x|u|p", b"relay.example", 587, b"u", b"p"),
    (b"[192.0.2.1]:465|u||", b"[192.0.2.1]", 465, b"u", b"|"),
    (b"relay.example:|u|p", b"relay.example", 0, b"u", b"p"),
    # s/qmail: relay;port|user|password (the relay may then hold ':')
    (b"relay.example;587|alice|S3cret", b"relay.example", 587, b"alice",
     b"S3cret"),
    (b"relay.example;587|alice|pa:ss|wo|rd", b"relay.example", 587,
     b"alice", b"pa:ss|wo|rd"),
    (b"[2001:db8::1];587|alice|S3cret", b"[2001:db8::1]", 587, b"alice",
     b"S3cret"),
    (b"relay.example;|u|p", b"relay.example", 0, b"u", b"p"),
    # indimail, qmail-ldap: relay[:port] user password [envstr...]
    (b"relay.example:587 alice S3cret", b"relay.example", 587, b"alice",
     b"S3cret"),
    (b"relay.example alice S3cret", b"relay.example", 25, b"alice",
     b"S3cret"),
    (b"relay.example:587 alice pa:ss|w|rd", b"relay.example", 587,
     b"alice", b"pa:ss|w|rd"),
    (b"relay.example:587   alice   S3cret", b"relay.example", 587, b"alice",
     b"S3cret"),
    (b"relay.example:587 alice S3cret QMAILQUEUE=x FOO=bar", b"relay.example",
     587, b"alice", b"S3cret"),
    (b"relay.example:587:10:3 alice S3cret", b"relay.example", 587,
     b"alice", b"S3cret"),
    (b"relay.example:587 a|b S3cret", b"relay.example", 587, b"a|b",
     b"S3cret"),
])
def test_credentials_in_each_dialect(value, relay, port, user, password):
    route = find_route(build_table([b"example.com:" + value]), b"example.com")
    assert (route.relay, route.port, route.user, route.password) == \
        (relay, port, user, password)
    assert route.has_credentials


@pytest.mark.parametrize("value, relay, port", [
    # Incomplete credentials: 1.06's meaning, byte for byte.
    (b"relay.example:587|alice", b"relay.example", 587),
    (b"relay.example:587|alice|", b"relay.example", 587),
    (b"relay.example:587||S3cret", b"relay.example", 587),
    (b"relay.example|alice|", b"relay.example|alice|", 25),
    (b"relay.example|", b"relay.example|", 25),
    (b"relay.example;587|alice", b"relay.example;587|alice", 25),
    (b"relay.example:587 alice", b"relay.example", 587),
    (b"relay.example alice", b"relay.example alice", 25),
    (b"relay.example:587 ", b"relay.example", 587),
    (b"relay.example:587  alice  ", b"relay.example", 587),
    (b"relay.example ", b"relay.example ", 25),
    (b"relay.example;587", b"relay.example;587", 25),
    # A space before the first '|': the space form, with one field.
    (b"relay.example:587 x|u|p", b"relay.example", 587),
])
def test_incomplete_credentials_keep_106_meaning(value, relay, port):
    route = find_route(build_table([b"example.com:" + value]), b"example.com")
    assert (route.relay, route.port) == (relay, port)
    assert not route.has_credentials
    assert (route.user, route.password) == (None, None)


def test_credentials_through_the_control_file():
    """control_readfile's rules first: comments, trailing whitespace."""
    data = (b"# a.example:r:1|u|p\n"
            b"a.example:relay.example:587|alice|S3 cret  \t\n"
            b"b.example:relay.example;2525|bob|x:y|z\n"
            b"c.example:relay.example:26 carol S3cret envstr\n"
            b"d.example:relay.example:27\n")
    table = build_table(route_entries(data))
    got = {host: find_route(table, host) for host in
           (b"a.example", b"b.example", b"c.example", b"d.example")}
    assert [(r.relay, r.port, r.user, r.password) for r in got.values()] == [
        (b"relay.example", 587, b"alice", b"S3 cret"),
        (b"relay.example", 2525, b"bob", b"x:y|z"),
        (b"relay.example", 26, b"carol", b"S3cret"),
        (b"relay.example", 27, None, None),
    ]


@pytest.mark.parametrize("value", [
    b"relay.example:587|alice|S3cret", b"relay.example;587|alice|S3cret",
    b"relay.example:587 alice S3cret", b"relay.example alice S3cret env",
])
def test_route_repr_hides_the_password(value):
    route = find_route(build_table([b":" + value]), b"x")
    for text in (repr(route), str(route), repr([route]),
                 repr(Credentials(route.user, route.password, route.relay))):
        assert SECRET not in text.encode()
        assert "<hidden>" in text
        assert "alice" in text          # the user is no secret


def test_route_repr_without_credentials():
    assert repr(Route(b"relay.example", 2525)) == \
        "Route(b'relay.example', 2525)"


# --- control/authsenders -----------------------------------------------------

SENDERS = build_table([
    b"a@mail.b.example:whole|u|p",
    b"@mail.b.example:at|u|p",
    b".b.example:dot-b|u|p",
    b".example:dot|u|p",
    b":default|u|p",
    b"mail.b.example:no-dot|u|p",
    b"@b.example:at-parent|u|p",
])


@pytest.mark.parametrize("sender, relay", [
    (b"a@mail.b.example", b"whole"),
    (b"A@MAIL.B.EXAMPLE", b"whole"),
    (b"z@mail.b.example", b"at"),
    (b"z@Mail.B.Example", b"at"),
    (b"z@x.mail.b.example", b"dot-b"),     # ".mail.b.example" is no key
    (b"z@b.example", b"at-parent"),
    (b"z@c.b.example", b"dot-b"),
    (b"z@other.example", b"dot"),
    (b"z@example", b"default"),
    (b"z@mail.b.example.org", b"default"),
    (b"", b"default"),
])
def test_sender_lookup_order(sender, relay):
    route = find_sender_route(SENDERS, sender)
    assert (route.relay, route.user, route.password) == (relay, b"u", b"p")


def test_sender_lookup_without_match_or_with_empty_value():
    table = build_table([b"a@b.example:", b"@c.example:relay:26",
                         b"@D.EXAMPLE:relay:27 u p"])
    assert find_sender_route(table, b"a@b.example") is None
    assert find_sender_route(table, b"x@b.example") is None
    assert find_sender_route(build_table([]), b"a@b.example") is None
    plain = find_sender_route(table, b"x@c.example")
    assert (plain.relay, plain.port, plain.has_credentials) == \
        (b"relay", 26, False)
    creds = find_sender_route(table, b"x@d.example")
    assert (creds.relay, creds.port, creds.user, creds.password) == \
        (b"relay", 27, b"u", b"p")


def test_sender_lookup_last_duplicate_wins():
    table = build_table([b"@b.example:first|u|p", b"@B.Example:second|u|p"])
    assert find_sender_route(table, b"a@b.example").relay == b"second"
