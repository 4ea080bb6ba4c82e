# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled hot path: the twin of ``_fast_py.py`` (read that for the spec).

Same names, same behaviour, byte for byte; ``_kernel.py`` is the only
module that imports either.  Input is taken through the buffer protocol and
scanned with ``memchr``/``memcpy``; nothing here knows about sockets.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Resize
from libc.errno cimport EFAULT
from libc.string cimport memchr, memcpy, memmove

from .errors import ConnectionDied, PartialLineError

__all__ = ["Encoder", "Writer", "ReplyReader", "body_counts", "ends_line",
           "HUGESMTPTEXT",
           "MAX_REPLY_TEXT", "QMAIL_BLOCK"]


cdef enum:
    # qmail-remote.c HUGESMTPTEXT: how much reply text is kept.
    C_HUGESMTPTEXT = 5000
    # The most reply text any read may keep (an EHLO reply's keywords).
    C_MAX_REPLY_TEXT = 65536
    # Room for the longest "BDAT <n> LAST\r\n" (n has at most 19 digits).
    C_BDAT_HEADER = 32
    # qmail-remote.c smtptobuf[1024]: netqmail's output buffer size.
    C_QMAIL_BLOCK = 1024
    # Input is encoded in slices of this size, so the output buffer needs at
    # most 2 * C_SLICE bytes of headroom (each input byte gives <= 2 bytes).
    C_SLICE = 65536
    # A Writer's buffer at first (it grows as needed).
    C_INITIAL_BUFFER = 16384

HUGESMTPTEXT = C_HUGESMTPTEXT
MAX_REPLY_TEXT = C_MAX_REPLY_TEXT
QMAIL_BLOCK = C_QMAIL_BLOCK
DEFAULT_BUFFER = 1 << 20

cdef enum ReplyState:
    S_CODE
    S_NEXT
    S_CONT_LINE
    S_SKIP3
    S_LAST_LINE


cdef struct BlastState:
    bint at_line_start
    # Fill of netqmail's 1024-byte smtpto buffer, 0..1024: tells where that
    # buffer would have been flushed (see Writer.flush_committed).
    Py_ssize_t block_fill


cdef inline Py_ssize_t blast_into(BlastState *st, const unsigned char *src,
                                  Py_ssize_t n, unsigned char *dst) noexcept nogil:
    """netqmail blast() on one slice; returns the bytes written to dst.

    dst must have room for 2 * n bytes.
    """
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j = 0
    cdef Py_ssize_t seg
    cdef Py_ssize_t puts
    cdef const unsigned char *lf
    while i < n:
        puts = 0
        if st.at_line_start:
            st.at_line_start = False
            if src[i] == b'.':
                dst[j] = b'.'
                j += 1
                puts = 1
        lf = <const unsigned char *>memchr(src + i, b'\n', <size_t>(n - i))
        seg = (lf - (src + i)) if lf != NULL else (n - i)
        memcpy(dst + j, src + i, <size_t>seg)
        j += seg
        i += seg
        puts += seg
        # One-byte puts: a full buffer is flushed when the next byte comes.
        if puts:
            st.block_fill = ((st.block_fill + puts - 1) & (C_QMAIL_BLOCK - 1)) + 1
        if lf != NULL:
            dst[j] = b'\r'
            dst[j + 1] = b'\n'
            j += 2
            i += 1
            # The two-byte "\r\n" put flushes a buffer holding 1023 bytes.
            if st.block_fill >= C_QMAIL_BLOCK - 1:
                st.block_fill = 2
            else:
                st.block_fill += 2
            st.at_line_start = True
    return j


