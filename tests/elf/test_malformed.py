"""Malformed and hostile input: always one ElfError naming the file and the problem, never another exception."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from elf.decode_all import decode_all
from soswap.elf import ElfFile
from soswap.elf.source import HEAD
from soswap.errors import ElfError
from soswap.report.elf import elf_to_json
from support.build import requires_cc, shared_lib

LIB_SRC = r"""
int counter = 3;
__thread int tv;
int foo_v1(void) { return 1; }
int foo_v2(void) { return 2; }
extern int missing(void) __attribute__((weak));
int call(void) { return missing ? missing() : counter + tv; }
__asm__(".symver foo_v1,foo@VER_1");
__asm__(".symver foo_v2,foo@@VER_2");
"""
MAP = "VER_1 { global: foo; counter; local: *; };\nVER_2 { global: call; tv; } VER_1;\n"


@pytest.fixture(scope="module")
def small_lib(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("malformed")
    lib = shared_lib(d / "libm.so.1", LIB_SRC, soname="libm.so.1", version_script=MAP,
                     flags=["-Wl,-rpath,$ORIGIN", "-Wl,--build-id"])
    return lib.read_bytes()


pytestmark = requires_cc


def error_of(data: bytes) -> ElfError:
    with pytest.raises(ElfError) as info:
        decode_all(ElfFile.from_bytes(data, "bad.so"))
    assert info.value.path == "bad.so"
    return info.value


def test_the_fixture_itself_decodes(small_lib: bytes) -> None:
    decode_all(ElfFile.from_bytes(small_lib, "good.so"))


@pytest.mark.parametrize("data, problem", [
    (b"", "too short"),
    (b"\x7fEL", "too short"),
    (b"MZ\x90\x00" + b"\0" * 60, "bad magic"),
    (b"\x7fELF\x03\x01\x01" + b"\0" * 57, "invalid ELF class"),
    (b"\x7fELF\x02\x07\x01" + b"\0" * 57, "data encoding"),
    (b"\x7fELF\x02\x01\x01" + b"\0" * 20, "too short for an ELF header"),
])
def test_header_errors(data: bytes, problem: str) -> None:
    assert problem in str(error_of(data))


def test_bad_phentsize(small_lib: bytes) -> None:
    data = bytearray(small_lib)
    struct.pack_into("<H", data, 0x36, 55)
    assert "e_phentsize" in str(error_of(bytes(data)))


def test_program_headers_past_the_end(small_lib: bytes) -> None:
    data = bytearray(small_lib)
    struct.pack_into("<Q", data, 0x20, len(data) - 8)
    err = error_of(bytes(data))
    assert "program header table" in str(err) and "outside the file" in str(err)


def _dynamic_entries(data: bytes):
    elf = ElfFile.from_bytes(data)
    seg = next(s for s in elf.segments if s.type == 2)
    return seg.offset, seg.filesz


def _patch_dynamic(data: bytes, tag: int, value: int) -> bytes:
    off, size = _dynamic_entries(data)
    out = bytearray(data)
    for pos in range(off, off + size, 16):
        t, _v = struct.unpack_from("<QQ", out, pos)
        if t == tag:
            struct.pack_into("<QQ", out, pos, t, value)
            return bytes(out)
    raise AssertionError(f"tag {tag:#x} not found")


@pytest.mark.parametrize("tag, value, problem", [
    (5, 0x7FFF_FFFF_0000, "not in any loaded segment"),  # DT_STRTAB unmapped
    (10, 1 << 40, "DT_STRSZ"),  # DT_STRSZ huge
    (6, 0x7FFF_FFFF_0000, "not in any loaded segment"),  # DT_SYMTAB unmapped
    (0x6FFFFFFC, 0x7FFF_FFFF_0000, "not in any loaded segment"),  # DT_VERDEF unmapped
    (0x6FFFFEF5, 0x7FFF_FFFF_0000, "not in any loaded segment"),  # DT_GNU_HASH unmapped
    (8, 1 << 40, "DT_RELA"),  # DT_RELASZ huge
    (11, 17, "DT_SYMENT"),
])
def test_dynamic_values_out_of_bounds(small_lib: bytes, tag: int, value: int, problem: str) -> None:
    assert problem in str(error_of(_patch_dynamic(small_lib, tag, value)))


@pytest.mark.parametrize("nchain", [1, 0x7FFF_FFFF])
def test_a_dt_hash_that_disagrees_with_dt_gnu_hash(tmp_path: Path, nchain: int) -> None:
    """With both hash tables ld.so reads DT_GNU_HASH only (``_dl_setup_hash``): a DT_HASH nchain too small,
    or too large for the file, leaves the symbol table as long as the GNU chains (and the section header)
    say, and every symbol decodable."""
    from elftools.elf.elffile import ELFFile

    from soswap.elf.symbols import symbol_count

    lib = shared_lib(tmp_path / "libh.so", LIB_SRC, soname="libh.so", version_script=MAP,
                     flags=["-Wl,--hash-style=both"])
    with open(lib, "rb") as f:
        dynsym = ELFFile(f).get_section_by_name(".dynsym")
        want = dynsym.num_symbols()
        hash_at = ELFFile(f).get_section_by_name(".hash")["sh_offset"]
    data = bytearray(lib.read_bytes())
    struct.pack_into("<I", data, hash_at + 4, nchain)
    elf = ElfFile.from_bytes(bytes(data), "libh.so")
    assert symbol_count(elf) == want
    assert "foo" in {s.name for s in elf.symbols}
    decode_all(elf)


def test_needed_string_offset_out_of_bounds(small_lib: bytes) -> None:
    err = error_of(_patch_dynamic(small_lib, 1, 1 << 30))
    assert "DT_NEEDED" in str(err)


def test_verdef_chain_that_loops(small_lib: bytes) -> None:
    elf = ElfFile.from_bytes(small_lib)
    verdef_off = elf.vaddr_to_offset(elf.dynamic.tags[0x6FFFFFFC], 20, "x")
    data = bytearray(_patch_dynamic(small_lib, 0x6FFFFFFD, 1000))  # DT_VERDEFNUM too large
    struct.pack_into("<I", data, verdef_off + 16, 0)  # first vd_next -> itself... (0 ends the chain)
    ElfFile.from_bytes(bytes(data)).version_definitions  # a 0 next ends the list: fine
    struct.pack_into("<i", data, verdef_off + 16, 0)
    # make the second entry point back to the first
    second = verdef_off + struct.unpack_from("<I", small_lib, verdef_off + 16)[0]
    struct.pack_into("<I", data, verdef_off + 16, second - verdef_off)
    struct.pack_into("<I", data, second + 16, (verdef_off - second) & 0xFFFFFFFF)
    with pytest.raises(ElfError):
        decode_all(ElfFile.from_bytes(bytes(data), "loop.so"))


def test_every_truncation_gives_elferror_or_decodes(small_lib: bytes) -> None:
    for n in range(0, len(small_lib), 3):
        try:
            decode_all(ElfFile.from_bytes(small_lib[:n], "trunc.so"))
        except ElfError:
            pass


def test_every_single_byte_corruption_of_the_headers(small_lib: bytes) -> None:
    elf = ElfFile.from_bytes(small_lib)
    dyn = next(s for s in elf.segments if s.type == 2)
    regions = list(range(0, 64 + 56 * len(elf.segments))) + list(range(dyn.offset, dyn.offset + dyn.filesz))
    for pos in regions:
        for value in (0x00, 0xFF, 0x80):
            data = bytearray(small_lib)
            data[pos] = value
            try:
                decode_all(ElfFile.from_bytes(bytes(data), "flip.so"))
            except ElfError:
                pass


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "libfifo.so"
    os.mkfifo(fifo)
    with pytest.raises(ElfError, match="not a regular file"):
        ElfFile.open(fifo)


def test_socket_is_refused_as_not_a_regular_file(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "libsock.so"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(ElfError, match="not a regular file"):  # open() fails with ENXIO
            ElfFile.open(path)


@pytest.mark.parametrize("path, problem", [("/dev/zero", "not a regular file"), ("/", "not a regular file"),
                                           ("/nonexistent/x.so", "No such file")])
def test_special_paths(path: str, problem: str) -> None:
    with pytest.raises(ElfError, match=problem):
        ElfFile.open(path)


def test_file_truncated_while_being_read(tmp_path: Path) -> None:
    """A file truncated under us gives an error, not SIGBUS (no mmap) and not garbage: the tables past the
    head (read in one piece at open) are read after the truncation."""
    src = LIB_SRC + "const char filler[1 << 16] = {1};\nconst char *fill(void) { return filler; }\n"
    p = shared_lib(tmp_path / "libshrink.so", src, soname="libshrink.so", version_script=MAP)
    elf = ElfFile.open(p)
    assert elf.size > 2 * HEAD
    assert min(s.offset for s in elf.segments_of_type(2)) > HEAD  # PT_DYNAMIC lies past the head
    with open(p, "r+b") as f:
        f.truncate(200)
    with pytest.raises(ElfError, match=r"shrank|outside|changed"):
        decode_all(elf)


def test_file_truncated_within_its_head(tmp_path: Path, small_lib: bytes) -> None:
    """A file no larger than the head is read in one piece at open: truncated after that, it still decodes as
    the file that was opened (one consistent snapshot), never as a mix of old and new bytes."""
    assert len(small_lib) <= HEAD
    p = tmp_path / "libshrink.so"
    p.write_bytes(small_lib)
    elf = ElfFile.open(p)
    with open(p, "r+b") as f:
        f.truncate(200)
    decode_all(elf)
    assert elf_to_json(elf, with_symbols=True) == elf_to_json(ElfFile.from_bytes(small_lib, str(p)),
                                                              with_symbols=True)


def test_file_replaced_between_lazy_reads(tmp_path: Path, small_lib: bytes) -> None:
    p = tmp_path / "libswap.so"
    p.write_bytes(small_lib)
    elf = ElfFile.open(p)
    elf.close()
    other = tmp_path / "other.so"
    other.write_bytes(small_lib + b"\0" * 10)
    os.replace(other, p)
    with pytest.raises(ElfError, match="changed"):
        elf.symbols


def test_cli_reports_one_line_per_bad_file(tmp_path: Path, small_lib: bytes) -> None:
    good = tmp_path / "good.so"
    good.write_bytes(small_lib)
    bad = tmp_path / "bad.so"
    bad.write_bytes(small_lib[:100])
    text = tmp_path / "text"
    text.write_text("hello\n")
    r = subprocess.run([sys.executable, "-m", "soswap", "elf", str(good), str(bad), str(text)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("soswap: error: ") for line in lines)
    assert str(bad) in lines[0] and str(text) in lines[1]
    assert "Traceback" not in r.stderr
    assert "libm.so.1" in r.stdout
