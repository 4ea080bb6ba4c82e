"""Property tests: the control, smtproutes, literal and quoting parsers.

Each parser is checked on random bytes against a byte-at-a-time
transcription of the netqmail routine it mirrors (control.c, constmap.c,
ip.c, quote.c); none of them may raise.  Digit runs longer than CPython's
int-to-str limit (4300 digits) are checked against an unbounded reference.

smtproutes and authsenders values with SMTP AUTH credentials (issue 11) are
checked against a regex oracle written from routes.py's docstring: a value
it finds no credentials in keeps 1.06's relay and port; lines rendered in
each dialect read back as the fields they were made from.
"""

import re
import sys

from hypothesis import example, given, settings, strategies as st

from qmailremote.control import parse_int, route_entries, scan_ulong
from qmailremote.delivery import mangle
from qmailremote.mx import ip_literal
from qmailremote.routes import (Route, build_table, find_route,
                                find_sender_route)

# Bytes that matter to these parsers, plus anything else now and then.
special = st.sampled_from(b"\n\r\t :#.\0[]@\"\\0123456789aAzZ")
some_bytes = st.lists(st.one_of(special, st.integers(0, 255)),
                      max_size=80).map(bytes)
SETTINGS = settings(max_examples=300, deadline=None)


def readfile_oracle(data):
    """control_readfile: lines, trailing LF/space/TAB stripped, NUL-joined."""
    kept = b""
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos:end + 1]
        pos = len(data) if end < 0 else end + 1
        while line and line[-1] in b"\n \t":
            line = line[:-1]
        line += b"\0"
        if line[0] != 0 and line[0] != 35:
            kept += line
    return kept.split(b"\0")[:-1] if kept else []


def constmap_oracle(entries, key):
    """constmap(): the most recently added entry whose key matches."""
    for entry in reversed(entries):
        colon = entry.find(b":")
        if colon < 0:
            continue
        if entry[:colon].lower() == key.lower():
            return entry[colon + 1:]
    return None


@SETTINGS
@given(some_bytes)
def test_route_entries(data):
    assert route_entries(data) == readfile_oracle(data)


def port_oracle(text):
    """timeoutconn's port: scan_ulong's leading digits, modulo 65536."""
    digits = b""
    for ch in text:
        if not 48 <= ch <= 57:
            break
        digits += bytes([ch])
    return int(digits or b"0") % 65536


def route_106(value):
    """netqmail 1.06: relay up to the first ':', the port after it."""
    relay, colon, port = value.partition(b":")
    return relay, port_oracle(port) if colon else 25


# The credential forms of issue 11, from routes.py's docstring: the relay
# and its port run to the first '|' or space, whichever comes first.
#   '|': user = up to the second '|' (non-empty), password = all the rest
#        (non-empty; ':' and '|' included); the port follows ';' when the
#        relay part holds one (s/qmail), else ':' (sagredo);
#   ' ': user and password = the first two space-separated fields (no
#        space in either; further fields ignored); the port follows ':'.
_BAR_FORM = re.compile(rb"([^| ]*)\|([^|]+)\|(.+)", re.S)
_SPACE_FORM = re.compile(rb"([^| ]*) +([^ ]+) +([^ ]+)(?: .*)?", re.S)


def credentials_oracle(value):
    """(relay, port, user, password) when *value* has credentials."""
    match = _BAR_FORM.fullmatch(value)
    if match is not None:
        hostport, user, password = match.groups()
        if b";" in hostport:
            relay, _, port = hostport.partition(b";")
            return relay, port_oracle(port), user, password
        return (*route_106(hostport), user, password)
    match = _SPACE_FORM.fullmatch(value)
    if match is not None:
        hostport, user, password = match.groups()
        return (*route_106(hostport), user, password)
    return None


def check_route(route, value):
    """*route* is what *value* means: credentials, or 1.06's relay/port."""
    found = credentials_oracle(value)
    if found is None:
        assert (route.relay, route.port) == route_106(value)
        assert (route.user, route.password) == (None, None)
        assert not route.has_credentials
    else:
        assert (route.relay, route.port, route.user, route.password) == found
        assert route.has_credentials


@SETTINGS
@given(st.lists(some_bytes, max_size=8), some_bytes)
# Credentials (issue 11): 1.06 would say relay "relay user pass", port 25.
@example([b"h:relay user pass"], b"h")
@example([b"h:relay:26|u|p:w|d"], b"h")
def test_route_lookup(entries, host):
    expected = None
    for i in range(len(host) + 1):
        if i == 0 or i == len(host) or host[i:i + 1] == b".":
            expected = constmap_oracle(entries, host[i:])
            if expected is not None:
                break
    route = find_route(build_table(entries), host)
    if not expected:
        assert route is None
    else:
        # 1.06's relay and port unless the value has credentials.
        check_route(route, expected)


