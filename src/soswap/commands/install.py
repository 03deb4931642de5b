"""``soswap install``: replace files atomically under running programs, as one transaction."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
from typing import Any, Iterator, List, Sequence, Tuple

from soswap.commands.argtypes import directory_name, seconds
from soswap.errors import EXIT_FOUND, EXIT_OK, SoswapError, UsageError

NAME = "install"
HELP = "replace files atomically (libraries before programs), keeping metadata; recoverable"
DESCRIPTION = """\
Install SRC as DEST, or each SRC into DIR, or the files listed by --manifest, as one transaction.

Each file is written completely under a hidden name next to its destination (.NAME.new-TXID), given the
owner, mode (setuid/setgid too), ACL, extended attributes and file capabilities of the file it replaces,
fsynced, and renamed over the old file: running programs keep the old inode, a program starting at any
moment finds either the old or the new file, never a missing or partial one. Files are committed in
dependency order (a library before the programs that need it); a library whose SONAME link (libfoo.so.1)
points to an older version gets its link flipped atomically. An interrupted transaction is finished or
undone by 'soswap recover' (run automatically first); 'soswap rollback' restores the previous versions.

Refused (exit 1, nothing changed): the preflight finds consumers the new library would break (unless
--force); an immutable/append-only file or directory (unless --force-immutable); a network filesystem
(unless --allow-nfs). Errors (exit 2): read-only mount, bind-mounted destination (EBUSY), I/O errors.

Manifest format (--manifest FILE), one file per line, shell quoting, '#' comments:
    SRC DEST [mode=MODE] [owner=USER] [group=GROUP]
relative paths are relative to the manifest's directory; a DEST ending in '/' is a directory.

