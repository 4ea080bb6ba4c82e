"""The default dialogue: ESMTP, with the extensions the server offers.

EHLO (HELO on the same connection when EHLO is not answered 250), TLS as
:mod:`qmailremote.tls` decides (STARTTLS, then EHLO again; or SMTPS on
port 465), AUTH to a relay with credentials (:mod:`qmailremote.auth`),
then, by what the server advertised
(:mod:`qmailremote.capabilities`):

* SIZE (RFC 1870): ``SIZE=`` the body's exact size on the wire (CRLF
  lines, without the stuffed dots and the terminator that RFC 1870 leaves
  out; every line-start dot counted too in DATA mode, so the figure is
  never below what is sent); a message over the server's limit is refused
  here, before ``MAIL``, with no body byte sent.
* SMTPUTF8 (RFC 6531): asked for when the sender or a recipient has a
  byte above 127, or a ``Received:`` field says ``with UTF8`` (the rule of
  the patched qmails); a server without it gets no message.
* PIPELINING (RFC 2920): MAIL, every RCPT and DATA (or the BDAT chunk of a
  small message) in one write, the replies read in order; every report is
  the one the lock-step dialogue gives for the same replies.
* CHUNKING (RFC 3030), unless ``control/nochunking`` exists: the body in
  ``BDAT`` chunks, CRLF lines, no dot-stuffing, no terminator.

8-bit bodies go as they are, with no ``BODY=``, as every qmail sends them.
The reply classes are 1.06's at every stage the two dialogues share.
"""

from ._kernel import MAX_REPLY_TEXT, ends_line
from .capabilities import NONE, Capabilities
from .errors import ConnectionDied
from .message import Message
from .report import (PERM_PARTIALLINE, TEMP_READ, perm_size, perm_smtputf8,
                     stage_report)

__all__ = ["dialogue", "opening", "transaction", "ehlo", "hello",
           "needs_smtputf8"]

# A message up to this size rides as ``BDAT n LAST`` in the same write as
# MAIL and RCPT, when the server offers PIPELINING and CHUNKING.
EARLY_BDAT = 64 << 10
# BDAT chunks sent before their replies are read, with PIPELINING.  Each
# chunk is one message chunk (1 MiB); the window keeps the replies waiting
# in the server's socket far below what would make it stop reading.
WINDOW = 32


def ehlo(session, helohost):
    """EHLO: the server's :class:`Capabilities`, None when not 250."""
    session.write(b"EHLO ", helohost, b"\r\n")
    session.flush()
    # More text than a report keeps: a keyword must not be lost (or a SIZE
    # limit cut short) because a server's EHLO reply is long.
    code, text, digits = session.read(MAX_REPLY_TEXT)
    if code == 250 and digits:
        return Capabilities.from_ehlo(text, len(text) >= MAX_REPLY_TEXT)
    return None


def hello(session, helohost):
    """EHLO, then HELO on the same connection when EHLO is not 250.

    Returns the server's :class:`Capabilities` (none after HELO).  A
    rejected HELO is 1.06's "my name was rejected".  After STARTTLS, EHLO
    is sent again through this function.
    """
    return _or_helo(session, ehlo(session, helohost), helohost)


def _or_helo(session, caps, helohost):
    """*caps*, or HELO on the same connection when EHLO was refused."""
    if caps is None:
        session.helo(helohost)
        return NONE
    return caps


def _open(session, helohost, tls):
    """Greeting, EHLO (or HELO), and TLS when *tls* says: the capabilities.

    *tls* is a :class:`qmailremote.tls.Starter` or None (no TLS).  With
    STARTTLS, the capabilities are those of the EHLO sent after it.
    """
    if tls is not None and tls.implicit:
        tls.start_implicit(session)
        session.greeting(b"TLS Connected to ")
        return hello(session, helohost)
    session.greeting()
    caps = ehlo(session, helohost)
    # A mandatory TLS host is refused before HELO, as qmail-tls does.
    if tls is not None and tls.after_ehlo(session, caps):
        return tls.first_exchange(session, lambda: hello(session, helohost))
    return _or_helo(session, caps, helohost)


def needs_smtputf8(sender, recipients, survey):
    """The patched qmails' rule: an 8-bit address or a UTF8 Received."""
    if any(max(address, default=0) > 127 for address in (sender, *recipients)):
        return True
    return survey is not None and survey.utf8_header


def dialogue(session, helohost, sender, recipients, message, chunking=True,
             tls=None, auth=None):
    """One ESMTP delivery on *session*; returns a report or raises one.

    *tls* is the connection's :class:`qmailremote.tls.Starter` (None: no
    TLS); *auth* the relay's :class:`qmailremote.auth.Credentials` (None:
    no AUTH).
    """
    caps = opening(session, helohost, tls, auth)
    return transaction(session, caps, sender, recipients, message, chunking,
                       auth is not None)


def opening(session, helohost, tls=None, auth=None):
    """Greeting, EHLO (or HELO), TLS and AUTH as :func:`dialogue` does
    them: the server's capabilities, or a verdict raised."""
    caps = _open(session, helohost, tls)
    if auth is not None:
        from .auth import authenticate
        authenticate(session, caps, auth,
                     secure=tls is not None and tls.version is not None)
    return caps


