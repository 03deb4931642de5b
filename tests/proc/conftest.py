"""Fixtures of the soswap.proc tests: gcc-built helper programs that map, dlopen, open and exec files."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from support import build
from support.nobody import AS_NOBODY, require_python_as_nobody

SRC = Path(__file__).resolve().parents[2] / "src"

# holder READY [op...]: performs each op, creates READY, then sleeps forever.
HOLDER_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what, const char *arg) { fprintf(stderr, "%s %s\n", what, arg); exit(3); }

static void map_file(const char *path, int prot) {
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) die("open", path);
    if (mmap(NULL, st.st_size, prot, MAP_PRIVATE, fd, 0) == MAP_FAILED) die("mmap", path);
    close(fd);
}

int main(int argc, char **argv) {
    for (int i = 2; i < argc; i++) {
        char *op = argv[i];
        if (!strncmp(op, "dlopen:", 7)) {
            if (!dlopen(op + 7, RTLD_NOW)) die("dlopen", dlerror());
        } else if (!strncmp(op, "map:", 4)) {
            map_file(op + 4, PROT_READ);
        } else if (!strncmp(op, "mapx:", 5)) {
            map_file(op + 5, PROT_READ | PROT_EXEC);
        } else if (!strncmp(op, "span:", 5)) {
            /* span:BYTES:PATH maps BYTES of PATH from offset 0, past its end if longer: what ld.so does first
               when it loads a library (the whole span of its segments, then each segment over it). */
            char *path = strchr(op + 5, ':');
            if (!path) die("span", op);
            int fd = open(path + 1, O_RDONLY);
            if (fd < 0 || mmap(NULL, strtoul(op + 5, NULL, 10), PROT_READ, MAP_PRIVATE, fd, 0) == MAP_FAILED)
                die("span", path + 1);
            close(fd);
        } else if (!strncmp(op, "open:", 5)) {
            if (open(op + 5, O_RDONLY) < 0) die("open", op + 5);
        } else if (!strcmp(op, "memfd")) {
            int fd = memfd_create("soswap-test", 0);
            if (fd < 0 || ftruncate(fd, 4096) != 0) die("memfd", "");
            if (mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_SHARED, fd, 0) == MAP_FAILED) die("mmap", "memfd");
        } else if (!strcmp(op, "shmanon")) {
            if (mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0) == MAP_FAILED)
                die("mmap", "anon");
        } else if (!strcmp(op, "sysv")) {
            int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
            if (id < 0 || shmat(id, NULL, 0) == (void *)-1) die("shm", "");
            shmctl(id, IPC_RMID, NULL);
        } else if (!strcmp(op, "aio")) {
            unsigned long ctx = 0;
            if (syscall(SYS_io_setup, 8, &ctx) != 0) die("io_setup", "");
        } else if (!strncmp(op, "posixshm:", 9)) {
            int fd = shm_open(op + 9, O_CREAT | O_RDWR, 0600);
            if (fd < 0 || ftruncate(fd, 4096) != 0) die("shm_open", op + 9);
            if (mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED) die("mmap", "shm");
            shm_unlink(op + 9);
        } else if (!strncmp(op, "name:", 5)) {
            prctl(PR_SET_NAME, op + 5);
        } else if (!strcmp(op, "zombie")) {
            if (fork() == 0) _exit(0);
        } else if (!strncmp(op, "wait:", 5)) {
            while (access(op + 5, F_OK) != 0) usleep(5000);
        } else if (!strncmp(op, "chroot:", 7)) {
            if (chroot(op + 7) != 0 || chdir("/") != 0) die("chroot", op + 7);
        } else {
            die("unknown op", op);
        }
    }
    int fd = open(argv[1], O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
    for (;;) pause();
}
"""

