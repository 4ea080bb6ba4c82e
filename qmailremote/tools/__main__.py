"""``python -m qmailremote.tools``: the ``qmailremote`` command."""

from . import main

main()
