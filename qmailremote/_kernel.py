"""The one place that picks the compiled kernel or its pure-Python twin.

``QMAILREMOTE_NO_EXTENSIONS=1`` (any non-empty value) selects the pure twin,
as it does at build time.  Otherwise the compiled ``_fast`` is used when it
imports, and ``_fast_py`` when it does not (a broken build is caught by the
test suite, which asserts the compiled kernel is what a default install
loads).
"""

import os

# Not `from typing import TYPE_CHECKING`: typing costs start-up time, and
# type checkers honour a module-level TYPE_CHECKING = False just the same.
TYPE_CHECKING = False

__all__ = ["Encoder", "Writer", "ReplyReader", "body_counts", "ends_line",
           "HUGESMTPTEXT",
           "MAX_REPLY_TEXT", "QMAIL_BLOCK", "DEFAULT_BUFFER", "COMPILED"]

if TYPE_CHECKING:
    from ._fast_py import (DEFAULT_BUFFER, HUGESMTPTEXT, MAX_REPLY_TEXT,
                           QMAIL_BLOCK, Encoder, ReplyReader, Writer,
                           body_counts, ends_line)
    COMPILED = False
elif os.environ.get("QMAILREMOTE_NO_EXTENSIONS"):
    from ._fast_py import (DEFAULT_BUFFER, HUGESMTPTEXT, MAX_REPLY_TEXT,
                           QMAIL_BLOCK, Encoder, ReplyReader, Writer,
                           body_counts, ends_line)
    COMPILED = False
else:
    try:
        from ._fast import (DEFAULT_BUFFER, HUGESMTPTEXT, MAX_REPLY_TEXT,
                            QMAIL_BLOCK, Encoder, ReplyReader, Writer,
                            body_counts, ends_line)
        COMPILED = True
    except ImportError:
        from ._fast_py import (DEFAULT_BUFFER, HUGESMTPTEXT, MAX_REPLY_TEXT,
                               QMAIL_BLOCK, Encoder, ReplyReader, Writer,
                               body_counts, ends_line)
        COMPILED = False
