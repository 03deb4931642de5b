"""A real FUSE filesystem whose server can be stopped: what a dead NFS or sshfs server looks like to the programs
that use it (every stat there waits for an answer that never comes). The server speaks the /dev/fuse protocol
itself (no library), serves the regular files of a backing directory read-only, and gives every attribute and
entry a validity of 0, so each stat reaches it. Its filesystem type is ``fuse.deadfs``.

``python3 -m support.deadfs BACKING MOUNTPOINT`` serves until unmounted; :func:`dead_server` mounts one for a
test and undoes everything afterwards."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

# FUSE opcodes (linux/fuse.h)
LOOKUP, FORGET, GETATTR, OPEN, READ, STATFS, RELEASE, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, ACCESS, \
    INTERRUPT, BATCH_FORGET = 1, 2, 3, 14, 15, 17, 18, 25, 26, 27, 28, 29, 34, 36, 42
MS_NOSUID, MS_NODEV = 2, 4


def serve(backing: str, mountpoint: str) -> None:
    """Mount and serve until the filesystem is unmounted."""
    fd = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    opts = b"fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other" % fd
    if libc.mount(b"deadfs", mountpoint.encode(), b"fuse.deadfs", MS_NOSUID | MS_NODEV, opts) != 0:
        sys.exit(f"mount: {os.strerror(ctypes.get_errno())}")
    print("mounted", flush=True)
    names: Dict[int, str] = {}
    ids: Dict[str, int] = {}

    def node(name: str) -> int:
        if name not in ids:
            ids[name] = len(ids) + 2
            names[ids[name]] = name
        return ids[name]

    def attr(nodeid: int) -> bytes:
        if nodeid == 1:
            st, mode, size, nlink = os.stat(backing), 0o40755, 0, 2
        else:
            st = os.stat(os.path.join(backing, names[nodeid]))
            mode, size, nlink = st.st_mode, st.st_size, 1
        return struct.pack("<QQQQQQIIIIIIIIII", nodeid, size, (size + 511) // 512, int(st.st_atime),
                           int(st.st_mtime), int(st.st_ctime), 0, 0, 0, mode, nlink, 0, 0, 0, 4096, 0)

    def reply(unique: int, err: int = 0, body: bytes = b"") -> None:
        os.write(fd, struct.pack("<Iiq", 16 + len(body), -err, unique) + body)

    while True:
        try:
            buf = os.read(fd, (1 << 20) + 8192)
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.ENOENT):  # ENOENT: a request interrupted
                continue
            break  # ENODEV: unmounted
        length, op, unique, nodeid = struct.unpack_from("<IIQQ", buf)
        arg = buf[40:length]
        try:
            if op == INIT:
                ra = struct.unpack_from("<IIII", arg)[2]
                reply(unique, 0, struct.pack("<IIIIHHIIHHII", 7, 31, ra, 0, 16, 12, 131072, 1, 0, 0, 0, 0)
                      + b"\0" * 24)
            elif op == LOOKUP:
                name = arg.split(b"\0")[0].decode()
                if nodeid == 1 and os.path.isfile(os.path.join(backing, name)):
                    n = node(name)
                    reply(unique, 0, struct.pack("<QQQQII", n, 0, 0, 0, 0, 0) + attr(n))
                else:
                    reply(unique, errno.ENOENT)
            elif op == GETATTR:
                reply(unique, 0, struct.pack("<QII", 0, 0, 0) + attr(nodeid))
            elif op in (OPEN, OPENDIR):
                reply(unique, 0, struct.pack("<QII", 0, 0, 0))
            elif op == READ:
                _fh, off, size = struct.unpack_from("<QQI", arg)
                with open(os.path.join(backing, names[nodeid]), "rb") as f:
                    f.seek(off)
                    reply(unique, 0, f.read(size))
            elif op == READDIR:
                _fh, off, size = struct.unpack_from("<QQI", arg)
                entries = [(".", 1, 4), ("..", 1, 4)] + [(n, node(n), 8) for n in sorted(os.listdir(backing))
                                                          if os.path.isfile(os.path.join(backing, n))]
                out = b""
                for i, (n, ino, kind) in enumerate(entries[off:], off):
                    raw = n.encode()
                    rec = struct.pack("<QQII", ino, i + 1, len(raw), kind) + raw
                    rec += b"\0" * (-len(rec) % 8)
                    if len(out) + len(rec) > size:
                        break
                    out += rec
                reply(unique, 0, out)
            elif op in (RELEASE, RELEASEDIR, FLUSH, ACCESS):
                reply(unique, 0)
            elif op == STATFS:
                reply(unique, 0, struct.pack("<QQQQQIII", 1000, 500, 500, 100, 50, 4096, 255, 4096) + b"\0" * 28)
            elif op in (FORGET, BATCH_FORGET, INTERRUPT):
                pass  # no reply
            else:
                reply(unique, errno.ENOSYS)
        except Exception:  # a test server answers EIO rather than dying
            with contextlib.suppress(OSError):
                reply(unique, errno.EIO)


class DeadServer:
    """A mounted deadfs: ``mnt`` shows the files of ``backing``; :meth:`stop` makes its server stop answering.
    Processes started with :meth:`start` are killed and reaped (by PID) before it is unmounted."""

    def __init__(self, backing: Path, mnt: Path, daemon: subprocess.Popen) -> None:
        self.backing, self.mnt, self.daemon = backing, mnt, daemon
        self.procs: List[subprocess.Popen] = []

    def start(self, argv: List[str], **kw: object) -> subprocess.Popen:
        """Start ``argv`` in a process group of its own (a shell's children go with it)."""
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # type: ignore[call-overload]
                             start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        os.kill(self.daemon.pid, signal.SIGSTOP)


@contextlib.contextmanager
def dead_server(tmp_path: Path) -> Iterator[DeadServer]:
    """Mount a deadfs under ``tmp_path`` (skips the test where FUSE cannot be mounted)."""
    import pytest  # (the server itself runs without it)

    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root and /dev/fuse")
    backing, mnt = tmp_path / "backing", tmp_path / "deadfs"
    backing.mkdir()
    mnt.mkdir()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    daemon = subprocess.Popen([sys.executable, "-m", "support.deadfs", str(backing), str(mnt)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert daemon.stdout is not None
    if daemon.stdout.readline().strip() != "mounted":
        daemon.kill()
        daemon.wait()
        pytest.skip(f"cannot mount FUSE here: {daemon.stderr.read().strip() if daemon.stderr else ''}")
    server = DeadServer(backing, mnt, daemon)
    try:
        yield server
    finally:
        for p in server.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # the group it leads: a shell's children too
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        os.kill(daemon.pid, signal.SIGCONT)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        daemon.kill()
        daemon.wait()
        if daemon.stdout:
            daemon.stdout.close()
        if daemon.stderr:
            daemon.stderr.close()
        time.sleep(0.1)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
