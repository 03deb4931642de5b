"""``soswap users``: which processes execute, map or hold open a file — its current or an older version."""

from __future__ import annotations

import argparse
import sys

NAME = "users"
HELP = "list the processes that execute, map or hold open a file (current or old version)"
DESCRIPTION = """\
For each PATH, list every process that uses it: as its executable ("exe"), as a mapping ("mapped", e.g. a
shared library) or as an open file descriptor ("open"); and whether it uses the file now at PATH ("current")
or an older version still alive under that name ("old": deleted, replaced).

exit status: 0 done (no process uses an old version), 1 some process uses an old version, 2 error.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files to look for")
    parser.add_argument("--json", action="store_true", help="JSON output (schema: docs/json-stale.md)")
    parser.add_argument("--no-fds", action="store_true", help="do not look at open file descriptors")


def run(args: argparse.Namespace) -> int:
    from soswap.errors import UsageError
    from soswap.proc.users import find_users
    from soswap.report import stale as stale_report

    if not all(args.paths):  # "" would name the current directory once made absolute
        raise UsageError("PATH: empty file name")
    reports = find_users(args.paths, fds=not args.no_fds)
    if args.json:
        sys.stdout.write(stale_report.render_users_json(reports))
    else:
        sys.stdout.write(stale_report.render_users_text(reports))
    old = any(u.version == "old" for r in reports for u in r.uses)
    return 1 if old else 0
