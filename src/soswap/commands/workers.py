"""Many FILEs on several CPUs: forked worker processes that ask for their files a few at a time.

Each worker starts on its own stretch of the files in path order (the files of one directory and name stem
mostly load the same libraries, which a worker then decodes once) and, when its stretch is done, takes from
the end of the longest stretch left, so that all finish together whatever the files cost. The parent hands
out the files and collects the answers; it reads no file itself, so the workers start at once.

A process pool was given up: killed while one of its workers wrote a result, its manager thread waited for
the rest of that result for ever, and the interpreter's exit waited for that thread.
"""

from __future__ import annotations

import os
import signal
import sys
from array import array
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from soswap.cpus import usable_cpus
from soswap.errors import SoswapError

T = TypeVar("T")

#: The most files a worker asks for at once (fewer near the end, so that the workers finish together).
CHUNK = 16
_PARENT = 0  #: the PID of the soswap that forks the workers
#: What the parent turns into KeyboardInterrupt (SIGTERM: under a monitoring agent); blocked across fork.
_PARENT_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Schedule:
    """Which files (indexes into ``order``'s list) each of ``jobs`` workers gets next: its own stretch of
    ``order`` from the front, then the back of the longest stretch left."""

    def __init__(self, order: Sequence[int], jobs: int) -> None:
        self.order = list(order)
        size = len(self.order)
        bounds = [size * w // jobs for w in range(jobs + 1)]
        self.stretches = [[bounds[w], bounds[w + 1]] for w in range(jobs)]
        self.left = size

    def next(self, worker: int) -> List[int]:
        """The next files for ``worker``; empty when every file has been handed out."""
        if self.left <= 0:
            return []
        jobs = len(self.stretches)
        count = max(1, min(CHUNK, self.left // (4 * jobs)))
        own = self.stretches[worker]
        if own[0] < own[1]:
            start = own[0]
            end = own[0] = min(own[1], start + count)
        else:
            longest = max(self.stretches, key=lambda s: s[1] - s[0])
            end = longest[1]
            start = longest[1] = max(longest[0], end - count)
        self.left -= end - start
        return self.order[start:end]


class NoWorkers(Exception):
    """Not one worker could be forked: the caller does the work itself."""


#: Below this many items per worker, forking costs more than it saves.
MIN_ITEMS_PER_JOB = 48


def job_count(jobs: Optional[int], items: int) -> int:
    """How many workers for ``items`` pieces of work: ``jobs`` (``-j``), by default one per CPU this process may
    use (:func:`soswap.cpus.usable_cpus`: its affinity and cgroup quota), at most 4 and with at least
    :data:`MIN_ITEMS_PER_JOB` items each; never more than the items, nor many more than CPUs (a worker is a
    whole process). 1 or less: no worker, the work is done in this process."""
    if jobs is None and items // MIN_ITEMS_PER_JOB <= 1:
        return items // MIN_ITEMS_PER_JOB  # too little work to share, whatever the CPUs (not read)
    cpus = usable_cpus()
    if jobs is None:
        jobs = min(cpus, 4, items // MIN_ITEMS_PER_JOB)
    return min(jobs, items, 4 * cpus)


def parallel_map(fn: Callable[[Any], T], items: Sequence[Any], jobs: Optional[int],
                 name: Callable[[Any], str] = str) -> List[T]:
    """``[fn(item) for item in items]``, over forked workers when there are many items (:func:`map_items`)."""
    return map_items(fn, items, jobs, name)[0]


def map_items(fn: Callable[[Any], T], items: Sequence[Any], jobs: Optional[int], name: Callable[[Any], str] = str,
              *, prepare: Optional[Callable[[], object]] = None,
              finish: Optional[Callable[[], object]] = None) -> Tuple[List[T], List[object]]:
    """``[fn(item) for item in items]``, over forked workers (:func:`job_count`) when there are many items, and
    what ``finish`` returned in each worker after its last item (none when the work was done here). The
    workers start on stretches in the order of ``name(item)`` (a path: files of one directory share
    libraries) and send back their answers pickled; ``prepare`` runs here just before they are forked (what
    they should inherit loaded). In this process where fork is unavailable or refused."""
    count = job_count(jobs, len(items))
    if count <= 1 or not hasattr(os, "fork"):
        return [fn(item) for item in items], []
    if prepare is not None:
        prepare()
    keys = [f"{name(item)}\0{n}" for n, item in enumerate(items)]  # unique, in name order
    try:
        return map_in_workers(lambda key: fn(items[int(key.rpartition("\0")[2])]), keys, count, finish)
    except NoWorkers:  # the system refuses more processes: the work is done here
        return [fn(item) for item in items], []


def map_in_workers(fn: Callable[[str], T], files: Sequence[str], jobs: int,
                   finish: Optional[Callable[[], object]] = None) -> Tuple[List[T], List[object]]:
    """``[fn(f) for f in files]`` computed by ``jobs`` forked workers, in the order of ``files``, and what
    ``finish`` returned in each worker after its last file. On any failure or interrupt the workers are
    killed; they are always reaped. A worker's :class:`SoswapError` is raised here with its message; any other
    exception, or a worker's death, is one :class:`SoswapError`. Fewer workers than ``jobs`` when the system
    refuses more processes; :class:`NoWorkers` when it refuses every one."""
    order = sorted(range(len(files)), key=files.__getitem__)
    schedule = Schedule(order, jobs)

    def work(ask: Callable[[], List[int]]) -> Tuple[array, List[T], object]:
        done = array("I")
        out: List[T] = []
        chunk = ask()
        while chunk:
            for n in chunk:
                out.append(fn(files[n]))
            done.extend(chunk)
            chunk = ask()
        return done, out, finish() if finish is not None else None

    results: List[T] = [None] * len(files)  # type: ignore[list-item]
    finished = []
    for done, out, extra in _fork_workers(work, jobs, schedule):
        for n, value in zip(done, out):
            results[n] = value
        finished.append(extra)
    return results, finished


def _fork_workers(work: Callable[[Callable[[], List[int]]], Any], jobs: int, schedule: Schedule) -> List[Any]:
    """``work(ask)`` in each of ``jobs`` forked processes, where ``ask()`` returns the worker's next files from
    ``schedule``; each sends its pickled answer back through a pipe."""
    import pickle

    global _PARENT
    _PARENT = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    workers: List[Tuple[int, int]] = []  # (pid, read end of its answer pipe)
    replies: List[int] = []  # write end of each worker's pipe of files to do
    ask_r, ask_w = os.pipe()  # the workers' requests: the worker's number in two bytes (written at once)
    try:
        for w in range(jobs):
            r, a_w = os.pipe()
            f_r, f_w = os.pipe()
            # a Ctrl-C (or a monitoring agent's SIGTERM) must not reach a new worker before it ignores it: the
            # KeyboardInterrupt would run the parent's code in the worker
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
            try:
                pid = os.fork()
            except OSError as exc:  # EAGAIN (ulimit -u, pid_max), ENOMEM: the workers forked so far do it all
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                for fd in (r, a_w, f_r, f_w):
                    os.close(fd)
                if workers:
                    break
                raise NoWorkers(str(exc)) from None
            if pid == 0:  # pragma: no cover - the worker (its coverage is not collected)
                try:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                    inherited = [fd for _pid, fd in workers] + replies + [ask_r, r, f_w]
                    _worker_main(work, w, a_w, ask_w, f_r, inherited)
                finally:
                    os._exit(1)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(a_w)
            os.close(f_r)
            workers.append((pid, r))
            replies.append(f_w)
        os.close(ask_w)
        ask_w = -1
        raw = _serve(schedule, ask_r, replies, [fd for _pid, fd in workers])
    except BaseException:
        for pid, _fd in workers:
            try:
                os.kill(pid, 9)  # SIGKILL
            except ProcessLookupError:
                pass
        raise
    finally:
        for fd in [ask_r, ask_w, *replies]:
            if fd >= 0:
                os.close(fd)
        statuses = []
        for pid, fd in workers:
            os.close(fd)
            statuses.append(_reap(pid))
    parts = []
    for data, status in zip(raw, statuses):
        try:
            kind, value = pickle.loads(data)
        except Exception:  # nothing or half an answer: the worker died (the OOM killer, a signal)
            raise SoswapError(f"a worker process died ({_describe_status(status)})") from None
        if kind == "error":
            raise SoswapError(value)
        parts.append(value)
    return parts


def _worker_main(work: Callable[[Callable[[], List[int]]], Any], w: int, answer: int, ask_w: int, files_r: int,
                 inherited: List[int]) -> None:  # pragma: no cover - runs in the forked worker
    """The forked worker: never returns (whatever is raised, even while an error is being reported, the
    process ends here and never runs the parent's code that called :func:`os.fork`)."""
    import pickle

    code = 1
    try:
        died = pickle.dumps(("error", "a worker process ran out of memory"))  # made while memory is there
        try:
            for fd in inherited:  # the parent's ends, and the pipes of the workers forked before this one
                os.close(fd)
            _die_with_parent()
            me = array("H", [w]).tobytes()

            def ask() -> List[int]:
                os.write(ask_w, me)
                head = _read_exactly(files_r, 4)
                count = int.from_bytes(head, "little")
                chunk = array("I")
                chunk.frombytes(_read_exactly(files_r, 4 * count))
                return chunk.tolist()

            data = pickle.dumps(("ok", work(ask)), protocol=pickle.HIGHEST_PROTOCOL)
            code = 0
        except BaseException as exc:  # said to the parent, which raises it
            data = died
            try:
                data = pickle.dumps(("error", _describe_error(exc)))
            except BaseException:
                pass
        view = memoryview(data)
        while view:
            view = view[os.write(answer, view):]
    finally:
        os._exit(code)


def _describe_error(exc: BaseException) -> str:  # pragma: no cover - runs in the forked worker
    if isinstance(exc, SoswapError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "a worker process ran out of memory"
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"internal error in a worker: {what}"


def _read_exactly(fd: int, size: int) -> bytes:  # pragma: no cover - runs in the forked worker
    parts = []
    while size:
        block = os.read(fd, size)
        if not block:
            raise SoswapError("the soswap that started this worker went away")
        parts.append(block)
        size -= len(block)
    return b"".join(parts)


def _die_with_parent() -> None:
    """A worker is killed when the soswap that forked it dies (prctl PR_SET_PDEATHSIG): killed by SIGTERM, the
    parent runs no cleanup, and a worker blocked writing its results would stay behind for good. (Ctrl-C is the
    parent's to handle, which kills the workers: a worker ignores SIGINT from its fork on. One interrupted on its
    own printed tracebacks, or swallowed the interrupt in a destructor and went on.)"""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)  # this process's own C library, nothing from a file
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != _PARENT:  # the parent died before the call: nobody waits for this worker
        os._exit(1)


def _serve(schedule: Schedule, ask_r: int, replies: List[int], fds: List[int]) -> List[bytes]:
    """Hand out files as the workers ask (a reply is small and a worker waits for it: the write never
    blocks), and read everything written to each answer pipe until its end is closed (a worker never blocks
    on a full pipe)."""
    import selectors

    chunks: Dict[int, List[bytes]] = {fd: [] for fd in fds}
    with selectors.DefaultSelector() as sel:
        for fd in fds:
            sel.register(fd, selectors.EVENT_READ)
        sel.register(ask_r, selectors.EVENT_READ)
        open_fds = len(fds)
        while open_fds:
            for key, _mask in sel.select():
                if key.fd == ask_r:
                    asked = os.read(ask_r, 256)
                    if not asked:  # every worker is gone
                        sel.unregister(ask_r)
                    for w in array("H", asked):  # whole requests: each is written, and read, at once
                        chunk = array("I", schedule.next(w))
                        try:
                            os.write(replies[w], len(chunk).to_bytes(4, "little") + chunk.tobytes())
                        except BrokenPipeError:
                            pass  # that worker died: its answer says so
                    continue
                block = os.read(key.fd, 1 << 20)
                if block:
                    chunks[key.fd].append(block)
                else:
                    sel.unregister(key.fd)
                    open_fds -= 1
    return [b"".join(chunks[fd]) for fd in fds]


def _reap(pid: int) -> int:
    try:
        return os.waitpid(pid, 0)[1]  # PEP 475: retried after a signal whose handler does not raise
    except ChildProcessError:
        return 0


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        except ValueError:
            return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else f"status {status}"