cdef inline Py_ssize_t blast_copy(bint *at_line_start, const unsigned char *src,
                                 Py_ssize_t n, unsigned char *dst) noexcept nogil:
    """blast_into() without the block bookkeeping the Encoder has no use for."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j = 0
    cdef Py_ssize_t seg
    cdef const unsigned char *lf
    if n == 0:
        return 0
    if at_line_start[0] and src[0] == b'.':
        dst[0] = b'.'
        j = 1
    while i < n:
        lf = <const unsigned char *>memchr(src + i, b'\n', <size_t>(n - i))
        if lf == NULL:
            memcpy(dst + j, src + i, <size_t>(n - i))
            at_line_start[0] = False
            return j + n - i
        seg = lf - (src + i)
        memcpy(dst + j, src + i, <size_t>seg)
        j += seg
        dst[j] = b'\r'
        dst[j + 1] = b'\n'
        j += 2
        i += seg + 1
        if i < n and src[i] == b'.':
            dst[j] = b'.'
            j += 1
    at_line_start[0] = True
    return j


cdef extern from *:
    """
    /* Bytes blast() adds to src[0..n): one CR per LF, one dot per LF that
       is followed by a dot (the caller handles a dot at src[0]).  SSE2 on
       x86-64 compares 16 bytes at a time; elsewhere a plain loop. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    /* The 16-byte blocks of src[0..n) that have a byte after them: adds
       their LFs and their LFs followed by a dot to *lfs and *dots, and
       returns where they end.  Each block's comparisons are summed in
       byte lanes (at most 255 blocks, so no lane overflows), then folded
       with _mm_sad_epu8: no popcount, no branch per block. */
    static Py_ssize_t qr_count_blocks(const unsigned char *src, Py_ssize_t n,
                                      Py_ssize_t *lfs, Py_ssize_t *dots)
    {
        const __m128i lf = _mm_set1_epi8('\\n'), dot = _mm_set1_epi8('.');
        const __m128i zero = _mm_setzero_si128();
        Py_ssize_t i = 0;
        while (i + 17 <= n) {
            __m128i al = zero, ad = zero, sl, sd;
            int k;
            for (k = 0; k < 255 && i + 17 <= n; k++, i += 16) {
                __m128i a = _mm_cmpeq_epi8(
                    _mm_loadu_si128((const __m128i *)(src + i)), lf);
                __m128i b = _mm_cmpeq_epi8(
                    _mm_loadu_si128((const __m128i *)(src + i + 1)), dot);
                al = _mm_sub_epi8(al, a);
                ad = _mm_sub_epi8(ad, _mm_and_si128(a, b));
            }
            sl = _mm_sad_epu8(al, zero);
            sd = _mm_sad_epu8(ad, zero);
            *lfs += _mm_cvtsi128_si32(sl) +
                    _mm_cvtsi128_si32(_mm_srli_si128(sl, 8));
            *dots += _mm_cvtsi128_si32(sd) +
                     _mm_cvtsi128_si32(_mm_srli_si128(sd, 8));
        }
        return i;
    }
    static Py_ssize_t qr_blast_extra(const unsigned char *src, Py_ssize_t n)
    {
        Py_ssize_t extra = 0, dots = 0, i;
        i = qr_count_blocks(src, n, &extra, &dots);
        extra += dots;
        for (; i < n; i++)
            if (src[i] == '\\n')
                extra += 1 + (i + 1 < n && src[i + 1] == '.');
        return extra;
    }
    /* LFs, and LFs followed by a dot, in src[0..n), counted apart. */
    static void qr_body_counts(const unsigned char *src, Py_ssize_t n,
                               Py_ssize_t *lfs, Py_ssize_t *dots)
    {
        Py_ssize_t l = 0, d = 0, i;
        i = qr_count_blocks(src, n, &l, &d);
        for (; i < n; i++)
            if (src[i] == '\\n') {
                l++;
                d += (i + 1 < n && src[i + 1] == '.');
            }
        *lfs = l;
        *dots = d;
    }
    #else
    static void qr_body_counts(const unsigned char *src, Py_ssize_t n,
                               Py_ssize_t *lfs, Py_ssize_t *dots)
    {
        Py_ssize_t l = 0, d = 0, i;
        for (i = 0; i < n; i++)
            if (src[i] == '\\n') {
                l++;
                d += (i + 1 < n && src[i + 1] == '.');
            }
        *lfs = l;
        *dots = d;
    }
    static Py_ssize_t qr_blast_extra(const unsigned char *src, Py_ssize_t n)
    {
        Py_ssize_t extra = 0, i;
        for (i = 0; i < n; i++)
            if (src[i] == '\\n')
                extra += 1 + (i + 1 < n && src[i + 1] == '.');
        return extra;
    }
    #endif
    """
    Py_ssize_t qr_blast_extra(const unsigned char *src, Py_ssize_t n) nogil
    void qr_body_counts(const unsigned char *src, Py_ssize_t n,
                        Py_ssize_t *lfs, Py_ssize_t *dots) nogil



# -- Faults while reading the caller's memory ------------------------------
#
# A message file is mapped while it is sent; if another process truncates
# it meanwhile, reading a page past the new end raises SIGBUS (SIGSEGV for
# an address with no mapping).  Every loop here that reads the caller's
# bytes runs under qr_guarded(): a fault inside it is turned back, in the
# faulting thread only, into an OSError for that one call.  The process,
# and any other delivery it runs on another thread (a warm qmail-rspawn
# worker), goes on.  A fault anywhere else reaches the disposition that was
# there before (the default: death by the signal), as it always did.
cdef extern from *:
    """
    #include <pthread.h>
    #include <setjmp.h>
    #include <signal.h>
    #include <string.h>
    typedef void (*qr_work_fn)(void *);
    static __thread sigjmp_buf *qr_armed;
    static struct sigaction qr_prev_segv, qr_prev_bus;
    static pthread_once_t qr_once = PTHREAD_ONCE_INIT;
    static int qr_installed;

    static void qr_on_fault(int sig, siginfo_t *info, void *context)
    {
        sigjmp_buf *env = qr_armed;
        (void)context;
        /* si_code > 0: raised by the hardware, in this thread, inside a
           guarded loop.  Sent signals (kill: si_code <= 0) are not ours. */
        if (env != NULL && info != NULL && info->si_code > 0) {
            qr_armed = NULL;
            siglongjmp(*env, sig);
        }
        /* Not ours: the previous disposition takes over.  A fault happens
           again when this returns; a sent signal is sent again. */
        sigaction(sig, sig == SIGBUS ? &qr_prev_bus : &qr_prev_segv, NULL);
        if (info == NULL || info->si_code <= 0)
            raise(sig);
    }

    /* Installed at the first guarded call, not at import: a program that
       imports the package and never sends keeps its handlers.  SA_NODEFER:
       the jump skips the handler's return, which would unblock the signal
       (sigsetjmp(env, 0) saves no mask, so no system call per call). */
    static void qr_install(void)
    {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = qr_on_fault;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGSEGV, &sa, &qr_prev_segv) != 0)
            return;
        if (sigaction(SIGBUS, &sa, &qr_prev_bus) != 0) {
            sigaction(SIGSEGV, &qr_prev_segv, NULL);
            return;
        }
        qr_installed = 1;
    }

    /* fn(arg), or the number of the signal that cut it short.  All of
       fn's state lives behind arg, so nothing is left in registers that
       the jump could clobber. */
    static int qr_guarded(qr_work_fn fn, void *arg)
    {
        sigjmp_buf env;
        int sig;
        pthread_once(&qr_once, qr_install);
        if (!qr_installed) {
            fn(arg);
            return 0;
        }
        sig = sigsetjmp(env, 0);
        if (sig == 0) {
            qr_armed = &env;
            fn(arg);
        }
        qr_armed = NULL;
        return sig;
    }
    """
    ctypedef void (*qr_work_fn)(void *) noexcept nogil
    int qr_guarded(qr_work_fn fn, void *arg) nogil


cdef enum JobKind:
    J_COUNTS
    J_SIZE
    J_COPY
    J_INTO
    J_CRLF
    J_ENDS


cdef struct Job:
    JobKind kind
    BlastState *st
    const unsigned char *src
    Py_ssize_t n
    unsigned char *dst
    Py_ssize_t result
    Py_ssize_t lfs
    Py_ssize_t dots


cdef void run_job(void *arg) noexcept nogil:
    cdef Job *job = <Job *>arg
    if job.kind == J_INTO:
        job.result = blast_into(job.st, job.src, job.n, job.dst)
    elif job.kind == J_CRLF:
        job.result = crlf_copy(job.src, job.n, job.dst)
    elif job.kind == J_SIZE:
        job.result = blast_size(job.st.at_line_start, job.src, job.n)
    elif job.kind == J_ENDS:
        job.result = job.n == 0 or job.src[job.n - 1] == b'\n'
    elif job.kind == J_COPY:
        job.result = blast_copy(&job.st.at_line_start, job.src, job.n,
                                job.dst)
    else:
        qr_body_counts(job.src, job.n, &job.lfs, &job.dots)
        if job.n and job.st.at_line_start and job.src[0] == b'.':
            job.dots += 1


cdef int run_over(object data, Job *job) except -1:
    """run_guarded(job) over *data*'s bytes (its src and n)."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        job.src = <const unsigned char *>view.buf
        job.n = view.len
        run_guarded(job)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef int run_guarded(Job *job) except -1:
    """run_job(job) without the GIL; OSError if reading faulted."""
    cdef int sig
    with nogil:
        sig = qr_guarded(run_job, job)
    if sig:
        raise OSError(EFAULT, "the message could not be read from memory "
                      "(signal %d: a mapped file truncated?)" % sig)
    return 0


