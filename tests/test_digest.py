"""``soswap.digest`` gives hashlib's digests without hashlib's import (OpenSSL's ``_hashlib``: 4–8 ms of every
start), and a one-file ``soswap tree`` that reads and writes its caches imports neither hashlib nor tempfile."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from soswap.digest import LARGE, blake2b, sha256_hex

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_digests_are_hashlibs() -> None:
    for size in (0, 1, 63, 64, 1000, LARGE - 1, LARGE, LARGE + 1, 3 * LARGE + 7):
        data = os.urandom(size)
        assert sha256_hex(data) == hashlib.sha256(data).hexdigest(), size
        h = blake2b(digest_size=16)
        h.update(data)
        g = hashlib.blake2b(digest_size=16)
        g.update(data)
        assert h.hexdigest() == g.hexdigest(), size


def _imported(args: list, env: dict) -> str:
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "soswap", "tree", *args], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return "\n".join(line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "import time:" in line)


def test_a_one_file_tree_imports_neither_hashlib_nor_tempfile(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("SOSWAP_CACHE_DIR", None)
    args = ["--cache-dir", str(tmp_path / "cache"), "/usr/bin/ls"]
    first = _imported(args, env).splitlines()  # computes, and writes the caches
    assert (tmp_path / "cache").is_dir() and os.listdir(tmp_path / "cache")
    warm = _imported(args, env).splitlines()  # reads them
    for modules in (first, warm):
        assert "soswap.digest" in modules
        assert not {"hashlib", "_hashlib", "tempfile", "random"} & set(modules), modules
