"""``soswap hook``: the package-manager side of ``soswap stale`` (apt and dpkg; dnf and pacman after a
transaction).

The apt side has two halves, installed by the files in ``contrib/`` (docs/hooks.md):

- ``dpkg-status`` is dpkg's ``status-logger``: it reads dpkg's status stream on standard input (the only place
  that says whether packages were unpacked and whether dpkg failed; apt's ``DPkg::Post-Invoke`` gets no
  arguments and no input) and leaves two markers, ``changed`` and ``errored``, in the state directory;
- ``apt`` is apt's ``DPkg::Post-Invoke``: after a run that unpacked something and had no dpkg error, it lists
  the services, sessions, containers and processes that still run old code (``--restart``: restarts the
  services under the safe policy of ``soswap stale --restart``);
- ``apt-preinstall`` is apt's ``DPkg::Pre-Install-Pkgs``: before dpkg unpacks anything, it checks every ELF
  file the packages would replace against the programs, plugins and processes that use it, as
  ``soswap install`` does before a replacement (``--refuse``: stop apt when something would break).

``post-transaction`` is what dnf's plugin and pacman's hook run after a transaction: the list of ``apt``,
without dpkg's markers (both package managers run it only after a transaction that ran).

None ever fails the package manager or waits for an answer: they exit 0 whatever goes wrong (a problem is one
line on standard error), ``dpkg-status`` reads its input to the end even after an error, and ``apt`` and
``apt-preinstall`` give up after ``--timeout`` seconds. The one exception is asked for: ``apt-preinstall
--refuse`` exits 1 when the packages would break a consumer, which stops apt before anything is unpacked
(``SOSWAP_FORCE`` set: warn only). ``SOSWAP_SUSPEND`` set to anything non-empty turns ``apt`` and
``apt-preinstall`` off (needrestart's ``NEEDRESTART_SUSPEND``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, List, Optional, Tuple, TypeVar

from soswap.commands.argtypes import seconds
from soswap.commands.hookfiles import APT, MANAGERS
from soswap.errors import UsageError
from soswap.tuples import NamedTuple

T = TypeVar("T")

NAME = "hook"
HELP = "package-manager hooks: before apt unpacks and after apt, dnf or pacman, check and list (never fail them)"
DESCRIPTION = """\
Hooks for apt and dpkg, dnf and pacman (see docs/hooks.md):

  soswap hook setup         write /etc/apt/apt.conf.d/99soswap and /etc/dpkg/dpkg.cfg.d/soswap, which run
                            the hooks below with this soswap's absolute path (--refuse, --restart: as
                            below; --root DIR: another system's tree); 'remove' takes them away.
                            --manager dnf: dnf's plugin (dnf-plugins/soswap.py, /etc/dnf/plugins/soswap.conf);
                            --manager pacman: /etc/pacman.d/hooks/soswap.hook; both run post-transaction

  soswap hook dpkg-status   dpkg's status-logger: notes on stdin's status stream whether packages were
                            unpacked or removed and whether dpkg reported an error
  soswap hook apt           apt's DPkg::Post-Invoke: when the dpkg runs changed packages without an error,
                            list the services, sessions, containers and processes that still run old code
                            (with --restart: restart the services, as 'soswap stale --restart' does)
  soswap hook apt-preinstall
                            apt's DPkg::Pre-Install-Pkgs (the .deb files on stdin): before anything is
                            unpacked, check every ELF file the packages replace against the programs,
                            plugins and processes that use it, as 'soswap install' does; with --refuse,
                            stop apt when something would break (SOSWAP_FORCE=1 overrides)
  soswap hook post-transaction
                            what dnf's plugin and pacman's hook run after a transaction: the list of
                            'hook apt' (with --restart: the restarts too)

Skipped: 'apt' when SOSWAP_SUSPEND is set, when dpkg reported an error, when no package was unpacked or
removed, and while the system shuts down; 'post-transaction' when SOSWAP_SUSPEND is set and while the
system shuts down; 'apt-preinstall' when SOSWAP_SUSPEND is set.

