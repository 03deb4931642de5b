"""Diff of what the loader checks before it looks at a single symbol: the ELF header, the dynamic section
(SONAME, DT_NEEDED, filters, search paths), version needs, and the loader-relevant flags and properties."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from soswap.abi.changes import BREAKING, HARMLESS, REVIEW, Change
from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.elf.relocs import unexpected_plt_type
from soswap.loader.candidates import (
    MAPPING_TABLES,
    MISALIGNED,
    beyond_the_end,
    kernel_cannot_map,
    load_commands,
    overlapping,
)
from soswap.loader.lookup import reference_problem
from soswap.tuples import NamedTuple

#: glibc's LIBC_ABI_MAX on x86-64 (libc-abis: DEFAULT, UNIQUE, IFUNC, ABSOLUTE): a GNU object's
#: EI_ABIVERSION must be below it.
LIBC_ABI_MAX = 4

#: Machines whose default stack, without PT_GNU_STACK, is not executable (DEFAULT_STACK_PERMS).
_NOEXEC_DEFAULT_STACK = frozenset({C.EM_AARCH64, C.EM_RISCV, C.EM_LOONGARCH})

ROLE_LIBRARY = "library"
ROLE_EXECUTABLE = "executable"


def role_of(elf: ElfFile) -> str:
    """``executable`` for ET_EXEC and PIE (DF_1_PIE) files, else ``library``."""
    if elf.type == C.ET_EXEC or (elf.type == C.ET_DYN and elf.dynamic.flags_1 & C.DF_1_PIE):
        return ROLE_EXECUTABLE
    return ROLE_LIBRARY


def osabi_accepted(osabi: int, abiversion: int) -> bool:
    """Whether ld.so accepts EI_OSABI/EI_ABIVERSION (``VALID_ELF_OSABI``, ``VALID_ELF_ABIVERSION``)."""
    if osabi == C.ELFOSABI_SYSV:
        return abiversion == 0
    if osabi == C.ELFOSABI_GNU:
        return abiversion < LIBC_ABI_MAX
    return False


def _osabi_name(osabi: int) -> str:
    return C.ELFOSABI_NAMES.get(osabi, str(osabi))


def diff_header(old: ElfFile, new: ElfFile) -> Tuple[List[Change], bool]:
    """Class, byte order, machine, OS ABI, e_type. Returns the changes and whether NEW is another
    architecture or kind of file altogether (then nothing else is worth comparing)."""
    out: List[Change] = []
    if old.elf_class != new.elf_class:
        out.append(Change("elf-class-changed", BREAKING, None, None,
                          f"ELFCLASS{old.elf_class} -> ELFCLASS{new.elf_class}: ld.so skips NEW "
                          f"('wrong ELF class: ELFCLASS{new.elf_class}')",
                          f"ELFCLASS{old.elf_class}", f"ELFCLASS{new.elf_class}"))
    if old.little_endian != new.little_endian:
        names = {True: "little-endian", False: "big-endian"}
        out.append(Change("byte-order-changed", BREAKING, None, None,
                          f"{names[old.little_endian]} -> {names[new.little_endian]}: 'invalid ELF header'",
                          names[old.little_endian], names[new.little_endian]))
    if old.machine != new.machine:
        out.append(Change("machine-changed", BREAKING, None, None,
                          f"e_machine {old.machine_name} -> {new.machine_name}: ld.so skips NEW silently "
                          "('cannot open shared object file')", old.machine_name, new.machine_name))
    foreign = bool(out)
    h_old, h_new = old.header, new.header
    if h_old.osabi != h_new.osabi or h_old.abiversion != h_new.abiversion:
        ok = osabi_accepted(h_new.osabi, h_new.abiversion)
        # open_verify: an unknown OS ABI and a bad ABI version get different messages
        why = "" if ok else (": 'ELF file OS ABI invalid'" if h_new.osabi not in (C.ELFOSABI_SYSV, C.ELFOSABI_GNU)
                             else f": 'ELF file ABI version invalid' (EI_ABIVERSION {h_new.abiversion})")
        if h_old.osabi != h_new.osabi:
            out.append(Change("osabi-changed", HARMLESS if ok else BREAKING, None, None,
                              f"EI_OSABI {_osabi_name(h_old.osabi)} -> {_osabi_name(h_new.osabi)}{why}",
                              _osabi_name(h_old.osabi), _osabi_name(h_new.osabi)))
        else:
            out.append(Change("abiversion-changed", HARMLESS if ok else BREAKING, None, None,
                              f"EI_ABIVERSION {h_old.abiversion} -> {h_new.abiversion}{why}",
                              str(h_old.abiversion), str(h_new.abiversion)))
    # open_verify: EI_VERSION and the e_ident padding are checked too
    if h_new.version != C.EV_CURRENT and h_old.version == C.EV_CURRENT:
        out.append(Change("header-invalid", BREAKING, None, None,
                          f"EI_VERSION is {h_new.version}: 'ELF file version ident does not match current one'",
                          None, f"EI_VERSION={h_new.version}"))
    if not h_new.ident_padding_zero and h_old.ident_padding_zero:
        out.append(Change("header-invalid", BREAKING, None, None,
                          "e_ident padding is not zero: 'nonzero padding in e_ident'", None, "EI_PAD"))
    # before anything reads NEW's dynamic section, which a cut may have taken away
    cut = _cut_short(new, role_of(old)) if not foreign else None
    if cut is not None and _cut_worse(new, old, role_of(old)):
        out.append(Change("file-truncated", BREAKING, None, None,
                          f"NEW is cut short (an interrupted copy?): {cut[0]}: {cut[1]}", None, f"{new.size} bytes"))
        return out, True  # NEW never loads: the rest is noise
    tail = _sections_cut(new) if not foreign else None
    if tail is not None and _sections_cut(old) is None:
        out.append(Change("file-incomplete", REVIEW, None, None,
                          f"NEW is cut short (an interrupted copy?): {tail}", None, f"{new.size} bytes"))
    type_changes = _type_change(old, new)
    out.extend(type_changes)
    if not foreign and _unmappable(new) and not _unmappable(old):
        effect = ("the kernel cannot map it: running it ends in SIGSEGV" if role_of(new) == ROLE_EXECUTABLE
                  else "'ELF load command address/offset not page-aligned'")
        type_changes.append(Change("segments-unmappable", BREAKING, None, None,
                                   "a PT_LOAD segment's address and offset are not page-aligned together, or "
                                   f"segments overlap (what strip can make of a patchelf-ed file): {effect}",
                                   None, None))
        out.append(type_changes[-1])
    # a program (or an unloadable type) where a library was: NEW never loads, the rest is noise
    foreign = foreign or any(c.severity == BREAKING for c in type_changes)
    return out, foreign


def _unmappable(elf: ElfFile) -> bool:
    """``_dl_map_object_from_fd``/``_dl_map_segments`` refuse its segments (a library), or the kernel cannot map
    them (a program)."""
    if role_of(elf) == ROLE_EXECUTABLE:
        return kernel_cannot_map(elf)
    problem, loads = load_commands(elf)
    return problem == MISALIGNED or (problem is None and elf.type == C.ET_DYN and overlapping(loads))


def _cut_short(elf: ElfFile, role: str) -> Optional[Tuple[str, str]]:
    """(where, what follows) when a segment's file data runs past the end of ``elf`` (a ``role``), or None.
    Reads the program headers only. ld.so itself dies of SIGBUS when it must touch a missing page
    (:func:`soswap.loader.candidates.beyond_the_end`); otherwise the code that uses the missing part does (a
    whole page) or reads zeros (the end of a page)."""
    for seg in elf.segments_of_type(C.PT_INTERP):
        if seg.offset + seg.filesz > elf.size:  # load_elf_binary reads the name with kernel_read: -EIO
            return (f"its interpreter's name (offset {seg.offset:#x}) runs past the end of the file ({elf.size} "
                    "bytes)", "execve fails with 'Input/output error': the program never starts")
    crash = beyond_the_end(elf, elf.segments_of_type(C.PT_DYNAMIC), MAPPING_TABLES)
    if crash is not None:
        effect = ("running it dies of SIGBUS or SIGSEGV" if role == ROLE_EXECUTABLE
                  else "loading it kills ld.so with SIGBUS")
        return crash, effect
    for seg in [*elf.segments_of_type(C.PT_LOAD), *elf.segments_of_type(C.PT_DYNAMIC)]:
        if seg.offset + seg.filesz > elf.size:
            return (f"the segment at {seg.offset:#x} ({seg.filesz} bytes) ends beyond the end of the file "
                    f"({elf.size} bytes)", "the code that uses its missing part dies of SIGBUS, or reads zeros")
    return None


def _cut_worse(new: ElfFile, old: ElfFile, role: str) -> bool:
    """NEW (cut short) fares worse than OLD: OLD is whole, or only NEW kills ld.so, or NEW lacks more of its
    segments' data (an installed file cut by a byte, that runs, is no excuse for a NEW cut by pages)."""
    old_cut = _cut_short(old, role)
    if old_cut is None:
        return True
    if beyond_the_end(new, new.segments_of_type(C.PT_DYNAMIC), MAPPING_TABLES) is not None:
        return beyond_the_end(old, old.segments_of_type(C.PT_DYNAMIC), MAPPING_TABLES) is None
    return _missing_bytes(new) > _missing_bytes(old)