def body_counts(data, bint at_line_start):
    """``(lfs, dots)`` for one chunk of a message (see ``_fast_py``)."""
    cdef BlastState st
    cdef Job job
    st.at_line_start = at_line_start
    job.kind = J_COUNTS
    job.st = &st
    job.lfs = 0
    job.dots = 0
    run_over(data, &job)
    return job.lfs, job.dots


def ends_line(data):
    """True when *data* is empty or ends with LF (see ``_fast_py``)."""
    cdef Job job
    job.kind = J_ENDS
    run_over(data, &job)
    return bool(job.result)

cdef inline Py_ssize_t crlf_copy(const unsigned char *src, Py_ssize_t n,
                                 unsigned char *dst) noexcept nogil:
    """Every LF as CRLF, nothing else changed (a BDAT chunk)."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j = 0
    cdef Py_ssize_t seg
    cdef const unsigned char *lf
    while i < n:
        lf = <const unsigned char *>memchr(src + i, b'\n', <size_t>(n - i))
        if lf == NULL:
            memcpy(dst + j, src + i, <size_t>(n - i))
            return j + n - i
        seg = lf - (src + i)
        memcpy(dst + j, src + i, <size_t>seg)
        j += seg
        dst[j] = b'\r'
        dst[j + 1] = b'\n'
        j += 2
        i += seg + 1
    return j


cdef inline Py_ssize_t blast_size(bint at_line_start, const unsigned char *src,
                                  Py_ssize_t n) noexcept nogil:
    """How many bytes blast_into() writes for this slice.

    Sizing the output exactly (one counting pass, as bytes.replace counts
    before it copies) lets malloc reuse memory instead of handing out
    fresh pages for a worst-case 2 * n buffer.
    """
    cdef Py_ssize_t size = n + qr_blast_extra(src, n)
    if n and at_line_start and src[0] == b'.':
        size += 1
    return size


@cython.final
cdef class Encoder:
    """Streaming ``blast()``: feed chunks of any size, then :meth:`finish`."""

    cdef BlastState _st

    def __cinit__(self):
        self._st.at_line_start = True
        self._st.block_fill = 0

    def encode(self, data):
        """Return the wire bytes for one chunk of the message."""
        cdef Py_buffer view
        cdef bytes out
        cdef Job job
        job.st = &self._st
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            job.src = <const unsigned char *>view.buf
            job.n = view.len
            job.kind = J_SIZE
            run_guarded(&job)
            out = PyBytes_FromStringAndSize(NULL, job.result)
            job.dst = <unsigned char *>PyBytes_AS_STRING(out)
            job.kind = J_COPY
            run_guarded(&job)
        finally:
            PyBuffer_Release(&view)
        return out

    def finish(self):
        """Return the terminator, or raise PartialLineError."""
        if not self._st.at_line_start:
            raise PartialLineError()
        return b".\r\n"


@cython.final
cdef class Writer:
    """Buffered writer for commands and the encoded body.

    ``send(data)`` must send all of ``data`` or raise; the writer knows
    nothing about sockets.  ``size`` is the flush threshold.
    """

    cdef object _send
    cdef bytearray _buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _size
    cdef Py_ssize_t _sent
    cdef bint _in_body
    cdef BlastState _st

    def __cinit__(self, send, Py_ssize_t size=DEFAULT_BUFFER):
        if size < C_QMAIL_BLOCK:
            size = C_QMAIL_BLOCK
        self._send = send
        self._size = size
        # Small at first, grown on demand (by doubling, up to what a full
        # buffer and a slice's worst case need): a connection that only
        # ever carries commands and small messages -- a warm qmail-rspawn
        # worker's, or one of many a bulk Sender keeps -- never owns more.
        # Resized, not bytearray(n): no zero fill.
        self._buf = bytearray()
        PyByteArray_Resize(self._buf, C_INITIAL_BUFFER)
        self._len = 0
        self._sent = 0
        self._in_body = False
        self._st.at_line_start = True
        self._st.block_fill = 0

    @property
    def pending(self):
        """Bytes buffered and not yet sent."""
        return self._len

    @property
    def sent(self):
        """Bytes handed to ``send`` so far."""
        return self._sent

    cdef inline unsigned char *_reserve(self, Py_ssize_t extra) except NULL:
        cdef Py_ssize_t need = self._len + extra
        cdef Py_ssize_t have = len(self._buf)
        if need > have:
            have *= 2
            if have > self._size + 2 * C_SLICE:
                have = self._size + 2 * C_SLICE
            PyByteArray_Resize(self._buf, need if need > have else have)
        return <unsigned char *>PyByteArray_AS_STRING(self._buf)

    def write(self, data):
        """Buffer raw bytes (an SMTP command)."""
        cdef Py_buffer view
        cdef unsigned char *dst
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            dst = self._reserve(view.len)
            memcpy(dst + self._len, view.buf, <size_t>view.len)
            self._len += view.len
        finally:
            PyBuffer_Release(&view)

    def flush(self):
        """Send everything that is buffered."""
        self._send_upto(self._sent + self._len)

    def begin_body(self):
        """Start a message body: the next byte is at a line start."""
        self._in_body = True
        self._st.at_line_start = True
        self._st.block_fill = 0

    def body(self, data):
        """Encode one chunk of the message into the buffer."""
        cdef Py_buffer view
        cdef const unsigned char *src
        cdef Py_ssize_t done = 0
        cdef Py_ssize_t take
        cdef Job job
        job.kind = J_INTO
        job.st = &self._st
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            src = <const unsigned char *>view.buf
            while done < view.len:
                take = view.len - done
                if take > C_SLICE:
                    take = C_SLICE
                job.dst = self._reserve(2 * take) + self._len
                job.src = src + done
                job.n = take
                run_guarded(&job)
                self._len += job.result
                done += take
                if self._len >= self._size:
                    self._flush_committed()
        finally:
            PyBuffer_Release(&view)

    def chunk(self, data, bint last):
        """Buffer one BDAT chunk: its command, then *data* with CRLF lines.

        One pass over *data*.  Its encoded size lies between n and 2n bytes;
        when both have as many digits (a full 1 MiB chunk: 7), the command's
        length is known first and the data is copied straight behind it.
        Otherwise it is copied past room for the longest command, and the
        just-written bytes, still in cache, are moved down to meet it.
        """
        cdef Py_buffer view
        cdef unsigned char *dst
        cdef Py_ssize_t written
        cdef Job job
        cdef Py_ssize_t gap = C_BDAT_HEADER
        cdef bytes header
        cdef Py_ssize_t hlen
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len and len(str(view.len)) == len(str(2 * view.len)):
                gap = 7 + len(str(view.len)) + (5 if last else 0)
            dst = self._reserve(gap + 2 * view.len)
            job.kind = J_CRLF
            job.src = <const unsigned char *>view.buf
            job.n = view.len
            job.dst = dst + self._len + gap
            run_guarded(&job)
            written = job.result
            header = b"BDAT %d%s\r\n" % (written, b" LAST" if last else b"")
            hlen = len(header)
            memcpy(dst + self._len, PyBytes_AS_STRING(header), <size_t>hlen)
            if hlen != gap:
                with nogil:
                    memmove(dst + self._len + hlen, dst + self._len + gap,
                            <size_t>written)
            self._len += hlen + written
        finally:
            PyBuffer_Release(&view)

    def flush_committed(self):
        """Send the body bytes netqmail would already have written."""
        self._flush_committed()

    cdef int _flush_committed(self) except -1:
        self._send_upto(self._sent + self._len - self._st.block_fill)
        return 0

    def end_body(self):
        """Finish the body: buffer ``.\\r\\n``, or raise PartialLineError."""
        cdef unsigned char *dst
        if not self._st.at_line_start:
            self._flush_committed()
            self._in_body = False
            raise PartialLineError()
        self._in_body = False
        dst = self._reserve(3)
        memcpy(dst + self._len, b".\r\n", 3)
        self._len += 3

    cdef int _send_upto(self, Py_ssize_t offset) except -1:
        cdef Py_ssize_t n = offset - self._sent
        cdef unsigned char *base
        if n <= 0:
            return 0
        view = memoryview(self._buf)
        try:
            self._send(view[:n])
        finally:
            view.release()
        base = <unsigned char *>PyByteArray_AS_STRING(self._buf)
        memmove(base, base + n, <size_t>(self._len - n))
        self._len -= n
        self._sent += n
        return 0


@cython.final
cdef class ReplyReader:
    """Reads SMTP replies with netqmail ``smtpcode()`` semantics.

    ``recv()`` returns the next bytes from the server, ``b""`` at EOF (a
    drop: ConnectionDied), or raises.  Bytes after a reply are kept for the
    next one.
    """

    cdef object _recv
    cdef bytes _data
    cdef Py_ssize_t _pos
    cdef ReplyState _state
    cdef int _count
    cdef unsigned long long _code
    cdef bint _digits
    cdef Py_ssize_t _textlen
    cdef Py_ssize_t _limit
    cdef unsigned char _text[C_MAX_REPLY_TEXT]

    def __cinit__(self, recv):
        self._recv = recv
        self._data = b""
        self._pos = 0

    def read(self, Py_ssize_t limit=C_HUGESMTPTEXT):
        """Return ``(code, text, digits)`` for the next reply."""
        if limit > C_MAX_REPLY_TEXT:
            limit = C_MAX_REPLY_TEXT
        self._limit = limit if limit > 0 else 0
        self._state = S_CODE
        self._count = 0
        self._code = 0
        self._digits = True
        self._textlen = 0
        while True:
            if self._pos < len(self._data):
                if self._scan():
                    return (self._code,
                            PyBytes_FromStringAndSize(<char *>self._text, self._textlen),
                            bool(self._digits))
            data = self._recv()
            if not data:
                raise ConnectionDied()
            self._data = bytes(data)
            self._pos = 0

    cdef bint _scan(self):
        cdef const unsigned char *d = <const unsigned char *>PyBytes_AS_STRING(self._data)
        cdef Py_ssize_t n = len(self._data)
        cdef Py_ssize_t pos = self._pos
        cdef unsigned char ch
        while pos < n:
            ch = d[pos]
            pos += 1
            if ch != b'\r' and self._textlen < self._limit:
                self._text[self._textlen] = ch
                self._textlen += 1
            if self._state == S_CODE:
                self._code = self._code * 10 + <unsigned long long>(<long long>ch - 48)
                if ch < b'0' or ch > b'9':
                    self._digits = False
                self._count += 1
                if self._count == 3:
                    self._state = S_NEXT
            elif self._state == S_NEXT:
                if ch == b'-':
                    self._state = S_CONT_LINE
                elif ch == b'\n':
                    self._pos = pos
                    return True
                else:
                    self._state = S_LAST_LINE
            elif self._state == S_SKIP3:
                self._count += 1
                if self._count == 3:
                    self._state = S_NEXT
            elif ch == b'\n':
                if self._state == S_LAST_LINE:
                    self._pos = pos
                    return True
                self._state = S_SKIP3
                self._count = 0
        self._pos = pos
        return False
