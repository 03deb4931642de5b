"""Carrying out a restart plan with ``systemctl`` (or printing it, in a dry run).

Before acting, every unit's stale processes are re-read by PID *and* start time: a unit whose stale processes
are all gone (restarted meanwhile by a package script, or the PID now belongs to someone else) is skipped.
``RefuseManualStop`` is read with one ``systemctl show`` for all units. The restarts are one batched
``systemctl try-restart`` (it leaves stopped units stopped). No shell is involved.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from soswap.errors import Refused
from soswap.proc.scan import check_pid_alive
from soswap.restart.policy import RestartPlan, Skipped

#: Seconds one systemctl call may take before soswap gives up on it.
SYSTEMCTL_TIMEOUT = 300.0


def systemd_running() -> bool:
    """True when systemd is the init system (sd_booted(): /run/systemd/system exists)."""
    return os.path.isdir("/run/systemd/system")


def pid1_name() -> str:
    try:
        with open("/proc/1/comm", "rb") as f:
            return f.read().strip().decode("utf-8", "replace")
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class Command:
    argv: Tuple[str, ...]
    why: str
    run: bool  #: False: only reported (dry run, or reported-only action)
    returncode: Optional[int] = None  #: None when it was run but could not be started or timed out
    error: str = ""  #: its standard error, or why it could not be run

    @property
    def failed(self) -> bool:
        """It was run and did not exit 0 (a warning on standard error with status 0 is no failure)."""
        return self.run and self.returncode != 0

    def describe(self, dry_run: bool) -> str:
        """``ran``, ``would run``, ``to run by hand`` or ``FAILED (...)``."""
        if not self.run:
            return "would run" if dry_run else "to run by hand"
        if not self.failed:
            return "ran"
        status = f"exit status {self.returncode}" if self.returncode is not None else "could not run"
        error = " ".join(self.error.split())  # systemctl explains on several lines: one line here
        return f"FAILED ({status}{': ' + error if error else ''})"


@dataclass(frozen=True)
class RestartOutcome:
    dry_run: bool
    systemd: bool
    commands: Tuple[Command, ...]
    skipped: Tuple[Skipped, ...]
    notes: Tuple[str, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> bool:
        return any(c.failed for c in self.commands)

    def failures(self) -> List[str]:
        """One line per failed command: ``ARGV: what happened``."""
        return [f"{' '.join(c.argv)}: {c.describe(self.dry_run)[len('FAILED ('):-1]}" for c in self.commands
                if c.failed]


def find_systemctl() -> Optional[str]:
    import shutil

    return shutil.which("systemctl")


def refuse_manual_stop(units: Sequence[str], systemctl: str) -> Dict[str, bool]:
    """{unit: RefuseManualStop} from one ``systemctl show`` call."""
    if not units:
        return {}
    argv = [systemctl, "show", "--property=Id,RefuseManualStop", "--", *units]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT, check=False)
    result: Dict[str, bool] = {}
    # Blocks separated by blank lines, in the order of the arguments.
    blocks = [b for b in proc.stdout.split("\n\n") if b.strip()]
    for unit, block in zip(units, blocks):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        result[unit] = props.get("RefuseManualStop", "no") == "yes"
    return result


def execute(
    plan: RestartPlan,
    *,
    dry_run: bool,
    systemctl: Optional[str] = None,
    alive: Callable[[int, int], bool] = check_pid_alive,
) -> RestartOutcome:
    """Carry out (or, with ``dry_run``, describe) ``plan``. Raises Refused when systemd is not running."""
    booted = systemd_running()
    notes: List[str] = []
    if not booted:
        if not dry_run:
            raise Refused(f"cannot restart: systemd is not running (PID 1 is {pid1_name()}); nothing was changed")
        notes.append(f"systemd is not running (PID 1 is {pid1_name()}): nothing could be restarted here; "
                     "RefuseManualStop not checked")
    systemctl = systemctl or find_systemctl() or "systemctl"
    skipped: List[Skipped] = list(plan.skipped)
    units: List[str] = []
    for unit in plan.restart:
        members = plan.members.get(unit, ())
        if members and not any(alive(m.pid, m.starttime) for m in members):
            skipped.append(Skipped(unit, "already restarted: none of its stale processes is left"))
        else:
            units.append(unit)
    if booted and units:
        try:
            refusing = refuse_manual_stop(units, systemctl)
        except (OSError, subprocess.SubprocessError) as exc:
            refusing = {}
            notes.append(f"RefuseManualStop not checked: {exc}")
        for unit in [u for u in units if refusing.get(u)]:
            units.remove(unit)
            skipped.append(Skipped(unit, "RefuseManualStop=yes"))
    planned: List[Tuple[Tuple[str, ...], str, bool]] = []
    if plan.reexec_manager:
        planned.append(((systemctl, "daemon-reexec"), "PID 1 runs stale code", True))
    if units:
        planned.append(((systemctl, "try-restart", "--", *units), "stale system units", True))
    for uid in plan.user_managers:
        planned.append(((systemctl, "--user", "-M", f"{uid}@.host", "daemon-reexec"),
                        f"the user manager of uid {uid} runs stale code (reported only)", False))
    commands: List[Command] = []
    for argv, why, runnable in planned:
        if dry_run or not runnable:
            commands.append(Command(argv, why, False))
            continue
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT,
                                  check=False)
            commands.append(Command(argv, why, True, proc.returncode, proc.stderr.strip()))
        except (OSError, subprocess.SubprocessError) as exc:
            commands.append(Command(argv, why, True, None, str(exc)))
    return RestartOutcome(dry_run, booted, tuple(commands), tuple(skipped), tuple(notes))
