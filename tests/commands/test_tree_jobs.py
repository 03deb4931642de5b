"""``soswap tree`` on several workers: the files are split by the libraries they load (``split_by_affinity``),
and whatever the split, the output is the one process's output, byte for byte, in the order of the files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from soswap.commands.tree import split_by_affinity
from support.systemfiles import elf_files

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _elf_programs(limit: int) -> List[str]:
    # every third file: programs of many packages, not one package's neighbours
    return elf_files()[::3][:limit]


def test_split_covers_every_file_once_and_keeps_groups_together() -> None:
    kinds = [("libc.so.6",), ("libLLVM.so", "libc.so.6"), (), ("libz.so.1", "libc.so.6"),
             ("libssl.so.3", "libcrypto.so.3", "libc.so.6"), ("libm.so.6", "libc.so.6")]
    needed = [kinds[(n * 7) % len(kinds)] for n in range(60)]  # groups of 10, interleaved
    for jobs in (1, 2, 3):
        shares = split_by_affinity(needed, jobs)
        assert len(shares) == jobs
        assert sorted(n for s in shares for n in s) == list(range(len(needed)))
        assert all(s == sorted(s) for s in shares)
        for share in shares:
            for n in share:
                # the files with the same DT_NEEDED set are all in this share (a group of 10 is within
                # half a share, 60 / (2 * jobs) >= 10)
                same = [m for m, names in enumerate(needed) if set(names) == set(needed[n])]
                assert set(same) <= set(share)


def test_split_spreads_unrelated_groups() -> None:
    needed = [(f"lib{k}.so",) for k in range(6) for _ in range(10)]
    shares = split_by_affinity(needed, 3)
    assert sorted(len(s) for s in shares) == [20, 20, 20]


def test_split_spreads_files_that_all_load_the_same_libraries() -> None:
    # one group only (every program needs just libc): still one half per worker, not all in one
    for jobs in (2, 3, 4):
        shares = split_by_affinity([("libc.so.6",)] * 1000, jobs)
        assert sorted(n for s in shares for n in s) == list(range(1000))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1000 // (2 * jobs) + 1, [len(s) for s in shares]


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


def test_split_weighs_libraries_and_files_by_their_costs() -> None:
    # 10 programs load a library that costs as much as 100 small programs together: with counts alone the
    # big group and 50 small files would fill one worker; by cost, the big group is a worker's load by itself
    needed = [("libLLVM.so", "libc.so.6")] * 10 + [("libc.so.6",)] * 100
    costs = {"libLLVM.so": 100.0, "libc.so.6": 1.0}
    shares = split_by_affinity(needed, 2, [1.0] * 110, costs)
    big = next(s for s in shares if 0 in s)
    assert set(range(10)) <= set(big)
    loads = [sum(1.0 for _ in s) + sum(costs[n] for n in set().union(*(needed[m] for m in s))) for s in shares]
    assert max(loads) / min(loads) < 1.2, loads
    assert sorted(n for s in shares for n in s) == list(range(110))


def test_workload_follows_needs_through_ld_so_cache(tmp_path: Path) -> None:
    from soswap.commands.tree import _FIXED_COST, _workload_of
    from soswap.elf import ElfCache
    from soswap.loader import Environment, Loader, Profile

    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    loader = Loader(Profile.detect(), Environment.from_environ(env, cwd=str(tmp_path)), cache=ElfCache())
    progs = [p for p in elf_files() if os.path.basename(p) in ("curl", "openssl", "ssh")]
    assert progs
    missing = tmp_path / "nothing"
    w = _workload_of(loader)([*progs, str(missing)])
    for libs in w.libraries[:-1]:
        assert "libc.so.6" in libs
        # libcrypto comes through libssl or libcurl, not always from the program's own DT_NEEDED
        assert "libcrypto.so.3" in libs
    assert w.libraries[-1] == frozenset() and w.file_costs[-1] == _FIXED_COST
    assert w.library_costs["libcrypto.so.3"] > w.library_costs["libc.so.6"] > _FIXED_COST


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

    from soswap.commands.tree import _fork_workers
    from soswap.errors import ElfError, SoswapError

    def work(chunk: List[str]) -> List[str]:
        if chunk == ["bad"]:
            raise ElfError("/x", "not an ELF file")
        if chunk == ["die"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return [c.upper() for c in chunk]

    assert _fork_workers(work, [["a", "b"], ["c"]]) == [["A", "B"], ["C"]]
    for chunk, message in ((["bad"], "/x: not an ELF file"), (["die"], "a worker process died (killed by SIGKILL)")):
        with pytest.raises(SoswapError) as err:
            _fork_workers(work, [["a"], chunk, ["b"]])
        assert str(err.value) == message
    assert _children(os.getpid()) == []