def _missing_bytes(elf: ElfFile) -> int:
    return max((s.offset + s.filesz - elf.size for s in elf.segments if s.type in (C.PT_LOAD, C.PT_DYNAMIC)),
               default=0)


def _sections_cut(elf: ElfFile) -> Optional[str]:
    """Where ``elf``'s section header table runs past the end of the file (what no linker writes), or None.
    With more sections than e_shnum holds, the count is in the first entry: that one must be there."""
    h = elf.header
    if not h.shoff:
        return None
    count = h.shnum if h.shnum else 1
    end = h.shoff + count * h.shentsize
    if end <= elf.size:
        return None
    return (f"its section header table ({count} entries from offset {h.shoff:#x}) ends beyond the end of the file "
            f"({elf.size} bytes)")


def static_tls_block(elf: ElfFile) -> int:
    """The size ``_dl_try_allocate_static_tls`` must find in the static TLS surplus for ``elf``: its TLS
    block plus the offset of its first byte within the block's alignment (``blsize``)."""
    return sum(t.memsz + (t.vaddr & (t.align - 1) if t.align else 0) for t in elf.segments_of_type(C.PT_TLS))


def static_tls_align(elf: ElfFile) -> int:
    """``l_tls_align``: ``_dl_try_allocate_static_tls`` refuses a block aligned more than the static TLS
    block is (``dl_tls_static_align``)."""
    return max((t.align for t in elf.segments_of_type(C.PT_TLS)), default=0)


