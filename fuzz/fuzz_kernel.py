"""Differential fuzzing of the kernel: compiled ``_fast`` vs pure ``_fast_py``.

Every input is split into a body and a chunking; both kernels must produce
identical bytes, identical sends and identical errors for the encoder, the
writer, the reply reader, ``body_counts`` (the ESMTP SIZE figures) and
``Writer.chunk`` (BDAT).  Any difference or crash stops the run.

    pip install atheris
    python fuzz/fuzz_kernel.py -max_total_time=60 -rss_limit_mb=2048

Found crashes become vectors in tests/vectors.py.
"""

import sys

import atheris

with atheris.instrument_imports():
    from qmailremote import _fast, _fast_py
    from qmailremote.errors import ConnectionDied, PartialLineError


def _chunks(fdp, data):
    """Split *data* at points the fuzzer chooses."""
    out = []
    pos = 0
    while pos < len(data):
        step = fdp.ConsumeIntInRange(1, max(1, len(data) - pos))
        out.append(data[pos:pos + step])
        pos += step
    return out


def _encode(kernel, chunks):
    encoder = kernel.Encoder()
    out = [encoder.encode(c) for c in chunks]
    try:
        out.append(encoder.finish())
    except PartialLineError:
        out.append(b"<partial>")
    return out


def _write(kernel, commands, chunks, size):
    sent = []
    writer = kernel.Writer(lambda view: sent.append(bytes(view)), size)
    writer.write(commands)
    writer.flush()
    writer.begin_body()
    for chunk in chunks:
        writer.body(chunk)
        sent.append(b"<%d>" % writer.pending)
    try:
        writer.end_body()
        writer.flush()
        sent.append(b"<end>")
    except PartialLineError:
        sent.append(b"<partial>")
    return sent, writer.sent


def _replies(kernel, chunks):
    feed = iter(chunks)
    reader = kernel.ReplyReader(lambda: next(feed, b""))
    out = []
    try:
        while True:
            out.append(reader.read())
    except ConnectionDied:
        out.append("died")
    return out


def _counts(kernel, chunks, at_line_start):
    # Per chunk, the line state carried as message.py carries it, and the
    # same chunks as views at an odd offset of a larger buffer.
    out = []
    for chunk in chunks:
        out.append(kernel.body_counts(chunk, at_line_start))
        padded = b"\n." + chunk + b"\n."
        with memoryview(padded)[2:2 + len(chunk)] as view:
            out.append(kernel.body_counts(view, at_line_start))
        if chunk:
            at_line_start = chunk[-1] == 10
    return out


def _chunk(kernel, commands, chunks, size, lasts):
    sent = []
    writer = kernel.Writer(lambda view: sent.append(bytes(view)), size)
    writer.write(commands)
    for i, chunk in enumerate(chunks):
        writer.chunk(chunk, lasts >> (i % 32) & 1)
        sent.append(b"<%d>" % writer.pending)
        if lasts >> ((i + 7) % 32) & 1:
            writer.flush()
    writer.flush()
    sent.append(b"<%d>" % writer.sent)
    return sent


def one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    size = fdp.ConsumeIntInRange(1, 8192)
    commands = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    at_line_start = fdp.ConsumeBool()
    lasts = fdp.ConsumeIntInRange(0, (1 << 32) - 1)
    body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1 << 16))
    chunks = _chunks(fdp, body)
    for name, run in (("encoder", lambda k: _encode(k, chunks)),
                      ("writer", lambda k: _write(k, commands, chunks, size)),
                      ("replies", lambda k: _replies(k, chunks)),
                      ("body_counts",
                       lambda k: _counts(k, chunks, at_line_start)),
                      ("chunk",
                       lambda k: _chunk(k, commands, chunks, size, lasts))):
        compiled, pure = run(_fast), run(_fast_py)
        if compiled != pure:
            raise AssertionError(f"{name}: compiled and pure kernels differ "
                                 f"on {body!r} in {len(chunks)} chunks")


def main():
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
