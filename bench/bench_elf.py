#!/usr/bin/env python3
"""ELF reader benchmark: soswap vs pyelftools vs LIEF, in one run.

    python bench/bench_elf.py [--repeat N] [--quick]

1. Dynamic symbols with their versions (name, version, defined, binding, type, size for every symbol) of
   libc.so.6, libstdc++.so.6 and the largest shared library on the machine. Each tool produces the same list of
   tuples (checked equal, bindings and types as numbers); best of N runs, in this process, file data in the page
   cache, one gc.collect() before each tool's runs (outside the timing; the collector stays enabled). soswap
   is timed three ways: its columns (``ElfFile.symbol_columns``) zipped by ``SymbolColumns.rows``, the same
   columns zipped by plain ``list(zip(...))``, and its full ``Symbol`` tuples. LIEF is timed with its default
   parser configuration and with a minimal one (dynamic symbols and versions only).
2. Dependencies (DT_NEEDED, DT_SONAME, DT_RUNPATH) of every ELF file under /usr/bin and /usr/sbin: soswap in one
   process vs pyelftools in one process vs a `readelf -d` loop (one process per file).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from soswap.elf import ElfFile
from soswap.errors import ElfError

LIBDIR = "/usr/lib/x86_64-linux-gnu"


def best_of(fn: Callable[[], object], repeat: int) -> Tuple[float, object]:
    best = float("inf")
    result: object = None
    gc.collect()  # what earlier tools left (and their results held for the checks) is not this tool's to collect
    for _ in range(repeat):
        result = None  # freeing the previous run's result is not part of this run
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


#: The tuple every tool produces for each symbol but the null one.
FIELDS = ("names", "versions", "defined", "binds", "types", "sizes")


def soswap_rows(path: str) -> List[tuple]:
    """soswap's columns (SymbolColumns), zipped by SymbolColumns.rows (the collector paused while it builds)."""
    with ElfFile.open(path) as elf:
        return elf.symbol_columns.rows(*FIELDS, start=1)


def soswap_zip(path: str) -> List[tuple]:
    """soswap's columns zipped by plain list(zip(...)), the collector running."""
    with ElfFile.open(path) as elf:
        c = elf.symbol_columns
        return list(itertools.islice(zip(c.names, c.versions, c.defined, c.binds, c.types, c.sizes), 1, None))


def soswap_symbols(path: str) -> List[tuple]:
    """soswap's Symbol objects (13-field named tuples, every field decoded)."""
    with ElfFile.open(path) as elf:
        return list(elf.symbols[1:])


def symbol_tuples(symbols: List[tuple]) -> List[tuple]:
    return [(s.name, s.version, s.defined, s.bind, s.type, s.size) for s in symbols]  # type: ignore[attr-defined]


_STB = {"STB_LOCAL": 0, "STB_GLOBAL": 1, "STB_WEAK": 2, "STB_GNU_UNIQUE": 10, "STB_LOOS": 10}
_STT = {"STT_NOTYPE": 0, "STT_OBJECT": 1, "STT_FUNC": 2, "STT_SECTION": 3, "STT_FILE": 4, "STT_COMMON": 5,
        "STT_TLS": 6, "STT_GNU_IFUNC": 10, "STT_LOOS": 10}


def pyelftools_as_ints(rows: List[tuple]) -> List[tuple]:
    """pyelftools names bindings and types (``STB_GLOBAL``); soswap gives the numbers."""
    return [(n, v, d, _STB.get(b, b), _STT.get(t, t), z) for n, v, d, b, t, z in rows]


def lief_as_ints(rows: List[tuple]) -> List[tuple]:
    """LIEF gives enums for bindings and types."""
    return [(n, v, d, int(b.value), int(t.value), z) for n, v, d, b, t, z in rows]