# memexec HOLDER READY...: copies HOLDER into a memfd and fexecve()s it (runc, lxc-attach, teleport).
MEMEXEC_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    int in = open(argv[1], O_RDONLY);
    struct stat st;
    int mem = memfd_create("runc-like", MFD_CLOEXEC);
    if (in < 0 || mem < 0 || fstat(in, &st) != 0) return 3;
    off_t off = 0;
    while (off < st.st_size) if (sendfile(mem, in, &off, st.st_size - off) <= 0) return 4;
    fexecve(mem, argv + 1, environ);
    return 5;
}
"""

LIB_C = "int fixture_value(void) { return %d; }\n"
PROG_C = r"""
#include <fcntl.h>
#include <unistd.h>
int fixture_value(void);
int main(int argc, char **argv) {
    if (fixture_value() < 0) return 1;
    int fd = open(argv[1], O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
    for (;;) pause();
}
"""


class Fixtures:
    """Builds (once per session) the helper programs and makes per-test copies of libraries."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.holder = build.executable(root / "holder", HOLDER_C, libs=["-ldl"])
        self.memexec = build.executable(root / "memexec", MEMEXEC_C)
        self.lib_v1 = build.shared_lib(root / "v1" / "libfix.so", LIB_C % 1, soname="libfix.so")
        self.lib_v2 = build.shared_lib(root / "v2" / "libfix.so", LIB_C % 2, soname="libfix.so")
        self.static_holder: Optional[Path] = None

    def static(self) -> Path:
        if self.static_holder is None:
            self.static_holder = build.executable(self.root / "holder-static", HOLDER_C, flags=["-static"])
        return self.static_holder

    def program(self, directory: Path, name: str = "prog") -> Path:
        """A program linked to libfix.so next to it (RUNPATH=$ORIGIN), with libfix v1 copied there."""
        directory.mkdir(parents=True, exist_ok=True)
        lib = directory / "libfix.so"
        lib.write_bytes(self.lib_v1.read_bytes())
        return build.executable(directory / name, PROG_C, libs=[f"-L{directory}", "-lfix"],
                                flags=build.rpath_flags("$ORIGIN"))


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every scan (in-process and through the CLI, which inherits the environment) keeps its per-boot clock
    record in a private state directory, never in /var/lib/soswap."""
    state = tmp_path_factory.mktemp("soswap-state")
    monkeypatch.setenv("SOSWAP_STATE_DIR", str(state))
    return state


@pytest.fixture(scope="session")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    if not build.have_cc():
        pytest.skip("no C compiler")
    return Fixtures(tmp_path_factory.mktemp("proc-fixtures"))


def wait_ready(path: Path, proc: Optional[subprocess.Popen] = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"helper exited early (rc={proc.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.01)


def wait_after_start(pid: int) -> None:
    """Block until the wall clock is safely (> 2 ticks) past the start of ``pid``: a file written after this
    returns counts as written after the process started. Not an assertion on time, an ordering guarantee."""
    from soswap.proc import procfs
    from soswap.proc.timebase import Clock

    clock = Clock()
    start = clock.start_realtime_ns(procfs.read_stat(pid).starttime)
    while time.time_ns() <= start + 3 * clock.tick_ns:
        time.sleep(0.005)


def replace_by_rename(path: Path, content: bytes) -> None:
    tmp = path.with_name(path.name + ".soswap-tmp")
    tmp.write_bytes(content)
    os.chmod(tmp, 0o755)
    os.rename(tmp, path)


def run_cli(args: Sequence[str], *, env: Optional[Dict[str, str]] = None, user: bool = False,
            check_rc: Optional[Sequence[int]] = None) -> subprocess.CompletedProcess:
    """Run ``python -m soswap ARGS``; ``user``: as nobody via setpriv. No traceback may appear."""
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = str(SRC)
    argv: List[str] = [sys.executable, "-m", "soswap", *args]
    if user:
        require_python_as_nobody()
        argv = [*AS_NOBODY, *argv]
    r = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=120, cwd="/")
    assert "Traceback" not in r.stderr, r.stderr
    if check_rc is not None:
        assert r.returncode in check_rc, (r.returncode, r.stdout, r.stderr)
    return r


def stale_json(*args: str, **kw: object) -> dict:
    r = run_cli(["stale", "--json", "--no-kernel", *args], **kw)  # type: ignore[arg-type]
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def files_of(doc: dict, pid: int) -> List[dict]:
    for p in doc["processes"]:
        if p["pid"] == pid:
            return p["files"]
    return []


@contextlib.contextmanager
def overlay(tmp_path: Path, procs, options: str = "") -> Iterator[Tuple[Path, Path, Path]]:  # type: ignore[no-untyped-def]
    """An overlayfs mount under ``tmp_path``: (lower, upper, merged), skipping the test where it cannot be
    mounted. On the way out the processes started by ``procs`` are stopped (they map its files), then it is
    unmounted."""
    lower, upper, work, merged = (tmp_path / d for d in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir(exist_ok=True)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}" + (f",{options}" if options else "")
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount an overlay ({opts}) here: {r.stderr.decode().strip()}")
    try:
        yield lower, upper, merged
    finally:
        procs.stop_all()
        subprocess.run(["umount", "-l", str(merged)], capture_output=True)
