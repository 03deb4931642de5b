"""On-disk layouts of the ELF structures soswap decodes, one :class:`Layout` per class and byte order."""

from __future__ import annotations

import struct
from typing import Dict, Tuple

from soswap.elf import constants as C


class Layout:
    """Precompiled :class:`struct.Struct` objects for one ELF class (32/64) and byte order."""

    def __init__(self, elf_class: int, little: bool) -> None:
        e = "<" if little else ">"
        self.elf_class = elf_class
        self.little = little
        self.prefix = e
        is64 = elf_class == C.ELFCLASS64
        self.is64 = is64
        addr = "Q" if is64 else "I"
        self.addr_size = 8 if is64 else 4
        # Elf_Ehdr after e_ident: type, machine, version, entry, phoff, shoff, flags, ehsize,
        # phentsize, phnum, shentsize, shnum, shstrndx
        self.ehdr = struct.Struct(f"{e}HHI{addr}{addr}{addr}IHHHHHH")
        if is64:
            # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
            self.phdr = struct.Struct(f"{e}IIQQQQQQ")
            # st_name, st_info, st_other, st_shndx, st_value, st_size
            self.sym = struct.Struct(f"{e}IBBHQQ")
            self.rel = struct.Struct(f"{e}QQ")
            self.rela = struct.Struct(f"{e}QQq")
            self.dyn = struct.Struct(f"{e}QQ")
            # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize
            self.shdr = struct.Struct(f"{e}IIQQQQIIQQ")
        else:
            # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align
            self.phdr = struct.Struct(f"{e}IIIIIIII")
            # st_name, st_value, st_size, st_info, st_other, st_shndx
            self.sym = struct.Struct(f"{e}IIIBBH")
            self.rel = struct.Struct(f"{e}II")
            self.rela = struct.Struct(f"{e}IIi")
            self.dyn = struct.Struct(f"{e}II")
            self.shdr = struct.Struct(f"{e}IIIIIIIIII")
        self.word = struct.Struct(f"{e}I")
        self.half = struct.Struct(f"{e}H")
        self.addr = struct.Struct(f"{e}{addr}")
        self.verdef = struct.Struct(f"{e}HHHHIII")  # vd_version, vd_flags, vd_ndx, vd_cnt, vd_hash, vd_aux, vd_next
        self.verdaux = struct.Struct(f"{e}II")  # vda_name, vda_next
        self.verneed = struct.Struct(f"{e}HHIII")  # vn_version, vn_cnt, vn_file, vn_aux, vn_next
        self.vernaux = struct.Struct(f"{e}IHHII")  # vna_hash, vna_flags, vna_other, vna_name, vna_next
        self.nhdr = struct.Struct(f"{e}III")  # n_namesz, n_descsz, n_type
        self.hash_header = struct.Struct(f"{e}II")  # nbucket, nchain
        self.gnu_hash_header = struct.Struct(f"{e}IIII")  # nbuckets, symoffset, bloom_size, bloom_shift


_LAYOUTS: Dict[Tuple[int, bool], Layout] = {}


def layout_for(elf_class: int, little: bool) -> Layout:
    """The shared :class:`Layout` for ``elf_class`` (ELFCLASS32/64) and byte order."""
    key = (elf_class, little)
    lay = _LAYOUTS.get(key)
    if lay is None:
        lay = _LAYOUTS[key] = Layout(elf_class, little)
    return lay
