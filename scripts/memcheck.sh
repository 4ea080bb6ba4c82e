#!/usr/bin/env bash
# Memory safety of the compiled kernel: build _fast with AddressSanitizer in
# a scratch copy of the tree and run the kernel's byte-vector table and its
# hypothesis properties against it.  Any out-of-bounds read or write in the
# C code aborts the run with an ASan report.  The checkout is not touched.
#
#   bash scripts/memcheck.sh        (needs gcc with libasan, pytest, hypothesis)
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$top/qmailremote" "$top/tests" "$top/setup.py" "$top/pyproject.toml" \
    "$top/README.md" "$top/LICENSE" "$work/"
rm -f "$work"/qmailremote/*.so "$work"/qmailremote/_fast.c
cd "$work"
CFLAGS="-fsanitize=address -fno-omit-frame-pointer -O1 -g" \
LDFLAGS="-fsanitize=address" \
    python setup.py -q build_ext --inplace >/dev/null
libasan="$(gcc -print-file-name=libasan.so)"
[ -e "$libasan" ] || { echo "memcheck: libasan not found" >&2; exit 1; }
# PYTHONMALLOC=malloc: every bytes/bytearray buffer gets ASan red zones.
LD_PRELOAD="$libasan" PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
PYTHONPATH="$work" QMAILREMOTE_NO_EXTENSIONS= \
    python -m pytest -q -p no:cacheprovider tests/test_kernel.py tests/test_kernel_properties.py