def _static_tls(old: ElfFile, new: ElfFile) -> List[Change]:
    if not new.dynamic.flags & C.DF_STATIC_TLS:
        return []  # a TLS block reached through __tls_get_addr may grow: it is allocated per thread on demand
    a, b = static_tls_block(old), static_tls_block(new)
    x, y = static_tls_align(old), static_tls_align(new)
    if b <= a and y <= x:
        return []
    what = []
    if b > a:
        what.append(f"grows from {a} to {b} bytes")
    if y > x:
        what.append(f"is aligned to {y} bytes instead of {x}")
    return [Change("static-tls-grown", REVIEW, None, None,
                   f"NEW's static TLS block {' and '.join(what)}: dlopen of NEW, or of a plugin that needs it, "
                   "takes the block from the small static TLS surplus (aligned to 64 bytes) and may fail with "
                   "'cannot allocate memory in static TLS block'", f"{a} bytes, align {x}", f"{b} bytes, align {y}")]


def _type_change(old: ElfFile, new: ElfFile) -> List[Change]:
    old_role, new_role = role_of(old), role_of(new)
    if new.type not in C.LOADABLE_TYPES:
        return [Change("elf-type-changed", BREAKING, None, None,
                       f"e_type {old.type_name} -> {new.type_name}: 'only ET_DYN and ET_EXEC can be loaded'",
                       old.type_name, new.type_name)]
    if old_role == ROLE_LIBRARY and new_role == ROLE_EXECUTABLE:
        msg = ("cannot dynamically load executable" if new.type == C.ET_EXEC
               else "cannot dynamically load position-independent executable")
        return [Change("elf-type-changed", BREAKING, None, None,
                       f"NEW is an executable, not a shared library: '{msg}'", old_role, new_role)]
    if old_role == ROLE_EXECUTABLE and new_role == ROLE_LIBRARY and (new.interpreter is None
                                                                   or not new.header.entry):
        # the kernel maps a file with no PT_INTERP as if statically linked and jumps to e_entry: nothing
        # relocates it, and an entry of 0 is no code at all
        return [Change("elf-type-changed", BREAKING, None, None,
                       "NEW is a shared library, not a program: no program interpreter or entry point "
                       "(running it crashes)", old_role, new_role)]
    if old.type != new.type or old_role != new_role:
        return [Change("elf-type-changed", REVIEW if old_role != new_role else HARMLESS, None, None,
                       f"e_type {old.type_name} -> {new.type_name}" if old.type != new.type
                       else f"{old_role} -> {new_role}", old.type_name, new.type_name)]
    return []


