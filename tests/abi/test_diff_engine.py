"""The diff rules beyond T1–T34: header fields, loader flags, symbol fields patched in place, and the
``check_match`` binding rule. Where a rule predicts a loader failure, the app is run against the variant to
show that glibc fails exactly so."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional, Set, Tuple

import pytest

from soswap.abi import diff_files
from soswap.abi.exports import bind_reference
from soswap.elf import ElfFile, Symbol
from soswap.elf import constants as C

from .cases import APP_FOO_BAR, FOO_BAR, _Builder, describe

B, R, H = "breaking", "review", "harmless"
Row = Tuple[str, Optional[str], Optional[str], str]
OUT = "start\nbar=7\nfoo=42\n"


def _symbol_offset(path: Path, name: str) -> int:
    """File offset of the Elf64_Sym of ``name`` in .dynsym."""
    elf = ElfFile.open(path)
    sym = next(s for s in elf.symbols if s.name == name)
    return elf.vaddr_to_offset(elf.dynamic.tags[C.DT_SYMTAB], 24, "DT_SYMTAB") + sym.index * 24


class Variant(NamedTuple):
    make: Callable[[_Builder, Path, Path], Path]  # (builder, v1 library, output path) -> NEW
    rows: Set[Row]
    #: the app's run against NEW: (returncode, exact stdout, stderr substring); None: not run
    run: Optional[Tuple[int, str, str]]


def _patched(offset: int, data: bytes) -> Callable[[_Builder, Path, Path], Path]:
    return lambda b, old, out: b.patch(old, out, offset, data)


def _sym_patched(name: str, field: int, value: int) -> Callable[[_Builder, Path, Path], Path]:
    return lambda b, old, out: b.patch(old, out, _symbol_offset(old, name) + field, bytes([value]))


def _built(source: str = FOO_BAR, **kw: object) -> Callable[[_Builder, Path, Path], Path]:
    return lambda b, old, out: b.lib(out, source, **kw)  # type: ignore[arg-type]


def _misaligned(b: _Builder, old: Path, out: Path) -> Path:
    elf = ElfFile.open(old)
    second = [i for i, seg in enumerate(elf.segments) if seg.type == C.PT_LOAD][1]
    at = elf.header.phoff + second * 56 + 8  # Elf64_Phdr.p_offset
    return b.patch(old, out, at, (elf.segments[second].offset + 8).to_bytes(8, "little"))


def _err(msg: str) -> Tuple[int, str, str]:
    return (127, "", msg)


VARIANTS: Dict[str, Variant] = {
    # ld.so's header checks (open_verify, VALID_ELF_ABIVERSION with LIBC_ABI_MAX = 4 on glibc 2.36)
    "gnu-abiversion-3": Variant(_patched(7, bytes([3, 3])), {("osabi-changed", None, None, H)}, (0, OUT, "")),
    "gnu-abiversion-4": Variant(_patched(7, bytes([3, 4])), {("osabi-changed", None, None, B)},
                                _err("ELF file ABI version invalid")),
    "sysv-abiversion-1": Variant(_patched(8, bytes([1])), {("abiversion-changed", None, None, B)},
                                 _err("ELF file ABI version invalid")),
    "ei-version-2": Variant(_patched(6, bytes([2])), {("header-invalid", None, None, B)},
                            _err("ELF file version ident does not match current one")),
    "ident-padding": Variant(_patched(12, bytes([1])), {("header-invalid", None, None, B)},
                             _err("nonzero padding in e_ident")),
    # a program where a library was
    "pie-executable": Variant(_built(FOO_BAR + "int main(void) { return 0; }\n", flags=["-pie", "-rdynamic"]),
                              {("elf-type-changed", None, None, B)},
                              _err("libfoo.so.1: cannot dynamically load position-independent executable")),
    "fixed-executable": Variant(_built(FOO_BAR + "int main(void) { return 0; }\n",
                                       flags=["-no-pie", "-fno-pic", "-rdynamic"]),
                                {("elf-type-changed", None, None, B)},
                                _err("libfoo.so.1: cannot dynamically load executable")),
    # segments the loader cannot map (strip over a patchelf-ed file): the second PT_LOAD's offset moved 8 bytes
    "load-misaligned": Variant(lambda b, old, out: _misaligned(b, old, out), {("segments-unmappable", None, None, B)},
                               _err("libfoo.so.1: ELF load command address/offset not page-aligned")),
    # still in .dynsym, but the loader skips it
    "foo-local": Variant(_sym_patched("foo", 4, (C.STB_LOCAL << 4) | C.STT_FUNC),
                         {("symbol-unexported", "foo", None, B)},
                         (127, "start\nbar=7\n", "undefined symbol: foo")),
    "foo-hidden": Variant(_sym_patched("foo", 5, C.STV_HIDDEN), {("symbol-unexported", "foo", None, B)},
                          (127, "start\nbar=7\n", "undefined symbol: foo")),
    "foo-unique": Variant(_sym_patched("foo", 4, (C.STB_GNU_UNIQUE << 4) | C.STT_FUNC),
                          {("binding-changed", "foo", None, R)}, None),
    "foo-notype": Variant(_built("__asm__(\".text\\n.globl foo\\nfoo: movl $42, %eax\\nret\");\n"
                                 "int bar(void) { return 7; }\n"),
                          {("type-changed", "foo", None, R)}, (0, OUT, "")),
    # loader flags
    "execstack": Variant(_built(flags=["-Wl,-z,execstack"]), {("exec-stack", None, None, R)}, (0, OUT, "")),
    "nodlopen": Variant(_built(flags=["-Wl,-z,nodlopen"]), {("flag-added", None, None, R)}, (0, OUT, "")),
    "nodelete": Variant(_built(flags=["-Wl,-z,nodelete"]), {("flag-added", None, None, R)}, None),
    "initfirst": Variant(_built(flags=["-Wl,-z,initfirst"]), {("flag-added", None, None, R)}, None),
    "interpose": Variant(_built(flags=["-Wl,-z,interpose"]), {("flag-added", None, None, R)}, None),
    "nodefaultlib": Variant(_built(flags=["-Wl,-z,nodefaultlib"]), {("flag-added", None, None, R)}, None),
    "symbolic": Variant(_built(flags=["-Wl,-Bsymbolic"]), {("flag-added", None, None, R)}, None),
    "bind-now": Variant(_built(flags=["-Wl,-z,now"]), {("flag-added", None, None, H)}, (0, OUT, "")),
    "isa-v3": Variant(_built(flags=["-Wl,-z,x86-64-v3"]), {("isa-level-raised", None, None, R)}, None),
    "static-tls": Variant(_built(FOO_BAR + "__thread int t;\nint get_t(void) { return t; }\n",
                                 flags=["-ftls-model=initial-exec"]),
                          {("flag-added", None, None, R), ("static-tls-grown", None, None, R),
                           ("symbol-added", "get_t", None, H), ("symbol-added", "t", None, H)}, None),
    # the dynamic section
    "filter": Variant(_built(flags=["-Wl,--filter=libm.so.6"]), {("filter-added", None, None, R)}, None),
    "auxiliary": Variant(_built(flags=["-Wl,-f,libm.so.6"]), {("filter-added", None, None, R)}, None),
    "runpath": Variant(_built(flags=["-Wl,-rpath,/opt/nowhere"]), {("search-path-changed", None, None, R)},
                       (0, OUT, "")),
    "no-soname": Variant(_built(soname=None), {("soname-changed", None, None, B)}, None),
}


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Tuple[_Builder, Path, Path, Dict[str, Path]]:
    b = _Builder(tmp_path_factory.mktemp("abi-variants"))
    old = b.lib(b.v1 / "libfoo.so.1", FOO_BAR)
    app = b.exe(APP_FOO_BAR, link=[str(old)])
    built = {name: v.make(b, old, b.root / name / "libfoo.so.1") for name, v in VARIANTS.items()}
    return b, old, app, built


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_diff(variants: Tuple[_Builder, Path, Path, Dict[str, Path]], name: str) -> None:
    _b, old, _app, built = variants
    rows = {(c.kind, c.symbol, c.version, c.severity) for c in diff_files(str(old), str(built[name])).changes}
    assert rows == VARIANTS[name].rows


@pytest.mark.parametrize("name", sorted(n for n, v in VARIANTS.items() if v.run is not None))
def test_variant_runtime_matches_the_rule(variants: Tuple[_Builder, Path, Path, Dict[str, Path]], name: str) -> None:
    _b, _old, app, built = variants
    rc, stdout, stderr = VARIANTS[name].run  # type: ignore[misc]
    r = subprocess.run([str(app)], env={"LD_LIBRARY_PATH": str(built[name].parent), "LC_ALL": "C"},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == rc and r.stdout == stdout and stderr in r.stderr, describe(r)


def test_nodlopen_refuses_dlopen_only(variants: Tuple[_Builder, Path, Path, Dict[str, Path]]) -> None:
    """DF_1_NOOPEN: the app that needs it runs (above), dlopen refuses it."""
    b, _old, _app, built = variants
    prog = b.exe('#include <dlfcn.h>\n#include <stdio.h>\nint main(int c, char **v) { (void)c;\n'
                 '  if (!dlopen(v[1], RTLD_NOW)) { puts(dlerror()); return 1; } return 0; }\n', name="dl")
    for name, rc in (("nodlopen", 1), ("bind-now", 0)):
        r = subprocess.run([str(prog), str(built[name])], capture_output=True, text=True, timeout=30)
        assert r.returncode == rc, describe(r)
    r = subprocess.run([str(prog), str(built["nodlopen"])], capture_output=True, text=True, timeout=30)
    assert "shared object cannot be dlopen()ed" in r.stdout


def test_details_name_the_flag(variants: Tuple[_Builder, Path, Path, Dict[str, Path]]) -> None:
    _b, old, _app, built = variants
    (c,) = diff_files(str(old), str(built["nodlopen"])).changes
    assert c.new_value == "NOOPEN" and "dlopen" in c.detail
    (c,) = diff_files(str(old), str(built["isa-v3"])).changes
    assert c.new_value == "x86-64-v3"
    (c,) = diff_files(str(built["bind-now"]), str(old)).changes
    assert (c.kind, c.old_value, c.severity) == ("flag-removed", "BIND_NOW", H)


def test_executables_compare_interpreters(tmp_path: Path) -> None:
    b = _Builder(tmp_path)
    a = b.exe("int main(void) { return 0; }\n", name="a")
    c = b.exe("int main(void) { return 0; }\n", name="c", flags=["-Wl,--dynamic-linker=/lib/ld-other.so.2"])
    rows = {(ch.kind, ch.severity, ch.new_value) for ch in diff_files(str(a), str(c)).changes}
    assert rows == {("interpreter-changed", R, "/lib/ld-other.so.2")}
    fixed = b.exe("int main(void) { return 0; }\n", name="fixed", flags=["-no-pie"])
    rows = {(ch.kind, ch.severity) for ch in diff_files(str(a), str(fixed)).changes}
    assert rows == {("elf-type-changed", H)}  # an executable stays an executable


def test_tls_size_is_review(tmp_path: Path) -> None:
    b = _Builder(tmp_path)
    old = b.lib(b.v1 / "libfoo.so.1", "__thread int tv[2];\n")
    new = b.lib(b.v2 / "libfoo.so.1", "__thread int tv[4];\n")
    (c,) = diff_files(str(old), str(new)).changes
    assert (c.kind, c.symbol, c.severity, c.old_value, c.new_value) == ("size-changed", "tv", R, "8", "16")


def test_unversioned_fallback_in_a_versioned_library(tmp_path: Path) -> None:
    """foo@VERS_1 -> foo at the base version of a still-versioned NEW: check_match accepts the unversioned
    definition for the versioned reference, so it is a review item, not a break; the app really runs."""
    b = _Builder(tmp_path)
    old = b.lib(b.v1 / "libfoo.so.1", FOO_BAR, vmap="VERS_1 { global: foo; bar; local: *; };\n")
    new = b.lib(b.v2 / "libfoo.so.1", FOO_BAR, vmap="VERS_1 { global: bar; };\n")
    app = b.exe(APP_FOO_BAR, link=[str(old)])
    rows = {(c.kind, c.symbol, c.version, c.severity, c.new_value) for c in diff_files(str(old), str(new)).changes}
    assert ("symbol-moved", "foo", "VERS_1", R, "foo") in rows
    assert not [r for r in rows if r[3] == B]
    r = subprocess.run([str(app)], env={"LD_LIBRARY_PATH": str(new.parent)}, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and r.stdout == OUT, describe(r)


# -- the binding rule, on symbol values ----------------------------------------------------------------------


def _sym(name: str, version: Optional[str], index: int, hidden: bool = False) -> Symbol:
    default = version is not None and not hidden
    return Symbol(index + 10, name, 0x1000, 6, C.STT_FUNC, C.STB_GLOBAL, C.STV_DEFAULT, 11, version,
                  index if version is not None else 1, hidden, default, None)


def test_bind_versioned_reference() -> None:
    ref = _sym("foo", "V1", 2)
    compat, default = _sym("foo", "V1", 2, hidden=True), _sym("foo", "V2", 3)
    assert bind_reference(ref, True, [default, compat], True) is compat  # the hidden compat symbol matches
    assert bind_reference(ref, True, [default], True) is None
    plain = _sym("foo", None, 1)
    assert bind_reference(ref, True, [default, plain], True) is plain  # unversioned fallback
    assert bind_reference(ref, True, [default], False) is default  # NEW without DT_VERSYM: anything goes


def test_bind_unversioned_reference() -> None:
    ref = _sym("foo", None, 1)
    oldest, newest = _sym("foo", "V1", 2, hidden=True), _sym("foo", "V2", 3)
    assert bind_reference(ref, False, [newest, oldest], True) is oldest  # index 2 wins, hidden or not
    assert bind_reference(ref, False, [newest], True) is newest  # the only non-hidden later version
    assert bind_reference(ref, False, [_sym("foo", "V2", 3, hidden=True)], True) is None
    assert bind_reference(ref, False, [newest, _sym("foo", "V3", 4)], True) is None  # ambiguous
