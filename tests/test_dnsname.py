"""Domain names in wire form: the product's codec against dnspython.

qmailremote encodes query names and decodes answer names itself, the way
glibc's resolver does (``ns_name_pton``, ``dn_expand``).  dnspython is the
reference here wherever the two libraries agree, and the glibc-specific
cases are pinned by hand.
"""

import struct

import dns.exception
import dns.name
import pytest
from hypothesis import given, settings, strategies as st

from qmailremote.mx import name_from_wire, name_to_wire

SETTINGS = settings(max_examples=400, deadline=None)
label_bytes = st.lists(st.one_of(st.sampled_from(b"aZ09-._\\\"()@$; \x00\xff"),
                                 st.integers(0, 255)), min_size=1,
                       max_size=70).map(bytes)
names = st.lists(label_bytes, min_size=0, max_size=6)


def dnspython_text(wire):
    name = dns.name.from_wire(wire, 0)[0]
    return name.to_text(omit_final_dot=True).encode("ascii")


@SETTINGS
@given(names)
def test_decoding_matches_dnspython(labels):
    try:
        wire = dns.name.Name(labels + [b""]).to_wire()
    except dns.exception.DNSException:
        return  # not a valid name: nothing to compare
    text, used = name_from_wire(wire, 0)
    assert (text, used) == (dnspython_text(wire), len(wire))


@SETTINGS
@given(names)
def test_text_round_trips_to_the_same_wire(labels):
    try:
        wire = dns.name.Name(labels + [b""]).to_wire()
    except dns.exception.DNSException:
        return
    text = name_from_wire(wire, 0)[0]
    assert name_to_wire(text) == wire
    if labels:  # "." is the root; ".." is not a name
        assert name_to_wire(text + b".") == wire


@SETTINGS
@given(st.lists(st.sampled_from([b"a", b"B", b"\\.", b"\\065", b"\\\\", b".",
                                 b"x" * 30, b"\xc3\xa9", b"-", b"\\300"]),
                max_size=12).map(b"".join))
def test_encoding_matches_dnspython(text):
    try:
        expected = dns.name.from_text(text).to_wire()
    # dnspython < 2.9 (2.7 is the last for Python 3.9, 2.8 for 3.10) lets
    # an escape above \255 through to struct.pack
    except (dns.exception.DNSException, struct.error):
        expected = None
    assert name_to_wire(text) == expected


@pytest.mark.parametrize("text, wire", [
    (b"", b"\0"), (b".", b"\0"), (b"a", b"\1a\0"), (b"a.", b"\1a\0"),
    (b"A.b", b"\1A\1b\0"), (b"a\\.b", b"\3a.b\0"), (b"\\097", b"\1a\0"),
    (b"a\\", b"\1a\0"),  # glibc drops a final lone backslash
    (b"x" * 63, b"\x3f" + b"x" * 63 + b"\0"),
])
def test_encoding_cases(text, wire):
    assert name_to_wire(text) == wire


@pytest.mark.parametrize("text", [
    b"..", b"a..b", b".a", b"x" * 64, b"\\256", b"\\1", b"\\12x",
    b".".join([b"x" * 63] * 4) + b".x",  # 256 bytes in wire form
])
def test_names_that_cannot_be_encoded(text):
    assert name_to_wire(text) is None


def test_compression_pointer_and_loop():
    message = b"\x07example\x00" + b"\x03www\xc0\x00" + b"\xc0\x0f"
    assert name_from_wire(message, 9) == (b"www.example", 6)
    assert name_from_wire(message, 0) == (b"example", 9)
    loop = b"\xc0\x00"
    with pytest.raises(ValueError):
        name_from_wire(loop, 0)
    with pytest.raises(ValueError):
        name_from_wire(b"\x03ab", 0)  # cut short
    with pytest.raises(ValueError):
        name_from_wire(b"\x40abc\x00", 0)  # unknown label type


def test_forward_pointer_is_followed_like_glibc():
    message = b"\xc0\x02\x01a\x00"
    assert name_from_wire(message, 0) == (b"a", 2)


def test_root_and_escapes():
    assert name_from_wire(b"\0", 0) == (b".", 1)
    assert name_from_wire(b"\x04a.b\x01\0", 0) == (b"a\\.b\\001", 6)
