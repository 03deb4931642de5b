"""``soswap diff OLD NEW``: the ELF-level ABI changes between a library (or executable) and its replacement."""

from __future__ import annotations

import argparse
import sys

from soswap.errors import EXIT_FOUND, EXIT_OK

NAME = "diff"
HELP = "ELF-level ABI changes between a library and its replacement"
DESCRIPTION = """\
Compare OLD and NEW as the dynamic loader sees them: exported symbols and their versions, types, sizes,
binding and visibility; version nodes; SONAME, DT_NEEDED, version needs and new undefined symbols of NEW;
ELF class, machine and OS ABI; loader flags (executable stack, NOOPEN, STATIC_TLS, NODELETE, x86 ISA level).

Each change is rated:
  breaking  existing consumers fail or misbehave with NEW (a removed symbol, a moved version...)
  review    may break, depending on what is installed and on how consumers use it: run
            `soswap check` to decide per consumer (a new dependency, a new version need...)
  harmless  existing binaries keep working (an added symbol, FUNC->IFUNC, GLOBAL->WEAK...)

This is an ELF-only comparison: function signatures, struct layouts and vtable slots are not seen (see
docs/check.md). Nothing is executed.

Exit status: 0 when no change is breaking, 1 when one is, 2 on error (unreadable or malformed file)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD", help="the installed library (or executable)")
    parser.add_argument("new", metavar="NEW", help="its replacement")
    parser.add_argument("--json", action="store_true", help="machine-readable output (docs/json-abi.md)")
    parser.add_argument("--summary", action="store_true",
                        help="human output: count the changes of each kind instead of listing them")


def run(args: argparse.Namespace) -> int:
    from soswap.abi import diff_files
    from soswap.report.abi import diff_to_text, write_diff_json
    from soswap.report.output import one_line

    diff = diff_files(args.old, args.new)
    if args.json:
        write_diff_json(diff, sys.stdout)
    else:
        sys.stdout.write("\n".join(map(one_line, diff_to_text(diff, summary_only=args.summary))) + "\n")
    return EXIT_FOUND if diff.breaking else EXIT_OK