exit status: 0, whatever goes wrong (a package-manager hook must never fail the package manager; problems
are reported as one line on standard error); 'apt-preinstall --refuse': 1 when the packages would break a
consumer (apt then stops before unpacking anything); 'setup' and 'remove': 0 done, 2 error.
"""

#: Where ``dpkg-status`` leaves its markers for ``apt`` (a tmpfs: a reboot forgets them, as it should).
DEFAULT_STATE_DIR = "/run/soswap/hook"
CHANGED = "changed"
ERRORED = "errored"

# dpkg --status-fd lines (dpkg(1)): "processing: STAGE: PKG", "status: PKG: STATUS",
# "status: PKG : error : MESSAGE". A package whose files were unpacked or removed changes what runs.
_CHANGE = re.compile(rb"^(?:processing: (?:upgrade|install|remove|purge|disappear): |"
                     rb"status: [^ :]+(?::[^ :]+)?: (?:unpacked|half-installed|not-installed|config-files)$)")
_ERROR = re.compile(rb"^status: .* : error : ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("event", choices=("dpkg-status", "apt", "apt-preinstall", "post-transaction", "setup",
                                          "remove"),
                        help="which hook is running; setup/remove: write/remove the package manager's files")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                        help=f"where dpkg-status leaves its markers for apt (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--restart", action="store_true",
                        help="apt, post-transaction: restart the affected services (batched systemctl "
                             "try-restart, safe policy)")
    parser.add_argument("--refuse", action="store_true",
                        help="apt-preinstall: exit 1 (apt stops) when the packages would break a consumer")
    parser.add_argument("--timeout", type=seconds, default=60.0, metavar="SECONDS",
                        help="apt, apt-preinstall, post-transaction: give up (and let the package manager go "
                             "on) after this long (default 60)")
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="setup, remove: the system's root directory (default /)")
    parser.add_argument("--command", metavar="PATH",
                        help="setup: soswap's absolute path for the package manager (default: this soswap)")
    parser.add_argument("--manager", choices=MANAGERS, default=APT,
                        help="setup, remove: which package manager's files (default apt: apt and dpkg)")


def run(args: argparse.Namespace) -> int:
    if args.event in ("setup", "remove"):  # an admin's command, not a hook: errors are errors (status 2)
        return _files(args)
    try:
        if args.event == "dpkg-status":
            _dpkg_status(args.state_dir, sys.stdin.buffer)
        elif args.event == "apt":
            _apt(args)
        elif args.event == "post-transaction":
            _post_transaction(args)
        else:
            return _apt_preinstall(args)
    except _Refused:
        return 1
    except Exception as exc:  # a hook never fails the package manager, whatever went wrong
        _say(f"soswap hook {args.event}: {' '.join(str(exc).splitlines()) or type(exc).__name__}; skipped",
             sys.stderr)
    return 0


def _say(line: str, stream) -> None:  # type: ignore[no-untyped-def]
    """Write ``line`` (lines): file names from the packages and other tools' messages can hold control
    characters, shown escaped (``message_line``)."""
    from soswap.errors import message_line

    try:
        stream.write("".join(message_line(part) + "\n" for part in line.split("\n")))
        stream.flush()
    except (OSError, ValueError):
        pass


def _dpkg_status(state_dir: str, stream) -> None:  # type: ignore[no-untyped-def]
    """Read dpkg's status stream to its end; leave ``changed``/``errored`` in ``state_dir`` when seen."""
    seen = set()
    problem: Optional[str] = None
    rest = b""
    while True:
        try:
            chunk = stream.read(65536)
        except OSError as exc:  # keep nothing half-read: the markers below still get written
            problem = f"reading dpkg's status: {exc.strerror or exc}"
            break
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            _classify(line.rstrip(b"\r"), seen)
        if len(rest) > 1 << 20:  # no status line is that long: not dpkg's stream
            rest = b""
    if rest:
        _classify(rest, seen)
    for marker in sorted(seen):
        try:
            _touch(state_dir, marker)
        except OSError as exc:
            problem = f"{state_dir}: {exc.strerror or exc}"
    if problem is not None:
        raise OSError(problem)


