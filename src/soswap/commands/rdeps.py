"""``soswap rdeps LIB``: the files that load LIB, from the reverse-dependency index."""

from __future__ import annotations

import argparse
import os
import sys

from soswap.commands.argtypes import directory_name
from soswap.errors import EXIT_OK, ElfError, UsageError

NAME = "rdeps"
HELP = "list the programs and plugins that load a library (the reverse-dependency index)"
DESCRIPTION = """\
List every ELF file whose resolved tree (what ld.so would load with it) contains LIB: programs, plugins
(shared libraries no other indexed file loads: dlopen'ed modules) and libraries (loaded by other indexed
files), each marked direct (LIB is one of its own DT_NEEDED entries) or indirect.

The files are those under the PATH, libexec and ld.so.cache directories (or under --scope DIR...). Their trees
are kept in an index in the cache directory (shared by every soswap command; --cache-dir, $SOSWAP_CACHE_DIR,
/var/cache/soswap as root, else $XDG_CACHE_HOME/soswap): a directory that did not change is not listed again,
an ELF file that did not change (device, inode, size, mtime, ctime) is not read again, a tree none of whose
members changed is not computed again. A corrupt index is rebuilt.

What could not be read under the directories (a directory that cannot be listed, a file that cannot be
opened: another user's 0700 program) is listed after the dependents, with the reason, and the first line says
the answer is partial: any of them may load LIB.

Exit status: 0 done (whether or not anything loads LIB; also when partial), 2 error (LIB unreadable or not
ELF, a --scope directory that cannot be listed)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("library", metavar="LIB", nargs="?", help="the library (a path)")
    parser.add_argument("--scope", action="extend", nargs="+", default=[], metavar="DIR",
                        help="index these directories (recursively) instead of the system's")
    parser.add_argument("--cache-dir", metavar="DIR", type=directory_name,
                        help="where the index is kept (default: as soswap check)")
    parser.add_argument("--no-index", action="store_true", help="build the index in memory only")
    parser.add_argument("--json", action="store_true", help="machine-readable output (docs/json-abi.md)")


def run(args: argparse.Namespace) -> int:
    from soswap.abi.rdeps import environment_for_index, open_index
    from soswap.abi.sysdirs import Top, scope_directory, system_tops
    from soswap.elf import ElfCache
    from soswap.loader import Profile
    from soswap.report.abi import rdeps_to_json, rdeps_to_text
    from soswap.report.output import one_line

    lib = args.library
    if lib is None:
        hint = ": --scope takes every argument after it; put -- before LIB" if args.scope else ""
        raise UsageError(f"LIB is required{hint}")
    if not lib:
        raise UsageError("LIB: empty file name")
    try:
        os.stat(lib)
    except OSError as exc:
        raise ElfError(lib, exc.strerror or str(exc)) from None
    if not os.path.isfile(lib):
        raise ElfError(lib, "not a regular file")
    cache = ElfCache()
    elf = cache.get(os.path.abspath(lib))
    soname = elf.soname if elf.is_dynamic else None
    scopes = [scope_directory(d) for d in args.scope]
    profile = Profile.detect()
    tops = [Top(d, True) for d in scopes] or system_tops(profile)
    index = open_index(args.cache_dir, profile, environment_for_index(os.environ), keep=not args.no_index,
                       elf_cache=cache)
    index.update(tops)
    index.save()
    deps = index.dependents(os.path.abspath(lib), tops)
    unreadable = index.unreadable(tops)
    stats = index.stats.as_dict()
    if args.json:
        sys.stdout.write(json_text(rdeps_to_json(lib, soname, deps, index.path, stats, unreadable)))
    else:
        lines = rdeps_to_text(lib, soname, deps, index.path, stats, unreadable)
        sys.stdout.write("\n".join(map(one_line, lines)) + "\n")
    return EXIT_OK


def json_text(doc: object) -> str:
    import json

    return json.dumps(doc, ensure_ascii=True) + "\n"
