"""``soswap stale``: processes that run deleted, replaced, modified or truncated code."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

from soswap.commands.argtypes import process_id

NAME = "stale"
HELP = "list processes running old, deleted, modified or truncated code (and a pending kernel)"
DESCRIPTION = """\
List every process whose executable, libraries, data mappings (--data) or interpreter script changed on disk
after it started, grouped by systemd unit, session and container, with each file and the reason:

  deleted    the mapped file was unlinked (its maps line ends in " (deleted)")
  replaced   the mapped inode lives on under another name (hard link, renamed away, journal)
             or the path now names another inode
  modified   same inode, written after the process started (in-place change: crash risk)
  truncated  the file is now shorter than the mapping (SIGBUS on access)

With --ignore-identical, a deleted or replaced file whose new version has the same content (a reinstall of
the same package version) is not reported.

Nothing found in a scanned process is ever executed or imported.

exit status: 0 nothing stale, 1 something stale (or a newer kernel is installed), 2 error;
with --nagios: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON output (schema: docs/json-stale.md)")
    fmt.add_argument("--batch", action="store_true", help="needrestart -b compatible KEY: value lines")
    fmt.add_argument("--nagios", action="store_true", help="Nagios/Icinga plugin output and exit status")
    parser.add_argument("--prometheus", metavar="FILE",
                        help="also write a node_exporter textfile-collector file, atomically")
    parser.add_argument("--pid", type=process_id, nargs="+", metavar="PID", help="check only these processes")
    parser.add_argument("--path", nargs="+", metavar="PREFIX", help="report only files under these prefixes")
    parser.add_argument("--data", action="store_true",
                        help="also report non-executable mappings (locale-archive, caches, databases)")
    parser.add_argument("--fds", action="store_true", help="also report deleted files held only as open fds")
    parser.add_argument("--no-scripts", action="store_true", help="do not check interpreter scripts")
    parser.add_argument("--no-kernel", action="store_true", help="skip the running-kernel check")
    parser.add_argument("--ignore-identical", action="store_true",
                        help="do not report a deleted or replaced file when the file now at its path has the same "
                             "content (same GNU build-id, else same SHA-256; needs root to read the old version)")
    parser.add_argument("--identical-max-size", type=_size, default=None, metavar="SIZE",
                        help="with --ignore-identical: do not hash files larger than SIZE (bytes, or with K/M/G; "
                             "default 64M); they are reported, saying so")
    parser.add_argument("--ignore", action="append", default=[], metavar="REGEX",
                        help="ignore mapped paths matching REGEX (repeatable)")
    parser.add_argument("--ignore-file", action="append", default=[], metavar="FILE",
                        help="ignore file: one regex per line, '#' comments, 'no-defaults' (default: "
                             "/etc/soswap/stale-ignore if it exists)")
    parser.add_argument("--no-default-ignores", action="store_true",
                        help="drop the built-in ignore list (memfd, SysV shm, /dev, [aio], DRM, JIT temp files)")
    parser.add_argument("--restart", action="store_true",
                        help="restart the affected system units (batched systemctl try-restart, safe policy)")
    parser.add_argument("--dry-run", action="store_true", help="with --restart: print what would be done")
    parser.add_argument("--deny", action="append", default=[], metavar="REGEX",
                        help="with --restart: never restart units matching REGEX (added to the deny-list)")


def _size(text: str) -> int:
    """A byte count: digits with an optional K, M or G suffix (powers of 1024)."""
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    digits = text[:-1] if factor != 1 else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1048576, 512K, 64M, 2G)")
    return int(digits) * factor


