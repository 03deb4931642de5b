"""``soswap recover``: finish or undo a transaction an interrupted ``soswap install`` left behind."""

from __future__ import annotations

import argparse
import sys

from soswap.commands.install import add_state_arguments
from soswap.errors import EXIT_OK

NAME = "recover"
HELP = "finish or undo an interrupted install (also run automatically before every install)"
DESCRIPTION = """\
Resolve every transaction the journal records as interrupted:
  - interrupted while staging or committing: undone; each destination is its previous version again
    (restored from the backup hard link, an atomic rename) and the temporary files are removed;
  - committed but not cleaned up: the cleanup is finished.
Afterwards every file is entirely its old or entirely its new version.

A directory of a transaction that is gone stops its recovery (a filesystem not mounted yet would come back
half old, half new): mount it and run recover again, or --skip-missing when it was deleted for good.

Exit status: 0 (also when there was nothing to recover), 2 if a transaction could not be resolved (the
journal is kept; fix the cause, e.g. a read-only remount, and run it again)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output (docs/json-install.md)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="resolve transactions whose directory is gone (deleted for good): nothing is "
                             "restored there")
    add_state_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from soswap.commands.install import terminate_as_interrupt
    from soswap.replace import StateDir, recover
    from soswap.report.install import emit, recover_list_to_json, recover_to_text, recover_warning_lines
    from soswap.report.output import print_json

    terminate_as_interrupt()
    outcomes = recover(StateDir(args.state_dir), args.lock_timeout, skip_missing=args.skip_missing)
    if recover_warning_lines(outcomes):
        emit(recover_warning_lines(outcomes), sys.stderr)
    if args.json:
        print_json(recover_list_to_json(outcomes))
    else:
        emit(recover_to_text(outcomes))
    return EXIT_OK
