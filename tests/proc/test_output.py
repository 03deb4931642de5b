"""Grouping, the output formats (JSON, batch, Nagios, Prometheus), exit codes and the kernel check."""

from __future__ import annotations

import json
import os
import struct
from collections import Counter
from enum import Enum
from pathlib import Path

import pytest

from soswap.proc import kernel
from support.build import requires_root

from .conftest import replace_by_rename, run_cli

CGROUP_V1 = Path("/sys/fs/cgroup/systemd")


@pytest.fixture
def unit_cgroup():  # type: ignore[no-untyped-def]
    """A real name=systemd (v1) cgroup system.slice/soswap-test-N.service; processes are moved into it."""
    if os.geteuid() != 0 or not (CGROUP_V1 / "cgroup.procs").exists():
        pytest.skip("no writable name=systemd cgroup hierarchy")
    created = []

    def make(name: str) -> Path:
        path = CGROUP_V1 / "system.slice" / name
        path.mkdir(parents=True, exist_ok=True)
        created.append(path)
        return path

    yield make
    for path in reversed(created):
        try:
            for pid in (path / "cgroup.procs").read_text().split():
                (CGROUP_V1 / "cgroup.procs").write_text(pid)
        except OSError:
            pass
        try:
            path.rmdir()
        except OSError:
            pass
    try:
        (CGROUP_V1 / "system.slice").rmdir()
    except OSError:
        pass


@requires_root
def test_forked_workers_collapse_into_their_unit(procs, fx, tmp_path: Path, unit_cgroup) -> None:
    cg = unit_cgroup(f"soswap-test-{os.getpid()}.service")
    d = tmp_path / "app"
    prog = fx.program(d)
    workers = []
    for i in range(3):
        ready = tmp_path / f"ready{i}"
        workers.append(procs.start([prog, ready], wait_for_file=ready))
        (cg / "cgroup.procs").write_text(str(workers[-1].pid))
    loose_ready = tmp_path / "ready-loose"
    loose = procs.start([prog, loose_ready], wait_for_file=loose_ready)
    replace_by_rename(d / "libfix.so", fx.lib_v2.read_bytes())
    pids = [str(p.pid) for p in (*workers, loose)]
    doc = json.loads(run_cli(["stale", "--json", "--no-kernel", "--pid", *pids], check_rc=[1]).stdout)
    units = {p["pid"]: p["unit"] for p in doc["processes"]}
    assert units == {**{w.pid: cg.name for w in workers}, loose.pid: None}
    text = run_cli(["stale", "--no-kernel", "--pid", *pids], check_rc=[1]).stdout
    assert f"unit {cg.name} (3 processes)" in text and "no unit" in text
    batch = run_cli(["stale", "--batch", "--no-kernel", "--pid", *pids], check_rc=[1]).stdout
    assert f"NEEDRESTART-SVC: {cg.name}\n" in batch and batch.count("NEEDRESTART-SVC:") == 1
    assert f"NEEDRESTART-PID: prog={loose.pid}\n" in batch
    dry = run_cli(["stale", "--no-kernel", "--restart", "--dry-run", "--pid", *pids], check_rc=[1]).stdout
    assert f"systemctl try-restart -- {cg.name}    # stale system units" in dry and "would run: " in dry


# -- needrestart batch: fed to a parser equivalent to needrestart_info.py's -----------------------------------
class KernelStatus(Enum):
    UNKNOWN = 0
    CURRENT = 1
    ABI_UPGRADE = 2
    VERSION_UPGRADE = 3


def parse_batch(text: str) -> dict:
    """What needrestart_info.py does: split every line on ': ' once, enum-convert KSTA, count the rest."""
    out = {"counter": Counter()}
    for line in text.splitlines():
        key, value = line.split(": ", maxsplit=1)
        if key == "NEEDRESTART-VER":
            out["version"] = value
        elif key == "NEEDRESTART-KCUR":
            out["kcur"] = value
        elif key == "NEEDRESTART-KEXP":
            out["kexp"] = value
        elif key == "NEEDRESTART-KSTA":
            out["ksta"] = KernelStatus(int(value))
        else:
            out["counter"].update({key})
    return out


