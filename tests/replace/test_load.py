"""Replacement under continuous load: programs starting, dlopen of a soname link, readers (replace.md §(b)
12, 20, and the continuous-load test of the issue). Counts are asserted, never durations."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Tuple

from replace.helpers import run
from soswap.replace import InstallOptions, Request, StateDir, install
from support.build import executable, requires_root
from support.starter import STARTER_C

pytestmark = [requires_root]


#: dlopener PATH STOP READY: dlopen(PATH) + dlclose until STOP exists; prints "opens failures".
DLOPENER_C = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = 0, fails = 0;
    FILE *ready = fopen(argv[3], "w"); if (ready) fclose(ready);
    while (access(argv[2], F_OK) != 0) {
        void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        n++;
        if (!h) { fails++; fprintf(stderr, "%s\n", dlerror()); continue; }
        int (*f)(void) = (int (*)(void))dlsym(h, "foo_version");
        if (!f || (f() != 1 && f() != 2)) fails++;
        dlclose(h);
    }
    printf("%ld %ld\n", n, fails);
    return 0;
}
"""

#: reader PATH H1 H2 STOP READY: open + read + FNV-1a of the whole file until STOP; "reads failures".
READER_C = r"""
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    uint64_t h1 = strtoull(argv[2], 0, 16), h2 = strtoull(argv[3], 0, 16);
    long n = 0, fails = 0; static unsigned char buf[1 << 16];
    FILE *ready = fopen(argv[5], "w"); if (ready) fclose(ready);
    while (access(argv[4], F_OK) != 0) {
        int fd = open(argv[1], O_RDONLY); n++;
        if (fd < 0) { fails++; continue; }
        uint64_t h = 1469598103934665603ULL; ssize_t r;
        while ((r = read(fd, buf, sizeof buf)) > 0)
            for (ssize_t i = 0; i < r; i++) { h ^= buf[i]; h *= 1099511628211ULL; }
        close(fd);
        if (r < 0 || (h != h1 && h != h2)) fails++;
        usleep(1000);  /* 50 readers on a small machine: leave the installer some CPU */
    }
    printf("%ld %ld\n", n, fails);
    return 0;
}
"""


def fnv1a(data: bytes) -> str:
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:x}"


def _wait_ready(paths: List[Path], procs_list) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + 20
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, "helper programs did not start"
        assert all(p.poll() is None for p in procs_list)
        time.sleep(0.01)


def _finish(stop: Path, popens) -> List[Tuple[int, int]]:  # type: ignore[no-untyped-def]
    stop.touch()
    out = []
    for p in popens:
        stdout, _ = p.communicate(timeout=60)
        runs, fails = map(int, stdout.split())
        out.append((runs, fails))
    return out


def _start(argv, tmp_path: Path, n: int = 1, nice: int = 10):  # type: ignore[no-untyped-def]
    """Start ``n`` copies of a load program, niced so that the installer under test keeps getting CPU."""
    popens, readies = [], []
    for i in range(n):
        ready = tmp_path / f"ready-{len(list(tmp_path.glob('ready-*')))}-{i}"
        readies.append(ready)
        popens.append(subprocess.Popen([*map(str, argv), str(ready)], stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True,
                                       preexec_fn=lambda: os.nice(nice)))
    _wait_ready(readies, popens)
    return popens


def _kill_all(popens) -> None:  # type: ignore[no-untyped-def]
    for p in popens:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_programs_keep_starting_during_500_replacements(tmp_path, libfoo, record_property):
    """A loop starts the program (which loads the library) as fast as it can while soswap replaces the
    library 500 times: no start fails. The same with install(1) is recorded as the control."""
    d = tmp_path / "app"
    lib = libfoo.deploy(d)
    starter = executable(tmp_path / "bin" / "starter", STARTER_C)
    state = StateDir(str(tmp_path / "state"))
    opts = InstallOptions(backup=False, hash=False)
    stop = tmp_path / "stop"
    popens = _start([starter, d / "once", stop], tmp_path)
    try:
        for i in range(500):
            install([Request(str(libfoo.v2 if i % 2 == 0 else libfoo.v1), str(lib))], opts, state)
        ((runs, fails),) = _finish(stop, popens)
    finally:
        _kill_all(popens)
    assert runs >= 20 and fails == 0, (runs, fails)
    record_property("soswap_starts", runs)

    stop2 = tmp_path / "stop2"
    popens = _start([starter, d / "once", stop2], tmp_path)
    try:
        for i in range(500):
            run(["install", "-m755", libfoo.v2 if i % 2 == 0 else libfoo.v1, lib])
        ((runs2, fails2),) = _finish(stop2, popens)
    finally:
        _kill_all(popens)
    record_property("install1_starts", runs2)
    record_property("install1_failed_starts", fails2)
    print(f"soswap: {runs} starts, 0 failed; install(1) control: {runs2} starts, {fails2} failed")


def test_soname_flip_under_dlopen(tmp_path, libfoo):
    """Case 12: libfoo.so.1 flipped to 50 successive versions while a loop dlopen()s it: never a failure."""
    d = tmp_path / "lib"
    d.mkdir()
    shutil.copyfile(libfoo.v1, d / "libfoo.so.1.2.3")
    (d / "libfoo.so.1").symlink_to("libfoo.so.1.2.3")
    dlopener = executable(tmp_path / "bin" / "dlopener", DLOPENER_C, libs=["-ldl"])
    state = StateDir(str(tmp_path / "state"))
    stop = tmp_path / "stop"
    staging = tmp_path / "versions"
    staging.mkdir()
    popens = _start([dlopener, d / "libfoo.so.1", stop], tmp_path)
    try:
        for minor in range(4, 54):
            src = staging / f"libfoo.so.1.2.{minor}"
            shutil.copyfile(libfoo.v2 if minor % 2 else libfoo.v1, src)
            install([Request(str(src), str(d / src.name))], InstallOptions(backup=False, hash=False), state)
            assert os.readlink(d / "libfoo.so.1") == src.name
        ((opens, fails),) = _finish(stop, popens)
    finally:
        _kill_all(popens)
    assert opens >= 20 and fails == 0, (opens, fails)


def test_parallel_readers_never_see_a_missing_or_partial_file(tmp_path, libfoo):
    """Case 20: 50 readers (open + read + hash) during 100 replacements: never ENOENT, every hash v1 or v2."""
    d = tmp_path / "app"
    lib = libfoo.deploy(d, with_programs=False)
    reader = executable(tmp_path / "bin" / "reader", READER_C)
    h1, h2 = fnv1a(libfoo.v1.read_bytes()), fnv1a(libfoo.v2.read_bytes())
    state = StateDir(str(tmp_path / "state"))
    stop = tmp_path / "stop"
    popens = _start([reader, lib, h1, h2, stop], tmp_path, n=50, nice=19)
    try:
        for i in range(100):
            install([Request(str(libfoo.v2 if i % 2 == 0 else libfoo.v1), str(lib))],
                    InstallOptions(backup=False, hash=False), state)
        results = _finish(stop, popens)
    finally:
        _kill_all(popens)
    assert sum(r for r, _ in results) >= 50
    assert [f for _, f in results] == [0] * 50
