"""``python -m qmailremote host sender recip...``: the qmail-remote command."""

from .cli import main

main()
