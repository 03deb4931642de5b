"""``soswap check`` as a command, for the tests: a process of its own, with its state and caches in the test's
directory and no LD_* variable of the test run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def soswap_check(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m soswap check ARGS`` (text output), state and cache directories under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env.update(PYTHONPATH=str(ROOT / "src"), SOSWAP_STATE_DIR=str(tmp_path / "state"),
               SOSWAP_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "soswap", "check", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
