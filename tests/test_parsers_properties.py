"""Property tests: the control, smtproutes, literal and quoting parsers.

Each parser is checked on random bytes against a byte-at-a-time
transcription of the netqmail routine it mirrors (control.c, constmap.c,
ip.c, quote.c); none of them may raise.  Digit runs longer than CPython's
int-to-str limit (4300 digits) are checked against an unbounded reference.
"""

import sys

from hypothesis import given, settings, strategies as st

from qmailremote.control import parse_int, route_entries, scan_ulong
from qmailremote.delivery import mangle
from qmailremote.mx import ip_literal
from qmailremote.routes import build_table, find_route

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


@SETTINGS
@given(st.lists(some_bytes, max_size=8), some_bytes)
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
        relay, colon, port = expected.partition(b":")
        assert route.relay == relay
        digits = b""
        for ch in port:
            if not 48 <= ch <= 57:
                break
            digits += bytes([ch])
        assert route.port == (int(digits or b"0") % 65536 if colon else 25)


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
