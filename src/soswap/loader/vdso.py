"""The version definitions of this kernel's vDSO, read from soswap's own mapping of it (``[vdso]`` in
/proc/self/maps, the bytes through /proc/self/mem): ld.so gives the vDSO a version array like any object's
(``_dl_check_map_versions``), and in trace mode a reference can read it
(:class:`soswap.loader.binding.VersionArena`). Nothing is executed; the image is decoded as any ELF file in
memory."""

from __future__ import annotations

import functools
import os
from typing import Optional, Tuple

from soswap.elf.versions import VersionDef
from soswap.errors import ElfError

#: (e_machine, ELF class, version definitions) of the vDSO
VdsoVersions = Tuple[int, int, Tuple[VersionDef, ...]]


@functools.lru_cache(maxsize=1)
def vdso_version_definitions() -> Optional[VdsoVersions]:
    """The machine and class of soswap's own vDSO and every Elf_Verdef of it: the vDSO a program of that machine
    and class gets; None where it cannot be read (no vDSO, /proc not mounted, a kernel that forbids reading
    it)."""
    from soswap.elf import ElfFile

    try:
        with open("/proc/self/maps", "rb") as f:
            line = next((ln for ln in f if ln.rstrip().endswith(b"[vdso]")), None)
        if line is None:
            return None
        start, end = (int(x, 16) for x in line.split(None, 1)[0].split(b"-"))
        if not 0 < end - start <= 1 << 20:
            return None
        fd = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            image = os.pread(fd, end - start, start)
        finally:
            os.close(fd)
        elf = ElfFile.from_bytes(image, "[vdso]")
        return elf.machine, elf.elf_class, tuple(elf.version_definitions)
    except (OSError, ValueError, ElfError):
        return None