def test_batch_parses_like_needrestart_info(procs, fx, tmp_path: Path) -> None:
    d = tmp_path / "app"
    prog = fx.program(d)
    ready = tmp_path / "ready"
    p = procs.start([prog, ready], wait_for_file=ready)
    replace_by_rename(d / "libfix.so", fx.lib_v2.read_bytes())
    r = run_cli(["stale", "--batch"], check_rc=[1])
    parsed = parse_batch(r.stdout)
    assert parsed["version"].startswith("soswap-")
    assert parsed["kcur"] == os.uname().release
    assert isinstance(parsed["ksta"], KernelStatus)
    assert f"prog={p.pid}" in r.stdout


# -- Nagios (monitoring-plugins guidelines) ------------------------------------------------------------------
NAGIOS_LINE = r"^STALE (OK|WARNING|CRITICAL|UNKNOWN) - [^|]+ \| ('[a-z]+'=[0-9U]+;[0-9]*;[0-9]*;[0-9]*;[0-9]* ?)+$"


def test_nagios_output_and_status(procs, fx, tmp_path: Path) -> None:
    import re

    d = tmp_path / "app"
    prog = fx.program(d)
    ready = tmp_path / "ready"
    p = procs.start([prog, ready], wait_for_file=ready)
    ok = run_cli(["stale", "--nagios", "--no-kernel", "--pid", str(p.pid)])
    assert ok.returncode == 0 and ok.stdout.startswith("STALE OK - ")
    assert re.match(NAGIOS_LINE, ok.stdout.splitlines()[0])
    replace_by_rename(d / "libfix.so", fx.lib_v2.read_bytes())
    warn = run_cli(["stale", "--nagios", "--no-kernel", "--pid", str(p.pid)])
    first = warn.stdout.splitlines()[0]
    assert warn.returncode == 1 and first.startswith("STALE WARNING - ") and "Processes: 1 (!)" in first
    assert re.match(NAGIOS_LINE, first), first
    assert "'processes'=1;0;;0;" in first
    assert f"- prog[{p.pid}]" in warn.stdout.splitlines()[1:]


# -- Prometheus textfile ---------------------------------------------------------------------------------------
def test_prometheus_file_parses_and_is_written_atomically(procs, fx, tmp_path: Path) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    d = tmp_path / "app\nodd\"dir"
    prog = fx.program(d)
    ready = tmp_path / "ready"
    p = procs.start([prog, ready], wait_for_file=ready)
    replace_by_rename(d / "libfix.so", fx.lib_v2.read_bytes())
    out_dir = tmp_path / "textfile"
    out_dir.mkdir()
    target = out_dir / "soswap.prom"
    target.write_text("old\n")
    r = run_cli(["stale", "--prometheus", str(target), "--pid", str(p.pid)], check_rc=[1])
    assert "prog" in r.stdout
    assert sorted(os.listdir(out_dir)) == ["soswap.prom"]  # no temporary file left behind
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    families = {f.name: f for f in parser.text_string_to_metric_families(target.read_text())}
    assert all(f.type == "gauge" for f in families.values())
    assert all(s.timestamp is None for f in families.values() for s in f.samples)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("soswap_stale_processes", ())] == 1
    assert samples[("soswap_stale_files", (("kind", "deleted"), ("role", "library")))] == 1
    assert samples[("soswap_stale_units", (("type", "process"),))] == 1
    assert ("soswap_kernel_status", (("current", os.uname().release), ("expected", ""))) in samples
    assert samples[("soswap_stale_unstable_processes", ())] == 0
    assert samples[("soswap_stale_identical_files", ())] == 0


# -- exit codes --------------------------------------------------------------------------------------------
def test_exit_codes_and_usage_errors(procs, fx, tmp_path: Path) -> None:
    d = tmp_path / "app"
    prog = fx.program(d)
    ready = tmp_path / "ready"
    p = procs.start([prog, ready], wait_for_file=ready)
    assert run_cli(["stale", "--no-kernel", "--pid", str(p.pid)]).returncode == 0
    replace_by_rename(d / "libfix.so", fx.lib_v2.read_bytes())
    assert run_cli(["stale", "--no-kernel", "--pid", str(p.pid)]).returncode == 1
    for bad in (["--pid", "999999999"], ["--ignore", "("], ["--ignore-file", "/nonexistent"], ["--dry-run"],
                ["--json", "--batch"]):
        r = run_cli(["stale", *bad])
        assert r.returncode == 2, bad
        assert "error: " in r.stderr.strip().splitlines()[-1]  # one error line (after argparse's usage)
    r = run_cli(["stale", "--restart"])  # no systemd here: refused before anything is done
    if not os.path.isdir("/run/systemd/system"):
        assert r.returncode == 1 and "systemd" in r.stderr


