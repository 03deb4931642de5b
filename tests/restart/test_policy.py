"""The safe restart policy (stale.md §(b) 29, 33-35) and the dry run. PID 1 here is not systemd, so the
systemctl calls are tested in dry-run; RefuseManualStop parsing uses a stand-in that prints
``systemctl show``'s format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pytest

from soswap.errors import Refused
from soswap.proc.cgroup import classify
from soswap.proc.model import StaleFile, StaleProcess, StaleReport
from soswap.proc.procfs import read_stat
from soswap.restart import Policy, execute, systemd_running
from soswap.restart.policy import own_units
from soswap.restart.systemctl import refuse_manual_stop

FILE = StaleFile("/usr/lib/libssl.so.3", "deleted", "library", "", 1, 2)


def proc(pid: int, cgroup_path: str, starttime: int = 1, container=None,  # type: ignore[no-untyped-def]
         comm: str = "x") -> StaleProcess:
    info = classify(cgroup_path)
    return StaleProcess(pid, 1, 0, starttime, comm, f"/usr/sbin/{comm}", (comm,), info.unit,
                        container or info.container, cgroup_path, (FILE,))


def report(*procs: StaleProcess) -> StaleReport:
    return StaleReport(tuple(procs), False, len(procs), 0, 0, None)


def test_policy_table() -> None:
    plan = Policy().plan(report(
        proc(10, "/system.slice/nginx.service"),
        proc(11, "/system.slice/nginx.service"),  # a forked worker: same unit, one restart
        proc(12, "/system.slice/dbus.service"),
        proc(13, "/system.slice/system-getty.slice/getty@tty1.service"),
        proc(14, "/user.slice/user-1000.slice/user@1000.service/init.scope"),
        proc(15, "/user.slice/user-1000.slice/session-3.scope"),
        proc(16, "/user.slice/user-1000.slice/user@1000.service/app.slice/b.service"),
        proc(17, "/system.slice/docker-0123456789abcdef.scope"),
        proc(18, "/"),
        proc(1, "/init.scope"),
        proc(19, "/system.slice/NetworkManager.service"),
        proc(20, "/system.slice/run-u7.service"),
        proc(21, "/system.slice/cron.service"),
    ))
    assert plan.restart == ("cron.service", "nginx.service", "run-u7.service")
    assert plan.reexec_manager  # PID 1: daemon-reexec, never a restart
    assert plan.user_managers == (1000,)
    assert plan.sessions == ("uid 1000 session 3",)
    assert plan.containers == ("docker:0123456789abcdef",)
    assert plan.processes == (18,)
    skipped = {s.name: s.reason for s in plan.skipped}
    assert skipped["dbus.service"] == skipped["NetworkManager.service"] == "on the deny-list"
    assert skipped["getty@tty1.service"] == "on the deny-list"
    assert skipped["b.service (uid 1000)"].startswith("user unit")
    assert [m.pid for m in plan.members["nginx.service"]] == [10, 11]


def test_instances_and_real_unit_names_of_denied_services_are_denied() -> None:
    """The deny-list named wpa_supplicant, *swan and lxc/lxd exactly: their template instances and the unit
    names distributions really use were restarted (QA round)."""
    names = ["wpa_supplicant@wlan0.service", "wpa_supplicant-nl80211@wlan0.service",
             "wpa_supplicant-wired@eth0.service", "ipsec.service", "lxc@web.service", "lxc-net.service",
             "lxc-monitord.service", "snap.lxd.daemon.service", "incus.service", "strongswan-starter.service",
             # needrestart's override_rc, and networking daemons whose restart can cut the admin's link
             "network-manager.service", "quagga.service", "tinc.service", "tinc@vpn.service", "nodm.service",
             "wdm.service", "zfs-fuse.service", "systemd-journald.service", "wg-quick@wg0.service",
             "dhcpcd.service", "openvswitch-switch.service", "ovsdb-server.service", "ovs-vswitchd.service",
             "tailscaled.service", "zerotier-one.service", "mythtv-backend.service",
             "systemd-journald@logs.service", "NetworkManager-dispatcher.service"]
    plan = Policy().plan(report(*(proc(100 + n, f"/system.slice/{u}") for n, u in enumerate(names))))
    assert plan.restart == () and sorted(s.name for s in plan.skipped) == sorted(names)
    kept = Policy().plan(report(proc(10, "/system.slice/lxcfs-helper.service"),
                                proc(11, "/system.slice/wpa_gui.service")))
    assert kept.restart == ("lxcfs-helper.service", "wpa_gui.service")


def test_an_init_that_is_not_systemd_is_reported_not_reexecuted() -> None:
    """PID 1 in / that is not systemd (tini, sysvinit, a container's init) has no daemon-reexec."""
    plan = Policy().plan(report(proc(1, "/", comm="tini")))
    assert not plan.reexec_manager and plan.processes == (1,)
    assert Policy().plan(report(proc(1, "/", comm="systemd"))).reexec_manager


def test_extra_deny() -> None:
    plan = Policy(extra_deny=[r"^nginx\."]).plan(report(proc(10, "/system.slice/nginx.service")))
    assert plan.restart == () and plan.skipped[0].name == "nginx.service"


def test_dry_run_skips_units_whose_processes_are_gone(procs, tmp_path: Path) -> None:
    me = read_stat(os.getpid())
    plan = Policy().plan(report(
        proc(os.getpid(), "/system.slice/alive.service", me.starttime),
        proc(os.getpid(), "/system.slice/reused.service", me.starttime + 1),  # same PID, another start: reused
        proc(999_999_999, "/system.slice/gone.service"),
        proc(1, "/init.scope"),
    ))
    outcome = execute(plan, dry_run=True, systemctl="systemctl")
    assert not any(c.run for c in outcome.commands)
    argvs = [c.argv for c in outcome.commands]
    assert ("systemctl", "daemon-reexec") in argvs
    assert ("systemctl", "try-restart", "--", "alive.service") in argvs
    skipped = {s.name: s.reason for s in outcome.skipped}
    assert skipped["reused.service"].startswith("already restarted")
    assert skipped["gone.service"].startswith("already restarted")
    if not systemd_running():
        assert outcome.notes and "systemd is not running" in outcome.notes[0]


@pytest.mark.skipif(systemd_running(), reason="systemd runs here: a real restart would happen")
def test_real_restart_refused_without_systemd() -> None:
    plan = Policy().plan(report(proc(10, "/system.slice/nginx.service")))
    with pytest.raises(Refused):
        execute(plan, dry_run=False)


def test_refuse_manual_stop_parsing(tmp_path: Path) -> None:
    stand_in = tmp_path / "systemctl"
    stand_in.write_text("#!/bin/sh\n"
                        "printf 'Id=a.service\\nRefuseManualStop=no\\n\\nId=b.service\\nRefuseManualStop=yes\\n'\n")
    stand_in.chmod(0o755)
    assert refuse_manual_stop(["a.service", "b.service"], str(stand_in)) == {"a.service": False, "b.service": True}
    assert refuse_manual_stop([], str(stand_in)) == {}


@pytest.fixture
def failing_systemctl(monkeypatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """As if systemd were PID 1, with a ``systemctl`` (first in PATH) whose try-restart fails, and a scan that
    finds one stale process of qa.service: the real systemctl is never called."""
    import soswap.proc.scan
    import soswap.restart.systemctl

    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n[ "$1" = show ] && exit 0\necho "Job for qa.service failed." >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ.get('PATH', '')}")
    monkeypatch.setattr(soswap.restart.systemctl, "systemd_running", lambda: True)
    stale = report(proc(os.getpid(), "/system.slice/qa.service", starttime=read_stat(os.getpid()).starttime))
    monkeypatch.setattr(soswap.proc.scan, "scan_stale", lambda options: stale)
    return fake


@pytest.mark.parametrize("fmt", ["text", "--json", "--batch", "--nagios"])
def test_a_failed_systemctl_call_is_an_error_in_every_format(failing_systemctl, capsys, fmt: str) -> None:
    """--batch exited 2 without a word, --nagios said WARNING (exit 1), --json printed no error line: the
    restart's failure is now the documented error (UNKNOWN under --nagios)."""
    from soswap.cli import main

    status = main(["stale", "--restart", "--no-kernel", *([fmt] if fmt != "text" else [])])
    out, err = capsys.readouterr()
    failed = f"restart failed: {failing_systemctl} try-restart -- qa.service: exit status 1: Job for qa.service failed."
    if fmt == "--nagios":
        assert status == 3 and out == f"STALE UNKNOWN - {failed}\n", out
    else:
        assert status == 2
    assert err.splitlines()[-1] == f"soswap: error: {failed}", err
    if fmt in ("--batch", "--nagios"):  # what the restart did, where these formats have no place for it
        assert f"soswap: restart: FAILED (exit status 1: Job for qa.service failed.): {failing_systemctl}" in err
    if fmt == "--json":
        import json

        cmd = json.loads(out)["restart"]["commands"][0]
        assert cmd["run"] is True and cmd["returncode"] == 1


def test_a_systemctl_that_cannot_run_is_a_failure_and_a_warning_with_status_0_is_not() -> None:
    from soswap.restart.systemctl import Command

    assert Command(("systemctl", "try-restart"), "why", True, None, "No such file or directory").describe(False) == \
        "FAILED (could not run: No such file or directory)"
    warned = Command(("systemctl", "try-restart"), "why", True, 0, "Warning: unit file changed on disk")
    assert not warned.failed and warned.describe(False) == "ran"
    assert Command(("systemctl", "--user"), "why", False).describe(False) == "to run by hand"
    two_lines = Command(("systemctl", "try-restart"), "why", True, 1,
                        "Job for a.service failed because the control process exited with error code.\n"
                        "See \"systemctl status a.service\" and \"journalctl -xeu a.service\" for details.")
    assert "\n" not in two_lines.describe(False) and two_lines.describe(False).endswith("for details.)")


def test_the_units_soswap_runs_in_are_never_restarted() -> None:
    """An apt hook run by a configuration agent's service (puppet, a CI runner) was planned to ``try-restart``
    that service when it ran stale code: systemd would have killed soswap and apt in the middle of their
    work."""
    plan = Policy(own=frozenset({"agent.service"})).plan(report(
        proc(10, "/system.slice/agent.service"), proc(11, "/system.slice/nginx.service")))
    assert plan.restart == ("nginx.service",)
    assert {s.name: s.reason for s in plan.skipped} == {
        "agent.service": "soswap runs in it: restart it once soswap and what started it have ended"}


def _systemd_hierarchy() -> Optional[Path]:
    """Where this system keeps the cgroups /proc/PID/cgroup names for systemd (v1 name=systemd, else v2)."""
    with open("/proc/self/cgroup", "rb") as f:
        lines = f.read().decode().splitlines()
    if any(":name=systemd:" in line for line in lines):
        base = Path("/sys/fs/cgroup/systemd")
    else:
        base = Path("/sys/fs/cgroup/unified") if Path("/sys/fs/cgroup/unified/cgroup.procs").exists() \
            else Path("/sys/fs/cgroup")
    return base if (base / "cgroup.procs").exists() and os.access(base, os.W_OK) else None


def test_own_units_are_read_from_this_process_and_its_ancestors(tmp_path: Path) -> None:
    """A real cgroup named like a service: a shell placed in it runs a Python that moves itself back to the root
    cgroup; own_units still finds the service through its parent."""
    import subprocess
    import sys

    base = _systemd_hierarchy()
    if base is None:
        pytest.skip("no writable cgroup hierarchy for systemd's names")
    slice_made = not (base / "system.slice").exists()
    unit = base / "system.slice" / f"soswap-test-own-{os.getpid()}.service"
    unit.mkdir(parents=True)
    try:
        code = ("import os, sys\nfrom soswap.restart.policy import own_units\n"
                "print(' '.join(sorted(own_units())))\n"
                f"open({str(base / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
                "print(' '.join(sorted(own_units())))\n")
        shell = f'echo $$ > "{unit}/cgroup.procs" && "{sys.executable}" -c "$0"; echo $$ > "{base}/cgroup.procs"'
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
        r = subprocess.run(["/bin/sh", "-c", shell, code], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        own, parents = r.stdout.splitlines()
        assert unit.name in own.split() and unit.name in parents.split(), r.stdout
        assert unit.name not in own_units()  # this process is not in it
    finally:
        unit.rmdir()
        if slice_made:
            (base / "system.slice").rmdir()


def test_batch_pid_lines_keep_their_fields_whatever_the_process_name() -> None:
    """A process that names itself ``\\e[31mA\\nB=1,2`` (prctl PR_SET_NAME) made ``NEEDRESTART-PID: ?[31mA?B=1,2=5229``:
    a ``comm=pid,pid`` reader found PIDs 1 and 2."""
    from soswap.report.batch import render

    text = render(report(proc(5229, "/", comm="\x1b[31mA\nB=1,2")))
    assert "NEEDRESTART-PID: ?[31mA?B?1?2=5229\n" in text, text


def test_a_container_inside_a_service_is_reported_not_restarted_with_it() -> None:
    """A stale process in ``/system.slice/bar.service/docker/ID`` was grouped as a container (reported only) while
    the plan restarted bar.service, and the container with it."""
    plan = Policy(own=frozenset()).plan(report(proc(30, "/system.slice/bar.service/docker/0123456789abcdef")))
    assert plan.restart == () and plan.containers == ("docker:0123456789abcdef",), plan
