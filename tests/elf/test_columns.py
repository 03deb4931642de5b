"""The columnar view of the dynamic symbol table (``ElfFile.symbol_columns``) against the Symbol view.

Every column must equal the matching :class:`Symbol` field, value and type, for both ways of decoding the names
(by pointer for big tables, by a split of DT_STRTAB for small ones): both are forced on every file here.
"""

from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path
from typing import Iterator, Union

import pytest

from soswap.elf import ElfFile, SymbolColumns
from soswap.elf import constants as C
from soswap.elf import symbols as symbols_module
from soswap.errors import ElfError
from support.build import big_endian_ppc_lib, executable, have_cc, have_m32, shared_lib

LIBDIR = "/usr/lib/x86_64-linux-gnu"
SYSTEM_LIBS = [p for p in (f"{LIBDIR}/libc.so.6", f"{LIBDIR}/libstdc++.so.6", f"{LIBDIR}/libLLVM-15.so.1")
               if os.path.exists(p)]

#: Column name -> Symbol field name.
FIELDS = {"names": "name", "values": "value", "sizes": "size", "types": "type", "binds": "bind",
          "visibility": "visibility", "shndx": "shndx", "versions": "version", "version_index": "version_index",
          "hidden": "hidden", "default": "default", "version_file": "version_file", "defined": "defined"}

VERSIONED_LIB = r"""
int foo_v1(void) { return 1; }
int foo_v2(void) { return 2; }
int bar(void) { return 3; }
int a_rather_long_function_name(void) { return 4; }
extern int ext(void);
int call(void) { return ext(); }
__asm__(".symver foo_v1,foo@VER_1");
__asm__(".symver foo_v2,foo@@VER_2");
"""
VERSION_SCRIPT = "VER_1 { global: foo; local: *; };\nVER_2 { global: bar; a_rather_long_function_name; call; } VER_1;\n"


