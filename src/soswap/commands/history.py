"""``soswap history``: the transactions recorded in the state directory."""

from __future__ import annotations

import argparse

from soswap.commands.argtypes import count
from soswap.commands.install import add_state_arguments
from soswap.errors import EXIT_OK

NAME = "history"
HELP = "list install and rollback transactions"
DESCRIPTION = """\
List the transactions of the state directory, oldest first: id, start time (UTC), kind (install or
rollback), state (done, undone, failed, or interrupted ones not recovered yet), whether their backups are
still kept for 'soswap rollback', and the files. With --verbose, every file with its old and new inode.

Exit status: 0, or 2 when the state directory is unreadable."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--last", type=count, metavar="N", help="only the N most recent transactions")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every file of every transaction")
    parser.add_argument("--json", action="store_true", help="machine-readable output (docs/json-install.md)")
    add_state_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from soswap.replace import StateDir, history
    from soswap.report.install import emit, history_to_json, history_to_text
    from soswap.report.output import print_json

    state = StateDir(args.state_dir)
    entries = history(state)
    if args.last is not None:
        entries = entries[len(entries) - args.last:] if args.last else []
    if args.json:
        print_json(history_to_json(entries, state.path))
    else:
        emit(history_to_text(entries, args.verbose))
    return EXIT_OK
