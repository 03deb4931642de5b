"""The man page and the bash completion are generated from the argument parser (scripts/gen-docs) and kept in
step with it; the man page renders without a warning; the completion completes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_files_are_up_to_date() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-docs"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_the_man_page_renders_without_warnings() -> None:
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(ROOT / "docs" / "soswap.1")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    text = subprocess.run(["groff", "-man", "-Tutf8", str(ROOT / "docs" / "soswap.1")], capture_output=True,
                          text=True, env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}).stdout
    text = re.sub(".\x08", "", text)  # bold and underline by overstriking
    for heading in ("NAME", "SYNOPSIS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "FILES"):
        assert heading in text
    assert "--refuse" in text.replace("\u2010", "-")


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize("words, cword, expected", [
    (["soswap", "st"], 1, ["stale"]),
    (["soswap", "stale", "--prom"], 2, ["--prometheus"]),
    (["soswap", "hook", "apt"], 2, ["apt", "apt-preinstall"]),
    (["soswap", "check", "--de"], 2, ["--deb"]),
    (["soswap", "--json", "tr"], 2, ["tree"]),
    (["soswap", "hook", "setup", "--manager", "''"], 4, ["apt", "dnf", "pacman"]),  # an option's values
    (["soswap", "hook", "setup", "--manager", "p"], 4, ["pacman"]),
    (["soswap", "hook", "--timeout", "''"], 3, []),  # a number: nothing to offer
    (["soswap", "tree", "--root", "/bi"], 3, ["/bin"]),  # a directory: file names
])
def test_the_completion_completes(words: list, cword: int, expected: list) -> None:
    script = (f"source {ROOT / 'contrib' / 'bash-completion' / 'soswap'}; COMP_WORDS=({' '.join(words)}); "
              f"COMP_CWORD={cword}; _soswap; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == expected, r.stdout + r.stderr