# Values rich in what the credential forms are made of: random bytes, and
# runs of short words between separators.
route_special = st.sampled_from(b"|;: :|0123456789aZ.[]\t\r#=")
route_values = st.one_of(
    st.lists(st.one_of(route_special, route_special, st.integers(0, 255)),
             max_size=40).map(bytes),
    st.lists(st.one_of(
        st.sampled_from([b"|", b" ", b";", b":", b"  ", b"||", b"relay",
                         b"587", b"u", b"p:w|d"]),
        st.binary(max_size=4)), max_size=8).map(b"".join),
)


@settings(max_examples=1000, deadline=None)
@given(route_values)
def test_values_without_credentials_keep_106_meaning(value):
    """Issue 11: a value without credentials (per the oracle above) gives
    exactly 1.06's relay and port; one with them, the oracle's fields."""
    route = find_route(build_table([b"h:" + value]), b"h")
    if not value:
        assert route is None
        return
    check_route(route, value)


# --- credentials: render a line in each dialect, parse it back ---------------

def _no(*excluded):
    """1-12 bytes, none of *excluded*; often printable ASCII."""
    drop = bytes(excluded)
    return st.one_of(
        st.binary(min_size=1, max_size=12),
        st.text(st.characters(min_codepoint=33, max_codepoint=126),
                min_size=1, max_size=12).map(str.encode),
    ).map(lambda b: b.translate(None, drop)).filter(bool)


KEYS = st.from_regex(rb"[a-z0-9-]{1,10}(\.[a-z0-9-]{1,10}){0,3}",
                     fullmatch=True)
# Control file lines: no NUL, no LF; the end of a line loses its spaces
# and TABs (control_readfile), so a password never ends with one.
LINE_SAFE = (0, 10)
PORTS = st.one_of(st.none(), st.integers(0, 10 ** 7).flatmap(
    lambda n: st.sampled_from([b"%d" % n, b"0%d" % n])))


def _password(*excluded):
    return _no(*LINE_SAFE, *excluded).filter(
        lambda p: p[-1:] not in (b" ", b"\t"))


@st.composite
def credential_lines(draw):
    """(dialect, key, line, expected (relay, port, user, password))."""
    dialect = draw(st.sampled_from(["sagredo", "sqmail", "indimail"]))
    key = draw(KEYS)
    port_text = draw(PORTS)
    port = 25 if port_text is None else int(port_text) % 65536
    if dialect == "sagredo":
        relay = draw(_no(*LINE_SAFE, *b"|;: "))
        user = draw(_no(*LINE_SAFE, *b"|"))
        password = draw(_password())
        hostport = relay + (b"" if port_text is None else b":" + port_text)
        line = hostport + b"|" + user + b"|" + password
    elif dialect == "sqmail":
        relay = draw(_no(*LINE_SAFE, *b"|; "))       # ':' allowed (IPv6)
        user = draw(_no(*LINE_SAFE, *b"|"))
        password = draw(_password())
        if port_text is None and b":" in relay:
            port_text, port = b"25", 25   # else 1.06 would split at ':'
        hostport = relay + (b"" if port_text is None else b";" + port_text)
        line = hostport + b"|" + user + b"|" + password
    else:
        relay = draw(_no(*LINE_SAFE, *b"|;: "))
        user = draw(_no(*LINE_SAFE, *b" "))
        password = draw(_password(*b" "))
        extra = b"".join(b" " * draw(st.integers(1, 3)) + field for field in
                         draw(st.lists(_no(*LINE_SAFE, *b" "), max_size=2)))
        penalty = draw(st.sampled_from([b"", b":10:3"]))
        hostport = relay + (b"" if port_text is None else
                            b":" + port_text + penalty)
        gap = b" " * draw(st.integers(1, 3))
        line = hostport + gap + user + gap + password + extra
    return dialect, key, key + b":" + line, (relay, port, user, password)


@settings(max_examples=300, deadline=None)
@given(credential_lines())
def test_credentials_round_trip(case):
    """A line rendered in its dialect reads back as the same fields, from
    a control file, and the oracle agrees."""
    dialect, key, line, expected = case
    table = build_table(route_entries(b"# comment\n" + line + b"\n"))
    route = find_route(table, key)
    assert (route.relay, route.port, route.user, route.password) == expected
    assert credentials_oracle(line.partition(b":")[2]) == expected
    # The repr never depends on the password.
    assert repr(route) == repr(Route(route.relay, route.port, route.user,
                                     b"other"))
    assert "<hidden>" in repr(route)


# --- control/authsenders -----------------------------------------------------

SENDER_PARTS = st.sampled_from([b"a", b"B", b"@", b".", b"x.", b"@c", b"D"])
SENDERS = st.lists(SENDER_PARTS, max_size=6).map(b"".join)