@pytest.fixture(params=["pointer", "index"])
def names_by(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Force one way of decoding the names."""
    monkeypatch.setattr(symbols_module, "POINTER_NAMES_MIN", 1 if request.param == "pointer" else 1 << 62)
    yield request.param


def assert_columns_match_symbols(path: Union[Path, str]) -> SymbolColumns:
    """Decode ``path`` twice (columns first, then Symbols from a fresh file) and compare field by field."""
    cols = ElfFile.open(path).symbol_columns
    symbols = ElfFile.open(path).symbols
    assert cols.count == len(cols) == len(symbols)
    for column, field in FIELDS.items():
        values = list(getattr(cols, column))
        expected = [getattr(s, field) for s in symbols]
        assert values == expected, f"{path}: column {column}"
        assert [type(v) for v in values] == [type(v) for v in expected], f"{path}: types of column {column}"
    assert [s.index for s in symbols] == list(range(len(symbols)))
    assert [cols.row(i) for i in range(cols.count)] == list(symbols)
    return cols


@pytest.mark.skipif(not SYSTEM_LIBS, reason="no system libraries at the usual path")
@pytest.mark.parametrize("path", SYSTEM_LIBS, ids=[os.path.basename(p) for p in SYSTEM_LIBS])
def test_system_libraries(path: str, names_by: str) -> None:
    cols = assert_columns_match_symbols(path)
    assert any(cols.versions) and any(cols.defined) and not all(cols.defined)


def test_system_libraries_both_ways_agree() -> None:
    if not SYSTEM_LIBS:
        pytest.skip("no system libraries at the usual path")
    with ElfFile.open(SYSTEM_LIBS[0]) as elf:
        strtab = elf.dynamic.strtab.load()
        count = len(elf.symbol_columns)
        raw = elf.read_at_vaddr(elf.dynamic.tags[C.DT_SYMTAB], 24 * count, "DT_SYMTAB")
        offsets = array("I", raw)[0::6]
        by_pointer = symbols_module._names_by_pointer(strtab, offsets)
        assert by_pointer is not None
        assert list(by_pointer) == list(symbols_module._names_by_index(elf.path, strtab, offsets))
        assert list(by_pointer) == list(elf.symbol_columns.names)


requires_cc = pytest.mark.skipif(not have_cc(), reason="no C compiler")


@pytest.fixture(scope="module")
def versioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not have_cc():
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("columns")
    return shared_lib(d / "libv.so.1", VERSIONED_LIB, soname="libv.so.1", version_script=VERSION_SCRIPT,
                      flags=["-Wl,--unresolved-symbols=ignore-all"])


@requires_cc
def test_versioned_library_and_consumer(tmp_path: Path, versioned: Path, names_by: str) -> None:
    cols = assert_columns_match_symbols(versioned)
    foo = [i for i, n in enumerate(cols.names) if n == "foo"]
    assert sorted((cols.versions[i], cols.default[i], cols.hidden[i]) for i in foo) == [
        ("VER_1", False, True), ("VER_2", True, False)]
    app = executable(tmp_path / "app", "int foo(void); int bar(void); int main(void){return foo()+bar();}",
                     libs=[str(versioned)], flags=["-Wl,--allow-shlib-undefined"])
    cols = assert_columns_match_symbols(app)
    i = cols.names.index("bar")
    assert (cols.versions[i], cols.version_file[i], cols.defined[i]) == ("VER_2", "libv.so.1", False)


@requires_cc
def test_unversioned_library(tmp_path: Path, names_by: str) -> None:
    lib = shared_lib(tmp_path / "libu.so", "int u(void){return 1;} int w = 2;")
    cols = assert_columns_match_symbols(lib)
    assert set(cols.versions) == {None} and set(cols.version_index) == {0}


@requires_cc
def test_static_executable_has_empty_columns(tmp_path: Path) -> None:
    exe = executable(tmp_path / "static", "int main(void){return 0;}", flags=["-static"])
    cols = ElfFile.open(exe).symbol_columns
    assert cols.count == 0 and cols.rows("names", "versions") == [] and cols.symbols() == ()


@pytest.mark.skipif(not have_m32(), reason="gcc -m32 cannot link (gcc-multilib missing)")
def test_32bit(tmp_path: Path, names_by: str) -> None:
    lib = shared_lib(tmp_path / "lib32.so.1", VERSIONED_LIB, soname="lib32.so.1", version_script=VERSION_SCRIPT,
                     flags=["-Wl,--unresolved-symbols=ignore-all"], m32=True)
    assert ElfFile.open(lib).elf_class == 32
    cols = assert_columns_match_symbols(lib)
    assert "VER_2" in cols.versions


def test_big_endian_powerpc(tmp_path: Path, names_by: str) -> None:
    lib = big_endian_ppc_lib(tmp_path)
    assert not ElfFile.open(lib).little_endian
    cols = assert_columns_match_symbols(lib)
    i = cols.names.index("counter")
    assert (cols.sizes[i], cols.versions[i], cols.default[i], cols.types[i]) == (4, "BE_1.0", True, C.STT_OBJECT)


def test_rows() -> None:
    if not SYSTEM_LIBS:
        pytest.skip("no system libraries at the usual path")
    cols = ElfFile.open(SYSTEM_LIBS[0]).symbol_columns
    fields = ("names", "versions", "defined", "binds", "types", "sizes")
    columns = [getattr(cols, f) for f in fields]
    assert cols.rows(*fields) == list(zip(*columns))
    assert cols.rows(*fields, start=1) == list(zip(*columns))[1:]
    with pytest.raises(ValueError, match="unknown symbol columns"):
        cols.rows("names", "nope")
    with pytest.raises(ValueError):
        cols.rows()


def test_lookups_before_and_after_symbols_are_built() -> None:
    if not SYSTEM_LIBS:
        pytest.skip("no system libraries at the usual path")
    path = SYSTEM_LIBS[0]
    names = ["malloc", "memcpy", "printf", "no_such_symbol", "environ"]
    fresh = ElfFile.open(path)
    fresh.symbol_table  # decoded, Symbols not built yet
    before = {n: fresh.find_symbols(n) for n in names}
    assert fresh.symbol_table._symbols is None
    built = ElfFile.open(path)
    built.symbols
    assert before == {n: built.find_symbols(n) for n in names}
    assert before == {n: ElfFile.open(path).find_symbols(n) for n in names}  # the hash-table path
    assert before["malloc"] and not before["no_such_symbol"]


# -- names: tail merging, non-UTF-8 bytes, bad offsets (patched into a gcc-built library) -------------------


def _tables(data: bytes) -> tuple:
    elf = ElfFile.from_bytes(data)
    tags = elf.dynamic.tags
    count = len(elf.symbol_columns)
    symtab = elf.vaddr_to_offset(tags[C.DT_SYMTAB], 24 * count, "DT_SYMTAB")
    strtab = elf.dynamic.strtab
    return elf, symtab, strtab.file_offset, strtab.size


def _patched_name_offset(data: bytes, symbol: str, offset: int) -> bytes:
    elf, symtab, _str_at, _str_size = _tables(data)
    i = list(elf.symbol_columns.names).index(symbol)
    out = bytearray(data)
    struct.pack_into("<I", out, symtab + 24 * i, offset)
    return bytes(out)


def _name_offset(data: bytes, name: str) -> int:
    _elf, _symtab, str_at, str_size = _tables(data)
    table = data[str_at:str_at + str_size]
    at = table.index(b"\0" + name.encode() + b"\0") + 1
    return at


@pytest.fixture(scope="module")
def lib_bytes(versioned: Path) -> bytes:
    return versioned.read_bytes()


def test_tail_merged_name(lib_bytes: bytes, names_by: str) -> None:
    """An st_name into the middle of another name (what ld's tail merging produces) names the tail."""
    at = _name_offset(lib_bytes, "a_rather_long_function_name")
    data = _patched_name_offset(lib_bytes, "bar", at + len("a_rather_"))
    elf = ElfFile.from_bytes(data)
    cols = elf.symbol_columns
    assert "long_function_name" in cols.names and "bar" not in cols.names
    assert list(cols.names) == [s.name for s in ElfFile.from_bytes(data).symbols]


def test_non_utf8_name(lib_bytes: bytes, names_by: str) -> None:
    at = _name_offset(lib_bytes, "a_rather_long_function_name")
    _elf, _symtab, str_at, _size = _tables(lib_bytes)
    data = bytearray(lib_bytes)
    data[str_at + at + 1] = 0xE9  # "a\xe9rather_long_function_name": not UTF-8
    cols = ElfFile.from_bytes(bytes(data)).symbol_columns
    name = b"a\xe9rather_long_function_name".decode("utf-8", "surrogateescape")
    assert name in cols.names
    assert list(cols.names) == [s.name for s in ElfFile.from_bytes(bytes(data)).symbols]


def test_utf8_name(tmp_path: Path, names_by: str) -> None:
    if not have_cc():
        pytest.skip("no C compiler")
    lib = shared_lib(tmp_path / "libutf.so", 'int f(void) __asm__("caf\\xc3\\xa9"); int f(void){return 1;}')
    cols = assert_columns_match_symbols(lib)
    assert "café" in cols.names


@pytest.mark.parametrize("where", ["past_end", "padding", "far"])
def test_name_offset_outside_the_table(lib_bytes: bytes, names_by: str, where: str) -> None:
    _elf, _symtab, _str_at, size = _tables(lib_bytes)
    # "padding": between the table's end and the next power of two (the pointer path's zero padding)
    offset = {"past_end": size + 1, "padding": (1 << (size - 1).bit_length()) - 1, "far": 0xFFFFFFF0}[where]
    if offset <= size:
        pytest.skip("the table's size is a power of two: no padding")
    data = _patched_name_offset(lib_bytes, "bar", offset)
    with pytest.raises(ElfError, match="outside DT_STRTAB"):
        ElfFile.from_bytes(data).symbol_columns


def test_name_offset_at_the_end_of_the_table(lib_bytes: bytes, names_by: str) -> None:
    """st_name == DT_STRSZ reads as the empty string after the table's last NUL (as it always has)."""
    _elf, _symtab, _str_at, size = _tables(lib_bytes)
    data = _patched_name_offset(lib_bytes, "bar", size)
    assert ElfFile.from_bytes(data).symbol_columns.names.count("") == 2


def test_empty_name_inside_the_table(lib_bytes: bytes, names_by: str) -> None:
    """An offset at a NUL inside the table is an empty name, not an error (the pointer path checks these)."""
    at = _name_offset(lib_bytes, "bar")
    data = _patched_name_offset(lib_bytes, "bar", at + len("bar"))
    cols = ElfFile.from_bytes(data).symbol_columns
    assert "bar" not in cols.names and cols.names.count("") == 2


def test_columns_are_shared_not_copied(lib_bytes: bytes) -> None:
    elf = ElfFile.from_bytes(lib_bytes)
    assert elf.symbol_columns is elf.symbol_columns
    cols = elf.symbol_columns
    assert cols.versions is cols.versions and cols.defined is cols.defined
