"""Render :class:`soswap.elf.ElfFile` summaries as text (like ``readelf -d`` and ``--dyn-syms``) or JSON."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.report.output import table


def _shndx_name(shndx: int) -> str:
    if shndx == C.SHN_UNDEF:
        return "UND"
    if shndx == C.SHN_ABS:
        return "ABS"
    if shndx == C.SHN_COMMON:
        return "COM"
    return str(shndx)


def elf_to_json(elf: ElfFile, with_symbols: bool = False) -> Dict[str, Any]:
    """The ``soswap elf --json`` object for one file (schema in docs/json.md)."""
    dyn = elf.dynamic
    obj: Dict[str, Any] = {
        "path": elf.path,
        "class": elf.elf_class,
        "byte_order": "little" if elf.little_endian else "big",
        "machine": elf.machine_name,
        "osabi": elf.osabi_name,
        "abi_version": elf.header.abiversion,
        "type": elf.type_name,
        "interpreter": elf.interpreter,
        "soname": dyn.soname,
        "needed": list(dyn.needed),
        "rpath": list(dyn.rpath_list) if dyn.rpath is not None else None,
        "runpath": list(dyn.runpath_list) if dyn.runpath is not None else None,
        "rpath_raw": dyn.rpath,
        "runpath_raw": dyn.runpath,
        "flags": dyn.flag_names + (["BIND_NOW_TAG"] if dyn.has_bind_now_tag else []),
        "bind_now": dyn.bind_now,
        "filter": list(dyn.filters),
        "auxiliary": list(dyn.auxiliary),
        "build_id": elf.build_id,
        "version_definitions": [
            {"index": d.index, "name": d.name, "flags": _ver_flags(d.flags), "hash": d.hash, "parents": list(d.parents)}
            for d in elf.version_definitions
        ],
        "version_needs": [
            {
                "file": n.file,
                "versions": [
                    {"index": e.index, "name": e.name, "flags": _ver_flags(e.flags), "hash": e.hash, "hidden": e.hidden}
                    for e in n.entries
                ],
            }
            for n in elf.version_needs
        ],
    }
    if with_symbols:
        obj["symbols"] = [
            {
                "name": s.name,
                "version": s.version,
                "default": s.default,
                "hidden": s.hidden,
                "defined": s.defined,
                "binding": s.bind_name,
                "type": s.type_name,
                "size": s.size,
                "value": s.value,
                "visibility": s.visibility_name,
                "section": _shndx_name(s.shndx),
            }
            for s in elf.symbols[1:]
        ]
    return obj


def _ver_flags(flags: int) -> List[str]:
    return [name for bit, name in C.VER_FLG_NAMES.items() if flags & bit] + (
        [f"{flags & ~7:#x}"] if flags & ~7 else [])


def _or_dash(value: Optional[str]) -> str:
    return "-" if value is None else value


def elf_to_text(elf: ElfFile, with_symbols: bool = False) -> List[str]:
    """A readable summary of one file."""
    dyn = elf.dynamic
    lines = [
        f"{elf.path}: ELF{elf.elf_class} {'LSB' if elf.little_endian else 'MSB'} {elf.machine_name} {elf.type_name}"
        f" (OS ABI {elf.osabi_name}, ABI version {elf.header.abiversion})"
    ]
    rows = [
        ("interpreter", _or_dash(elf.interpreter)),
        ("soname", _or_dash(dyn.soname)),
        ("needed", ", ".join(dyn.needed) or "-"),
        ("rpath", _or_dash(dyn.rpath)),
        ("runpath", _or_dash(dyn.runpath)),
        ("flags", " ".join(dyn.flag_names + (["(DT_BIND_NOW)"] if dyn.has_bind_now_tag else [])) or "-"),
        ("build-id", _or_dash(elf.build_id)),
    ]
    if dyn.filters:
        rows.append(("filter", ", ".join(dyn.filters)))
    if dyn.auxiliary:
        rows.append(("auxiliary", ", ".join(dyn.auxiliary)))
    if not elf.is_dynamic:
        rows.append(("dynamic", "no (static)"))
    lines += table(((k + ":", v) for k, v in rows), indent="  ")
    defs = elf.version_definitions
    if defs:
        lines.append("  version definitions:")
        for d in defs:
            extra = f" (parents: {', '.join(d.parents)})" if d.parents else ""
            flags = " ".join(_ver_flags(d.flags))
            lines.append(f"    [{d.index}] {d.name}{' ' + flags if flags else ''}{extra}")
    needs = elf.version_needs
    if needs:
        lines.append("  version needs:")
        for n in needs:
            entries = ", ".join(
                f"{e.name}{' (weak)' if e.weak else ''}{' (hidden)' if e.hidden else ''}" for e in n.entries)
            lines.append(f"    {n.file}: {entries}")
    if with_symbols:
        syms = elf.symbols[1:]
        lines.append(f"  dynamic symbols ({len(syms)}):")
        rows2 = []
        for s in syms:
            rows2.append((
                str(s.index),
                f"{s.value:0{16 if elf.elf_class == 64 else 8}x}",
                str(s.size),
                s.type_name,
                s.bind_name,
                s.visibility_name,
                _shndx_name(s.shndx),
                s.versioned_name + (f" ({s.version_file})" if s.version_file else ""),
            ))
        lines += table(rows2, header=("Num", "Value", "Size", "Type", "Bind", "Vis", "Ndx", "Name"), indent="    ")
    else:
        syms = elf.symbols[1:] if elf.is_dynamic else ()
        undefined = sum(1 for s in syms if not s.defined)
        lines.append(f"  symbols:     {len(syms)} dynamic ({len(syms) - undefined} defined, {undefined} undefined)")
    return lines
