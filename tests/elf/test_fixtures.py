"""The ELF reader on gcc-built fixtures, checked against pyelftools and readelf."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from elf.oracle import read_with_pyelftools, read_with_soswap
from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.elf.relocs import BIT_COPY, BIT_DATA, BIT_PLT, BIT_TLS
from support.build import (
    ASM_LIB,
    big_endian_ppc_lib,
    cross_tool,
    executable,
    have_m32,
    requires_cc,
    rpath_flags,
    run_cc,
    shared_lib,
    write,
)

pytestmark = requires_cc

VERSIONED_LIB = r"""
int foo_v1(void) { return 1; }
int foo_v2(void) { return 2; }
int bar(void) { return 3; }
__asm__(".symver foo_v1,foo@VER_1");
__asm__(".symver foo_v2,foo@@VER_2");
"""
VERSION_SCRIPT = "VER_1 { global: foo; local: *; };\nVER_2 { global: bar; } VER_1;\n"


def same_as_oracle(path: Path) -> None:
    assert read_with_soswap(str(path)) == read_with_pyelftools(str(path))


@pytest.fixture
def versioned(tmp_path: Path) -> Path:
    return shared_lib(tmp_path / "libv.so.1", VERSIONED_LIB, soname="libv.so.1", version_script=VERSION_SCRIPT)


def test_version_definitions_and_compat_symbols(versioned: Path) -> None:
    elf = ElfFile.open(versioned)
    defs = {d.name: d for d in elf.version_definitions}
    assert defs["libv.so.1"].is_base
    assert defs["VER_2"].parents == ("VER_1",)
    foo = sorted((s for s in elf.symbols if s.name == "foo"), key=lambda s: s.version or "")
    assert [(s.version, s.default, s.hidden) for s in foo] == [("VER_1", False, True), ("VER_2", True, False)]
    assert [s.versioned_name for s in foo] == ["foo@VER_1", "foo@@VER_2"]
    bar = next(s for s in elf.symbols if s.name == "bar")
    assert bar.version == "VER_2" and bar.default
    # the hash-table lookup sees both versions of foo
    assert sorted(s.versioned_name for s in elf.find_symbols("foo")) == ["foo@@VER_2", "foo@VER_1"]
    same_as_oracle(versioned)


def test_version_needs_of_a_consumer(tmp_path: Path, versioned: Path) -> None:
    app = executable(tmp_path / "app", "int foo(void); int bar(void); int main(void){return foo()+bar();}",
                     libs=[str(versioned)])
    elf = ElfFile.open(app)
    need = next(n for n in elf.version_needs if n.file == "libv.so.1")
    assert {e.name for e in need.entries} == {"VER_2"}
    refs = {s.name: s for s in elf.symbols if not s.defined and s.name}
    assert refs["foo"].version == "VER_2" and refs["foo"].version_file == "libv.so.1"
    assert not refs["foo"].default
    same_as_oracle(app)


@pytest.mark.parametrize("old_dtags", [True, False])
def test_rpath_and_runpath(tmp_path: Path, old_dtags: bool) -> None:
    lib = shared_lib(tmp_path / "libx.so", "int x(void){return 1;}")
    app = executable(tmp_path / "app", "int x(void); int main(void){return x();}",
                     libs=[str(lib)], flags=rpath_flags("$ORIGIN/../lib", "", "/opt/a", old_dtags=old_dtags))
    elf = ElfFile.open(app)
    raw = "$ORIGIN/../lib::/opt/a"
    if old_dtags:
        assert (elf.rpath, elf.runpath) == (raw, None)
        assert elf.dynamic.rpath_list == ("$ORIGIN/../lib", "", "/opt/a")
    else:
        assert (elf.rpath, elf.runpath) == (None, raw)
        assert elf.dynamic.runpath_list == ("$ORIGIN/../lib", "", "/opt/a")
    same_as_oracle(app)


def test_flags_now_and_nodefaultlib(tmp_path: Path) -> None:
    lib = shared_lib(tmp_path / "libn.so", "int n(void){return 1;}", flags=["-Wl,-z,now", "-Wl,-z,nodefaultlib",
                                                                           "-Wl,-z,nodelete"])
    dyn = ElfFile.open(lib).dynamic
    assert dyn.bind_now and dyn.nodeflib
    assert {"BIND_NOW", "NOW", "NODEFLIB", "NODELETE"} <= set(dyn.flag_names)
    lazy = ElfFile.open(shared_lib(tmp_path / "libl.so", "int l(void){return 1;}", flags=["-Wl,-z,lazy"])).dynamic
    assert not lazy.bind_now and not lazy.nodeflib


def test_relocation_classes_plt_data_copy_tls(tmp_path: Path) -> None:
    lib = shared_lib(tmp_path / "libr.so", r"""
        int table[4] = {1, 2, 3, 4};
        __thread int tv = 5;
        int called(void) { return 1; }
        int addressed(void) { return 2; }
    """)
    app = executable(tmp_path / "app", r"""
        extern int table[4];
        extern __thread int tv;
        int called(void); int addressed(void);
        int (*volatile fp)(void) = addressed;
        int main(void) { return called() + fp() + table[1] + tv; }
    """, libs=[str(lib)])
    elf = ElfFile.open(app)
    kinds = elf.symbol_reference_kinds()
    by_name = {s.name: s.index for s in elf.symbols}
    assert kinds[by_name["called"]] & BIT_PLT
    assert kinds[by_name["addressed"]] & BIT_DATA
    assert kinds[by_name["table"]] & BIT_COPY
    assert kinds[by_name["tv"]] & BIT_TLS
    relocs = {(r.symbol_index, r.kind) for r in elf.relocations}
    assert (by_name["table"], "copy") in relocs and (by_name["called"], "plt") in relocs
    # the copy relocation really is R_X86_64_COPY (5) as readelf says
    out = subprocess.run(["readelf", "-rW", str(app)], capture_output=True, text=True, check=True).stdout
    assert "R_X86_64_COPY" in out and "table" in out
    lib_elf = ElfFile.open(lib)
    tv = next(s for s in lib_elf.symbols if s.name == "tv")
    assert tv.type_name == "TLS" and tv.defined
    same_as_oracle(app)
    same_as_oracle(lib)


def test_fno_plt_call_is_a_startup_reference(tmp_path: Path) -> None:
    lib = shared_lib(tmp_path / "libf.so", "int f(void){return 1;}")
    app = executable(tmp_path / "app", "int f(void); int main(void){return f();}", libs=[str(lib)],
                     flags=["-fno-plt"])
    elf = ElfFile.open(app)
    idx = next(s.index for s in elf.symbols if s.name == "f")
    assert elf.symbol_reference_kinds()[idx] == BIT_DATA


def test_ifunc_protected_weak_and_unique(tmp_path: Path) -> None:
    lib = shared_lib(tmp_path / "libk.so", r"""
        static int impl(void) { return 1; }
        static void *resolve(void) { return (void *)impl; }
        int chosen(void) __attribute__((ifunc("resolve")));
        __attribute__((visibility("protected"))) int prot = 1;
        __attribute__((weak)) int soft(void) { return 2; }
        extern int maybe(void) __attribute__((weak));
        int use(void) { return maybe ? maybe() : 0; }
        __asm__(".type uniq, @gnu_unique_object\n.globl uniq\n.data\nuniq: .long 7\n.size uniq, 4\n");
    """)
    elf = ElfFile.open(lib)
    syms = {s.name: s for s in elf.symbols}
    assert syms["chosen"].type_name == "IFUNC"
    assert syms["prot"].visibility_name == "PROTECTED"
    assert syms["soft"].bind_name == "WEAK" and syms["soft"].defined
    assert syms["maybe"].bind_name == "WEAK" and not syms["maybe"].defined
    assert syms["uniq"].bind_name == "UNIQUE"
    same_as_oracle(lib)


def test_build_id_matches_readelf(tmp_path: Path) -> None:
    lib = shared_lib(tmp_path / "libb.so", "int b(void){return 1;}", flags=["-Wl,--build-id=sha1"])
    out = subprocess.run(["readelf", "-n", str(lib)], capture_output=True, text=True, check=True).stdout
    expected = next(line.split()[-1] for line in out.splitlines() if "Build ID" in line)
    assert ElfFile.open(lib).build_id == expected
    none = shared_lib(tmp_path / "libnb.so", "int b(void){return 1;}", flags=["-Wl,--build-id=none"])
    assert ElfFile.open(none).build_id is None


def test_filter_and_auxiliary(tmp_path: Path) -> None:
    lib = shared_lib(tmp_path / "libflt.so", "int z(void){return 1;}",
                     flags=["-Wl,--filter=libfilteree.so.1", "-Wl,--auxiliary=libaux.so.2"])
    dyn = ElfFile.open(lib).dynamic
    assert dyn.filters == ("libfilteree.so.1",) and dyn.auxiliary == ("libaux.so.2",)


def test_relr_is_counted(tmp_path: Path) -> None:
    lib = shared_lib(tmp_path / "librelr.so", "static int a, b; int *p[] = {&a, &b, &a, &b};",
                     flags=["-Wl,-z,pack-relative-relocs"])
    elf = ElfFile.open(lib)
    if C.DT_RELR not in elf.dynamic.tags:
        pytest.skip("the linker does not emit DT_RELR")
    assert elf.relr_count > 0
    same_as_oracle(lib)


def test_stripped_section_headers_change_nothing(tmp_path: Path, versioned: Path) -> None:
    """Everything comes from the program headers: zero e_shoff/e_shnum and decode again."""
    data = bytearray(versioned.read_bytes())
    struct.pack_into("<Q", data, 0x28, 0)  # e_shoff
    struct.pack_into("<HH", data, 0x3C, 0, 0)  # e_shnum, e_shstrndx
    stripped = tmp_path / "stripped.so"
    stripped.write_bytes(bytes(data))
    a, b = ElfFile.open(versioned), ElfFile.open(stripped)
    assert a.symbols == b.symbols and a.needed == b.needed and a.version_definitions == b.version_definitions


def test_static_executable(tmp_path: Path) -> None:
    exe = executable(tmp_path / "static", "int main(void){return 0;}", flags=["-static"])
    elf = ElfFile.open(exe)
    assert not elf.is_dynamic and elf.needed == () and elf.symbols == () and elf.interpreter is None


@pytest.mark.skipif(not have_m32(), reason="gcc -m32 cannot link (gcc-multilib missing)")
def test_32bit_library_and_program(tmp_path: Path) -> None:
    lib = shared_lib(tmp_path / "lib32.so.1", VERSIONED_LIB, soname="lib32.so.1", version_script=VERSION_SCRIPT,
                     m32=True)
    app = executable(tmp_path / "app32", "int foo(void); extern int bar(void); int main(void){return foo()+bar();}",
                     libs=[str(lib)], m32=True)
    for path in (lib, app):
        elf = ElfFile.open(path)
        assert elf.elf_class == 32 and elf.machine_name == "i386" and elf.little_endian
        same_as_oracle(path)
    app_elf = ElfFile.open(app)
    assert app_elf.interpreter == "/lib/ld-linux.so.2"
    foo = next(s for s in app_elf.symbols if s.name == "foo")
    assert app_elf.symbol_reference_kinds()[foo.index] & BIT_PLT
    assert {r.type for r in app_elf.relocations if r.symbol_index == foo.index} == {7}  # R_386_JUMP_SLOT


def test_big_endian_powerpc(tmp_path: Path) -> None:
    lib = big_endian_ppc_lib(tmp_path, ["-z", "now", "--enable-new-dtags", "-rpath", "/opt/be"])
    elf = ElfFile.open(lib)
    assert not elf.little_endian and elf.elf_class == 32 and elf.machine_name == "ppc"
    assert elf.soname == "libbe.so.1" and elf.runpath == "/opt/be" and elf.dynamic.bind_now
    syms = {s.name: s for s in elf.symbols}
    assert syms["counter"].size == 4 and syms["counter"].version == "BE_1.0" and syms["counter"].default
    assert not syms["helper"].defined
    assert elf.symbol_reference_kinds()[syms["helper"].index] & BIT_PLT
    same_as_oracle(lib)


def test_aarch64_relocations(tmp_path: Path) -> None:
    asm, ld = cross_tool("aarch64-linux-gnu-as"), cross_tool("aarch64-linux-gnu-ld")
    src = write(tmp_path / "a64.s", ASM_LIB.format(body="bl helper\n    adrp x0, :got:other\n    ret"))
    subprocess.run([asm, "-o", str(tmp_path / "a64.o"), str(src)], check=True)
    lib = tmp_path / "liba64.so"
    subprocess.run([ld, "-shared", "-o", str(lib), str(tmp_path / "a64.o"), "--unresolved-symbols=ignore-all"],
                   check=True)
    elf = ElfFile.open(lib)
    assert elf.machine_name == "aarch64" and elf.elf_class == 64
    syms = {s.name: s.index for s in elf.symbols}
    kinds = elf.symbol_reference_kinds()
    assert kinds[syms["helper"]] == BIT_PLT  # R_AARCH64_JUMP_SLOT
    assert kinds[syms["other"]] == BIT_DATA  # R_AARCH64_GLOB_DAT
    assert {r.type for r in elf.relocations if r.symbol_index == syms["helper"]} == {1026}
    same_as_oracle(lib)


def test_run_cc_is_real(tmp_path: Path) -> None:
    """The fixtures above are real programs: the versioned consumer runs and binds to foo@@VER_2."""
    lib = shared_lib(tmp_path / "libv.so.1", VERSIONED_LIB, soname="libv.so.1", version_script=VERSION_SCRIPT)
    app = executable(tmp_path / "app", "int foo(void); int main(void){return foo();}", libs=[str(lib)],
                     flags=rpath_flags(str(tmp_path)))
    assert subprocess.run([str(app)]).returncode == 2
    run_cc(["--version"])
