"""``soswap check NEW TARGET``: what happens to every program that uses TARGET if NEW replaces it."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence

from soswap.commands.argtypes import directory_name, positive_jobs, process_id
from soswap.errors import EXIT_FOUND, EXIT_OK, UsageError

if TYPE_CHECKING:
    from soswap.abi.check import Mapper

NAME = "check"
HELP = "will NEW break the programs, plugins and processes that use the installed TARGET?"
DESCRIPTION = """\
Answer "what happens if NEW replaces the installed TARGET": load every consumer of TARGET again with NEW in
its place (a static emulation of ld.so: nothing is run, loaded or dlopen'ed), bind every reference by glibc's
rules (weak references, symbol versions, the whole lookup scope), check version needs, copy relocations,
protected data, and NEW's own dependencies and undefined symbols against what is installed. Each problem is
printed with the exact message ld.so would print and when it strikes: at startup, at the first call of the
function, or when a plugin is dlopen'ed. Only what NEW breaks is reported; a consumer that already fails with
TARGET is reported as broken, not blamed on NEW.

Consumers:
  --consumer FILE...  these files (programs as they run; shared libraries as plugins, dlopen(RTLD_NOW))
  --scope DIR...      every ELF file under DIR whose tree loads TARGET (programs; libraries nothing else
                      there loads are checked as plugins)
  --pid PID...        these running processes (their own LD_LIBRARY_PATH, LD_PRELOAD, and the plugins
                      they dlopen'ed)
  default             the running processes that map TARGET, plus every ELF file under the PATH, libexec
                      and ld.so.cache directories whose tree loads TARGET, found through the rdeps index
                      kept in the cache directory (see soswap rdeps)

Packages: --deb PACKAGE... instead of NEW TARGET checks every installed ELF file the .deb packages would
replace (paired through the packages' SONAME links), as one transaction, before anything is unpacked. The
files the transaction deletes (what an upgraded package no longer ships, the installed packages named with
--remove) are no consumers: they are not checked.

Programs and plugins are loaded with this command's environment (LD_LIBRARY_PATH, LD_PRELOAD, LD_BIND_NOW).
ELF-level only: function signatures, struct layouts and vtable slots are not compared (docs/check.md).

What could not be read under the directories searched (a directory that cannot be listed, a file that cannot be
opened: another user's 0700 program), and processes that map TARGET but could not be checked, are listed under
"not checked:" with the reason, and the verdict line says PARTIAL: the verdict does not speak for them.

Exit status: 0 safe for every consumer checked (also when PARTIAL), 1 NEW breaks at least one (or is refused:
SONAME change, not loadable here), 2 error (NEW or TARGET unreadable or malformed, a named consumer that is not
a loadable program or shared library, a --scope directory that cannot be listed)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("new", metavar="NEW", nargs="?", help="the replacement")
    parser.add_argument("target", metavar="TARGET", nargs="?",
                        help="the installed library (or program) NEW would replace")
    parser.add_argument("--deb", action="extend", nargs="+", default=[], metavar="PACKAGE",
                        help="instead of NEW TARGET: every installed ELF file these .deb packages would replace, "
                             "as one transaction (what 'soswap hook apt-preinstall' checks; docs/hooks.md)")
    parser.add_argument("--remove", action="extend", nargs="+", default=[], metavar="PACKAGE[:ARCH]",
                        help="with --deb: installed packages the same transaction removes (their programs and "
                             "plugins are not checked)")
    parser.add_argument("--consumer", action="extend", nargs="+", default=[], metavar="FILE",
                        help="check these files (repeatable)")
    parser.add_argument("--scope", action="extend", nargs="+", default=[], metavar="DIR",
                        help="check the ELF files under these directories that load TARGET (repeatable)")
    parser.add_argument("--pid", action="extend", nargs="+", default=[], type=_pid, metavar="PID",
                        help="check these running processes (repeatable)")
    parser.add_argument("--no-processes", action="store_true",
                        help="default discovery: leave out the running processes")
    parser.add_argument("--cache-dir", metavar="DIR", type=directory_name,
                        help="where the rdeps index is kept (default: $SOSWAP_CACHE_DIR, /var/cache/soswap as "
                             "root, else $XDG_CACHE_HOME/soswap); created if missing")
    parser.add_argument("--no-index", action="store_true",
                        help="build the rdeps index in memory only (nothing is written)")
    parser.add_argument("--full", action="store_true",
                        help="bind every consumer, even those the diff alone proves safe")
    parser.add_argument("--jobs", "-j", type=positive_jobs, default=None, metavar="N",
                        help="worker processes for the consumers that must be loaded and bound (default: one per "
                             "usable CPU, up to 4, when there are many; 1 = no workers)")
    parser.add_argument("--json", action="store_true", help="machine-readable output (docs/json-abi.md)")
    parser.add_argument("-v", "--verbose", action="store_true", help="also list the compatible consumers")


def _pid(text: str) -> int:
    try:
        return process_id(text)
    except argparse.ArgumentTypeError as exc:
        if text.lstrip("-").isdigit():
            raise
        raise argparse.ArgumentTypeError(f"{exc} (--pid takes every argument after it; put -- before NEW "
                                         "TARGET)") from None


def run(args: argparse.Namespace) -> int:
    from soswap.abi import check_replacement
    from soswap.report.abi import check_to_text, write_check_json
    from soswap.report.output import one_line

    explicit = bool(args.consumer or args.scope or args.pid)
    if explicit and args.no_processes:
        raise UsageError("--no-processes applies to the default discovery only (without --consumer, --scope, --pid)")
    if args.deb:
        return _check_debs(args, explicit)
    if args.remove:
        raise UsageError("--remove applies to --deb only")
    if args.new is None or args.target is None:
        greedy = [o for o, v in (("--consumer", args.consumer), ("--scope", args.scope)) if v]
        hint = (f": {' and '.join(greedy)} {'take' if len(greedy) > 1 else 'takes'} every argument after "
                f"{'them' if len(greedy) > 1 else 'it'}; put -- before NEW TARGET" if greedy else "")
        raise UsageError(f"NEW and TARGET are required (or --deb PACKAGE...){hint}")
    result = check_replacement(
        args.target, args.new,
        consumers=args.consumer or None, scope=args.scope or None, pids=args.pid or None,
        processes=None if explicit else not args.no_processes,
        cache_dir=args.cache_dir, keep_index=not args.no_index, full=args.full, mapper=consumer_mapper(args.jobs))
    if args.json:
        write_check_json(result, sys.stdout)
    else:
        sys.stdout.write("\n".join(map(one_line, check_to_text(result, verbose=args.verbose))) + "\n")
    return EXIT_OK if result.compatible else EXIT_FOUND


def consumer_mapper(jobs: Optional[int]) -> Mapper:
    """The ``mapper`` of :func:`soswap.abi.check_replacement` for ``-j``: the consumers to bind are spread over
    forked workers (:func:`soswap.commands.workers.parallel_map`), in path order."""

    def mapper(fn: Callable[[Any], Any], items: Sequence[Any]) -> List[Any]:
        from soswap.commands.workers import parallel_map

        return parallel_map(fn, items, jobs, name=lambda item: item[0])

    return mapper


def _check_debs(args: argparse.Namespace, explicit: bool) -> int:
    from soswap.replace.debs import check_debs, package_list

    if args.new is not None:
        raise UsageError("--deb replaces NEW TARGET")
    if args.full or args.no_index:
        raise UsageError("--full and --no-index do not apply to --deb")
    removing = []
    for spec in args.remove:
        name, _, arch = spec.partition(":")
        if package_list(name, arch or None) is None:
            raise UsageError(f"--remove {spec}: not an installed package")
        removing.append((name, arch or None))
    result = check_debs(args.deb, removing=removing, cache_dir=args.cache_dir, consumers=args.consumer or None,
                        scope=args.scope or None, pids=args.pid or None,
                        processes=None if explicit else not args.no_processes)
    status = EXIT_FOUND if result.problems else EXIT_OK
    if args.json:
        from soswap.report.output import print_json

        print_json({"schema": "soswap.check-debs/1", "packages": list(args.deb), "checked": result.checked,
                    "leaving": sorted(result.leaving), "compatible": not result.problems,
                    "problems": [p.to_json() for p in result.problems],
                    "notes": [p.to_json() for p in result.notes]})
        return status
    from soswap.report.output import one_line

    if not result.problems:
        gone = len(result.leaving)
        left = f" (not the {gone} ELF file{'s' if gone != 1 else ''} the transaction deletes)" if gone else ""
        sys.stdout.write(f"checked {result.checked} installed ELF file{'s' if result.checked != 1 else ''} that "
                         f"{result.packages} package{'s' if result.packages != 1 else ''} would replace{left}: "
                         "nothing breaks\n")
    else:
        sys.stdout.write("".join(f"{one_line(p.message)}\n" for p in result.problems))
    sys.stdout.write("".join(f"note: {one_line(p.message)}\n" for p in result.notes))
    return status
