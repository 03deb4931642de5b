"""``soswap elf``: what the dynamic loader reads from ELF files."""

from __future__ import annotations

import argparse
import sys

from soswap.errors import EXIT_ERROR, EXIT_OK, ElfError
from soswap.report.output import error_line, one_line

NAME = "elf"
HELP = "show the dynamic section, versions and symbols of ELF files"
DESCRIPTION = """\
Show what the dynamic loader reads from each FILE: class, machine, interpreter, DT_NEEDED, SONAME,
RPATH/RUNPATH, flags, build-id, version definitions and needs, and with --symbols the dynamic symbols with
their versions (name@version, name@@version for the default).

Nothing is executed. Exit status: 0, or 2 when any file is unreadable or malformed (one error line per file
on standard error; the other files are still shown)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="ELF files to read")
    parser.add_argument("--symbols", "-s", action="store_true", help="list the dynamic symbols too")
    parser.add_argument("--json", action="store_true", help="machine-readable output (docs/json.md)")


def run(args: argparse.Namespace) -> int:
    from soswap.elf import ElfFile
    from soswap.report.elf import elf_to_json, elf_to_text
    from soswap.report.output import print_json

    status = EXIT_OK
    objects = []
    for path in args.files:
        if not path:  # as tree and users say it (open("") is ENOENT, ": No such file or directory")
            sys.stdout.flush()
            sys.stderr.write(error_line("empty file name"))
            status = EXIT_ERROR
            continue
        try:
            with ElfFile.open(path) as elf:
                if args.json:
                    objects.append(elf_to_json(elf, args.symbols))
                else:
                    text = "\n".join(map(one_line, elf_to_text(elf, args.symbols)))
                    sys.stdout.write(text + "\n")
        except ElfError as exc:
            sys.stdout.flush()
            sys.stderr.write(error_line(str(exc)))
            status = EXIT_ERROR
    if args.json and len(args.files) == 1:
        # one file: its object; unreadable: null (one document always), the error on standard error
        print_json(objects[0] if objects else None)
    elif args.json:
        print_json(objects)  # several files: the readable ones, the others said on standard error
    return status