def run(args: argparse.Namespace) -> int:
    from soswap.errors import UsageError

    if args.dry_run and not args.restart:
        raise UsageError("--dry-run needs --restart")
    if args.deny and not args.restart:
        raise UsageError("--deny needs --restart")
    for n, text in enumerate(args.deny, 1):
        import re

        try:
            re.compile(text)
        except re.error as exc:
            raise UsageError(f"--deny #{n}: bad regular expression {text!r}: {exc}") from None
    if args.identical_max_size is not None and not args.ignore_identical:
        raise UsageError("--identical-max-size needs --ignore-identical")
    from soswap.proc.ignore import DEFAULT_IGNORE_FILE, IgnoreList
    from soswap.proc.scan import ScanOptions, scan_stale

    files: List[str] = list(args.ignore_file)
    if not files and os.path.exists(DEFAULT_IGNORE_FILE):
        files.append(DEFAULT_IGNORE_FILE)
    ignore = IgnoreList.build(defaults=not args.no_default_ignores, extra=args.ignore, files=files)
    if args.pid:
        for pid in args.pid:
            if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
                raise UsageError(f"no process with PID {pid}")
        args.pid = _thread_groups(args.pid)
        _note_codeless(args.pid)
    if args.restart and not args.dry_run:
        from soswap.errors import Refused
        from soswap.restart.systemctl import pid1_name, systemd_running

        if not systemd_running():
            raise Refused(f"--restart needs systemd as PID 1 (PID 1 is {pid1_name()}); "
                          "use --restart --dry-run to see the plan")
    options = ScanOptions(
        pids=args.pid,
        path_prefixes=tuple(args.path or ()),
        ignore=ignore,
        include_data=args.data,
        include_fds=args.fds,
        scripts=not args.no_scripts,
        kernel=not args.no_kernel,
        ignore_identical=args.ignore_identical,
    )
    if args.identical_max_size is not None:
        options = options._replace(identical_max_bytes=args.identical_max_size)
    report = scan_stale(options)

    outcome = None
    if args.restart:
        from soswap.restart import execute
        from soswap.restart.policy import Policy

        plan = Policy(extra_deny=args.deny).plan(report)
        outcome = execute(plan, dry_run=args.dry_run)

    if args.prometheus:
        from soswap.report import prometheus
        from soswap.textfile import write_atomic

        write_atomic(args.prometheus, prometheus.render(report))

    kernel_pending = report.kernel is not None and report.kernel.needs_reboot
    status = 1 if (report.processes or kernel_pending) else 0
    out = sys.stdout
    if outcome is not None and (args.batch or args.nagios):
        # these formats have no place for the restart: what it did goes to standard error
        from soswap.report.stale import render_restart

        for line in render_restart(outcome)[2:]:
            sys.stderr.write(f"soswap: restart: {line.strip()}\n")
    failures = outcome.failures() if outcome is not None else []
    if args.nagios:
        from soswap.report import nagios

        if failures:
            out.write(f"STALE UNKNOWN - restart failed: {'; '.join(failures)}\n")
            out.flush()
            sys.stderr.write(f"soswap: error: restart failed: {'; '.join(failures)}\n")
            return 3
        text, status = nagios.render(report)
        out.write(text)
        return status
    if args.batch:
        from soswap.report import batch

        out.write(batch.render(report))
    elif args.json:
        from soswap.report import stale as stale_report

        out.write(stale_report.render_json(report, outcome))
    else:
        from soswap.report import stale as stale_report

        out.write(stale_report.render_text(report, outcome))
        if report.partial and not args.pid:
            sys.stderr.write(f"soswap: warning: partial result: {report.unreadable} process"
                             f"{'es' if report.unreadable != 1 else ''} could not be read\n")
    if failures:
        out.flush()
        sys.stderr.write(f"soswap: error: restart failed: {'; '.join(failures)}\n")
        return 2
    return status


def _thread_groups(pids: List[int]) -> List[int]:
    """The processes of ``pids``, each once: a thread's ID stands for its process (:func:`procfs.read_tgid`),
    which is what is reported, with a note."""
    from soswap.errors import SoswapError
    from soswap.proc import procfs

    out: Dict[int, None] = {}
    for pid in pids:
        try:
            tgid = procfs.read_tgid(pid)
        except (SoswapError, OSError):
            tgid = pid  # it ended meanwhile, or cannot be read: the scan says so
        if tgid != pid:
            sys.stderr.write(f"soswap: note: {pid} is a thread of process {tgid}, which is checked\n")
        out[tgid] = None
    return list(out)


def _note_codeless(pids: List[int]) -> None:
    """One note for each named process that has no address space, so none of its code can be stale (the
    report's count leaves such processes out, and "scanned 0 processes" alone reads like a failure)."""
    from soswap.errors import SoswapError
    from soswap.proc import procfs

    for pid in dict.fromkeys(pids):
        try:
            st = procfs.read_stat(pid)
        except (SoswapError, OSError):
            continue  # it ended meanwhile, or cannot be read: the scan says so
        what = "a kernel thread" if st.kernel_thread else ("a zombie" if st.zombie else None)
        if what is not None:
            sys.stderr.write(f"soswap: note: PID {pid} is {what}: it runs no code, nothing to check\n")
