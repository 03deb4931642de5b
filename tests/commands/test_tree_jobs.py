"""``soswap tree`` on several workers: each asks for files a few at a time (``soswap.commands.workers``), and
whoever computes what, the output is the one process's output, byte for byte, in the order of the files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from soswap.commands.workers import CHUNK, Schedule
from support.systemfiles import elf_files

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _elf_programs(limit: int) -> List[str]:
    # every third file: programs of many packages, not one package's neighbours
    return elf_files()[::3][:limit]


def test_schedule_hands_out_every_file_once_own_stretch_first() -> None:
    order = list(range(100, 200))
    for jobs in (1, 2, 3, 7):
        sched = Schedule(order, jobs)
        got: List[List[int]] = [[] for _ in range(jobs)]
        turn = 0
        while True:  # the workers ask in turn; worker 0 asks three times as often (it is faster)
            w = turn % (jobs + 2)
            w = 0 if w >= jobs else w
            chunk = sched.next(w)
            turn += 1
            if not chunk:
                if all(not sched.next(k) for k in range(jobs)):
                    break
                continue
            assert 1 <= len(chunk) <= CHUNK
            got[w] += chunk
        assert sorted(n for g in got for n in g) == order
        for w in range(jobs):
            # each worker began with its own stretch, from its start, in order; it took the rest from the ends
            # of other stretches
            start, end = 100 + 100 * w // jobs, 100 + 100 * (w + 1) // jobs
            own = [n for n in got[w] if start <= n < end]
            assert got[w][:len(own)] == own == list(range(start, start + len(own))), (jobs, w, got[w])
        if jobs > 1:  # the fastest did more than its stretch
            assert len(got[0]) > 100 // jobs


def test_schedule_hands_out_small_chunks_near_the_end() -> None:
    sched = Schedule(range(1000), 2)
    sizes = []
    while True:
        chunk = sched.next(len(sizes) % 2)
        if not chunk:
            break
        sizes.append(len(chunk))
    assert sizes[0] == CHUNK and sizes[-1] == 1 and sum(sizes) == 1000


@pytest.mark.parametrize("flags", [["-r"], ["--ldd", "-r"]], ids=["tree-r", "ldd-r"])
def test_workers_print_what_one_process_prints(flags: List[str], tmp_path: Path) -> None:
    files = _elf_programs(150)
    assert len(files) > 60
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env["PYTHONPATH"] = SRC

    def run(jobs: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "soswap", "tree", "--no-cache", "-j", jobs, *flags, *files],
                              env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))

    one, two, three = run("1"), run("2"), run("3")
    assert one.stdout.count("\n") > len(files)
    for many in (two, three):
        assert (many.returncode, many.stdout, many.stderr) == (one.returncode, one.stdout, one.stderr)


def test_workers_die_with_a_parent_killed_by_sigterm(tmp_path: Path) -> None:
    """SIGTERM (timeout, systemd, CI) kills the parent without cleanup: its workers follow (PR_SET_PDEATHSIG)
    instead of staying behind for good. No more workers than files are forked."""
    import signal
    import time

    files = elf_files()
    env = dict(os.environ, PYTHONPATH=SRC, SOSWAP_CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.Popen([sys.executable, "-m", "soswap", "tree", "-r", "--no-cache", "-j", "4", *files, *files],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: List[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(workers) < 4 and time.monotonic() < deadline and p.poll() is None:
            try:
                workers = [int(x) for x in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
            except OSError:
                break
            time.sleep(0.05)
        assert len(workers) >= 4, workers
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=30)
        deadline = time.monotonic() + 10
        alive = workers
        while alive and time.monotonic() < deadline:
            alive = [w for w in workers if _running(w)]
            time.sleep(0.05)
        assert alive == [], alive
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    r = subprocess.run([sys.executable, "-m", "soswap", "tree", "-j", "4000", files[0], files[1]], env=env,
                       capture_output=True, timeout=60)
    assert r.returncode in (0, 1) and b"Traceback" not in r.stderr


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_ctrl_c_stops_the_workers_quietly(tmp_path: Path) -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C) at moments spread over a run: exit 130, no
    worker's traceback, nothing left running. Workers that had finished their share and waited in the pool's
    code printed tracebacks, one swallowed the interrupt in a destructor (the run then exited 0), and the
    parent could wait on them for ever."""
    import signal
    import time

    files = elf_files()
    env = dict(os.environ, PYTHONPATH=SRC, SOSWAP_CACHE_DIR=str(tmp_path / "cache"))
    launch = ("import os, signal, sys\nsignal.signal(signal.SIGINT, signal.SIG_DFL)\n"
              "os.execvp(sys.argv[1], sys.argv[1:])\n")
    command = [sys.executable, "-c", launch, sys.executable, "-m", "soswap", "tree", "-r", "--no-cache", "-j", "4",
               *files]
    start = time.monotonic()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    took = time.monotonic() - start
    for fraction in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        p = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
        try:
            time.sleep(took * fraction)
            workers = _children(p.pid)
            os.killpg(p.pid, signal.SIGINT)
            _out, err = p.communicate(timeout=30)
            assert b"Traceback" not in err, err.decode(errors="replace")
            if workers:  # interrupted while the workers ran: never a finished run's status
                assert p.returncode == 130, (fraction, p.returncode, err)
            else:  # before they started or after they ended (at the interpreter's exit: killed by SIGINT)
                assert p.returncode in (0, 1, 130, -signal.SIGINT), (fraction, p.returncode, err)
            assert [w for w in workers if _running(w)] == []
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def _children(pid: int) -> List[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_worker_that_fails_or_dies_is_one_error_and_none_is_left() -> None:
    import signal

    from soswap.commands.workers import map_in_workers
    from soswap.errors import ElfError, SoswapError

    def work(item: str) -> str:
        if item == "bad":
            raise ElfError("/x", "not an ELF file")
        if item == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return item.upper()

    items = [f"f{n:03}" for n in range(200)]
    assert map_in_workers(work, items, 3, lambda: os.getpid()) [0] == [i.upper() for i in items]
    results, pids = map_in_workers(work, items[::-1], 2, lambda: os.getpid())
    assert results == [i.upper() for i in items[::-1]] and len(set(pids)) == 2 and os.getpid() not in pids
    for bad, message in (("bad", "/x: not an ELF file"), ("die", "a worker process died (killed by SIGKILL)")):
        with pytest.raises(SoswapError) as err:
            map_in_workers(work, [*items[:50], bad, *items[50:]], 3)
        assert str(err.value) == message
    assert _children(os.getpid()) == []


def test_a_worker_whose_error_cannot_be_told_still_ends_as_a_worker() -> None:
    """Out of memory while a worker reports its error: the worker must still end there, never go on in the
    parent's code it was forked from (it killed its siblings and printed a second error line)."""
    from soswap.commands.workers import map_in_workers
    from soswap.errors import SoswapError

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise MemoryError

    def work(item: str) -> str:
        if item == "f050":
            raise Unprintable()
        return item

    me = os.getpid()
    with pytest.raises(SoswapError) as err:
        try:
            map_in_workers(work, [f"f{n:03}" for n in range(100)], 2)
        finally:
            if os.getpid() != me:  # a worker that got here ran the parent's code
                os._exit(99)
    assert str(err.value) == "a worker process ran out of memory"
    assert _children(os.getpid()) == []


def test_when_the_system_refuses_processes_fewer_workers_or_none_do_the_work(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """fork fails with EAGAIN (ulimit -u, a cgroup's pids.max): the workers forked so far take every file, or
    the parent does the work itself; the run was one error line, "Resource temporarily unavailable"."""
    import errno

    from soswap.commands import workers
    from soswap.commands.tree import _map_files

    real_fork = os.fork
    allowed = {"n": 0}

    def fork() -> int:
        if allowed["n"] <= 0:
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        allowed["n"] -= 1
        return real_fork()

    monkeypatch.setattr(workers.os, "fork", fork)
    items = [f"f{n:03}" for n in range(300)]
    for forks in (0, 1, 2):
        allowed["n"] = forks
        assert _map_files(str.upper, items, 4) == [i.upper() for i in items]
        assert _children(os.getpid()) == []