def diff_dynamic(old: ElfFile, new: ElfFile) -> List[Change]:
    """SONAME, DT_NEEDED, DT_FILTER/DT_AUXILIARY, DT_RPATH/DT_RUNPATH, PT_INTERP, version needs."""
    out: List[Change] = []
    d_old, d_new = old.dynamic, new.dynamic
    if d_old.soname != d_new.soname:
        if d_old.soname is None:
            sev, why = REVIEW, "NEW declares a SONAME; ldconfig will create a link by that name"
        else:
            sev, why = BREAKING, ("programs need the file by its old SONAME: ldconfig points that name back to "
                                  "another file or removes it (a new major version installs side by side)")
        out.append(Change("soname-changed", sev, None, None,
                          f"SONAME {d_old.soname or '(none)'} -> {d_new.soname or '(none)'}: {why}",
                          d_old.soname, d_new.soname))
    old_needed, new_needed = set(d_old.needed), set(d_new.needed)
    for lib in d_new.needed:
        if lib not in old_needed:
            out.append(Change("needed-added", REVIEW, None, None, f"NEW needs {lib}", None, lib))
    for lib in d_old.needed:
        if lib not in new_needed:
            out.append(Change("needed-removed", REVIEW, None, None, f"NEW no longer needs {lib}", lib, None))
    for kind_added, kind_removed, a, b in (("filter-added", "filter-removed", d_old.filters, d_new.filters),
                                           ("filter-added", "filter-removed", d_old.auxiliary, d_new.auxiliary)):
        for lib in b:
            if lib not in a:
                out.append(Change(kind_added, REVIEW, None, None,
                                  f"NEW filters {lib}: its symbols are looked up there first", None, lib))
        for lib in a:
            if lib not in b:
                out.append(Change(kind_removed, REVIEW, None, None, f"NEW no longer filters {lib}", lib, None))
    for tag, a, b in (("DT_RPATH", d_old.rpath, d_new.rpath), ("DT_RUNPATH", d_old.runpath, d_new.runpath)):
        if a != b:
            out.append(Change("search-path-changed", REVIEW, None, None,
                              f"{tag} {a or '(none)'} -> {b or '(none)'}: NEW's dependencies may be found "
                              "elsewhere, or not at all", a, b))
    if role_of(old) == ROLE_EXECUTABLE and old.interpreter != new.interpreter:
        out.append(Change("interpreter-changed", REVIEW, None, None,
                          f"PT_INTERP {old.interpreter or '(none)'} -> {new.interpreter or '(none)'}",
                          old.interpreter, new.interpreter))
    out.extend(_version_needs(old, new))
    return out


