"""Exceptions shared by both kernels and the session.

Both twins (``_fast`` and ``_fast_py``) raise exactly these classes, so no
``except`` clause anywhere depends on which kernel is active.
"""

__all__ = ["ConnectionDied", "PartialLineError"]


class PartialLineError(Exception):
    """The message does not end at a line boundary.

    netqmail's ``blast()`` calls ``perm_partialline()`` here: the session
    turns it into ``DSMTP cannot transfer messages with partial final
    lines. (#5.6.2)``.
    """


class ConnectionDied(Exception):
    """EOF, an I/O error or an expired timeoutremote on the SMTP socket.

    netqmail's ``saferead``/``safewrite`` call ``dropped()`` here.
    """
