"""Start real processes for tests and always kill and reap them by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union


class Spawned:
    """A started process, leader of its own process group; ``stop()`` kills the group by the leader's PID (so
    the children a script forks, such as ``sleep``, die with it) and reaps the leader."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> Optional[int]:
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the group whose id is this process's PID
        except (ProcessLookupError, PermissionError):
            pass
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            return self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            return None


class ProcessPool:
    """Track every process a test starts (use through the ``procs`` fixture)."""

    def __init__(self) -> None:
        self._started: List[Spawned] = []

    def start(
        self,
        argv: Sequence[Union[str, Path]],
        *,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[Union[str, Path]] = None,
        wait_for_file: Optional[Union[str, Path]] = None,
        wait_maps: Optional[str] = None,
        timeout: float = 10.0,
        stdout: int = subprocess.DEVNULL,
    ) -> Spawned:
        """Start ``argv``. ``wait_for_file``: wait until that file exists (the program's readiness signal).
        ``wait_maps``: wait until ``/proc/PID/maps`` mentions that string (e.g. a library name)."""
        p = subprocess.Popen([str(a) for a in argv], env=env, cwd=cwd, stdout=stdout,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        sp = Spawned(p)
        self._started.append(sp)
        deadline = time.monotonic() + timeout
        while wait_for_file is not None and not Path(wait_for_file).exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not become ready (rc={p.poll()})")
            time.sleep(0.01)
        while wait_maps is not None:
            try:
                if wait_maps in Path(f"/proc/{p.pid}/maps").read_text(errors="replace"):
                    break
            except OSError:
                pass
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} never mapped {wait_maps} (rc={p.poll()})")
            time.sleep(0.01)
        return sp

    def stop_all(self) -> None:
        for sp in self._started:
            sp.stop()
        self._started.clear()
