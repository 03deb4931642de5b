"""A process whose main thread ended (``pthread_exit``) while another thread runs (QA regression round): its
leader is a zombie and ``/proc/PID/maps``, ``exe`` and ``cmdline`` read empty or gone, while the live thread's
``/proc/PID/task/TID/maps`` shows the address space they share. It was called "a zombie: it runs no code" and
missed by ``stale`` and ``users`` although it ran a deleted library."""

from __future__ import annotations

import os
import re
from pathlib import Path

from support.build import executable, requires_cc, shared_lib

from .conftest import files_of, run_cli, stale_json

PROGRAM = r"""
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static void *worker(void *arg) { (void)arg; for (;;) pause(); return 0; }
int main(int argc, char **argv) {
    pthread_t t;
    if (argc < 3 || !dlopen(argv[2], RTLD_NOW)) return 2;
    if (pthread_create(&t, 0, worker, 0)) return 3;
    FILE *f = fopen(argv[1], "w"); if (f) fclose(f);
    pthread_exit(0);
}
"""


@requires_cc
def test_a_process_whose_main_thread_ended_still_runs_code(tmp_path: Path, procs) -> None:
    lib = shared_lib(tmp_path / "libqa.so.1", "int qa(void) { return 1; }\n")
    prog = executable(tmp_path / "leaderless", PROGRAM, libs=["-lpthread", "-ldl"])
    p = procs.start([prog, tmp_path / "ready", lib], wait_for_file=tmp_path / "ready")
    data = lib.read_bytes()
    lib.unlink()  # replaced as a package manager does
    lib.write_bytes(data)
    r = run_cli(["stale", "--no-kernel", "--pid", str(p.pid)])
    assert "zombie" not in r.stderr, r.stderr
    for doc in (stale_json("--pid", str(p.pid)), stale_json("--path", str(tmp_path))):
        files = files_of(doc, p.pid)
        assert [(f["path"], f["kind"]) for f in files] == [(str(lib), "deleted")], doc
    r = run_cli(["users", str(lib)])
    assert re.search(rf"pid {p.pid} +mapped +old ", r.stdout), r.stdout


@requires_cc
def test_check_reads_such_a_process_through_a_live_thread_too(tmp_path: Path, procs) -> None:
    """Its root, cwd and namespaces are gone with the leader too (exit_fs, exit_task_namespaces): check --pid
    said "no such process" and the default discovery dropped it (second regression round)."""
    lib = shared_lib(tmp_path / "libqa.so.1", "int qa(void) { return 1; }\n", soname="libqa.so.1")
    prog = executable(tmp_path / "leaderless", PROGRAM.replace("dlopen(argv[2], RTLD_NOW)", "qa() < 0 || !argv[2]")
                      .replace("#include <dlfcn.h>", "#include <dlfcn.h>\nint qa(void);"),
                      libs=[str(lib), "-lpthread", f"-Wl,-rpath,{tmp_path}"])
    p = procs.start([prog, tmp_path / "ready", "x"], wait_for_file=tmp_path / "ready")
    new = shared_lib(tmp_path / "new" / "libqa.so.1", "int other(void) { return 2; }\n", soname="libqa.so.1")
    r = run_cli(["check", "--pid", str(p.pid), "--", str(new), str(lib)])
    assert r.returncode == 1 and f"pid {p.pid}" in r.stdout and "undefined symbol: qa" in r.stdout, r


CHURN = r"""
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static const char *go;
static void *second(void *arg) { (void)arg; for (;;) pause(); return 0; }
static void *first(void *arg) {
    (void)arg;
    while (access(go, F_OK) != 0) usleep(5000);
    pthread_t t;  /* hand over to a new worker, then end: the process carries on */
    pthread_create(&t, 0, second, 0);
    return 0;
}
int main(int argc, char **argv) {
    pthread_t t;
    if (argc < 4 || !dlopen(argv[2], RTLD_NOW)) return 2;
    go = argv[3];
    if (pthread_create(&t, 0, first, 0)) return 3;
    FILE *f = fopen(argv[1], "w"); if (f) fclose(f);
    pthread_exit(0);
}
"""


@requires_cc
def test_a_long_lived_caller_keeps_finding_it_when_its_worker_is_replaced(tmp_path: Path, procs) -> None:
    """find_users in one Python process, twice: between the calls the thread it was read through ended (a
    new worker took over). The second call read the gone thread's entries and dropped the process without a
    word (third regression round)."""
    import time

    from soswap.proc import find_users

    lib = shared_lib(tmp_path / "libqa.so.1", "int qa(void) { return 1; }\n")
    prog = executable(tmp_path / "churn", CHURN, libs=["-lpthread", "-ldl"])
    go = tmp_path / "go"
    p = procs.start([prog, tmp_path / "ready", lib, go], wait_for_file=tmp_path / "ready")
    assert [u.pid for u in find_users([str(lib)])[0].uses] == [p.pid]
    before = sorted(os.listdir(f"/proc/{p.pid}/task"))
    go.touch()
    deadline = time.monotonic() + 10
    while sorted(os.listdir(f"/proc/{p.pid}/task")) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert sorted(os.listdir(f"/proc/{p.pid}/task")) != before
    assert [u.pid for u in find_users([str(lib)])[0].uses] == [p.pid]
