"""pyelftools as the oracle for the ELF reader: the same fields, read through section headers."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection, GNUVerSymSection
from elftools.elf.sections import SymbolTableSection

_BIND = {"STB_LOCAL": "LOCAL", "STB_GLOBAL": "GLOBAL", "STB_WEAK": "WEAK", "STB_GNU_UNIQUE": "UNIQUE",
         "STB_LOOS": "UNIQUE"}
_TYPE = {"STT_NOTYPE": "NOTYPE", "STT_OBJECT": "OBJECT", "STT_FUNC": "FUNC", "STT_SECTION": "SECTION",
         "STT_FILE": "FILE", "STT_COMMON": "COMMON", "STT_TLS": "TLS", "STT_GNU_IFUNC": "IFUNC", "STT_LOOS": "IFUNC"}


def _raw_ndx(entry: Any) -> int:
    ndx = entry["ndx"]
    if isinstance(ndx, int):
        return ndx
    return {"VER_NDX_LOCAL": 0, "VER_NDX_GLOBAL": 1}[ndx]


def read_with_pyelftools(path: str) -> Optional[Dict[str, Any]]:
    """The oracle's view, or None when the file has no .dynsym/.dynamic sections to compare."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        dynamic = next((s for s in elf.iter_sections() if isinstance(s, DynamicSection)), None)
        dynsym = elf.get_section_by_name(".dynsym")
        if dynamic is None:
            return None
        needed: List[str] = []
        soname = rpath = runpath = None
        for tag in dynamic.iter_tags():
            if tag.entry.d_tag == "DT_NEEDED":
                needed.append(tag.needed)
            elif tag.entry.d_tag == "DT_SONAME":
                soname = tag.soname
            elif tag.entry.d_tag == "DT_RPATH":
                rpath = tag.rpath
            elif tag.entry.d_tag == "DT_RUNPATH":
                runpath = tag.runpath
        versions: Dict[int, Tuple[str, bool]] = {}  # index -> (name, is_definition)
        versym = None
        for sec in elf.iter_sections():
            if isinstance(sec, GNUVerDefSection):
                for verdef, auxiter in sec.iter_versions():
                    aux = next(iter(auxiter))
                    versions[verdef["vd_ndx"]] = (aux.name, True)
            elif isinstance(sec, GNUVerNeedSection):
                for _verneed, auxiter in sec.iter_versions():
                    for aux in auxiter:
                        versions.setdefault(aux["vna_other"] & 0x7FFF, (aux.name, False))
            elif isinstance(sec, GNUVerSymSection):
                versym = sec
        symbols = []
        if isinstance(dynsym, SymbolTableSection):
            for i, sym in enumerate(dynsym.iter_symbols()):
                if i == 0:
                    continue
                version = None
                if versym is not None:
                    idx = _raw_ndx(versym.get_symbol(i).entry) & 0x7FFF
                    if idx > 1 and idx in versions:
                        version = versions[idx][0]
                symbols.append((
                    sym.name,
                    sym["st_shndx"] != "SHN_UNDEF",
                    _BIND.get(sym["st_info"]["bind"], sym["st_info"]["bind"]),
                    _TYPE.get(sym["st_info"]["type"], sym["st_info"]["type"]),
                    sym["st_size"],
                    version,
                ))
        return {"needed": needed, "soname": soname, "rpath": rpath, "runpath": runpath, "symbols": symbols}


def read_with_soswap(path: str) -> Dict[str, Any]:
    from soswap.elf import ElfFile

    with ElfFile.open(path) as elf:
        return {
            "needed": list(elf.needed),
            "soname": elf.soname,
            "rpath": elf.rpath,
            "runpath": elf.runpath,
            "symbols": [(s.name, s.defined, s.bind_name, s.type_name, s.size, s.version) for s in elf.symbols[1:]],
        }
