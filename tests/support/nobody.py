"""Running this test's Python as the unprivileged user nobody (uid/gid 65534), with setpriv."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from typing import List

import pytest

AS_NOBODY: List[str] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@functools.lru_cache(maxsize=1)
def _python_runs_as_nobody() -> str:
    """"" when it can, else why not: an interpreter under /root (pyenv) or a private virtualenv cannot be
    read by other users; a test that needs it is skipped there, not failed (on a distribution's Python it
    runs)."""
    if shutil.which("setpriv") is None:
        return "setpriv is not installed"
    r = subprocess.run([*AS_NOBODY, sys.executable, "-c", "pass"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        said = r.stderr.strip().splitlines()
        return f"this Python cannot run as nobody: {said[-1] if said else r.returncode}"
    return ""


def require_python_as_nobody() -> None:
    """Skip the calling test when this Python cannot be run by uid 65534."""
    why = _python_runs_as_nobody()
    if why:
        pytest.skip(why)