def transaction(session, caps, sender, recipients, message, chunking=True,
                authenticated=False):
    """One mail transaction, MAIL to the final reply, on a session opened
    with *caps*: returns a report or raises a verdict (K included)."""
    survey = message.survey(count=caps.size_offered)
    utf8 = needs_smtputf8(sender, recipients, survey)
    if utf8 and not caps.smtputf8:
        session.stop(perm_smtputf8(session.ip))
    bdat = chunking and caps.chunking
    params = []
    if caps.size_offered and survey is not None:
        size = survey.bdat_size if bdat else survey.data_size
        if caps.size_limit and size > caps.size_limit:
            session.stop(perm_size(session.ip, size, caps.size_limit))
        params.append(b" SIZE=%d" % size)
    if utf8:
        params.append(b" SMTPUTF8")
    if authenticated:
        params.append(b" AUTH=<>")    # RFC 4954 5: no identity vouched for
    mail = (b"MAIL FROM:<", sender, b">", *params, b"\r\n")

    if not caps.pipelining:
        session.mail_reply(session.command(*mail))
        for recipient in recipients:
            session.rcpt_reply(session.command(b"RCPT TO:<", recipient,
                                               b">\r\n"))
        if not session.accepted_any:
            session.give_up()
        if bdat:
            return _bdat_body(session, message, survey, 1)
        session.data_reply(session.command(b"DATA\r\n"))
        return session.body_and_final(message)

    early = None
    if bdat and survey is not None and survey.complete and \
            survey.size <= EARLY_BDAT:
        early = _read_small(message)
        if early is not None and early[-1:] not in (b"", b"\n"):
            message, early = Message(early), None
    session.write(*mail)
    for recipient in recipients:
        session.write(b"RCPT TO:<", recipient, b">\r\n")
    if early is not None:
        session.writer.chunk(early, True)
        session.critical = True    # the whole message is on its way
    elif not bdat:
        session.write(b"DATA\r\n")
    session.flush()
    session.mail_reply(session.read())
    for recipient in recipients:
        session.rcpt_reply(session.read())
    if not session.accepted_any:
        if early is not None or not bdat:
            _settle_refused(session, data_sent=early is None)
        session.give_up()
    if early is not None:
        session.final_reply(session.read())
    if bdat:
        return _bdat_body(session, message, survey, WINDOW)
    session.data_reply(session.read())
    return session.body_and_final(message)


def _read_small(message):
    """The whole of a small message, or None when it cannot be read.

    Then the body is read again where the lock-step dialogue reads it, and
    a failure is reported there, as netqmail reports it.
    """
    try:
        return b"".join(bytes(chunk) for chunk in message.chunks())
    except OSError:
        return None


def _settle_refused(session, data_sent):
    """No recipient was accepted, yet DATA or BDAT went out pipelined.

    The reply to it is read; a server that answers DATA as if it would
    take a body gets a lone ``.`` (RFC 2920 section 3.1), never the body.
    Nothing here changes the report: it stays "Giving up", as in the
    lock-step dialogue, whatever the connection does.
    """
    try:
        code, _, digits = session.read()
        if data_sent and digits and code < 400:
            session.write(b".\r\n")
            session.flush()
    except ConnectionDied:
        pass


def _bdat_reply(session, reply):
    session.verdict(reply, b"", b" failed on BDAT command")


def _bdat_body(session, message, survey, window):
    """The body in BDAT chunks, at most *window* of them unanswered.

    With a survey the last chunk carries ``LAST`` (and the message stops
    at the surveyed size); without one, ``BDAT 0 LAST`` ends it.  A message
    that does not end at a line boundary is refused before ``LAST`` goes
    out, so the server discards what it has (no QUIT follows, as in
    1.06).  The critical window opens with the ``LAST`` write.
    """
    if survey is not None and not survey.complete:
        return PERM_PARTIALLINE
    writer = session.writer
    remaining = survey.size if survey is not None else -1
    unanswered = 0
    complete = True
    last_sent = False
    try:
        for chunk in message.chunks():
            size = len(chunk)
            if not size:
                continue
            if 0 <= remaining <= size:
                # Released here: a slice left alive would keep a mapped
                # file's mapping from closing when the loop is left.
                with chunk[:remaining] as last:
                    if not ends_line(last):
                        return PERM_PARTIALLINE
                    writer.chunk(last, True)
                last_sent = True
                break
            complete = ends_line(chunk)
            writer.chunk(chunk, False)
            writer.flush()
            remaining -= size
            unanswered += 1
            while unanswered >= window:
                _bdat_reply(session, session.read())
                unanswered -= 1
    except OSError:  # the message, not the socket: that is ConnectionDied
        return TEMP_READ
    if not last_sent:
        if not complete:
            return PERM_PARTIALLINE
        writer.chunk(b"", True)
    session.critical = True
    writer.flush()
    for _ in range(unanswered):
        _bdat_reply(session, session.read())
    session.final_reply(session.read())
