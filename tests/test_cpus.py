"""``soswap.cpus``: ``-j auto`` counts the CPUs this process may use (affinity mask, cgroup CPU quota), not the
machine's. Checked with real processes: pinned with ``taskset``, and placed in a real cgroup with a quota."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pytest

from soswap.cpus import cgroup_cpu_quota, usable_cpus
from support.build import requires_root

SRC = str(Path(__file__).resolve().parents[1] / "src")
ASK = "from soswap.cpus import usable_cpus\nfrom soswap.commands.workers import job_count\n" \
      "print(usable_cpus(), job_count(None, 100000))"


def _ask(*prefix: str) -> str:
    r = subprocess.run([*prefix, sys.executable, "-c", ASK], env=dict(os.environ, PYTHONPATH=SRC),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_this_process() -> None:
    n = usable_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0))


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset is needed")
def test_a_process_pinned_to_one_cpu_forks_no_worker() -> None:
    cpu = min(os.sched_getaffinity(0))
    assert _ask("taskset", "-c", str(cpu)) == "1 1"


def _quota_cgroup() -> Iterator[Optional[Path]]:
    """A new cgroup (v2, else v1 ``cpu``) limited to half a CPU, or None where none can be made."""
    name = f"soswap-test-{uuid.uuid4().hex[:8]}"
    for base, files in ((Path("/sys/fs/cgroup"), {"cpu.max": "50000 100000"}),
                        (Path("/sys/fs/cgroup/unified"), {"cpu.max": "50000 100000"}),
                        (Path("/sys/fs/cgroup/cpu"), {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"})):
        if not (base / next(iter(files))).exists() and not (base / "cgroup.controllers").exists():
            continue
        d = base / name
        try:
            d.mkdir()
        except OSError:
            continue
        try:
            for f, value in files.items():
                (d / f).write_text(value)
        except OSError:
            d.rmdir()
            continue
        try:
            yield d
        finally:
            d.rmdir()
        return
    yield None


@requires_root
def test_a_process_in_a_cgroup_with_a_cpu_quota_forks_no_worker() -> None:
    """Half a CPU of quota (``docker --cpus=0.5``, ``CPUQuota=50%``): one worker's worth, whatever the mask."""
    gen = _quota_cgroup()
    d = next(gen)
    try:
        if d is None:
            pytest.skip("no cgroup with a CPU controller can be made here")
        # the shell moves itself into the cgroup, then becomes the Python process
        out = _ask("sh", "-c", f'echo $$ > {d}/cgroup.procs && exec "$@"', "sh")
        assert out == "1 1", out
    finally:
        next(gen, None)  # removes the cgroup (its one process has exited)


def test_quota_files_are_read_as_the_kernel_writes_them(tmp_path: Path) -> None:
    """cgroup v2 ``cpu.max`` and v1 ``cpu.cfs_quota_us`` up the hierarchy; the smallest quota wins; "max" and
    -1 mean none; unreadable or malformed files are ignored."""
    root = tmp_path / "cg"
    (root / "a" / "b").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu\n")
    (root / "a" / "cpu.max").write_text("250000 100000\n")
    (root / "a" / "b" / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/a/b\n")
    assert cgroup_cpu_quota(str(proc), str(root)) == 2.5
    assert usable_cpus(str(proc), str(root)) == min(3, len(os.sched_getaffinity(0)))
    (root / "a" / "cpu.max").write_text("garbage\n")
    assert cgroup_cpu_quota(str(proc), str(root)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "docker" / "x").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu" / "docker" / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu" / "docker" / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("5:cpu,cpuacct:/docker/x\n3:memory:/docker/x\n")
    assert cgroup_cpu_quota(str(proc), str(v1)) == 1.5
    proc.write_text("not a cgroup file\n\x00\xff")
    assert cgroup_cpu_quota(str(proc), str(v1)) is None
    assert cgroup_cpu_quota(str(tmp_path / "missing"), str(v1)) is None
