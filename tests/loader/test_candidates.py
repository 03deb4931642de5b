"""Candidate files ``open_verify`` skips or rejects (loader.md §(b) cases 15-17, 38), and objects already loaded
under another name (cases 18-20)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable, Tuple

import pytest

from loader.helpers import (
    PROFILE,
    assert_ldd_parity,
    assert_run_prediction,
    by_name,
    env_with,
    lib_source,
    predict,
    run_program,
    sources_needing,
)
from support.build import executable, requires_cc, rpath_flags, shared_lib

pytestmark = requires_cc


def _prog_needing_libf(tmp: Path, first: Path, second: Path) -> Path:
    shared_lib(second / "libf.so", lib_source("f"), soname="libf.so")
    first.mkdir(parents=True, exist_ok=True)
    return executable(tmp / "e", sources_needing("f"), flags=rpath_flags(str(first), str(second), old_dtags=True),
                      libs=[f"-L{second}", "-lf"])


def test_case15_only_the_other_class_exists(tmp_path: Path, m32: None) -> None:
    w32 = tmp_path / "w32"
    shared_lib(w32 / "libw.so", lib_source("w"), soname="libw.so", m32=True)
    w64 = tmp_path / "w64"
    shared_lib(w64 / "libw.so", lib_source("w"), soname="libw.so")
    e = executable(tmp_path / "e", sources_needing("w"), flags=rpath_flags(str(w32)), libs=[f"-L{w64}", "-lw"])
    out = assert_ldd_parity(e)
    assert "libw.so => not found" in out.stdout
    real = assert_run_prediction(e)
    assert "wrong ELF class: ELFCLASS32" in real.stderr


@pytest.mark.parametrize("content, message", [
    (os.urandom(200).replace(b"\x7fELF", b"xxxx"), "invalid ELF header"),
    (b"", "file too short"),
    (b"\x7fELF\x02\x01\x01\x00", "file too short"),
    (b"/* GNU ld script */\nGROUP ( /usr/lib/x86_64-linux-gnu/libfoo.so.1 )\n" + b" " * 64, "invalid ELF header"),
])
def test_case16_17_38_first_bad_candidate_is_fatal(tmp_path: Path, content: bytes, message: str) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    e = _prog_needing_libf(tmp_path, first, second)
    (first / "libf.so").write_bytes(content)
    real = assert_run_prediction(e)
    assert real.status == 127 and f"{first}/libf.so: {message}" in real.stderr
    # ldd stops there too: the error line is all it prints, and it fails
    out = assert_ldd_parity(e)
    assert out.status == 1 and message in out.stdout


def test_other_machine_is_skipped_and_the_next_candidate_loads(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    e = _prog_needing_libf(tmp_path, first, second)
    data = bytearray((second / "libf.so").read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    (first / "libf.so").write_bytes(bytes(data))
    assert_ldd_parity(e)
    assert assert_run_prediction(e).status == 0
    res, _ = predict(e)
    assert by_name(res, "libf.so").path == f"{second}/libf.so"


@pytest.mark.parametrize("offset, value, message", [
    (5, 2, "ELF file data encoding not little-endian"),
    (6, 2, "ELF file version ident does not match current one"),
    (7, 9, "ELF file OS ABI invalid"),
    (8, 1, "ELF file ABI version invalid"),
    (12, 1, "nonzero padding in e_ident"),
    (16, 1, "only ET_DYN and ET_EXEC can be loaded"),
    (20, 2, "ELF file version does not match current one"),
    (54, 1, "ELF file's phentsize not the expected size"),
])
def test_each_header_check_in_glibc_order(tmp_path: Path, offset: int, value: int, message: str) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    e = _prog_needing_libf(tmp_path, first, second)
    data = bytearray((second / "libf.so").read_bytes())
    data[offset] = value
    (first / "libf.so").write_bytes(bytes(data))
    real = assert_run_prediction(e)
    assert message in real.stderr
    assert_ldd_parity(e)


def test_a_directory_named_like_the_library(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    e = _prog_needing_libf(tmp_path, first, second)
    (first / "libf.so").mkdir()
    real = assert_run_prediction(e)
    assert "cannot read file data: Error 21" in real.stderr  # ld.so's own strerror knows few errnos


def test_case18_soname_match_reuses_the_first_copy(tmp_path: Path) -> None:
    s1, s2, sp = tmp_path / "s1", tmp_path / "s2", tmp_path / "sp"
    shared_lib(s1 / "libs.so", lib_source("s"), soname="libs.so")
    shared_lib(s2 / "libs.so", lib_source("s", "s2only"), soname="libs.so")
    shared_lib(sp / "libp.so",
               "int s(void); int s2only(void);\nint p(int x) { return x ? s2only() : s(); }\n",
               soname="libp.so", libs=[f"-L{s2}", "-ls"], flags=rpath_flags(str(s2)))
    e = executable(tmp_path / "e", "int s(void); int p(int);\nint main(int c, char **v) { return s() + p(c > 1); }\n",
                   flags=[*rpath_flags(str(s1), str(sp)), "-Wl,--allow-shlib-undefined"],
                   libs=[f"-L{s1}", "-ls", f"-L{sp}", "-lp"])
    assert_ldd_parity(e)
    assert assert_run_prediction(e).status == 2
    res, bound = predict(e)
    assert [o.path for o in res.objects if "libs.so" in o.names] == [f"{s1}/libs.so"]
    # the call that needs s2only fails at the first call, naming libp
    real = run_program(e, "x")
    late = [f for f in bound.failures if f.symbol == "s2only"]
    assert len(late) == 1 and late[0].when == "first-call" and not late[0].fatal
    assert real.status == 127 and late[0].line in real.stderr
    assert_ldd_parity(e, flag="-r")


def _q(tmp: Path, runpath: bool) -> Path:
    d = tmp / "d"
    shared_lib(d / "libq.so", lib_source("q"))
    os.symlink("libq.so", d / "libq2.so")
    shared_lib(d / "libuse.so", lib_source("use", calls=["q"]), soname="libuse.so", libs=[f"-L{d}", "-lq2"],
               flags=rpath_flags(str(d)) if runpath else ())
    return executable(tmp / "e", sources_needing("q", "use"), flags=rpath_flags(str(d)),
                      libs=[f"-L{d}", "-lq", "-luse"])


def test_case19_same_file_under_two_names_is_one_object(tmp_path: Path) -> None:
    e = _q(tmp_path, runpath=True)
    out = assert_ldd_parity(e)
    assert "libq2.so" not in out.stdout
    assert assert_run_prediction(e).status == 0
    res, _ = predict(e)
    q = by_name(res, "libq.so")
    assert "libq2.so" in q.names
    assert sum(1 for o in res.objects if o.path.endswith("libq.so")) == 1


def test_case20_without_runpath_the_second_name_is_not_found(tmp_path: Path) -> None:
    e = _q(tmp_path, runpath=False)
    out = assert_ldd_parity(e)
    assert "libq2.so => not found" in out.stdout
    assert assert_run_prediction(e).status == 127


def test_a_missing_library_requested_twice_is_listed_twice(tmp_path: Path) -> None:
    d = tmp_path / "d"
    shared_lib(d / "libm1.so", lib_source("m1"), soname="libmissing.so")
    shared_lib(d / "libu1.so", lib_source("u1", calls=["m1"]), soname="libu1.so", libs=[str(d / "libm1.so")])
    shared_lib(d / "libu2.so", lib_source("u2", calls=["m1"]), soname="libu2.so", libs=[str(d / "libm1.so")])
    e = executable(tmp_path / "e", sources_needing("u1", "u2"),
                   flags=[*rpath_flags(str(d)), "-Wl,--allow-shlib-undefined"], libs=[f"-L{d}", "-lu1", "-lu2"])
    out = assert_ldd_parity(e)
    assert out.stdout.count("libmissing.so => not found") == 2


@pytest.mark.parametrize("build", ["no-pie", "pie"])
def test_a_program_found_for_a_library_name_is_named_as_requested(tmp_path: Path, build: str) -> None:
    """open_verify accepts an executable; _dl_map_object_from_fd refuses it, and its message names the object
    as it was asked for (``libf.so: cannot dynamically load executable``), not the file it opened."""
    first = tmp_path / "first"
    e = _prog_needing_libf(tmp_path, first, tmp_path / "second")
    executable(first / "libf.so", "int main(void) { return 0; }\n", flags=[f"-{build}"])
    out = assert_ldd_parity(e)
    message = ("cannot dynamically load executable" if build == "no-pie"
               else "cannot dynamically load position-independent executable")
    assert out.stdout == f"{e}: error while loading shared libraries: libf.so: {message}\n"
    assert_run_prediction(e)
    res, _ = predict(e)
    assert f"{first}/libf.so: {message}" in by_name(res, "libf.so").reason.text  # the tree says which file


@pytest.mark.parametrize("size", [1000, 4096, 8192, "dynamic"])
def test_a_truncated_library_kills_the_loader_with_sigbus(tmp_path: Path, size: object) -> None:
    """A truncated copy first in the search path maps without error, but ld.so touches a page beyond its end
    (the zero-fill after a segment's data, or the dynamic section) and dies of SIGBUS: nothing is printed, the
    shell says 135, ldd prints nothing and exits 1. A copy cut where nothing ld.so touches is lost loads."""
    first = tmp_path / "first"
    e = _prog_needing_libf(tmp_path, first, tmp_path / "second")
    whole = (tmp_path / "second" / "libf.so").read_bytes()
    if size == "dynamic":  # keep everything ld.so reads: only the section headers and the symtab are lost
        from soswap.elf import ElfFile

        elf = ElfFile.from_bytes(whole, "libf.so")
        size = max(s.offset + s.filesz for s in elf.segments_of_type(1))  # PT_LOAD
    (first / "libf.so").write_bytes(whole[:size])
    out = assert_ldd_parity(e)
    real = run_program(e)
    _, bound = predict(e)
    if size == len(whole) or real.status == 0:
        assert bound.fatal is None and real.status == 0 and out.status == 0
        return
    assert real.status == -7 and real.stderr == "" and out.stdout == "" and out.status == 1
    assert bound.fatal is not None and bound.fatal.kind == "crash" and bound.fatal.exit_status == 128 + 7
    assert bound.fatal.line.startswith(f"ld.so crashes (SIGBUS) mapping {first}/libf.so: ")


def test_a_library_cut_inside_its_dynamic_padding_loads(tmp_path: Path) -> None:
    """Cut inside the DT_NULL entries that end its dynamic section: ld.so reads zeros past the end of the file
    (to the end of its last page), finds DT_NULL and loads the library. The tree said "PT_DYNAMIC lies outside
    the file", an error ld.so never prints."""
    from soswap.elf import ElfFile

    lib = shared_lib(tmp_path / "whole" / "libpad.so.1", "int foo(void) { return 42; }\n", soname="libpad.so.1",
                     flags=["-nostartfiles"])
    prog = executable(tmp_path / "app", "int foo(void);\nint main(void) { return foo() - 42; }\n", libs=[str(lib)],
                      flags=rpath_flags(str(tmp_path / "cut")))
    whole = lib.read_bytes()
    elf = ElfFile.from_bytes(whole, "libpad.so.1")
    dyn = elf.segments_of_type(2)[0]  # PT_DYNAMIC
    entry = 16
    tags = [struct.unpack_from("<q", whole, dyn.offset + n * entry)[0] for n in range(dyn.filesz // entry)]
    used = tags.index(0)  # DT_NULL
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "libpad.so.1").write_bytes(whole[:dyn.offset + used * entry + 8])
    assert run_program(prog).status == 0
    out = assert_ldd_parity(prog)
    assert out.status == 0 and "libpad.so.1 => " in out.stdout
    _, bound = predict(prog)
    assert bound.fatal is None


def _cut_library(tmp_path: Path, source: str, cut: int, *patches: Tuple[int, int]) -> Path:
    """A program that loads libfz.so.1 from ``cut/``: the library built from ``source`` without start files,
    cut to ``cut`` bytes (-1: at the first page boundary after its dynamic section), ``patches`` (tag, value)
    written into the DT_NULL entries that end its dynamic section."""
    lib = shared_lib(tmp_path / "whole" / "libfz.so.1", source, soname="libfz.so.1",
                     flags=["-nostartfiles", "-Wl,--hash-style=gnu"])
    prog = executable(tmp_path / "prog", "int lib_fn(void);\nint main(void) { return lib_fn() == 2 ? 0 : 3; }\n",
                      libs=[str(lib)], flags=rpath_flags(str(tmp_path / "cut")))
    data = bytearray(lib.read_bytes())
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phnum, = struct.unpack_from("<H", data, 0x38)
    ph = next(phoff + i * 56 for i in range(phnum) if struct.unpack_from("<I", data, phoff + i * 56)[0] == 2)
    off, size = struct.unpack_from("<Q", data, ph + 8)[0], struct.unpack_from("<Q", data, ph + 32)[0]
    if cut < 0:  # the first page boundary after the dynamic section
        cut = -(-(off + size) // 4096) * 4096
    tags = [struct.unpack_from("<q", data, off + 16 * k)[0] for k in range(size // 16)]
    at = tags.index(0)
    for k, (tag, value) in enumerate(patches):
        struct.pack_into("<qQ", data, off + 16 * (at + k), tag, value)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "libfz.so.1").write_bytes(bytes(data[:cut]))
    return prog


_BIG_DATA = "int big[8192] = {1, 2, 3};\nint lib_fn(void) { return big[1]; }\n"
_POINTERS = ("".join(f"int d{n} = {n + 1};\n" for n in range(800)) + "int *ptrs[] = {"
             + ",".join(f"&d{n}" for n in range(800)) + "};\nint lib_fn(void) { return *ptrs[1]; }\n")


@pytest.mark.parametrize("case", ["relocations", "init-array", "library-preinit"])
def test_a_truncated_library_fails_when_ld_so_touches_what_is_gone(tmp_path: Path, case: str) -> None:
    """Pages wholly past the end of a cut library fault when touched, and what ld.so touches depends on the
    mode: a relocation target while relocating (a run, ``ldd -r``/``-d``: the list is printed first), an
    initializer in a real run only (ldd runs none), a shared library's DT_PREINIT_ARRAY never (only the
    program's runs). soswap predicted SIGBUS for ldd too, and for a library's DT_PREINIT_ARRAY."""
    if case == "relocations":  # the cut page holds pointers ld.so relocates
        prog = _cut_library(tmp_path, _POINTERS, -1)
        runs, listed = False, {None: 0, "-r": 1, "-d": 1}
    else:  # a large .data nobody relocates, cut; a table pointed into its lost pages
        tag = 25 if case == "init-array" else 32  # DT_INIT_ARRAY, DT_PREINIT_ARRAY
        prog = _cut_library(tmp_path, _BIG_DATA, 0xA000, (tag, 0xB000), (tag + 2, 8))
        runs, listed = case == "library-preinit", {None: 0, "-r": 0, "-d": 0}
    real = run_program(prog)
    assert (real.status == 0) if runs else (real.status == -signal.SIGBUS), real
    _, bound = predict(prog, symbols=False)
    assert (bound.fatal is None) if runs else (bound.fatal.exit_status == 135 and "SIGBUS" in bound.fatal.line)
    for flag, status in listed.items():
        out = assert_ldd_parity(prog, flag=flag)
        assert out.status == status and "libfz.so.1 => " in out.stdout, (flag, out)


@pytest.mark.parametrize("name", [".", ".."])
def test_a_needed_name_dot_or_dotdot_is_searched_and_opens_a_directory(tmp_path: Path, name: str) -> None:
    """ld.so searches "." and ".." like any name: every directory holds them, so the first search directory
    gives a directory, which ld.so cannot read (a listing never shows these names: not "not found")."""
    lib = shared_lib(tmp_path / "build" / "libph.so", lib_source("ph"), soname=name)
    e = executable(tmp_path / "e", sources_needing("ph"), libs=[str(lib)])
    real = assert_run_prediction(e)
    assert real.status == 127 and f"/{name}: cannot read file data: Error 21" in real.stderr
    assert_ldd_parity(e)
    out = assert_ldd_parity("/bin/true", env=env_with(LD_PRELOAD=name))
    assert "cannot be preloaded (cannot read file data): ignored." in out.stderr


def _patch_loads(src: Path, dst: Path, how: str) -> None:
    """Copy the 64-bit ELF file ``src`` to ``dst`` with its PT_LOAD headers changed: "offset" moves the second
    one's file offset by 8 bytes (its address and offset no longer page-aligned together), "overlap" moves the
    last one's address down to page 0 (same offset within the page: it overlaps the first)."""
    data = bytearray(src.read_bytes())
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phnum, = struct.unpack_from("<H", data, 0x38)
    loads = [phoff + i * 56 for i in range(phnum) if struct.unpack_from("<I", data, phoff + i * 56)[0] == 1]
    if how == "offset":
        struct.pack_into("<Q", data, loads[1] + 8, struct.unpack_from("<Q", data, loads[1] + 8)[0] + 8)
    else:
        vaddr, = struct.unpack_from("<Q", data, loads[-1] + 16)
        struct.pack_into("<Q", data, loads[-1] + 16, vaddr % 4096)
    dst.write_bytes(bytes(data))
    dst.chmod(0o755)


@pytest.mark.parametrize("how", ["offset", "overlap"])
def test_a_load_segment_that_cannot_be_mapped(tmp_path: Path, how: str) -> None:
    """``_dl_map_object_from_fd`` refuses a PT_LOAD whose address and offset differ by other than whole pages,
    and ``_dl_map_segments`` segments that overlap (what ``strip`` can make of a patchelf-ed library)."""
    first, second = tmp_path / "first", tmp_path / "second"
    e = _prog_needing_libf(tmp_path, first, second)
    _patch_loads(second / "libf.so", first / "libf.so", how)
    real = assert_run_prediction(e)
    assert real.status == 127 and "libf.so: ELF load command address/offset not page-aligned" in real.stderr
    assert_ldd_parity(e)


def test_a_program_whose_segment_cannot_be_mapped(tmp_path: Path) -> None:
    """The kernel maps the program itself after exec's point of no return: SIGSEGV; ``ld.so --verify`` refuses
    it, so ldd says "not a dynamic executable"."""
    e = executable(tmp_path / "e", "int main(void) { return 0; }\n")
    bad = tmp_path / "bad"
    _patch_loads(e, bad, "offset")
    out = assert_ldd_parity(bad)
    assert out.status == 1 and out.stderr == "\tnot a dynamic executable\n"
    assert run_program(bad).status == -signal.SIGSEGV
    _, bound = predict(bad)
    assert bound.fatal is not None and bound.fatal.kind == "crash" and bound.fatal.exit_status == 128 + signal.SIGSEGV
    # after a program of the same shape (the same needs, interpreter, search paths) that runs: the load shared
    # with it must not hide what execve refuses in this one
    from loader.helpers import make_loader

    loader = make_loader()
    assert loader.bind(loader.load(str(e))).fatal is None
    bound = loader.bind(loader.load(str(bad)))
    assert bound.fatal is not None and bound.fatal.exit_status == 128 + signal.SIGSEGV


def _interp_size_patched(tmp_path: Path, size: Callable[[int], int], field: int = 32) -> Tuple[Path, Path]:
    """A program ``e`` and its copy ``bad`` whose PT_INTERP p_filesz is ``size(p_filesz)`` (with ``field`` 16,
    its p_vaddr is ``size(p_filesz) + p_vaddr``)."""
    e = executable(tmp_path / "e", "int main(void) { return 0; }\n")
    data = bytearray(e.read_bytes())
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phnum, = struct.unpack_from("<H", data, 0x38)
    ph = next(phoff + i * 56 for i in range(phnum) if struct.unpack_from("<I", data, phoff + i * 56)[0] == 3)
    filesz, = struct.unpack_from("<Q", data, ph + 32)
    base = struct.unpack_from("<Q", data, ph + field)[0] if field != 32 else 0
    struct.pack_into("<Q", data, ph + field, base + size(filesz))
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    bad.chmod(0o755)
    return e, bad


@pytest.mark.parametrize("how", ["huge", "no-nul"])
def test_a_pt_interp_the_kernel_refuses_and_ld_so_reads_anyway(tmp_path: Path, how: str) -> None:
    """``load_elf_binary`` checks PT_INTERP's size (2..PATH_MAX) and its last byte (NUL): ENOEXEC. ``ld.so
    --list`` (ldd) takes the string at p_vaddr and lists the libraries. soswap stopped the whole run (tree and
    --ldd) with "PT_INTERP ... lies outside the file"."""
    e, bad = _interp_size_patched(tmp_path, lambda size: 1 << 40 if how == "huge" else size - 1)
    with pytest.raises(OSError) as err:
        subprocess.run([str(bad)], timeout=30)
    assert err.value.errno == errno.ENOEXEC
    _, bound = predict(bad)
    assert bound.fatal is not None and bound.fatal.exit_status == 126
    assert os.strerror(errno.ENOEXEC) in bound.fatal.line
    out = assert_ldd_parity(bad, e)
    assert out.status == 0 and out.stdout.count("libc.so.6 => ") == 2


def test_a_program_cut_short_in_its_data(tmp_path: Path) -> None:
    """A program cut inside its dynamic section, the end of its data in a page past the end of the file: the
    kernel cannot write the zeros after its data (SIGSEGV after exec's point of no return), and ``ld.so
    --verify`` dies of SIGBUS, so the ldd script says "exited with unknown exit code (135)" and exits at once:
    the FILEs after it are not listed. soswap read the rest of the dynamic section as zeros and called the
    program fine (and listed it in --ldd)."""
    from soswap.elf import ElfFile

    prog = executable(tmp_path / "prog", "static char buf[100000];\nint main(int c, char **v) { (void)v; "
                      "buf[c] = 1; return buf[0]; }\n")
    elf = ElfFile.open(prog)
    dyn = elf.segments_of_type(2)[0]
    rw = next(s for s in elf.segments_of_type(1) if s.offset <= dyn.offset < s.offset + s.filesz)
    cut = tmp_path / "cut"
    cut.write_bytes(prog.read_bytes()[:dyn.offset + 0x100])
    cut.chmod(0o755)
    assert dyn.offset + 0x100 < (rw.offset + rw.filesz) // 4096 * 4096
    assert run_program(cut).status == -signal.SIGSEGV
    _, bound = predict(cut, symbols=False)
    assert bound.fatal is not None and bound.fatal.exit_status == 128 + signal.SIGSEGV
    out = assert_ldd_parity(cut, prog)
    assert out.status == 1 and out.stderr == "ldd: exited with unknown exit code (135)\n"
    assert str(prog) not in out.stdout  # the script exited: the next FILE is not listed


def _without_bss(data: bytearray) -> None:
    """p_memsz = p_filesz for the program's RW PT_LOAD: the kernel writes no zeros after its data."""
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phnum, = struct.unpack_from("<H", data, 0x38)
    rw = next(i for i in range(phnum) if struct.unpack_from("<II", data, phoff + 56 * i) == (1, 6))
    filesz, = struct.unpack_from("<Q", data, phoff + 56 * rw + 32)
    struct.pack_into("<Q", data, phoff + 56 * rw + 40, filesz)


def _soswap_tree(*args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([sys.executable, "-m", "soswap", "tree", "--no-cache", *args], capture_output=True,
                          text=True, env=env_with(PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src")),
                          timeout=120)


# where the cut falls: (expected run status or errno, what ldd prints on standard error)
_EXITED = "ldd: exited with unknown exit code (135)\n"
_CUTS = {
    "in-pt-interp": (errno.EIO, _EXITED),  # execve: EIO reading PT_INTERP (the shell's 126)
    "before-data": (-signal.SIGSEGV, _EXITED),  # the kernel's padzero faults after the point of no return
    "before-dynamic-page-no-bss": (-signal.SIGBUS, _EXITED),  # ld.so reads the dynamic section: gone
    "in-dynamic-page-no-bss": (-signal.SIGSEGV, ""),  # zeros from there on: no DT_STRTAB, ld.so dies in dl_main
}


@pytest.mark.parametrize("where", sorted(_CUTS))
def test_a_program_cut_before_its_dynamic_section(tmp_path: Path, where: str) -> None:
    """A program cut before its dynamic section (where most cuts of an interrupted copy fall), checked against
    running it and against ldd. soswap stopped with an error about the dynamic section (exit 2) for all but
    the last, which it called fine (zeros read as an empty dynamic section): ``tree`` predicted no failure and
    ``--ldd`` printed "statically linked"."""
    from soswap.elf import ElfFile

    prog = executable(tmp_path / "prog", "int main(void) { return 0; }\n")
    elf = ElfFile.open(prog)
    data = bytearray(prog.read_bytes())
    dyn = elf.segments_of_type(2)[0]
    if where == "in-pt-interp":
        interp = elf.segments_of_type(3)[0]
        size = interp.offset + interp.filesz // 2
    elif where == "before-data":
        size = dyn.offset - 0x100
    else:
        _without_bss(data)
        page = dyn.offset - dyn.offset % 4096
        size = page - 0x100 if where == "before-dynamic-page-no-bss" else dyn.offset + 0x40
        assert size > elf.segments_of_type(3)[0].offset + 0x100
    cut = tmp_path / "cut"
    cut.write_bytes(bytes(data[:size]))
    cut.chmod(0o755)
    real, ldd_says = _CUTS[where]
    _, bound = predict(cut, symbols=False)
    fatal = bound.fatal
    assert fatal is not None
    if where == "in-pt-interp":
        with pytest.raises(OSError) as exc:
            run_program(cut)
        assert exc.value.errno == real
        assert fatal.exit_status == 126 and "Input/output error" in fatal.line
    else:
        assert run_program(cut).status == real
        assert fatal.kind == "crash" and fatal.exit_status == 128 - real
    out = assert_ldd_parity(cut)
    assert out.status == 1 and out.stderr == ldd_says and out.stdout == ""
    tree = _soswap_tree(str(cut))
    assert tree.returncode == 1 and f"exit status {fatal.exit_status}" in tree.stdout, tree


def test_a_program_without_dt_strtab(tmp_path: Path) -> None:
    """glibc 2.32+ ``dl_main`` reads the program's DT_AUDIT through its DT_STRTAB, present or not: a program
    whose dynamic section has none kills ld.so with SIGSEGV, in a run and under ldd (which then prints
    nothing). soswap stopped with "DT_NEEDED string offset ... is outside DT_STRTAB" (exit 2)."""
    prog = executable(tmp_path / "prog", "int main(void) { return 0; }\n")
    data = bytearray(prog.read_bytes())
    from soswap.elf import ElfFile

    dyn = ElfFile.open(prog).segments_of_type(2)[0]
    n = next(n for n in range(dyn.filesz // 16) if struct.unpack_from("<q", data, dyn.offset + 16 * n)[0] == 5)
    struct.pack_into("<q", data, dyn.offset + 16 * n, 21)  # DT_STRTAB becomes DT_DEBUG
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    bad.chmod(0o755)
    if PROFILE.glibc_version < (2, 32):
        pytest.skip("glibc before 2.32 does not read DT_STRTAB for DT_AUDIT")
    assert run_program(bad).status == -signal.SIGSEGV
    _, bound = predict(bad, symbols=False)
    assert bound.fatal is not None and bound.fatal.exit_status == 139 and "no DT_STRTAB" in bound.fatal.line
    out = assert_ldd_parity(bad)
    assert out.status == 1 and out.stdout == "" and out.stderr == ""
    tree = _soswap_tree("-r", str(bad))
    assert tree.returncode == 1 and "exit status 139" in tree.stdout, tree


def test_ld_so_names_itself_by_the_last_pt_interp_at_its_address(tmp_path: Path) -> None:
    """rtld.c takes the interpreter's name at the address of the last PT_INTERP, whatever its p_filesz: a size
    two bytes short of the name, which the kernel refuses (no NUL at its end), still names ld.so in full for
    ldd. soswap cut the name at p_filesz ("/lib64/ld-linux-x86-64.so. => ...")."""
    _e, bad = _interp_size_patched(tmp_path, lambda size: size - 3)
    out = assert_ldd_parity(bad)
    assert out.status == 0 and "\t/lib64/ld-linux-x86-64.so.2\n" in out.stdout
    # its address on the NUL that ends the name: ld.so's name is empty, which ld.so prints as the program's
    _e, empty = _interp_size_patched(tmp_path, lambda size: size - 1, field=16)
    out = assert_ldd_parity(empty)
    assert out.status == 0 and f"\t{empty} => /lib64/ld-linux-x86-64.so.2\n" in out.stdout


@pytest.mark.parametrize("kind", ["missing", "mode-644", "directory", "text", "truncated", "other-machine"])
def test_a_program_interpreter_the_kernel_refuses(tmp_path: Path, kind: str) -> None:
    """execve opens PT_INTERP itself (binfmt_elf ``load_elf_binary``): a missing one is ENOENT (the shell's
    127), one that is not an executable regular file EACCES, one that is no ELF file of the program's machine
    or whose program headers cannot be read ELIBBAD (126 for both)."""
    ld = Path("/lib64/ld-linux-x86-64.so.2").resolve()
    interp = tmp_path / "interp"
    if kind == "directory":
        interp.mkdir()
    elif kind == "text":
        interp.write_text("#!/bin/sh\n" + "# not an ELF file\n" * 8)
    elif kind == "truncated":
        interp.write_bytes(ld.read_bytes()[:100])
    elif kind in ("mode-644", "other-machine"):
        data = bytearray(ld.read_bytes())
        if kind == "other-machine":
            data[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
        interp.write_bytes(bytes(data))
    if interp.is_file():
        interp.chmod(0o644 if kind == "mode-644" else 0o755)
    e = executable(tmp_path / "e", "int main(void) { return 0; }\n", flags=[f"-Wl,--dynamic-linker={interp}"])
    try:
        subprocess.run([str(e)], capture_output=True, timeout=60)
        real = 0
    except OSError as exc:
        real = exc.errno or 0
    assert real != 0
    _, bound = predict(e)
    fatal = bound.fatal
    assert fatal is not None and fatal.kind == "no-interpreter", fatal
    if real == errno.ENOENT:
        assert fatal.line.endswith(f"{interp} does not exist") and fatal.exit_status == 127
    else:
        assert fatal.line.endswith(f"{interp}: {os.strerror(real)}") and fatal.exit_status == 126
    assert_ldd_parity(e)  # ldd runs ld.so itself: the interpreter named in the file does not matter


def test_a_program_whose_bss_only_segment_has_any_offset_runs(tmp_path: Path) -> None:
    """A PT_LOAD without file data (p_filesz 0) is anonymous memory to the kernel: its offset is never used,
    and ld.so does not check the program's own segments. ``ld.so --verify`` does: ldd says "not a dynamic
    executable" while the program runs."""
    e = executable(tmp_path / "e", "int main(void) { return 0; }\n")
    data = bytearray(e.read_bytes())
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phnum, = struct.unpack_from("<H", data, 0x38)
    note = [i for i in range(phnum) if struct.unpack_from("<I", data, phoff + 56 * i)[0] == 4][-1]
    # the last PT_NOTE becomes PT_LOAD RW, offset 0x123, address 0x10000000, no file data, one page of bss
    struct.pack_into("<IIQQQQQQ", data, phoff + 56 * note, 1, 6, 0x123, 0x10000000, 0x10000000, 0, 0x1000, 0x1000)
    bss = tmp_path / "bss"
    bss.write_bytes(bytes(data))
    bss.chmod(0o755)
    assert run_program(bss).status == 0
    assert predict(bss)[1].fatal is None
    out = assert_ldd_parity(bss)
    assert out.status == 1 and out.stderr == "\tnot a dynamic executable\n"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="root and unshare are needed")
def test_a_library_on_a_noexec_mount_cannot_be_mapped(tmp_path: Path) -> None:
    """ld.so maps the code segment PROT_EXEC; on a noexec mount that fails (EPERM): "failed to map segment
    from shared object". The mount lives in a private mount namespace that dies with the script."""
    nx = tmp_path / "nx"
    nx.mkdir()
    lib = tmp_path / "libn.so"
    shared_lib(lib, lib_source("n"), soname="libn.so")
    e = executable(tmp_path / "e", sources_needing("n"), flags=rpath_flags(str(nx)), libs=[str(lib)])
    src = Path(__file__).resolve().parents[2] / "src"
    script = (f"mount -t tmpfs -o noexec,size=8m tmpfs {nx} && cp {lib} {nx}/ && "
              f"{e}; echo \"run=$?\"; ldd {e}; echo \"ldd=$?\"; "
              f"PYTHONPATH={src} {sys.executable} -m soswap tree --ldd {e}; echo \"soswap=$?\"")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                       text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "SOSWAP_CACHE_DIR": str(tmp_path / "c"),
                                                    "SOSWAP_STATE_DIR": str(tmp_path / "s")})
    if "run=" not in r.stdout:
        pytest.skip(f"no private mount here: {r.stderr.strip()}")
    message = "libn.so: failed to map segment from shared object"
    assert "run=127" in r.stdout and message in r.stderr, r.stdout + r.stderr
    assert "ldd=1" in r.stdout and "soswap=1" in r.stdout
    assert (r.stdout + r.stderr).count(message) == 3  # the program, ldd and soswap say the same
    assert not any(nx.iterdir())  # the mount went with the namespace


def test_a_program_interpreter_that_is_a_program_crashes(tmp_path: Path) -> None:
    """PT_INTERP leads to an ordinary dynamically linked program: the kernel maps it and jumps into it without
    relocating it, and it dies of SIGSEGV."""
    interp = tmp_path / "ld.so"
    interp.symlink_to(os.path.realpath("/bin/true"))
    e = executable(tmp_path / "e", "int main(void) { return 0; }\n", flags=[f"-Wl,--dynamic-linker={interp}"])
    assert run_program(e).status == -signal.SIGSEGV
    fatal = predict(e)[1].fatal
    assert fatal is not None and fatal.kind == "crash" and fatal.exit_status == 128 + signal.SIGSEGV
    assert "is a dynamically linked program" in fatal.line
