"""``soswap diff`` on real libraries of this system, checked against pyelftools (an independent ELF reader)."""

from __future__ import annotations

import os
from typing import Dict, Set, Tuple

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerSymSection

from soswap.abi import diff_files
from soswap.abi.exports import symbol_view
from soswap.elf import ElfFile

LIBDIR = "/usr/lib/x86_64-linux-gnu"
LLVM14, LLVM15 = f"{LIBDIR}/libLLVM-14.so.1", f"{LIBDIR}/libLLVM-15.so.1"
LIBC = f"{LIBDIR}/libc.so.6"
LIBSTDCXX = f"{LIBDIR}/libstdc++.so.6"

requires_llvm = pytest.mark.skipif(not (os.path.exists(LLVM14) and os.path.exists(LLVM15)),
                                   reason="libLLVM-14 and libLLVM-15 are not both installed")

# pyelftools names type 10 (STT_GNU_IFUNC) after the range it opens, STT_LOOS
_LOOKUP_TYPES = {"STT_NOTYPE", "STT_OBJECT", "STT_FUNC", "STT_COMMON", "STT_TLS", "STT_GNU_IFUNC", "STT_LOOS"}
_LOOKUP_BINDS = {"STB_GLOBAL", "STB_WEAK", "STB_GNU_UNIQUE", "STB_LOOS"}  # STB_LOOS: GNU_UNIQUE (10)


def pyelftools_exports(path: str, with_versions: bool = True) -> Set[Tuple[str, object]]:
    """(name, version-or-None) of every definition the loader can bind to, read with pyelftools: defined,
    GLOBAL/WEAK/UNIQUE, default or protected, a lookup type, nonzero value unless ABS/TLS; ld's version-node
    marker symbols left out."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        dynsym = elf.get_section_by_name(".dynsym")
        versym = verdef_names = None
        nodes: Set[str] = set()
        for sec in elf.iter_sections():
            if isinstance(sec, GNUVerSymSection):
                versym = sec
            elif isinstance(sec, GNUVerDefSection):
                verdef_names = {}
                for vd, aux in sec.iter_versions():
                    name = next(aux).name
                    verdef_names[vd["vd_ndx"]] = name
                    if not vd["vd_flags"] & 1:
                        nodes.add(name)
        out = set()
        for i, s in enumerate(dynsym.iter_symbols()):
            if i == 0 or s["st_shndx"] == "SHN_UNDEF" or not s.name:
                continue
            if s["st_info"]["bind"] not in _LOOKUP_BINDS or s["st_info"]["type"] not in _LOOKUP_TYPES:
                continue
            if s["st_other"]["visibility"] in ("STV_HIDDEN", "STV_INTERNAL"):
                continue
            if s["st_value"] == 0 and s["st_shndx"] != "SHN_ABS" and s["st_info"]["type"] != "STT_TLS":
                continue
            version = None
            if with_versions and versym is not None and verdef_names is not None:
                ndx = versym.get_symbol(i)["ndx"]
                ndx = ndx if isinstance(ndx, str) else ndx & 0x7FFF
                version = verdef_names.get(ndx) if isinstance(ndx, int) and ndx > 1 else None
            if s["st_shndx"] == "SHN_ABS" and s.name in nodes and version in (s.name, None):
                continue
            out.add((s.name, version))
        return out


def soswap_exports(path: str) -> Set[Tuple[str, object]]:
    view = symbol_view(ElfFile.open(path))
    return {(s.name, s.version) for syms in view.exports.values() for s in syms}


@pytest.mark.parametrize("path", [LIBC, LIBSTDCXX])
def test_exports_agree_with_pyelftools(path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} missing")
    ours = soswap_exports(path)
    assert ours == pyelftools_exports(path)
    assert len(ours) > 1000


@pytest.mark.parametrize("path", [LIBC, LIBSTDCXX, LLVM15])
def test_library_against_itself_has_no_change(path: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} missing")
    d = diff_files(path, path)
    assert d.changes == () and d.verdict == "compatible"


@requires_llvm
def test_llvm_14_to_15() -> None:
    """Every symbol moves from node LLVM_14 to LLVM_15; the name sets, read by pyelftools without versions,
    tell which are removed, moved or added."""
    d = diff_files(LLVM14, LLVM15)
    assert d.verdict == "incompatible"
    by_kind: Dict[str, Set[str]] = {}
    for c in d.changes:
        by_kind.setdefault(c.kind, set()).add(c.symbol or c.version or c.new_value or "")
    old_names = {n for n, _v in pyelftools_exports(LLVM14, with_versions=False)}
    new_names = {n for n, _v in pyelftools_exports(LLVM15, with_versions=False)}
    assert by_kind["soname-changed"] == {""} or d.of_kind("soname-changed")[0].new_value == "libLLVM-15.so.1"
    assert by_kind["version-removed"] == {"LLVM_14"} and by_kind["version-added"] == {"LLVM_15"}
    assert by_kind["symbol-moved"] == old_names & new_names
    assert by_kind["symbol-removed"] | by_kind.get("symbol-moved-out", set()) == old_names - new_names
    assert by_kind["symbol-added"] == new_names - old_names
    assert all(c.severity == "breaking" for c in d.of_kind("symbol-moved"))
    # what abidiff reports (331.7 s in the notes): 9,072 removed variable symbols among them
    removed_vars = [c for c in d.changes if c.kind in ("symbol-moved", "symbol-removed")
                    and c.old_value is not None and c.symbol is not None]
    assert len(removed_vars) == len(old_names)