def first_difference(a: List[tuple], b: List[tuple]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"symbol {i + 1}: {x!r} != {y!r}"
    return f"{len(a)} symbols != {len(b)} symbols"


def pyelftools_symbols(path: str) -> List[tuple]:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection, GNUVerSymSection

    with open(path, "rb") as f:
        elf = ELFFile(f)
        names: Dict[int, str] = {}
        versym = None
        for sec in elf.iter_sections():
            if isinstance(sec, GNUVerDefSection):
                for vd, aux in sec.iter_versions():
                    names[vd["vd_ndx"]] = next(iter(aux)).name
            elif isinstance(sec, GNUVerNeedSection):
                for _vn, aux in sec.iter_versions():
                    for a in aux:
                        names[a["vna_other"] & 0x7FFF] = a.name
            elif isinstance(sec, GNUVerSymSection):
                versym = sec
        dynsym = elf.get_section_by_name(".dynsym")
        out = []
        for i, s in enumerate(dynsym.iter_symbols()):
            if i == 0:
                continue
            ndx = versym.get_symbol(i)["ndx"] if versym is not None else 0
            ndx = ndx if isinstance(ndx, int) else 0
            out.append((s.name, names.get(ndx & 0x7FFF) if (ndx & 0x7FFF) > 1 else None,
                        s["st_shndx"] != "SHN_UNDEF", s["st_info"]["bind"], s["st_info"]["type"], s["st_size"]))
        return out


def lief_symbols(path: str, minimal: bool) -> List[tuple]:
    import lief

    if minimal:
        cfg = lief.ELF.ParserConfig()
        cfg.parse_relocations = False
        cfg.parse_symtab_symbols = False
        cfg.parse_notes = False
        cfg.parse_overlay = False
        binary = lief.ELF.parse(path, cfg)
    else:
        binary = lief.ELF.parse(path)
    out = []
    for i, s in enumerate(binary.dynamic_symbols):
        if i == 0:  # LIEF lists the null symbol too
            continue
        sv = s.symbol_version
        version = None
        if sv is not None:
            aux = sv.symbol_version_auxiliary
            version = aux.name if aux is not None else None
        out.append((s.name, version, s.shndx != 0, s.binding, s.type, s.size))
    return out


def largest_library() -> str:
    best: Tuple[int, str] = (0, "")
    for p in Path(LIBDIR).iterdir():
        if p.is_file() and not p.is_symlink() and ".so" in p.name:
            size = p.stat().st_size
            if size > best[0]:
                try:
                    if ElfFile.open(p).is_dynamic:
                        best = (size, str(p))
                except ElfError:
                    pass
    return best[1]


def elf_files(dirs: List[str]) -> List[str]:
    out = []
    for d in dirs:
        for p in sorted(Path(d).iterdir()):
            try:
                if p.is_file() and not p.is_symlink() and p.read_bytes()[:4] == b"\x7fELF":
                    out.append(str(p))
            except OSError:
                pass
    return out


def soswap_deps(files: List[str]) -> int:
    n = 0
    for f in files:
        try:
            with ElfFile.open(f) as elf:
                n += len(elf.needed) + (elf.soname is not None) + (elf.runpath is not None)
        except ElfError:
            pass
    return n


def pyelftools_deps(files: List[str]) -> int:
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    n = 0
    for f in files:
        with open(f, "rb") as fh:
            elf = ELFFile(fh)
            for sec in elf.iter_sections():
                if isinstance(sec, DynamicSection):
                    for tag in sec.iter_tags():
                        if tag.entry.d_tag in ("DT_NEEDED", "DT_SONAME", "DT_RUNPATH"):
                            n += 1
    return n


def readelf_loop(files: List[str]) -> int:
    n = 0
    for f in files:
        out = subprocess.run(["readelf", "-d", f], capture_output=True, text=True).stdout
        n += sum(1 for line in out.splitlines() if "(NEEDED)" in line or "(SONAME)" in line or "(RUNPATH)" in line)
    return n


def fmt(t: Optional[float]) -> str:
    return "-" if t is None else (f"{t * 1000:.1f} ms" if t < 10 else f"{t:.1f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="skip the readelf loop and pyelftools on the biggest file")
    args = ap.parse_args()
    print(f"# machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, kernel {platform.release()}, "
          f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}")
    libs = [f"{LIBDIR}/libc.so.6", f"{LIBDIR}/libstdc++.so.6", largest_library()]
    print(f"\n## Dynamic symbols with versions (best of {args.repeat})\n")
    print("soswap columns: `SymbolColumns.rows(...)`; soswap zip: `list(zip(...))` over the same columns; soswap "
          "Symbol: the 13-field `Symbol` tuples. Ratios are to soswap columns; every result is checked equal to "
          "pyelftools' (LIEF's when pyelftools is skipped).\n")
    print("| library | symbols | soswap columns | soswap zip | soswap Symbol | pyelftools | LIEF (default) | "
          "LIEF (minimal) | pyelftools/soswap | LIEF default/soswap | LIEF minimal/soswap | "
          "LIEF minimal/soswap zip |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for lib in libs:
        lib = os.path.realpath(lib)
        biggest = lib == os.path.realpath(libs[-1])
        t_s, res = best_of(lambda lib=lib: soswap_rows(lib), args.repeat)
        t_z, res_z = best_of(lambda lib=lib: soswap_zip(lib), args.repeat)
        t_y, res_y = best_of(lambda lib=lib: soswap_symbols(lib), args.repeat)
        reps = 1 if args.quick and biggest else max(1, args.repeat // 2)
        t_p, res_p = (None, None) if args.quick and biggest else best_of(
            lambda lib=lib: pyelftools_symbols(lib), reps)
        try:
            t_l, res_l = best_of(lambda lib=lib: lief_symbols(lib, False), reps)
            t_m, res_m = best_of(lambda lib=lib: lief_symbols(lib, True), args.repeat)
        except ImportError:
            t_l = t_m = None
            res_l = res_m = None
        rows: List[tuple] = res  # type: ignore[assignment]
        assert res_z == rows, f"{lib}: soswap zip: {first_difference(res_z, rows)}"  # type: ignore[arg-type]
        syms = symbol_tuples(res_y)  # type: ignore[arg-type]
        assert syms == rows, f"{lib}: soswap Symbol: {first_difference(syms, rows)}"
        if res_p is not None:
            theirs = pyelftools_as_ints(res_p)  # type: ignore[arg-type]
            assert rows == theirs, f"{lib}: soswap vs pyelftools: {first_difference(rows, theirs)}"
        for name, res_lief in (("LIEF default", res_l), ("LIEF minimal", res_m)):
            if res_lief is not None:
                theirs = lief_as_ints(res_lief)  # type: ignore[arg-type]
                assert rows == theirs, f"{lib}: soswap vs {name}: {first_difference(rows, theirs)}"
        n = len(rows)

        def ratio(t: Optional[float], base: float = t_s) -> str:
            return "-" if t is None else f"{t / base:.1f}×"

        print(f"| {os.path.basename(lib)} | {n} | {fmt(t_s)} | {fmt(t_z)} | {fmt(t_y)} | {fmt(t_p)} | {fmt(t_l)} | "
              f"{fmt(t_m)} | {ratio(t_p)} | {ratio(t_l)} | {ratio(t_m)} | {ratio(t_m, t_z)} |")
    files = elf_files(["/usr/bin", "/usr/sbin"])
    print(f"\n## Dependencies of every ELF file in /usr/bin and /usr/sbin ({len(files)} files)\n")
    t_s, n_s = best_of(lambda: soswap_deps(files), args.repeat)
    t_p, n_p = best_of(lambda: pyelftools_deps(files), 1)
    t_r, n_r = (None, None) if args.quick else best_of(lambda: readelf_loop(files), 1)
    print("| tool | time | entries | ratio to soswap |")
    print("|---|---|---|---|")
    print(f"| soswap (one process) | {fmt(t_s)} | {n_s} | 1× |")
    print(f"| pyelftools (one process) | {fmt(t_p)} | {n_p} | {t_p / t_s:.0f}× |")
    if t_r is not None:
        print(f"| readelf -d loop | {fmt(t_r)} | {n_r} | {t_r / t_s:.0f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
