"""Deterministic, realistic test messages for the end-to-end benchmark.

A message is a block of RFC 5322 headers, a blank line, then a text body of
76-byte lines (75 printable ASCII characters and LF), as a mail client or a
base64 encoder would fold it.  Exactly one body line in every 50 (2 %)
starts with ``.`` (some with ``..``), so dot-stuffing is exercised at a
fixed rate (a last, shorter group gets one too, so even a 1 KB message has
one); the line within each group of 50, and every line's text, come
from a seeded generator, so the same size and seed always give the same
bytes.  The input has LF line endings and no CR, as a qmail queue file
does; the last line is shortened so that the file has exactly the size
asked for, and it always ends in LF.

``encode()`` turns such a file into what goes on the wire after the server's
354 reply (reference section 13): LF as CRLF, a ``.`` at a line start
doubled, then ``.\\r\\n``.

    python benchmarks/messages.py 1M /tmp/m        # writes /tmp/m, /tmp/m.smtp
"""

import random
import sys

__all__ = ["LINE", "DOT_EVERY", "parse_size", "format_size", "generate",
           "encode", "describe"]

LINE = 76          # bytes per body line, LF included
DOT_EVERY = 50     # one line in this many starts with "."
_POOL = 4096       # distinct plain lines the body is drawn from
_GROUPS = 1024     # groups of DOT_EVERY lines written per chunk
_ALPHABET = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
             "0123456789     ,.;:-'()!?/")
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text):
    """``"1K"`` -> 1024, ``"100M"`` -> 104857600, ``"1G"``, ``"4096"``."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    return int(text[:len(text) - len(unit)]) * _UNITS[unit]


def format_size(size):
    """1048576 -> ``"1M"``; sizes that are not whole units stay bytes."""
    for unit in "GMK":
        if size >= _UNITS[unit] and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def _headers(rng, size):
    stamp = rng.randrange(1 << 32)
    return (
        f"Received: (qmail {rng.randrange(1000, 99999)} invoked by uid 1000);"
        f" 25 Nov 2024 17:54:{rng.randrange(60):02d} -0000\n"
        f"Message-ID: <{stamp:08x}.{size}@bench.example>\n"
        "Date: Mon, 25 Nov 2024 17:54:00 +0000\n"
        "From: Bench Sender <sender@bench.example>\n"
        "To: Bench Recipient <rcpt@bench.example>\n"
        f"Subject: qmailremote end-to-end benchmark, {format_size(size)}\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "Content-Transfer-Encoding: 7bit\n"
        "\n").encode("ascii")


def _text(rng, n):
    """n printable characters that neither start nor end with a space."""
    chars = rng.choices(_ALPHABET, k=n)
    chars[0] = rng.choice(_ALPHABET[:62])
    chars[-1] = rng.choice(_ALPHABET[:62])
    return "".join(chars)


def generate(path, size, seed=0):
    """Write the message of *size* bytes for *seed* to *path*.

    Returns ``{"bytes", "lines", "dot_lines"}``.
    """
    rng = random.Random(f"qmailremote-bench:{seed}")
    plain = [(_text(rng, LINE - 1) + "\n").encode("ascii")
             for _ in range(_POOL)]
    # Lines that start with "." (one in eight of them with "..").
    dotted = [("." * (1 + (i % 8 == 0)) + _text(rng, LINE - 2 - (i % 8 == 0))
               + "\n").encode("ascii") for i in range(_POOL // 8)]
    head = _headers(rng, size)
    if len(head) >= size:
        head = head[:max(size - 1, 0)] + b"\n" if size else b""
    lines = head.count(b"\n")
    dots = 0
    left = size - len(head)
    with open(path, "wb") as out:
        out.write(head)
        while left >= LINE:
            count = min(left // LINE, _GROUPS * DOT_EVERY)
            chunk = rng.choices(plain, k=count)
            for start in range(0, count, DOT_EVERY):
                group = min(DOT_EVERY, count - start)
                chunk[start + rng.randrange(group)] = rng.choice(dotted)
                dots += 1
            out.write(b"".join(chunk))
            lines += count
            left -= count * LINE
        if left:  # the short last line: exactly `left` bytes, LF included
            out.write(plain[0][:left - 1] + b"\n")
            lines += 1
    return {"bytes": size, "lines": lines, "dot_lines": dots}


def encode(src, dst, chunk=1 << 24):
    """Write to *dst* the SMTP body (after 354) for the message in *src*.

    Any input whose lines all end in LF: LF -> CRLF, leading ``.`` doubled,
    ``.\\r\\n`` appended.  Returns the number of bytes written.
    """
    written = 0
    carry = b""
    with open(src, "rb") as inp, open(dst, "wb") as out:
        while True:
            data = inp.read(chunk)
            block = carry + data
            cut = block.rfind(b"\n") + 1 if data else len(block)
            block, carry = block[:cut], block[cut:]
            if block:
                # `block` starts at a line start: the first line's dot too.
                stuffed = (b"\n" + block).replace(b"\n.", b"\n..")[1:]
                stuffed = stuffed.replace(b"\n", b"\r\n")
                out.write(stuffed)
                written += len(stuffed)
            if not data:
                break
        if carry:
            raise ValueError(f"{src}: partial final line")
        out.write(b".\r\n")
    return written + 3


def describe(info):
    share = 100.0 * info["dot_lines"] / max(info["lines"], 1)
    return (f"{info['bytes']:,} bytes, {info['lines']:,} lines, "
            f"{share:.1f}% starting with '.'")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.rstrip().rsplit("\n", 1)[-1].strip())
    size = parse_size(sys.argv[1])
    info = generate(sys.argv[2], size)
    encoded = encode(sys.argv[2], sys.argv[2] + ".smtp")
    print(f"{sys.argv[2]}: {describe(info)}; {sys.argv[2]}.smtp: "
          f"{encoded:,} bytes")
