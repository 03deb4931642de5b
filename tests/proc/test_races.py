"""Case 27 of stale.md §(b): a process that exec()s in a loop while it is scanned (the CVE-2024-48991 race).

Two programs, ``alpha`` and ``beta``, each dlopen() their own library (libalpha.so, libbeta.so) and then exec()
the other, as fast as they can, until a stop file appears. Both libraries are rewritten in place after the
process started, so every incarnation maps a "modified" library (the start time does not change across
exec()). A scan that pairs what it read of one program (maps) with what it read of the other (exe, argv, comm)
would report alpha's exe with libbeta.so or the reverse. Scans run during the storm must never do that, never
crash, and never print a traceback; once the storm stops, the process is reported with its own library.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import List, Sequence

import pytest

from soswap.proc import ScanOptions, find_users, scan_stale
from support import build

from .conftest import LIB_C, run_cli, wait_after_start

EXECLOOP_C = r"""
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
/* execloop OWN_LIB OTHER_EXE OTHER_LIB STOP READY: dlopen OWN_LIB, then (after 1 ms) exec OTHER_EXE, which does
   the same the other way round, until STOP exists; then create READY and wait. argv[0]: this exe's full path. */
int main(int argc, char **argv) {
    if (argc != 6 || !dlopen(argv[1], RTLD_NOW)) return 3;
    if (access(argv[4], F_OK) != 0) {
        usleep(1000); /* keep the library mapped for a moment: most reads see it, many straddle the exec */
        char *next[] = {argv[2], argv[3], argv[0], argv[1], argv[4], argv[5], NULL};
        execv(argv[2], next);
        return 4;
    }
    int fd = open(argv[5], O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
    for (;;) pause();
}
"""


class Storm:
    """The alpha/beta exec loop: paths, and the consistency rule a report of its PID must follow."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        src = build.executable(tmp_path / "build" / "execloop", EXECLOOP_C, libs=["-ldl"])
        self.exe = {}
        self.lib = {}
        for n, name in enumerate(("alpha", "beta")):
            d = tmp_path / name
            d.mkdir()
            shutil.copy(src, d / name)
            self.exe[name] = d / name
            self.lib[name] = build.shared_lib(d / f"lib{name}.so", LIB_C % (n + 1))
        self.stop = tmp_path / "stop"
        self.ready = tmp_path / "ready"

    def argv(self) -> List[str]:
        return [str(self.exe["alpha"]), str(self.lib["alpha"]), str(self.exe["beta"]), str(self.lib["beta"]),
                str(self.stop), str(self.ready)]

    def touch_libraries(self) -> None:
        """Rewrite both libraries in place (same bytes, same inode): from now on they are "modified"."""
        for lib in self.lib.values():
            data = lib.read_bytes()
            with open(lib, "r+b") as f:
                f.write(data[:64])

    def program_of(self, exe: str) -> str:
        """alpha or beta, from an exe path as soswap reports it."""
        for name, path in self.exe.items():
            if exe == str(path):
                return name
        raise AssertionError(f"reported exe {exe!r} is neither program")

    def check(self, exe: str, comm: str, argv: Sequence[str], paths: List[str]) -> str:
        """One report is about one program: its exe, comm, argv and files all name the same one."""
        name = self.program_of(exe)
        assert comm == name, (exe, comm)
        assert list(argv[:1]) == [str(self.exe[name])], (exe, argv)
        other = "beta" if name == "alpha" else "alpha"
        assert str(self.lib[other]) not in paths, (exe, paths)
        assert str(self.exe[other]) not in paths, (exe, paths)
        return name


@pytest.fixture
def storm(tmp_path: Path) -> Storm:
    if not build.have_cc():
        pytest.skip("no C compiler")
    return Storm(tmp_path)


def test_exec_loop_is_never_reported_with_another_programs_files(procs, storm: Storm) -> None:
    p = procs.start(storm.argv())
    wait_after_start(p.pid)
    storm.touch_libraries()
    seen = {"alpha": 0, "beta": 0}
    unstable = 0
    # The exact check of the one PID, many times: each is a chance to read maps of one program and the exe,
    # argv or comm of the other.
    for _ in range(300):
        report = scan_stale(ScanOptions(pids=[p.pid], kernel=False))
        assert p.alive()
        # Either reported once or, when every attempt raced, counted as unstable: never both, never twice.
        assert len(report.processes) + report.unstable <= 1
        unstable += report.unstable
        for proc in report.processes:
            assert proc.pid == p.pid
            name = storm.check(proc.exe, proc.comm, proc.cmdline, [f.path for f in proc.files])
            assert [(f.path, f.kind, f.role) for f in proc.files] == [(str(storm.lib[name]), "modified", "library")]
            seen[name] += 1
    # Whole-system scans (pass 1 through PROCMAP_QUERY and through the maps text, then pass 2) and the users
    # query, during the storm as well.
    for vma_query in (True, False) * 5:
        report = scan_stale(ScanOptions(kernel=False, vma_query=vma_query))
        for proc in report.processes:
            if proc.pid == p.pid:
                storm.check(proc.exe, proc.comm, proc.cmdline, [f.path for f in proc.files])
    for _ in range(20):
        for r in find_users([str(storm.lib["alpha"]), str(storm.lib["beta"])]):
            for use in r.uses:
                if use.pid == p.pid:
                    assert storm.program_of(use.exe) == ("alpha" if r.path == str(storm.lib["alpha"]) else "beta")
    # Through the CLI: no traceback, a valid document, the same rule.
    for _ in range(3):
        r = run_cli(["stale", "--json", "--no-kernel", "--pid", str(p.pid)], check_rc=[0, 1])
        doc = json.loads(r.stdout)
        assert len(doc["processes"]) + doc["unstable"] <= 1
        for proc in doc["processes"]:
            storm.check(proc["exe"], proc["comm"], proc["cmdline"], [f["path"] for f in proc["files"]])
    # Between dlopen() and exec() each incarnation maps its library for a millisecond, so some of the 300 exact
    # checks found it: the consistency rule above was exercised, not vacuous.
    assert seen["alpha"] + seen["beta"] > 0, (seen, unstable)
    # Stop the storm: the last incarnation settles and is reported with its own library, deterministically.
    storm.stop.touch()
    deadline = time.monotonic() + 10
    while not storm.ready.exists():
        assert time.monotonic() < deadline and p.alive(), "the exec loop did not settle"
        time.sleep(0.01)
    (proc,) = scan_stale(ScanOptions(pids=[p.pid], kernel=False)).processes
    name = storm.check(proc.exe, proc.comm, proc.cmdline, [f.path for f in proc.files])
    assert [(f.path, f.kind) for f in proc.files] == [(str(storm.lib[name]), "modified")]
    assert os.readlink(f"/proc/{p.pid}/exe") == str(storm.exe[name])