def _classify(line: bytes, seen: set) -> None:
    if _ERROR.match(line):
        seen.add(ERRORED)
    elif _CHANGE.match(line):
        seen.add(CHANGED)


def _touch(state_dir: str, marker: str) -> None:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(state_dir, marker), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.close(fd)


#: How long the apt hook waits at most for dpkg's status loggers to end (each reads to the end of a pipe dpkg
#: has closed: well under a second, unless the machine is very loaded).
_LOGGER_WAIT_S = 15.0


def _is_status_logger(argv: Tuple[bytes, ...]) -> bool:
    """A ``soswap hook dpkg-status`` process, or the ``sh -c`` line dpkg starts it with."""
    if b"dpkg-status" in argv:
        return b"hook" in argv[:argv.index(b"dpkg-status")]
    return any(b"hook dpkg-status" in a for a in argv)


def _wait_for_status_loggers(seconds: float) -> None:
    """Wait until no dpkg status logger runs (at most ``seconds``). dpkg forks its status loggers before it
    starts its action and never waits for them (``run_status_loggers``, src/main/main.c): apt may run
    DPkg::Post-Invoke while the logger of its last dpkg run has yet to leave its markers. A logger exists from
    before that dpkg run's work, so once none is left, every marker of the apt run is there."""
    import time

    from soswap.errors import SoswapError
    from soswap.proc.procfs import list_pids, read_cmdline

    def is_logger(pid: int) -> bool:
        try:
            return _is_status_logger(read_cmdline(pid))
        except (SoswapError, OSError):
            return False  # gone, or not ours to read

    deadline = time.monotonic() + seconds
    me = os.getpid()
    while True:
        try:
            running = any(is_logger(pid) for pid in list_pids() if pid != me)
        except OSError:
            return
        if not running or time.monotonic() >= deadline:
            return
        time.sleep(0.02)


def _take_markers(state_dir: str) -> Optional[set]:
    """The markers ``dpkg-status`` left (removed as they are read), or None when it never ran here (no state
    directory: the status-logger is not installed, so every run is checked)."""
    if not os.path.isdir(state_dir):
        return None
    found = set()
    for marker in (CHANGED, ERRORED):
        try:
            os.unlink(os.path.join(state_dir, marker))
            found.add(marker)
        except FileNotFoundError:
            pass
    return found