# -- kernel (stale.md §(b) 38) ------------------------------------------------------------------------------
def fake_bzimage(path: Path, version: str) -> None:
    head = bytearray(0x400)
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x20E, 0x100)  # version string at 0x200 + 0x100
    text = version.encode() + b"\0"
    head[0x300 : 0x300 + len(text)] = text
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(1_200_000)


def test_kernel_statuses(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    st = kernel.check(str(boot), "6.1.0-18-amd64", "#1 SMP Debian 6.1.76-1", skip_in_container=False)
    assert st.status == kernel.UNKNOWN
    fake_bzimage(boot / "vmlinuz-6.1.0-18-amd64",
                 "6.1.0-18-amd64 (debian-kernel@lists.debian.org) (gcc 12) #1 SMP Debian 6.1.76-1")
    (boot / "initrd.img-6.1.0-18-amd64").write_bytes(b"\0" * 2_000_000)
    st = kernel.check(str(boot), "6.1.0-18-amd64", "#1 SMP Debian 6.1.76-1", skip_in_container=False)
    assert (st.status, st.expected) == (kernel.CURRENT, "6.1.0-18-amd64")
    st = kernel.check(str(boot), "6.1.0-18-amd64", "#1 SMP Debian 6.1.69-1", skip_in_container=False)
    assert st.status == kernel.ABI_UPGRADE  # same release, another build: ABI rebuild
    with open(boot / "vmlinuz-6.1.0-20-amd64", "wb") as f:  # no header: version from the file name
        f.truncate(1_200_000)
    st = kernel.check(str(boot), "6.1.0-18-amd64", "#1 SMP Debian 6.1.76-1", skip_in_container=False)
    assert (st.status, st.expected) == (kernel.VERSION_UPGRADE, "6.1.0-20-amd64")
    (boot / "vmlinuz-6.10.0-1-amd64").write_bytes(b"tiny")  # too small to be a kernel: ignored
    assert kernel.check(str(boot), "6.1.0-20-amd64", "x", skip_in_container=False).status == kernel.CURRENT
    assert kernel.version_key("6.10.0") > kernel.version_key("6.9.12")


def test_unreadable_processes_are_named() -> None:
    """The processes the kernel refused to show are named: the first five in the text line, all in JSON and in
    the Nagios long output (a comm that could not be read either leaves the pid alone)."""
    from soswap.proc.model import StaleReport
    from soswap.report.nagios import render as render_nagios
    from soswap.report.stale import refused_text, render_text, report_json

    assert refused_text(()) == ""
    assert refused_text(((1, "init"),)) == "pid 1 (init)"
    assert refused_text(((1, "init"), (7, ""))) == "pid 1 (init) and pid 7"
    many = tuple((n, f"p{n}") for n in range(1, 9))
    assert refused_text(many) == "pid 1 (p1), pid 2 (p2), pid 3 (p3), pid 4 (p4), pid 5 (p5) and 3 more"
    report = StaleReport(processes=(), partial=True, scanned=9, unreadable=8, unverifiable=0, kernel=None,
                         refused=(*many[:7], (8, "")))
    assert ": pid 1 (p1), pid 2 (p2), pid 3 (p3), pid 4 (p4), pid 5 (p5) and 3 more\n" in render_text(report)
    doc = report_json(report)
    assert doc["unreadable_processes"][0] == {"pid": 1, "comm": "p1"}
    assert doc["unreadable_processes"][-1] == {"pid": 8, "comm": None}
    text, _status = render_nagios(report, euid=0)
    lines = text.splitlines()
    at = lines.index("Unreadable:")
    assert lines[at + 1:] == [f"- pid {n} (p{n})" for n in range(1, 8)] + ["- pid 8"]
