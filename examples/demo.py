"""A real delivery with the installed ``qmail-remote`` command.

Starts an aiosmtpd SMTP server on 127.0.0.1 (a port the OS picks), writes a
throw-away qmail home whose ``control/smtproutes`` sends every host there,
runs ``qmail-remote example.com sender@example.com rcpt@example.com`` with
a small message on stdin, and shows the reports it printed and what the
server received.  Needs aiosmtpd (``pip install '.[test]'``).
"""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

from aiosmtpd.smtp import SMTP

MESSAGE = (b"From: sender@example.com\nTo: rcpt@example.com\n"
           b"Subject: qmailremote demo\n\nHello from qmailremote.\n"
           b".a line starting with a dot travels dot-stuffed\n")


class Sink:
    """aiosmtpd handler that keeps every message it is given."""

    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 ok: queued by the demo server"


def start_server(handler):
    """Serve SMTP on 127.0.0.1:<free port> in a thread; return the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(
        loop.create_server(lambda: SMTP(handler), sock=sock))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return sock.getsockname()[1]


def main():
    sink = Sink()
    port = start_server(sink)
    home = tempfile.mkdtemp(prefix="qmailremote-demo-")
    try:
        os.makedirs(os.path.join(home, "control"))
        with open(os.path.join(home, "control", "me"), "w") as f:
            f.write("demo.invalid\n")
        with open(os.path.join(home, "control", "smtproutes"), "w") as f:
            f.write(f":127.0.0.1:{port}\n")
        command = shutil.which("qmail-remote") or "qmail-remote"
        argv = [command, "example.com", "sender@example.com",
                "rcpt@example.com"]
        print(f"$ QMAILHOME={home} qmail-remote {' '.join(argv[1:])}")
        done = subprocess.run(argv, input=MESSAGE, capture_output=True,
                              env=dict(os.environ, QMAILHOME=home))
    finally:
        shutil.rmtree(home)
    print("exit status:", done.returncode)
    print("stdout:", done.stdout)
    for envelope in sink.envelopes:
        print(f"server got: MAIL FROM:<{envelope.mail_from}> "
              f"RCPT TO:{envelope.rcpt_tos}")
        print("  " + envelope.content.decode().replace("\r\n", "\n  "))
    return 0 if done.stdout.endswith(b"\0") and b"\0K" in done.stdout \
        else 1


if __name__ == "__main__":
    sys.exit(main())
