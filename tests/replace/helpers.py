"""Fixtures and helpers for the replace tests: libfoo v1/v2, the ``loop`` program, the CLI, mounts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

from support.build import executable, shared_lib

SRC = str(Path(__file__).resolve().parents[2] / "src")

#: v1 and v2 of libfoo.so.1 with different code layouts: v2 has 16 filler functions before foo_version, so
#: rewriting v1 in place under a running program puts foreign code at the addresses it calls.
LIBFOO_V1 = """
int foo_helper(int x) { return x * 3 - 2; }
int foo_version(void) { return foo_helper(1); }
"""
_FILLERS = "\n".join(
    f"int foo_filler{i}(int x) {{ int s = 0; for (int k = 0; k < x; k++) s += k * {i + 3} ^ (s >> 1); return s; }}"
    for i in range(16)
)
LIBFOO_V2 = _FILLERS + """
int foo_helper(int x) { return x * 5 - 3; }
int foo_version(void) { return foo_helper(1); }
"""

#: Prints "v=N" whenever foo_version() changes and on SIGUSR1; calls it every millisecond.
LOOP_C = r"""
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
int foo_version(void);
static volatile sig_atomic_t ask;
static void on_usr1(int s) { (void)s; ask = 1; }
int main(void) {
    signal(SIGUSR1, on_usr1);
    int last = -1;
    for (;;) {
        int v = foo_version();
        if (v != last || ask) { printf("v=%d\n", v); fflush(stdout); last = v; ask = 0; }
        usleep(1000);
    }
}
"""

#: Calls foo_version() once: exit 0 for 1 or 2, 3 for garbage (the loader fails with 127 on its own).
ONCE_C = r"""
int foo_version(void);
int main(void) { int v = foo_version(); return v == 1 || v == 2 ? 0 : 3; }
"""


class Libfoo:
    """Built once per session: v1/v2 of libfoo.so.1, ``loop`` and ``once`` linked with rpath $ORIGIN."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.v1 = shared_lib(root / "v1" / "libfoo.so.1", LIBFOO_V1, soname="libfoo.so.1")
        self.v2 = shared_lib(root / "v2" / "libfoo.so.1", LIBFOO_V2, soname="libfoo.so.1")
        self.loop = executable(root / "v1" / "loop", LOOP_C, libs=[str(self.v1)],
                               flags=["-Wl,-rpath,$ORIGIN"])
        self.once = executable(root / "v1" / "once", ONCE_C, libs=[str(self.v1)], flags=["-Wl,-rpath,$ORIGIN"])
        self.sha1 = sha256(self.v1)
        self.sha2 = sha256(self.v2)

    def deploy(self, directory: Path, with_programs: bool = True) -> Path:
        """Copy v1 (and the programs) into ``directory``; returns the path of libfoo.so.1 there."""
        directory.mkdir(parents=True, exist_ok=True)
        lib = directory / "libfoo.so.1"
        shutil.copyfile(self.v1, lib)
        os.chmod(lib, 0o755)
        if with_programs:
            for prog in (self.loop, self.once):
                shutil.copy2(prog, directory / prog.name)
        return lib


def sha256(path: Union[str, Path]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def soswap(args: Sequence[Union[str, Path]], state: Union[str, Path], *, env: Optional[Dict[str, str]] = None,
           check: Optional[int] = None, timeout: float = 60, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess with its own state directory; ``check``: assert this exit status."""
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC
    e["SOSWAP_STATE_DIR"] = str(state)
    e.pop("SOSWAP_TEST_PAUSE_AT", None)
    if env:
        e.update(env)
    python = os.environ.get("SOSWAP_TEST_PYTHON", sys.executable)  # e.g. a Python 3.9 for the CLI
    argv = [*prefix, python, "-m", "soswap", *map(str, args)]
    r = subprocess.run(argv, env=e, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check is not None:
        assert r.returncode == check, f"exit {r.returncode} (wanted {check})\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def leftovers(directory: Union[str, Path]) -> List[str]:
    """soswap temporaries left in ``directory`` (``.NAME.new-TXID``)."""
    return sorted(n for n in os.listdir(directory) if ".new-" in n and n.startswith("."))


def backups(directory: Union[str, Path]) -> List[str]:
    return sorted(n for n in os.listdir(directory) if ".bak-" in n and n.startswith("."))


def wait_stopped(pid: int, timeout: float = 30.0) -> bool:
    """Wait until ``pid`` is stopped (state T); False if it exited or timed out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return False
        state = data[data.rindex(b")") + 2:data.rindex(b")") + 3]
        if state in (b"T", b"t"):
            return True
        if state in (b"Z", b"X"):
            return False
        time.sleep(0.005)
    return False


def read_lines_until(path: Path, predicate, timeout: float = 10.0) -> List[str]:  # type: ignore[no-untyped-def]
    """Poll a file a program writes to until ``predicate(lines)`` holds (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    lines: List[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines()
        if predicate(lines):
            break
        time.sleep(0.01)
    return lines


def ask_value(pid: int, out: Path) -> str:
    """Send SIGUSR1 to a ``loop`` and return the line it prints."""
    before = len(out.read_text().splitlines())
    os.kill(pid, signal.SIGUSR1)
    lines = read_lines_until(out, lambda ls: len(ls) > before)
    assert len(lines) > before, f"loop {pid} did not answer SIGUSR1"
    return lines[before]


def maps_of(pid: int, needle: str) -> List[str]:
    with open(f"/proc/{pid}/maps") as f:
        return [line.rstrip("\n") for line in f if needle in line]


def run(argv: Sequence[Union[str, Path]], **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)


# -- mounts (always undone in finally) ---------------------------------------------------------------------


def _umount(path: Path) -> None:
    r = run(["umount", str(path)])
    if r.returncode != 0:
        run(["umount", "-l", str(path)])


@contextlib.contextmanager
def mounted(argv: Sequence[str], mountpoint: Path) -> Iterator[Path]:
    """``mount ARGV... MOUNTPOINT``; unmounted on exit."""
    if not mountpoint.exists():
        mountpoint.mkdir(parents=True)
    r = run(["mount", *argv, str(mountpoint)])
    if r.returncode != 0:
        raise RuntimeError(f"mount {' '.join(argv)} failed: {r.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        _umount(mountpoint)


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str = "32m") -> Iterator[Path]:
    with mounted(["-t", "tmpfs", "-o", f"size={size}", "tmpfs"], mountpoint) as m:
        yield m


@contextlib.contextmanager
def loop_fs(image_dir: Path, mountpoint: Path, fstype: str, size_mb: int) -> Iterator[Path]:
    """A filesystem of ``fstype`` in a file, loop-mounted (``-o loop`` detaches the device on umount)."""
    image = image_dir / f"{fstype}.img"
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    mkfs = {"ext4": ["mkfs.ext4", "-q", "-F"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}[fstype]
    r = run([*mkfs, str(image)])
    if r.returncode != 0:
        raise RuntimeError(f"mkfs.{fstype} failed: {r.stderr.strip()}")
    try:
        with mounted(["-o", "loop", str(image)], mountpoint) as m:
            yield m
    finally:
        image.unlink()


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