Exit status: 0 installed, 1 refused (nothing changed), 2 error (nothing changed, or 'soswap recover'
resolves the interrupted transaction the journal records)."""


def add_state_arguments(parser: argparse.ArgumentParser) -> None:
    """--state-dir and --lock-timeout, shared by install, recover, rollback and history."""
    parser.add_argument("--state-dir", metavar="DIR", type=directory_name,
                        help="journal directory (default: $SOSWAP_STATE_DIR, /var/lib/soswap as root, "
                             "else $XDG_STATE_HOME/soswap)")
    parser.add_argument("--lock-timeout", type=seconds, default=60.0, metavar="SECONDS",
                        help="wait this long for another soswap to finish (default 60)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="SRC DEST, or SRC... DIR")
    parser.add_argument("--manifest", metavar="FILE", help="install the files listed in FILE (see above)")
    parser.add_argument("-m", "--mode", metavar="MODE", help="set the mode (octal or symbolic, as install(1))")
    parser.add_argument("-o", "--owner", metavar="OWNER", help="set the owner (name or uid)")
    parser.add_argument("-g", "--group", metavar="GROUP", help="set the group (name or gid)")
    parser.add_argument("-D", dest="make_dirs", action="store_true",
                        help="create missing leading directories of the destination")
    parser.add_argument("--backup", dest="backup", action="store_true", default=True,
                        help="keep the previous versions for 'soswap rollback' (default)")
    parser.add_argument("--no-backup", dest="backup", action="store_false",
                        help="delete the previous versions once committed (no rollback possible)")
    parser.add_argument("--keep", type=int, default=3, metavar="N",
                        help="keep the backups of the N most recent transactions (default 3)")
    parser.add_argument("--dry-run", action="store_true", help="check and report what would be done; change nothing")
    parser.add_argument("--force", action="store_true", help="install even if the preflight finds problems")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the preflight check")
    parser.add_argument("--consumer", action="extend", nargs="+", default=[], metavar="FILE",
                        help="also check these programs or plugins in the preflight (besides the running processes "
                             "and the system's programs and libraries)")
    parser.add_argument("--scope", action="extend", nargs="+", default=[], metavar="DIR",
                        help="also check the ELF files under these directories in the preflight")
    parser.add_argument("--cache-dir", metavar="DIR", type=directory_name,
                        help="where the preflight's rdeps index is kept (default: as soswap check)")
    parser.add_argument("--restart", action="store_true",
                        help="afterwards, restart the units still running the old versions (safe policy)")
    parser.add_argument("--force-immutable", action="store_true",
                        help="clear chattr +i/+a, replace, and set the flag again on the new file")
    parser.add_argument("--allow-nfs", action="store_true", help="allow destinations on network filesystems")
    parser.add_argument("--replace-link", action="store_true",
                        help="a destination that is a symlink is replaced itself (default: its target is)")
    parser.add_argument("--no-soname-links", dest="soname_links", action="store_false",
                        help="do not flip or create SONAME links")
    parser.add_argument("--hash", dest="hash", action="store_true", default=False,
                        help="record SHA-256 hashes of the old and new contents in the journal (one more read of "
                             "each file; the journal always records dev, inode, size and mtime)")
    parser.add_argument("--no-hash", dest="hash", action="store_false", help="do not record hashes (default)")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="do not list the processes still using the replaced versions (saves a /proc scan)")
    parser.add_argument("--json", action="store_true", help="machine-readable output (docs/json-install.md)")
    add_state_arguments(parser)


def _stale_uses(olds: Sequence[Tuple[str, Any]]) -> Any:
    """The after-report: processes still mapping or executing a replaced inode (the ``soswap stale`` engine's
    one-pass inode search). Returns a tuple of ``soswap.proc`` FileUse values."""
    from soswap.proc import processes_using_inodes

    return tuple(processes_using_inodes({(rec.dev, rec.ino) for _, rec in olds}))


def _after_report(olds: Sequence[Tuple[str, Any]]) -> Any:
    """The stale hook given to the engine: never lets a failure of the report undo a committed install."""
    try:
        return _stale_uses(olds)
    except (SoswapError, ImportError, OSError) as exc:
        return AfterError(f"could not list the processes still using the old versions: {exc}")


class AfterError(str):
    """A failed after-report (rendered as a warning line)."""


def _restart(uses: Any, state_dir: str) -> List[str]:
    """--restart: re-scan the processes found (with the journal's replaced inodes) and restart their units
    under the safe policy of ``soswap.restart``. Returns lines to print."""
    from soswap.proc import JournalView, ScanOptions, scan_stale
    from soswap.proc.model import FileRecord
    from soswap.replace import StateDir, journal_facts
    from soswap.restart import Policy, execute

    pids = sorted({u.pid for u in uses})
    if not pids:
        return ["restart: no process uses the replaced versions; nothing to restart"]
    replaced, installed = journal_facts(StateDir(state_dir))
    view = JournalView(replaced=replaced,
                       installed={k: FileRecord(r.size, r.mtime_ns, r.sha256) for k, r in installed.items()})
    report = scan_stale(ScanOptions(pids=pids, journal=view))
    outcome = execute(Policy().plan(report), dry_run=False)
    lines = [f"restart: {c.describe(outcome.dry_run)}: {' '.join(c.argv)}" for c in outcome.commands]
    lines += [f"restart: skipped {s.name}: {s.reason}" for s in outcome.skipped]
    lines += [f"restart: {n}" for n in outcome.notes]
    return lines or ["restart: nothing to restart"]


@contextlib.contextmanager
def report_of_done(txid: Any, done: str) -> Iterator[None]:
    """Write the report of a transaction that changed the files (``done`` says how) inside this block: when
    standard output fails (a reader gone, a full disk), the files are changed all the same, so the exit status
    stays 0 and one line on standard error says what is in place."""
    try:
        yield
        sys.stdout.flush()
    except OSError as exc:
        try:  # nothing more is written there, not even at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        try:
            sys.stderr.write(f"soswap: error: transaction {txid} {done}; its report could not be written: "
                             f"{exc.strerror or exc}\n")
            sys.stderr.flush()
        except OSError:
            pass


def terminate_as_interrupt() -> None:
    """SIGTERM/SIGHUP during a transaction: unwind like SIGINT, so the transaction is undone cleanly."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):
            pass


@contextlib.contextmanager
def says_nothing_changed(state: Any) -> Iterator[None]:
    """An interruption that reaches the command before the commit mark (after it, :class:`AfterCommit` says
    what is in place): the transaction was undone, which the exit status 130 alone does not tell; nor does it
    tell what the recovery at the start resolved (``state.recovered``)."""
    try:
        yield
    except KeyboardInterrupt:
        lines = [f"soswap: recovered interrupted transaction {r.txid}: {r.action}" for r in state.recovered]
        lines.append("soswap: interrupted before the commit: this transaction changed nothing")
        try:
            sys.stderr.write("".join(line + "\n" for line in lines))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        raise


def run(args: argparse.Namespace) -> int:
    from soswap.replace import InstallOptions, StateDir, install, read_manifest, requests_from_args
    from soswap.replace.modespec import parse_group, parse_mode, parse_owner
    from soswap.replace.records import Notice
    from soswap.report.install import emit, install_to_json, install_to_text, warning_lines
    from soswap.report.output import print_json

    if args.manifest:
        if args.paths:
            raise UsageError("give either --manifest FILE or SRC DEST, not both")
        requests = read_manifest(args.manifest)
    else:
        if len(args.paths) < 2 and (args.consumer or args.scope):
            raise UsageError("need a source and a destination: --consumer and --scope take every argument after "
                             "them; put -- before SRC DEST")
        requests = requests_from_args(args.paths, args.make_dirs)
    if args.keep < 0:
        raise UsageError("--keep must be 0 or more")
    opts = InstallOptions(
        backup=args.backup,
        keep=args.keep,
        dry_run=args.dry_run,
        force=args.force,
        check=args.check,
        force_immutable=args.force_immutable,
        allow_nfs=args.allow_nfs,
        replace_link=args.replace_link,
        make_dirs=args.make_dirs,
        soname_links=args.soname_links,
        hash=args.hash,
        mode=parse_mode(args.mode) if args.mode is not None else None,
        uid=parse_owner(args.owner) if args.owner is not None else None,
        gid=parse_group(args.group) if args.group is not None else None,
        lock_timeout=args.lock_timeout,
    )
    extra_notes: List[Notice] = []
    terminate_as_interrupt()
    state = StateDir(args.state_dir)
    preflight = None
    if args.check:
        from soswap.abi.preflight import preflight as check_engine

        preflight = functools.partial(check_engine, cache_dir=args.cache_dir, consumers=args.consumer or None,
                                      scope=args.scope or None, processes=True, system=True)
    want_report = args.report or args.restart
    with says_nothing_changed(state):
        result = install(requests, opts, state, preflight=preflight,
                         stale_report=_after_report if want_report else None, argv=sys.argv[1:])
    restart_lines: List[str] = []
    if isinstance(result.after, AfterError):
        extra_notes.append(Notice("stale", str(result.after)))
        result = result._replace(after=None)
    if args.restart and result.status == "installed":
        try:
            restart_lines = _restart(result.after or (), state.path)
        except (SoswapError, ImportError, OSError) as exc:
            extra_notes.append(Notice("--restart", f"nothing was restarted: {exc}"))
    result = result._replace(warnings=result.warnings + tuple(extra_notes))
    done = result.status == "installed"
    with report_of_done(result.txid, "is installed: every file is its new version") if done else \
            contextlib.nullcontext():
        if args.json:
            print_json(install_to_json(result, {"restart": restart_lines} if args.restart else None))
        else:
            if result.warnings:
                emit(warning_lines(result), sys.stderr)
            emit(install_to_text(result, restarting=args.restart) + restart_lines)
    return EXIT_FOUND if result.status == "refused" else EXIT_OK