def _version_needs(old: ElfFile, new: ElfFile) -> List[Change]:
    had = {(n.file, e.name) for n in old.version_needs for e in n.entries}
    out: List[Change] = []
    for need in new.version_needs:
        for e in need.entries:
            if (need.file, e.name) in had:
                continue
            if e.weak:
                sev, why = HARMLESS, " (VER_FLG_WEAK: only a warning where it is missing)"
            else:
                sev, why = REVIEW, ""
            out.append(Change("version-need-added", sev, None, e.name, f"NEW needs {e.name} from {need.file}{why}",
                              None, f"{need.file}:{e.name}"))
    return out


class _FlagRule(NamedTuple):
    name: str
    added: str  # severity when NEW sets it
    why: str


# DT_FLAGS and DT_FLAGS_1 bits whose appearance matters to consumers (others are reported as harmless).
_FLAG_RULES: Dict[Tuple[int, int], _FlagRule] = {
    (C.DT_FLAGS, 0x2): _FlagRule("SYMBOLIC", REVIEW, "NEW binds its own symbols first: programs can no longer "
                                 "interpose them, and copy-relocated data diverges"),
    (C.DT_FLAGS, 0x4): _FlagRule("TEXTREL", REVIEW, "text relocations: refused under SELinux execmod policies"),
    (C.DT_FLAGS, 0x10): _FlagRule("STATIC_TLS", REVIEW, "needs static TLS: dlopen may fail with 'cannot allocate "
                                  "memory in static TLS block'"),
    (C.DT_FLAGS_1, C.DF_1_NODELETE): _FlagRule("NODELETE", REVIEW, "dlclose never unloads NEW: an in-process "
                                               "hot reload cannot replace it"),
    (C.DT_FLAGS_1, C.DF_1_NOOPEN): _FlagRule("NOOPEN", REVIEW, "dlopen refuses NEW ('shared object cannot be "
                                             "dlopen()ed'): plugins and dlopen users break"),
    (C.DT_FLAGS_1, 0x20): _FlagRule("INITFIRST", REVIEW, "NEW's initializer runs before every other object's"),
    (C.DT_FLAGS_1, 0x400): _FlagRule("INTERPOSE", REVIEW, "NEW's symbols interpose when it is preloaded"),
    (C.DT_FLAGS_1, C.DF_1_NODEFLIB): _FlagRule("NODEFLIB", REVIEW, "NEW's dependencies are no longer searched in "
                                               "the system directories"),
}


def _flag_words(elf: ElfFile) -> Dict[int, int]:
    d = elf.dynamic
    flags = d.flags
    # DT_SYMBOLIC and DT_TEXTREL tags mean the same as the DF_ bits (elf/get-dynamic-info.h)
    if C.DT_SYMBOLIC in d.tags:
        flags |= 0x2
    if C.DT_TEXTREL in d.tags:
        flags |= 0x4
    return {C.DT_FLAGS: flags & ~C.DF_BIND_NOW, C.DT_FLAGS_1: d.flags_1 & ~(C.DF_1_NOW | C.DF_1_PIE)}


def exec_stack(elf: ElfFile) -> bool:
    """Whether loading ``elf`` asks for an executable stack (PT_GNU_STACK with PF_X, or no PT_GNU_STACK on a
    machine whose default is executable: ``_dl_map_object_from_fd``, DEFAULT_STACK_PERMS)."""
    segs = elf.segments_of_type(C.PT_GNU_STACK)
    if segs:
        return bool(segs[0].flags & C.PF_X)
    return elf.machine not in _NOEXEC_DEFAULT_STACK


def _isa_names(bits: int) -> str:
    names = [name for bit, name in sorted(C.GNU_PROPERTY_X86_ISA_1_NAMES.items()) if bits & bit]
    return "+".join(names) if names else f"{bits:#x}"


