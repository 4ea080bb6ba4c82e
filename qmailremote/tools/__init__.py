"""``qmailremote``: the admin's command (not the drop-in ``qmail-remote``).

Subcommands, one module each in this package:

* ``check``  -- the installation as qmail will run it;
* ``probe``  -- what qmail-remote would do for a destination, without mail;
* ``tcpto``  -- the tcpto tables, as ``qmail-tcpto`` prints them, and
  clearing an entry as ``qmail-tcpok`` would;
* ``send``   -- one real delivery for a human, with a transcript.

A subcommand module has ``add_arguments(parser)`` and ``run(args,
out)``, which returns the exit status (its one line of help is in
:data:`SUBCOMMANDS`); ``out`` is an
:class:`qmailremote.tools.output.Output`.  Nothing here is imported by
the ``qmail-remote`` command: its start-up does not change.
"""

import argparse
import importlib
import sys

__all__ = ["main", "SUBCOMMANDS"]

# name -> one line of help; a subcommand's module is imported only when
# it is the one run (``probe`` loads ssl, ``send`` the whole delivery).
SUBCOMMANDS = {
    "check": "check the installation as qmail will run qmail-remote",
    "probe": "show what qmail-remote would do for a destination, "
             "without sending mail",
    "tcpto": "show the tcpto tables (as qmail-tcpto), clear an entry, or "
             "all of them (as qmail-tcpok)",
    "send": "deliver one message as qmail-remote would, readably",
}


def _chosen(argv):
    """The subcommand named in *argv*, or None (argparse then explains)."""
    takes_value = {"--home", "--color"}
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in SUBCOMMANDS else None
    return None


def _parser(chosen, module):
    parser = argparse.ArgumentParser(
        prog="qmailremote",
        description="Tools for the qmail admin around qmailremote's "
                    "qmail-remote.")
    parser.add_argument("--home", metavar="DIR",
                        help="qmail's home directory (default: $QMAILHOME, "
                             "else /var/qmail)")
    parser.add_argument("--color", choices=("auto", "always", "never"),
                        default="auto",
                        help="colour: on a terminal (auto, the default), "
                             "always or never; NO_COLOR turns auto off")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name, text in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=text, description=text)
        if name == chosen:
            module.add_arguments(sub)
    return parser


def main(argv=None):
    """Entry point of the ``qmailremote`` console script."""
    from .output import Output
    if argv is None:
        argv = sys.argv[1:]
    chosen = _chosen(argv)
    module = None
    if chosen is not None:
        module = importlib.import_module(f"{__name__}.{chosen}")
    args = _parser(chosen, module).parse_args(argv)
    out = Output(sys.stdout, args.color,
                 json=getattr(args, "json", False))
    try:
        status = module.run(args, out)
        out.finish()
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        status = 0
    except Exception as exc:  # a bug: say so in one line, not a traceback
        print(f"qmailremote {chosen}: internal error: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        status = 3
    sys.exit(status)