def _shutting_down() -> bool:
    """systemd says the system is stopping (needrestart asks logind's PreparingForShutdown)."""
    import subprocess

    from soswap.restart.systemctl import find_systemctl, systemd_running

    systemctl = find_systemctl() if systemd_running() else None
    if systemctl is None:
        return False
    try:
        r = subprocess.run([systemctl, "is-system-running"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.stdout.strip() == b"stopping"


class _TimedOut(Exception):
    pass


class _Refused(Exception):
    """apt-preinstall --refuse found a consumer the packages break: exit 1, apt stops."""


def _apt(args: argparse.Namespace) -> None:
    if os.environ.get("SOSWAP_SUSPEND"):
        return
    _wait_for_status_loggers(min(args.timeout, _LOGGER_WAIT_S))
    markers = _take_markers(args.state_dir)
    if markers is not None:
        if ERRORED in markers:
            _say("soswap: dpkg reported an error: not checking for processes that run old code", sys.stdout)
            return
        if CHANGED not in markers:
            return  # nothing was unpacked or removed
    _post_transaction(args)


def _post_transaction(args: argparse.Namespace) -> None:
    if os.environ.get("SOSWAP_SUSPEND") or _shutting_down():
        return
    text = _within(args.timeout, lambda: _check(args.restart), "run 'soswap stale'")
    if text is not None:
        _say(text.rstrip("\n"), sys.stdout)


def _within(seconds: float, work: Callable[[], T], instead: str, budget: Optional[float] = None) -> Optional[T]:
    """``work()``, or None (said on standard error) when it takes longer than ``seconds`` (what is left of
    ``budget``, the --timeout the message names, when given)."""
    import signal
    import threading

    said = f"soswap: the check did not finish in {budget if budget is not None else seconds:g} s; skipped ({instead})"

    armed = False

    def expired(signum: int, frame: object) -> None:
        if armed:  # an alarm that comes as it is being disarmed is late, not a second timeout
            raise _TimedOut()

    def stuck() -> None:
        # The alarm's handler runs only between system calls: a stat stuck on a dead NFS or FUSE server (a
        # killable wait in the kernel) never returns to it. Exiting the process ends that wait too.
        try:
            os.write(2, f"{said}; a system call did not return\n".encode("utf-8", "surrogateescape"))
        finally:
            os._exit(0)

    previous = signal.signal(signal.SIGALRM, expired)
    watchdog = threading.Timer(max(seconds, 0.001) + _STUCK_GRACE, stuck)
    watchdog.daemon = True
    try:
        # Armed inside the try, disarmed in an inner finally: an alarm that fires while the watchdog thread
        # starts (a short --timeout on a loaded machine) or while the work returns is still the timeout, never
        # an exception that escapes as an error.
        try:
            watchdog.start()
            armed = True
            signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
            return work()
        finally:
            armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _TimedOut:
        _say(said, sys.stderr)
        return None
    finally:
        watchdog.cancel()
        signal.signal(signal.SIGALRM, previous)


#: Seconds past a hook's --timeout after which a check stuck in a system call ends the process (exit 0).
_STUCK_GRACE = 2.0


def _check(restart: bool) -> str:
    from soswap.proc.ignore import DEFAULT_IGNORE_FILE, IgnoreList
    from soswap.proc.scan import ScanOptions, scan_stale
    from soswap.report.stale import render_summary

    files = [DEFAULT_IGNORE_FILE] if os.path.exists(DEFAULT_IGNORE_FILE) else []
    # a reinstall of the same bytes (apt install --reinstall) is not news: --ignore-identical
    report = scan_stale(ScanOptions(ignore=IgnoreList.build(defaults=True, extra=(), files=files),
                                    ignore_identical=True))
    outcome = None
    notes: List[str] = []
    if restart and report.processes:
        from soswap.restart import Policy, execute, systemd_running

        if systemd_running():
            outcome = execute(Policy().plan(report), dry_run=False)
        else:
            notes.append("soswap: --restart needs systemd as PID 1: nothing restarted")
    return render_summary(report, outcome) + "".join(n + "\n" for n in notes)


class AptActions(NamedTuple):
    """What apt's ``Pre-Install-Pkgs`` input says: the .deb files it unpacks, and (protocol versions 2 and 3)
    the packages it removes, as (name, architecture or None)."""

    debs: List[str]
    removing: List[Tuple[str, Optional[str]]]


def apt_actions(text: str) -> AptActions:
    """Parse apt's ``Pre-Install-Pkgs`` input: one .deb file per line (protocol version 1), or, after a
    ``VERSION 2``/``VERSION 3`` line and apt's configuration (up to an empty line), one package action per line:
    ``NAME OLD-VERSION DIRECTION NEW-VERSION ACTION`` (version 2; version 3 adds the architecture and
    Multi-Arch type after each version), where ACTION is a .deb file, ``**CONFIGURE**`` or ``**REMOVE**``
    (apt's ``pkgDPkgPM::SendPkgsInfo``)."""
    # one action per "\n"-ended line (str.splitlines would also cut a file name at \x0c, \x1c, U+2028...)
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    removing: List[Tuple[str, Optional[str]]] = []
    if lines and lines[0].startswith("VERSION "):
        body = lines[lines.index("") + 1:] if "" in lines else []
        # the action is the rest of the line after the fixed fields (a file name may hold spaces)
        fixed = 8 if lines[0].split()[1:2] == ["3"] else 4
        rows = [line.split(None, fixed) for line in body if line.strip()]
        names = [row[-1] for row in rows]
        for row in rows:
            if row[-1] == "**REMOVE**" and len(row) == fixed + 1:
                arch = row[2] if fixed == 8 and row[2] != "-" else None
                removing.append((row[0], arch))
    else:
        names = [line.strip() for line in lines if line.strip()]
    return AptActions([n for n in names if n.endswith(".deb")], removing)


#: apt's list of .deb files on standard input (one line per package): a few KiB even for a dist-upgrade
_INPUT_LIMIT = 16 << 20


def _apt_preinstall(args: argparse.Namespace) -> int:
    import time

    # read first: apt's pipe is emptied whatever happens next; file names as bytes, kept as they are. The
    # reading counts in --timeout too, and is bounded: a hook must not wait on, or fill memory with, its input.
    from soswap.textfile import read_fd

    start = time.monotonic()
    raw = _within(args.timeout, lambda: read_fd(0, _INPUT_LIMIT + 1), "no package list on standard input")
    if raw is None:
        return 0
    if len(raw) > _INPUT_LIMIT:
        _say(f"soswap: the package list on standard input is over {_INPUT_LIMIT >> 20} MiB; skipped", sys.stderr)
        return 0
    debs, removing = apt_actions(raw.decode("utf-8", "surrogateescape"))
    if os.environ.get("SOSWAP_SUSPEND") or not debs:
        return 0
    from soswap.replace.debs import check_debs

    left = args.timeout - (time.monotonic() - start)
    result = _within(left, lambda: check_debs(debs, removing=removing), "soswap check could not finish",
                     args.timeout)
    if result is None:
        return 0
    checked, found = result.checked, [p.message for p in result.problems]
    if not found:
        gone = len(result.leaving)
        left = f" (not the {gone} ELF file{'s' if gone != 1 else ''} it deletes)" if gone else ""
        _say(f"soswap: checked {checked} ELF file{'s' if checked != 1 else ''} of {len(debs)} package"
             f"{'s' if len(debs) != 1 else ''} against what uses them{left}: nothing breaks.", sys.stdout)
        return 0
    _say("soswap: these packages would break what uses them:", sys.stdout)
    for message in found:
        _say(f"  {message}", sys.stdout)
    if args.refuse and not os.environ.get("SOSWAP_FORCE"):
        _say("soswap: refused: apt stops before unpacking anything (SOSWAP_FORCE=1 to go on)", sys.stderr)
        raise _Refused()
    _say("soswap: going on (SOSWAP_FORCE is set)" if args.refuse else
         "soswap: going on (the hook's --refuse stops apt instead)", sys.stdout)
    return 0


def _files(args: argparse.Namespace) -> int:
    from soswap.commands import hookfiles

    if not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root}: not a directory")
    if args.event == "remove":
        try:
            removed = hookfiles.remove(args.root, args.manager)
        except hookfiles.PartlyRemoved as exc:
            for path in exc.removed:
                _say(f"removed {path}", sys.stdout)
            raise
        for path in removed:
            _say(f"removed {path}", sys.stdout)
        return 0
    if args.refuse and args.manager != APT:
        raise UsageError(f"--refuse: apt only ({args.manager} runs soswap after the transaction, when nothing can "
                         "be refused any more)")
    if args.command is not None:
        if not os.path.isabs(args.command):
            raise UsageError(f"--command {args.command}: not an absolute path")
        command = [args.command]
        hookfiles.check_command(args.root, command)
    else:
        command = hookfiles.own_command()
    for path in hookfiles.setup(args.root, command, refuse=args.refuse, restart=args.restart,
                                manager=args.manager):
        _say(f"wrote {path}", sys.stdout)
    return 0
