"""Property tests: random input and chunk splits; compiled == pure == oracle.

The oracles work on the whole message at once (``blast_by_lines``) or
transcribe netqmail byte by byte (``netqmail_blast``, ``Smtpcode`` in
:mod:`test_kernel`), so a bug in how the kernel carries state across chunk
boundaries cannot hide in them.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmailremote import _fast_py
from qmailremote.errors import ConnectionDied
from test_kernel import (Peer, encode_chunks, netqmail_blast, smtpcode_all,
                         writer_body)

PROPERTIES = settings(max_examples=250, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])


def blast_by_lines(stdin):
    """blast() on a whole message: ``(encoded bytes, partial)``."""
    *lines, last = stdin.split(b"\n")
    out = b"".join(b"." * line.startswith(b".") + line + b"\r\n"
                   for line in lines)
    if last:
        return out + b"." * last.startswith(b".") + last, True
    return out + b".\r\n", False


def _runs(byte):
    # Long runs push lines and blocks across netqmail's 1024-byte buffer.
    return st.integers(0, 2100).map(lambda n: byte * n)


# Message bytes, biased towards what blast() treats specially.
MESSAGES = st.lists(
    st.one_of(
        st.sampled_from([b"\n", b".", b"\r", b"\r\n", b".\n", b"\n.", b".."]),
        st.binary(max_size=16),
        _runs(b"a"),
        _runs(b"\n"),
    ),
    max_size=30,
).map(b"".join)


def _split(data, draw):
    """Cut *data* at random points (empty pieces included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    edges = [0] + cuts + [len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


@PROPERTIES
@given(message=MESSAGES, data=st.data())
def test_encoder(kernel, message, data):
    chunks = _split(message, data.draw)
    got = encode_chunks(kernel, chunks)
    assert got == encode_chunks(_fast_py, chunks)
    assert got == blast_by_lines(message)


SIZES = st.one_of(st.just(None), st.integers(0, 5000))


@PROPERTIES
@given(message=MESSAGES, size=SIZES, data=st.data())
def test_writer(kernel, message, size, data):
    chunks = _split(message, data.draw)
    commits = data.draw(st.lists(st.booleans(), min_size=len(chunks),
                                 max_size=len(chunks)))
    wire, partial, progress = netqmail_blast(message)
    reuse = data.draw(st.booleans())
    got = writer_body(kernel, chunks, size, progress, commits.__getitem__,
                      reuse)
    assert got == (wire, partial)
    assert got == writer_body(_fast_py, chunks, size)
    encoded, _ = blast_by_lines(message)
    if partial:
        # Whole blocks only: what is left is less than netqmail's buffer.
        assert encoded.startswith(wire)
        assert len(encoded) - len(wire) <= 1024
    else:
        assert wire == encoded


# Reply lines: a "code" that is often three digits, a separator, some text
# (sometimes longer than the 5000-byte cap) and an ending, all of which may
# be malformed.
CODES = st.one_of(
    st.integers(0, 999).map(lambda n: b"%03d" % n),
    st.binary(max_size=4),
    st.sampled_from([b"25\r", b"2\n0", b" 25", b"abc"]),
)
SEPARATORS = st.sampled_from([b"-", b" ", b"", b"\r", b"\n", b"-\n", b"--"])
TEXTS = st.one_of(
    st.binary(max_size=24),
    st.sampled_from([b"ok", b"a\rb\0c\xe9", b"x\r\r", b"-"]),
    st.tuples(st.sampled_from([b"x", b"\r", b"-"]),
              st.integers(0, 6000)).map(lambda t: t[0] * t[1]),
)
ENDINGS = st.sampled_from([b"\r\n", b"\n", b"\r\n", b"", b"\r"])
REPLY_STREAMS = st.lists(
    st.tuples(CODES, SEPARATORS, TEXTS, ENDINGS).map(b"".join),
    max_size=12,
).map(b"".join)


def _read_replies(kernel, pieces, count):
    reader = kernel.ReplyReader(Peer(pieces))
    replies = [reader.read() for _ in range(count)]
    try:
        reader.read()
    except ConnectionDied:
        return replies
    raise AssertionError("a reply was read past the oracle's EOF")


@PROPERTIES
@given(stream=REPLY_STREAMS, data=st.data())
def test_reply_reader(kernel, stream, data):
    expected = smtpcode_all(stream)
    pieces = _split(stream, data.draw)
    got = _read_replies(kernel, pieces, len(expected))
    assert got == _read_replies(_fast_py, pieces, len(expected))
    assert got == expected
    for code, text, digits in got:
        assert len(text) <= 5000 and b"\r" not in text
        assert 0 <= code < 2 ** 64


def test_blast_by_lines_matches_transcription():
    # The two oracles agree with each other on the awkward cases.
    for message in [b"", b".", b"\n", b".\n.", b"a\r\n.\r\n", b"." * 2000,
                    b"a" * 1023 + b"\nb", b"\n" * 600 + b"."]:
        encoded, partial = blast_by_lines(message)
        wire, partial2, _ = netqmail_blast(message)
        assert partial == partial2
        assert wire == encoded if not partial else encoded.startswith(wire)



# --- body_counts and Writer.chunk (ESMTP SIZE and BDAT) ---------------------

from test_kernel import Wire, bdat, counts_by_lines  # noqa: E402


def _counted(kernel, chunks, at_line_start=True):
    """body_counts over *chunks*, the line state carried between them."""
    lfs = dots = 0
    for chunk in chunks:
        a, b = kernel.body_counts(chunk, at_line_start)
        lfs += a
        dots += b
        if chunk:
            at_line_start = chunk[-1:] == b"\n"
    return lfs, dots


@PROPERTIES
@given(message=MESSAGES, at_line_start=st.booleans(), data=st.data())
def test_body_counts(kernel, message, at_line_start, data):
    chunks = _split(message, data.draw)
    got = _counted(kernel, chunks, at_line_start)
    assert got == _counted(_fast_py, chunks, at_line_start)
    assert got == counts_by_lines(message, at_line_start)
    if at_line_start and message.endswith(b"\n"):
        # SIZE in DATA mode: exactly what the encoder adds, minus ".\r\n".
        encoded, _ = blast_by_lines(message)
        assert len(message) + got[0] + got[1] == len(encoded) - 3


# Short inputs around the 16-byte SIMD blocks, from the bytes that matter
# and their 8-bit look-alikes.
SIMD_INPUTS = st.integers(0, 50).flatmap(lambda n: st.lists(
    st.sampled_from([b"\n", b".", b"a", b"\r", b"\x8a", b"\xae", b"\xff"]),
    min_size=n, max_size=n).map(b"".join))


@PROPERTIES
@given(data=SIMD_INPUTS, at_line_start=st.booleans(),
       offset=st.integers(0, 15))
def test_body_counts_simd(kernel, data, at_line_start, offset):
    # A view at any alignment, with LFs and dots on both sides of it that
    # must not be counted.
    padded = (b"\n." * 8)[:offset] + data + b"\n." * 8
    with memoryview(padded)[offset:offset + len(data)] as view:
        got = kernel.body_counts(view, at_line_start)
    assert got == counts_by_lines(data, at_line_start)
    assert got == _fast_py.body_counts(data, at_line_start)


@PROPERTIES
@given(message=MESSAGES, lasts=st.lists(st.booleans(), max_size=13),
       commands=st.binary(max_size=40), size=SIZES, data=st.data())
def test_writer_chunk(kernel, message, lasts, commands, size, data):
    chunks = _split(message, data.draw)
    lasts = (lasts + [False] * len(chunks))[:len(chunks)]
    outputs = []
    for k in (kernel, _fast_py):
        wire = Wire()
        writer = k.Writer(wire) if size is None else k.Writer(wire, size)
        writer.write(commands)
        for chunk, last in zip(chunks, lasts):
            writer.chunk(chunk, last)
        assert wire.calls == 0, "chunk() sent before flush()"
        writer.flush()
        assert writer.pending == 0 and writer.sent == len(wire.data)
        outputs.append(bytes(wire.data))
    assert outputs[0] == outputs[1]
    assert outputs[0] == commands + b"".join(
        bdat(c, last) for c, last in zip(chunks, lasts))
    # No dot-stuffing: the body bytes are the message's, LF as CRLF.
    body = b"".join(c.replace(b"\n", b"\r\n") for c in chunks)
    assert body == message.replace(b"\n", b"\r\n")
