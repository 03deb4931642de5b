"""The system's own ELF files, as test inputs."""

from __future__ import annotations

import os
from typing import List, Sequence

PROGRAM_DIRS = ("/usr/bin", "/usr/sbin")


def elf_files(dirs: Sequence[str] = PROGRAM_DIRS) -> List[str]:
    """Every file directly in ``dirs`` (symlinks followed) whose first bytes are the ELF magic, sorted per
    directory."""
    out = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for n in names:
            p = os.path.join(d, n)
            try:
                with open(p, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        out.append(p)
            except OSError:
                continue
    return out