@SETTINGS
@given(st.lists(st.tuples(st.one_of(SENDERS, SENDERS.map(b"@".__add__),
                                    SENDERS.map(b".".__add__)),
                          st.sampled_from([b"", b"r1", b"r2|u|p",
                                           b"r3:26 u p", b"r4;27|u|p:q"])),
                max_size=8),
       SENDERS)
def test_sender_route_lookup(pairs, sender):
    """Keys: the whole address, then each suffix starting at '@' or '.',
    longest first, then the empty key; case-insensitive, the last
    duplicate wins; an empty value means no sender route."""
    entries = [key + b":" + value for key, value in pairs]
    candidates = [sender] + [sender[i:] for i in range(1, len(sender))
                             if sender[i:i + 1] in (b"@", b".")] + [b""]
    expected = None
    for key in candidates:
        expected = constmap_oracle(entries, key)
        if expected is not None:
            break
    route = find_sender_route(build_table(entries), sender)
    if not expected:
        assert route is None
    else:
        check_route(route, expected)


@SETTINGS
@given(some_bytes)
def test_parse_int(line):
    value = 0
    count = 0
    for ch in line:
        if not 48 <= ch <= 57:
            break
        value = (value * 10 + ch - 48) % (1 << 64)  # scan_ulong
        count += 1
    expected = 1200 if not count else (value + (1 << 31)) % (1 << 32) - (1 << 31)
    assert parse_int(line, 1200) == expected


def scan_quad(text):
    parts = []
    pos = 0
    for n in range(4):
        if n:
            if text[pos:pos + 1] != b".":
                return None, 0
            pos += 1
        start = pos
        value = 0
        while pos < len(text) and 48 <= text[pos] <= 57:
            value = (value * 10 + text[pos] - 48) % (1 << 64)
            pos += 1
        if pos == start:
            return None, 0
        parts.append(value % 256)
    return bytes(parts), pos


@SETTINGS
@given(st.one_of(some_bytes, st.tuples(*[st.integers(0, 999)] * 4).map(
    lambda t: b".".join(b"%d" % x for x in t)).flatmap(
        lambda q: st.sampled_from([q, b"[" + q + b"]", q + b"x"]))))
def test_ip_literal(text):
    expected = None
    if text:
        ip, end = scan_quad(text)
        if ip is not None and end == len(text):
            expected = ip
        elif text[:1] == b"[":
            ip, end = scan_quad(text[1:])
            if ip is not None and text[1 + end:] == b"]":
                expected = ip
    assert ip_literal(text) == expected


OK = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
         b"!#$%&'*+-/=?^_`{|}~.")


@SETTINGS
@given(some_bytes)
def test_mangle(address):
    at = address.rfind(b"@")
    if at < 0:
        assert mangle(address) == address
        return
    box = address[:at]
    need = (not box or any(ch not in OK for ch in box) or box[0] == 46 or
            box[-1] == 46 or any(box[i] == box[i + 1] == 46
                                 for i in range(len(box) - 1)))
    if need:
        quoted = b'"'
        for ch in box:
            if ch in b'\r\n"\\':
                quoted += b"\\"
            quoted += bytes([ch])
        box = quoted + b'"'
    assert mangle(address) == box + b"@" + address[at + 1:]


# Digit runs from none to ~8000 digits: beyond CPython's default limit of
# 4300 digits for int(), with zero padding and junk around them.
long_digits = st.tuples(st.text("0123456789", min_size=1, max_size=100),
                        st.integers(1, 80)).map(
    lambda t: (t[0] * t[1]).encode())
around = st.sampled_from([b"", b"x", b".", b":", b" 7", b"\n"])


def unbounded_int(digits):
    """int() of any length: the reference, computed without the limit."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return int(digits)
    finally:
        sys.set_int_max_str_digits(limit)


@SETTINGS
@given(around, long_digits, around, st.integers(0, 2))
def test_scan_ulong_long_runs(before, digits, after, pad):
    text = before + b"0" * pad + digits + after
    pos = len(before)
    value, end = scan_ulong(text, pos)
    assert end == pos + pad + len(digits)
    assert value == unbounded_int(digits) % (1 << 64)
    assert scan_ulong(text, len(text)) == (0, len(text))


@SETTINGS
@given(long_digits, around)
def test_long_numbers_do_not_raise(digits, after):
    reference = unbounded_int(digits)
    wrapped = reference % (1 << 32)
    assert parse_int(digits + after, 1200) == (
        wrapped - (1 << 32) if wrapped >= 1 << 31 else wrapped)
    route = find_route(build_table([b":relay:" + digits + after]), b"h")
    assert route.port == reference % 65536
    assert ip_literal(b"1.2.3." + digits) == bytes([1, 2, 3,
                                                   reference % 256])
    assert ip_literal(digits) is None
