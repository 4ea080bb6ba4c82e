"""Address mangling and RFC 821 quoting (reference section 6)."""

import pytest

from qmailremote.delivery import mangle, quote


@pytest.mark.parametrize("argument, sent", [
    (b"a b@x", b'"a b"@x'), (b"@x", b'""@x'), (b"@", b'""@'),
    (b"a@", b"a@"), (b"a@b@x", b'"a@b"@x'), (b".a@x", b'".a"@x'),
    (b"a.@x", b'"a."@x'), (b"a..b@x", b'"a..b"@x'),
    (b'a"b@x', b'"a\\"b"@x'), (b"a\\b@x", b'"a\\\\b"@x'),
    ("é@x".encode(), '"é"@x'.encode()),
    (b"a(b)@X.Example.", b'"a(b)"@X.Example.'),
    (b"!#$%&'*+-/=?^_`{|}~.x@y", b"!#$%&'*+-/=?^_`{|}~.x@y"),
    (b"a.b+c=d/e@[1.2.3.4]", b"a.b+c=d/e@[1.2.3.4]"),
    (b"", b""), (b"bare word with space", b"bare word with space"),
    (b"a\r\nRSET@x", b'"a\\\r\\\nRSET"@x'),
])
def test_mangle(argument, sent):
    assert mangle(argument) == sent


@pytest.mark.parametrize("ch", b"\t\x7f,:;<>[]")
def test_specials_are_quoted_raw(ch):
    assert mangle(b"a" + bytes([ch]) + b"b@x") == \
        b'"a' + bytes([ch]) + b'b"@x'


def test_domain_replaced_by_canonical_name():
    assert mangle(b"c@cname.example", b"aonly.example") == b"c@aonly.example"


def test_quote_leaves_atoms():
    assert quote(b"plain") == b"plain"
