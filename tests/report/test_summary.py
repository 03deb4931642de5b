"""``render_summary``: the lines ``soswap hook apt`` prints into apt's output."""

from __future__ import annotations

from soswap.proc.cgroup import KIND_MANAGER, KIND_SESSION, KIND_SYSTEM, Unit
from soswap.proc.kernel import CURRENT, VERSION_UPGRADE, KernelStatus
from soswap.proc.model import StaleFile, StaleProcess, StaleReport
from soswap.report.stale import render_summary
from soswap.restart.policy import Skipped
from soswap.restart.systemctl import Command, RestartOutcome

FILE = (StaleFile("/usr/lib/x86_64-linux-gnu/libssl.so.3", "deleted", "library", "deleted", 2049, 42),)


def _proc(pid: int, comm: str, unit=None, container=None) -> StaleProcess:  # type: ignore[no-untyped-def]
    return StaleProcess(pid, 1, 0, 100, comm, f"/usr/bin/{comm}", (comm,), unit, container, "/", FILE)


def _report(procs, kernel=None) -> StaleReport:  # type: ignore[no-untyped-def]
    return StaleReport(tuple(procs), False, 100, 0, 0, kernel)


def test_nothing_stale_is_one_line() -> None:
    assert render_summary(_report([])) == "soswap: no process runs old code.\n"


def test_groups_kernel_and_restart() -> None:
    procs = [
        _proc(1, "systemd", Unit(KIND_MANAGER, "init.scope")),
        _proc(10, "nginx", Unit(KIND_SYSTEM, "nginx.service")),
        _proc(11, "nginx", Unit(KIND_SYSTEM, "nginx.service")),
        _proc(20, "bash", Unit(KIND_SESSION, "session-4.scope", uid=0, session="4")),
        _proc(30, "app", None, "docker:abc123"),
        _proc(40, "a.out"),
        _proc(41, "a.out"),
    ]
    kernel = KernelStatus(VERSION_UPGRADE, "6.1.0-40-amd64", "#1", "6.1.0-41-amd64", (), "a newer version")
    assert render_summary(_report(procs, kernel)) == (
        "soswap: 7 processes run old code (details: soswap stale)\n"
        "  services: nginx.service systemd-manager   (soswap stale --restart)\n"
        "  user sessions: root @ session #4\n"
        "  containers: docker:abc123\n"
        "  processes: a.out=40,41\n"
        "soswap: reboot to run kernel 6.1.0-41-amd64 (running 6.1.0-40-amd64: a newer version)\n")

    outcome = RestartOutcome(False, True, (
        Command(("systemctl", "daemon-reexec"), "PID 1 runs stale code", True, 0),
        Command(("systemctl", "try-restart", "--", "nginx.service"), "stale system units", True, 0)),
        (Skipped("dbus.service", "on the deny-list"),))
    text = render_summary(_report(procs[:3], KernelStatus(CURRENT, "6.1.0-41-amd64", "#1", "6.1.0-41-amd64", (),
                                                          "current")), outcome)
    assert text == (
        "soswap: 3 processes run old code (details: soswap stale)\n"
        "  services: nginx.service systemd-manager\n"
        "restart:\n"
        "  ran: systemctl daemon-reexec    # PID 1 runs stale code\n"
        "  ran: systemctl try-restart -- nginx.service    # stale system units\n"
        "  not restarted: dbus.service: on the deny-list\n")


def test_a_partial_scan_says_so() -> None:
    """Processes the scan could not read (not root): "no process runs old code" would be a claim it cannot make."""
    partial = StaleReport((), True, 100, 20, 0, None)
    text = render_summary(partial)
    assert text.startswith("soswap: no process runs old code (partial: 20 processes could not be read; ")
    one = render_summary(StaleReport((_proc(10, "nginx"),), True, 100, 1, 0, None))
    assert "runs old code (details: soswap stale) (partial: 1 process could not be read; " in one