def diff_loader_flags(old: ElfFile, new: ElfFile) -> List[Change]:
    """PT_GNU_STACK, DT_FLAGS/DT_FLAGS_1, BIND_NOW, and the x86 ISA level of GNU_PROPERTY_X86_ISA_1_NEEDED."""
    out: List[Change] = []
    if exec_stack(new) and not exec_stack(old) and new.is_dynamic:
        out.append(Change("exec-stack", REVIEW, None, None,
                          "NEW asks for an executable stack: glibc 2.36 makes every thread stack of the process "
                          "executable when it loads NEW; dlopen of NEW fails on glibc 2.41 and later",
                          "PT_GNU_STACK RW", "PT_GNU_STACK RWE"))
    old_words, new_words = _flag_words(old), _flag_words(new)
    for tag, names in ((C.DT_FLAGS, C.DF_FLAGS), (C.DT_FLAGS_1, C.DF_1_FLAGS)):
        a, b = old_words[tag], new_words[tag]
        for bit in _bits(a ^ b):
            name = names.get(bit, f"{bit:#x}")
            rule = _FLAG_RULES.get((tag, bit))
            if b & bit:
                sev = rule.added if rule else HARMLESS
                why = f": {rule.why}" if rule else ""
                out.append(Change("flag-added", sev, None, None, f"{_tag_name(tag)} {name} set{why}", None, name))
            else:
                out.append(Change("flag-removed", HARMLESS, None, None, f"{_tag_name(tag)} {name} cleared",
                                  name, None))
    if old.dynamic.bind_now != new.dynamic.bind_now:
        if new.dynamic.bind_now:
            out.append(Change("flag-added", HARMLESS, None, None,
                              "BIND_NOW: NEW's own references are all bound at startup, a missing one fails "
                              "there instead of at its first call", None, "BIND_NOW"))
        else:
            out.append(Change("flag-removed", HARMLESS, None, None, "BIND_NOW cleared", "BIND_NOW", None))
    out.extend(_isa_level(old, new))
    out.extend(_static_tls(old, new))
    bad = unexpected_plt_type(new)
    if bad is not None and unexpected_plt_type(old) is None:
        out.append(Change("plt-reloc-refused", BREAKING, None, None,
                          f"NEW's DT_JMPREL holds a relocation of type {bad:#04x}, which ld.so does not bind lazily: "
                          f"'unexpected PLT reloc type {bad:#04x}' at startup, unless everything is bound now "
                          "(LD_BIND_NOW, -z now)", None, f"type {bad:#04x}"))
    out.extend(_references_undecodable(old, new))
    return out


def _references_undecodable(old: ElfFile, new: ElfFile) -> List[Change]:
    """NEW's symbol or relocation tables cannot be decoded (a relocation names a symbol past the end of the
    symbol table): no consumer's binding of NEW can be checked, and ld.so reads whatever lies there."""
    problem = reference_problem(new)
    if problem is None:
        return []
    before = reference_problem(old)
    if before is not None:
        return [Change("references-undecodable", REVIEW, None, None,
                       f"NEW's references cannot be checked ({problem}); neither could OLD's ({before})",
                       before, problem)]
    return [Change("references-undecodable", BREAKING, None, None,
                   f"NEW's references cannot be checked: {problem}; ld.so binds what it finds at that place "
                   "(a wrong symbol, a crash while relocating)", None, problem)]


def _isa_level(old: ElfFile, new: ElfFile) -> List[Change]:
    a: Optional[int] = old.notes.x86_isa_needed
    b: Optional[int] = new.notes.x86_isa_needed
    if (b or 0) == (a or 0):
        return []
    # ISA_1_NEEDED bits name levels (baseline, v2, v3, v4): the highest one is what the CPU must have
    if (b or 0).bit_length() > (a or 0).bit_length():
        return [Change("isa-level-raised", REVIEW, None, None,
                       f"NEW needs x86 ISA {_isa_names(b or 0)} (OLD: {_isa_names(a) if a else 'none'}): on an older "
                       "CPU ld.so refuses it ('CPU ISA level is lower than required')",
                       _isa_names(a) if a else None, _isa_names(b or 0))]
    return [Change("isa-level-lowered", HARMLESS, None, None,
                   f"NEW needs x86 ISA {_isa_names(b) if b else 'none'} (OLD: {_isa_names(a or 0)})",
                   _isa_names(a or 0), _isa_names(b) if b else None)]


def _bits(value: int) -> List[int]:
    out = []
    bit = 1
    while bit <= value:
        if value & bit:
            out.append(bit)
        bit <<= 1
    return out


def _tag_name(tag: int) -> str:
    return "DT_FLAGS" if tag == C.DT_FLAGS else "DT_FLAGS_1"
