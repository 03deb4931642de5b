"""``soswap demo``: the classic "replace gateway.so while a.out runs" scenario, end to end."""

from __future__ import annotations

import argparse
import sys

from soswap.errors import EXIT_FOUND, EXIT_OK

NAME = "demo"
HELP = "run the 'replace libgateway.so while a.out runs' scenario, narrated, with real processes"
DESCRIPTION = """\
Build libgateway.so v1, a compatible v2, a bad v2 that lacks Test_OpenGateway, and an a.out that calls into the
library in a loop, in a fresh temporary directory with the system C compiler. Then, with real processes:

  1. the naive ways on a disposable copy: cp onto the running executable (Text file busy), overwriting the
     mapped library in place (the copy of a.out dies);
  2. soswap tree: where a.out finds libgateway.so and why;
  3. soswap check / install with the bad v2: refused, with the message ld.so would print;
  4. soswap install of v2 while a.out runs; soswap stale and users show it on the old inode; a new a.out runs
     v2; soswap rollback brings v1 back;
  5. a summary.

Everything started is stopped and everything created is removed (--keep DIR leaves the files). Works without
root. Exit status: 0 when every step behaved as expected, 1 when one did not, 2 when the demo cannot run (no C
compiler: one line)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", metavar="DIR", help="build in DIR (empty or new) and leave the files there")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary of each step")


def run(args: argparse.Namespace) -> int:
    from soswap.commands.demo_scenario import run_demo
    from soswap.commands.install import terminate_as_interrupt
    from soswap.report.output import print_json

    terminate_as_interrupt()  # SIGTERM/SIGHUP clean up as Ctrl-C does: every process stopped, every file removed

    def narrate(line: str) -> None:
        if not args.json:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    summary = run_demo(args.keep, narrate)
    if args.json:
        print_json(summary)
    elif not summary["ok"]:
        sys.stdout.write("\nsome steps did not behave as expected (see above)\n")
    return EXIT_OK if summary["ok"] else EXIT_FOUND
