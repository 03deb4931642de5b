"""``soswap rollback``: restore the versions a committed transaction replaced."""

from __future__ import annotations

import argparse
import contextlib
import sys

from soswap.commands.install import add_state_arguments
from soswap.errors import EXIT_OK

NAME = "rollback"
HELP = "restore the previous versions of the files a transaction replaced"
DESCRIPTION = """\
Put back the files a committed transaction (default: the most recent install not rolled back yet) replaced,
and remove the files it created, as a new transaction (journaled, recoverable, and kept for rollback in turn:
rolling back a rollback re-applies the original). Soname links are flipped back.

Only transactions whose backups are still kept can be rolled back (see 'soswap install --keep' and
--no-backup); a file changed since the transaction (by a later install or by hand) refuses the rollback.

Exit status: 0 rolled back, 1 refused (nothing changed), 2 error."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("txid", nargs="?", metavar="TXID", help="transaction to roll back (see 'soswap history')")
    parser.add_argument("--dry-run", action="store_true", help="check and show what would be restored")
    parser.add_argument("--no-backup", dest="backup", action="store_false", default=True,
                        help="do not keep the versions being rolled back")
    parser.add_argument("--json", action="store_true", help="machine-readable output (docs/json-install.md)")
    add_state_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from soswap.commands.install import report_of_done, says_nothing_changed, terminate_as_interrupt
    from soswap.replace import StateDir, rollback
    from soswap.report.install import emit, install_to_json, install_to_text, warning_lines
    from soswap.report.output import print_json

    terminate_as_interrupt()
    state = StateDir(args.state_dir)
    with says_nothing_changed(state):
        result = rollback(state, args.txid, dry_run=args.dry_run, keep_backups=args.backup, argv=sys.argv[1:],
                          lock_timeout=args.lock_timeout)
    done = result.status == "rolled-back"
    with report_of_done(result.txid, "is done: every file is its previous version") if done else \
            contextlib.nullcontext():
        if args.json:
            print_json(install_to_json(result))
        else:
            if result.warnings:
                emit(warning_lines(result), sys.stderr)
            emit(install_to_text(result))
    return EXIT_OK
