"""What the diff must not call "no change": a NEW cut short (ld.so dies of SIGBUS mapping it) and a static TLS
block that grew (dlopen runs out of the static TLS surplus), and a dlopen()ed module that has an interpreter
but cannot be executed (pam_cap.so) checked as the plugin it is. Each against the real loader: the program
run, or dlopen() and its dlerror() text."""

from __future__ import annotations

import json
import mmap
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from soswap.abi import diff_files
from soswap.abi.rdeps import LIBRARY, PROGRAM, classify
from soswap.elf import ElfFile
from soswap.elf import constants as C
from support.build import executable, requires_cc, rpath_flags, shared_lib

from .cli import soswap_check

pytestmark = requires_cc
ROOT = Path(__file__).resolve().parents[2]
DLOPEN = ('#include <dlfcn.h>\n#include <stdio.h>\nint main(int c, char **v) { (void)c;\n'
          '  if (!dlopen(v[1], RTLD_NOW)) { printf("%s\\n", dlerror()); return 1; } puts("loaded"); return 0; }\n')


def _run(args: List[str], libdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env={"LD_LIBRARY_PATH": str(libdir), "LC_ALL": "C"}, capture_output=True,
                          text=True, timeout=30)


def test_a_new_cut_short_is_refused(tmp_path: Path) -> None:
    # initialized data over several pages, then bss: the last page of the RW segment holds the end of .data
    src = ("__attribute__((used)) static char pad[3 * 4096] = {1};\n__attribute__((used)) static int zz;\n"
           "int foo(void) { return 42; }\n")
    old = shared_lib(tmp_path / "v1" / "libfoo.so.1", src, soname="libfoo.so.1")
    app = executable(tmp_path / "app", "#include <stdio.h>\nint foo(void);\nint main(void) { return foo() - 42; }\n",
                     libs=[str(old)], flags=rpath_flags(str(old.parent)))
    seg = [s for s in ElfFile.open(old).segments if s.type == C.PT_LOAD and s.memsz > s.filesz][-1]
    end = seg.offset + seg.filesz
    cut = tmp_path / "v2" / "libfoo.so.1"
    cut.parent.mkdir()
    cut.write_bytes(old.read_bytes()[:end - end % mmap.PAGESIZE])
    assert _run([str(app)], old.parent).returncode == 0
    assert _run([str(app)], cut.parent).returncode == -7  # SIGBUS in ld.so, as an interrupted copy makes it
    (change,) = diff_files(str(old), str(cut)).changes
    assert (change.kind, change.severity) == ("file-truncated", "breaking") and "SIGBUS" in change.detail
    r = soswap_check(tmp_path, "--scope", str(tmp_path), "--json", str(cut), str(old))
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "incompatible" and [c["kind"] for c in doc["refusals"]] == ["file-truncated"]


def _bad_plt_symbol(lib: Path, out: Path) -> Path:
    """A copy of ``lib`` whose first DT_JMPREL entry names symbol 32767, past the end of its symbol table."""
    import struct

    data = bytearray(lib.read_bytes())
    elf = ElfFile.open(lib)
    jmprel = elf.vaddr_to_offset(elf.dynamic.tags[C.DT_JMPREL], 24, "DT_JMPREL")
    struct.pack_into("<I", data, jmprel + 12, 0x7FFF)  # the symbol half of r_info (Elf64_Rela)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(data))
    return out


def test_a_new_whose_relocations_cannot_be_decoded_is_refused(tmp_path: Path) -> None:
    """A relocation of NEW names a symbol past the end of its symbol table: ld.so reads whatever lies there
    (here the program dies of SIGSEGV). No consumer's binding of NEW can be checked, and the diff finds no
    other change, so every consumer was "compatible" and install went ahead: it is refused now."""
    src = "int bar(void);\nint foo(void) { return bar() + 1; }\n"
    bar = shared_lib(tmp_path / "v1" / "libbar.so", "int bar(void) { return 41; }\n", soname="libbar.so")
    old = shared_lib(tmp_path / "v1" / "libfoo.so.1", src, soname="libfoo.so.1", libs=[str(bar)])
    app = executable(tmp_path / "app", "int foo(void);\nint main(void) { return foo() - 42; }\n",
                     libs=[str(old)], flags=rpath_flags(str(old.parent)))
    bad = _bad_plt_symbol(old, tmp_path / "v2" / "libfoo.so.1")
    shutil.copy2(bar, bad.parent / "libbar.so")
    assert _run([str(app)], old.parent).returncode == 0
    assert _run([str(app)], bad.parent).returncode < 0  # killed while relocating or at the call
    (change,) = diff_files(str(old), str(bad)).changes
    assert (change.kind, change.severity) == ("references-undecodable", "breaking")
    assert "relocation names symbol 32767 of" in change.detail
    r = soswap_check(tmp_path, "--consumer", str(app), "--json", str(bad), str(old))
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "incompatible" and [c["kind"] for c in doc["refusals"]] == ["references-undecodable"]
    # OLD as bad as NEW: a note, not a refusal (nothing gets worse)
    worse = _bad_plt_symbol(old, tmp_path / "v3" / "libfoo.so.1")
    (same,) = diff_files(str(bad), str(worse)).changes
    assert (same.kind, same.severity) == ("references-undecodable", "review")


def test_a_consumer_whose_relocations_cannot_be_decoded_is_a_review_note(tmp_path: Path) -> None:
    """A consumer (not NEW) has a relocation naming a symbol past its symbol table: what ld.so binds there is not
    known (here the program dies of SIGSEGV with OLD already). check said "compatible: NEW breaks none of the 1
    consumer checked", silent about the references it could not check; now the consumer is compatible, to
    review, with the reason, and install says it as a warning (not a refusal: NEW makes nothing worse that can
    be seen). A library of the consumer's tree is judged the same way."""
    old = shared_lib(tmp_path / "v1" / "libfoo.so.1", "int foo(void) { return 41; }\nint bar(void) { return 1; }\n",
                     soname="libfoo.so.1")
    new = shared_lib(tmp_path / "v2" / "libfoo.so.1", "int foo(void) { return 41; }\n", soname="libfoo.so.1")
    src = "int foo(void);\nint bar(void);\nint main(void) { return foo() + bar() - 42; }\n"
    app = executable(tmp_path / "app", src, libs=[str(old)], flags=rpath_flags(str(old.parent)))
    assert _run([str(app)], old.parent).returncode == 0
    r = soswap_check(tmp_path, "--consumer", str(app), "--json", str(new), str(old))
    assert r.returncode == 1 and json.loads(r.stdout)["verdict"] == "incompatible"  # bar is gone: the control
    bad = _bad_plt_symbol(app, tmp_path / "bad" / "app")
    bad.chmod(0o755)
    assert _run([str(bad)], old.parent).returncode < 0  # ld.so binds garbage: SIGSEGV
    r = soswap_check(tmp_path, "--consumer", str(bad), "--json", str(new), str(old))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (consumer,) = doc["consumers"]
    assert doc["verdict"] == consumer["verdict"] == "compatible"
    assert consumer["note"].startswith(f"review: its references cannot all be checked ({bad}: relocation names "
                                       "symbol 32767 of ")
    text = soswap_check(tmp_path, "--consumer", str(bad), "--", str(new), str(old)).stdout
    assert "compatible, to review (1):" in text and "references cannot all be checked" in text
    # a library of the tree: the same note, naming the library
    lib = shared_lib(tmp_path / "v1" / "libmid.so", "int bar(void);\nint mid(void) { return bar(); }\n",
                     soname="libmid.so", libs=[str(old)])
    _bad_plt_symbol(lib, tmp_path / "badlib" / "libmid.so")
    user = executable(tmp_path / "user", "int mid(void);\nint main(void) { return mid() - 1; }\n",
                      libs=[str(lib)], flags=rpath_flags(str(tmp_path / "badlib"), str(old.parent), old_dtags=True))
    doc = json.loads(soswap_check(tmp_path, "--consumer", str(user), "--json", str(new), str(old)).stdout)
    assert f"({tmp_path / 'badlib' / 'libmid.so'}: relocation names symbol 32767" in doc["consumers"][0]["note"]


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.6])
def test_a_new_cut_before_its_dynamic_section_is_refused_as_cut_short(tmp_path: Path, fraction: float) -> None:
    """Most of an interrupted copy's cuts fall before the dynamic section (near the end of a library): NEW is
    cut short (exit 1, ``file-truncated``), as ld.so dies of SIGBUS; it was an error about the dynamic section
    lying outside the file (exit 2)."""
    src = "int foo(void) { return 42; }\n" + "".join(f"int f{n}(int x) {{ return x * {n}; }}\n" for n in range(400))
    old = shared_lib(tmp_path / "v1" / "libfoo.so.1", src, soname="libfoo.so.1")
    app = executable(tmp_path / "app", "int foo(void);\nint main(void) { return foo() - 42; }\n",
                     libs=[str(old)], flags=rpath_flags(str(old.parent)))
    dyn = ElfFile.open(old).segments_of_type(C.PT_DYNAMIC)[0]
    data = old.read_bytes()
    at = max(4096, int(len(data) * fraction))
    assert at + mmap.PAGESIZE <= dyn.offset - dyn.offset % mmap.PAGESIZE
    cut = tmp_path / "v2" / "libfoo.so.1"
    cut.parent.mkdir()
    cut.write_bytes(data[:at])
    assert _run([str(app)], cut.parent).returncode == -7  # SIGBUS in ld.so
    (change,) = diff_files(str(old), str(cut)).changes
    assert (change.kind, change.severity) == ("file-truncated", "breaking") and "SIGBUS" in change.detail
    r = soswap_check(tmp_path, "--consumer", str(app), "--json", "--", str(cut), str(old))
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert [c["kind"] for c in doc["refusals"]] == ["file-truncated"]
    assert doc["consumers"][0]["problems"][0]["message"].startswith("ld.so crashes (SIGBUS) mapping")


_RELOCATED = ("".join(f"int d{n} = {n + 1};\n" for n in range(800))
              + "int *ptrs[] = {" + ",".join(f"&d{n}" for n in range(800)) + "};\n"
              + "int sum(void) { int s = 0; for (int i = 0; i < 800; i++) s += *ptrs[i]; return s; }\n")


def _relocated_lib(tmp_path: Path, name: str, bss: bool) -> Tuple[Path, Path]:
    """A library whose writable segment holds pages of pointers ld.so relocates, after the dynamic section
    (without .bss: no crtbeginS.o, so ld.so zero-fills nothing), and a program that uses it."""
    src = _RELOCATED + ("static char big[65536]; char *bigp(void) { return big; }\n" if bss else "")
    lib = shared_lib(tmp_path / name / "librel.so.1", src, soname="librel.so.1",
                     flags=[] if bss else ["-nostartfiles"])
    app = executable(tmp_path / f"app-{name}", "int sum(void);\nint main(void) { return sum() != 320400; }\n",
                     libs=[str(lib)], flags=rpath_flags(str(lib.parent)))
    return lib, app


def _page_after_dynamic(lib: Path) -> int:
    elf = ElfFile.open(lib)
    dyn = elf.segments_of_type(C.PT_DYNAMIC)[0]
    rw = next(s for s in elf.segments_of_type(C.PT_LOAD) if s.offset <= dyn.offset < s.offset + s.filesz)
    cut = -(-(dyn.offset + dyn.filesz) // mmap.PAGESIZE) * mmap.PAGESIZE
    assert cut < rw.offset + rw.filesz
    return cut


def test_a_new_cut_where_ld_so_relocates_kills_it(tmp_path: Path) -> None:
    """No .bss to zero-fill and the dynamic section whole, but the relocations write into a page past the end
    of the file: ld.so dies of SIGBUS relocating NEW, before the program runs. The consumer was called
    compatible."""
    old, app = _relocated_lib(tmp_path, "v1", bss=False)
    cut = tmp_path / "v2" / "librel.so.1"
    cut.parent.mkdir()
    cut.write_bytes(old.read_bytes()[:_page_after_dynamic(old)])
    assert _run([str(app)], old.parent).returncode == 0
    assert _run([str(app)], cut.parent).returncode == -7
    r = soswap_check(tmp_path, "--consumer", str(app), "--json", "--", str(cut), str(old))
    assert r.returncode == 1, r.stderr
    (problem,) = json.loads(r.stdout)["consumers"][0]["problems"]
    assert problem["message"].startswith("ld.so crashes (SIGBUS)") and "relocations write" in problem["message"]


def test_an_installed_file_cut_by_a_byte_does_not_excuse_a_new_cut_by_pages(tmp_path: Path) -> None:
    """OLD one byte short (it runs), NEW cut a page after its dynamic section (ld.so dies zero-filling .bss):
    NEW is still file-truncated; the rule was "OLD cut short too: not NEW's doing"."""
    orig, app = _relocated_lib(tmp_path, "v0", bss=True)
    data = orig.read_bytes()
    elf = ElfFile.open(orig)
    rw = [s for s in elf.segments_of_type(C.PT_LOAD) if s.memsz > s.filesz][-1]
    old = tmp_path / "v1" / "librel.so.1"
    old.parent.mkdir()
    old.write_bytes(data[:rw.offset + rw.filesz - 1])
    new = tmp_path / "v2" / "librel.so.1"
    new.parent.mkdir()
    new.write_bytes(data[:_page_after_dynamic(orig)])
    assert _run([str(app)], old.parent).returncode == 0
    assert _run([str(app)], new.parent).returncode == -7
    kinds = [(c.kind, c.severity) for c in diff_files(str(old), str(new)).changes]
    assert kinds == [("file-truncated", "breaking")]
    assert diff_files(str(new), str(old)).changes == ()  # the other way round, OLD fares worse: nothing said


def test_a_new_cut_after_its_segments_loads_and_is_a_review_note(tmp_path: Path) -> None:
    """Only the section header table is lost: the program runs (ld.so never reads it), so nothing breaks, but
    the file is not the one that was built: a review change, and a warning from install."""
    old = shared_lib(tmp_path / "v1" / "libfoo.so.1", "int foo(void) { return 42; }\n", soname="libfoo.so.1")
    app = executable(tmp_path / "app", "int foo(void);\nint main(void) { return foo() - 42; }\n",
                     libs=[str(old)], flags=rpath_flags(str(old.parent)))
    elf = ElfFile.open(old)
    end = max(s.offset + s.filesz for s in elf.segments)
    data = old.read_bytes()
    assert elf.header.shoff >= end
    cut = tmp_path / "v2" / "libfoo.so.1"
    cut.parent.mkdir()
    cut.write_bytes(data[:elf.header.shoff + 10])
    assert _run([str(app)], cut.parent).returncode == 0
    (change,) = diff_files(str(old), str(cut)).changes
    assert (change.kind, change.severity) == ("file-incomplete", "review")
    r = soswap_check(tmp_path, "--consumer", str(app), "--json", "--", str(cut), str(old))
    assert r.returncode == 0 and json.loads(r.stdout)["refusals"] == [], r.stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env.update(PYTHONPATH=str(ROOT / "src"), SOSWAP_STATE_DIR=str(tmp_path / "state"),
               SOSWAP_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "soswap", "install", "--dry-run", str(cut), str(old), "--consumer",
                        str(app)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "file-incomplete" in r.stderr and "warning" in r.stderr, r


_GROWN = ('static __thread char buf[N] __attribute__((tls_model("initial-exec")));\n'
          "int foo(int i) { buf[i % N] = i; return buf[0]; }\n")
_ALIGNED = ('__attribute__((tls_model("initial-exec"))) __thread char buf[64] __attribute__((aligned(N)));\n'
            "int foo(int i) { buf[i % 64] = i; return buf[0]; }\n")


@pytest.mark.parametrize("src, old_n, new_n, values", [
    (_GROWN, "16", "8000", None),
    # _dl_try_allocate_static_tls refuses l_tls_align > dl_tls_static_align (TCB_ALIGNMENT, 64), whatever the size
    (_ALIGNED, "16", "128", ("64 bytes, align 16", "64 bytes, align 128")),
], ids=["grew", "aligned-more"])
def test_a_static_tls_block_that_grew_breaks_a_plugin(tmp_path: Path, src: str, old_n: str, new_n: str,
                                                       values: Optional[Tuple[str, str]]) -> None:
    old = shared_lib(tmp_path / "v1" / "libfoo.so.1", src.replace("N", old_n), soname="libfoo.so.1")
    new = shared_lib(tmp_path / "v2" / "libfoo.so.1", src.replace("N", new_n), soname="libfoo.so.1")
    plug = shared_lib(tmp_path / "plug" / "plug.so", "int foo(int);\nint plug(void) { return foo(1); }\n",
                      soname=None, libs=[str(old)], flags=rpath_flags(str(old.parent)))
    dl = executable(tmp_path / "dl", DLOPEN, libs=["-ldl"])
    assert _run([str(dl), str(plug)], old.parent).stdout == "loaded\n"
    real = _run([str(dl), str(plug)], new.parent)
    assert real.returncode == 1 and "cannot allocate memory in static TLS block" in real.stdout
    (change,) = diff_files(str(old), str(new)).changes
    assert (change.kind, change.severity) == ("static-tls-grown", "review")
    if values is not None:
        assert (change.old_value, change.new_value) == values
    r = soswap_check(tmp_path, "--scope", str(plug.parent), "--json", str(new), str(old))
    assert r.returncode == 1, r.stderr
    (consumer,) = json.loads(r.stdout)["consumers"]
    assert consumer["verdict"] == "incompatible"
    assert [p["message"] for p in consumer["problems"]] == [f"{old}: cannot allocate memory in static TLS block"]
    # a static TLS block that shrank is no change
    assert not diff_files(str(new), str(old)).changes


def test_a_module_with_an_interpreter_that_cannot_be_executed_is_a_plugin(tmp_path: Path) -> None:
    # like libcap's pam_cap.so: PT_INTERP and an entry point so that running it prints something, no SONAME,
    # mode 0644, dlopen()ed by PAM
    shared_lib(tmp_path / "v1" / "libcap.so.2", "int cap_old(void) { return 1; }\nint cap_new(void) { return 2; }\n",
               soname="libcap.so.2")
    new = shared_lib(tmp_path / "v2" / "libcap.so.2", "int cap_old(void) { return 1; }\n", soname="libcap.so.2")
    old = tmp_path / "v1" / "libcap.so.2"
    mod = shared_lib(tmp_path / "security" / "pam_mod.so",
                     'const char interp[] __attribute__((section(".interp"))) = "/lib64/ld-linux-x86-64.so.2";\n'
                     "int cap_new(void);\nint pam_sm_authenticate(void) { return cap_new(); }\n"
                     "void modmain(void) { __builtin_trap(); }\n",
                     soname=None, libs=[str(old)],
                     flags=["-Wl,-e,modmain", "-Wl,-z,now", *rpath_flags(str(old.parent))])
    assert ElfFile.open(mod).interpreter
    mod.chmod(0o644)
    assert classify(ElfFile.open(mod)) == LIBRARY
    shutil.copy(mod, tmp_path / "runnable.so")
    (tmp_path / "runnable.so").chmod(0o755)
    assert classify(ElfFile.open(tmp_path / "runnable.so")) == PROGRAM  # a PIE linked before DF_1_PIE
    dl = executable(tmp_path / "dl", DLOPEN, libs=["-ldl"])
    real = _run([str(dl), str(mod)], new.parent)
    assert real.returncode == 1
    r = soswap_check(tmp_path, "--scope", str(mod.parent), "--json", str(new), str(old))
    assert r.returncode == 1, r.stderr
    (consumer,) = json.loads(r.stdout)["consumers"]
    assert (consumer["role"], consumer["verdict"]) == ("plugin", "incompatible")
    (problem,) = consumer["problems"]
    assert (problem["when"], problem["message"]) == ("dlopen", real.stdout.strip())


def test_a_new_cut_short_where_ld_so_touches_nothing_is_refused_too(tmp_path: Path) -> None:
    # no .bss: ld.so zero-fills nothing, maps the cut file and returns; the program dies of SIGBUS when it reads
    # the missing part (ldd says nothing)
    old = shared_lib(tmp_path / "v1" / "libt.so.1", "int tbl[8192] = {1, 2, 3};\nint get(int i) { return tbl[i]; }\n",
                     soname="libt.so.1", flags=["-nostartfiles"])
    app = executable(tmp_path / "app", "int get(int);\nint main(void) { return get(1) + get(8000) - 2; }\n",
                     libs=[str(old)], flags=rpath_flags(str(old.parent)))
    seg = [s for s in ElfFile.open(old).segments if s.type == C.PT_LOAD][-1]
    assert seg.memsz == seg.filesz
    cut = tmp_path / "v2" / "libt.so.1"
    cut.parent.mkdir()
    cut.write_bytes(old.read_bytes()[:seg.offset + mmap.PAGESIZE])
    assert _run([str(app)], old.parent).returncode == 0
    assert _run([str(app)], cut.parent).returncode == -7
    (change,) = diff_files(str(old), str(cut)).changes
    assert (change.kind, change.severity) == ("file-truncated", "breaking") and "reads zeros" in change.detail
    r = soswap_check(tmp_path, "--consumer", str(app), "--json", str(cut), str(old))
    assert r.returncode == 1 and json.loads(r.stdout)["refusals"][0]["kind"] == "file-truncated", r.stderr


def test_a_program_cut_inside_its_interpreter_name_never_starts(tmp_path: Path) -> None:
    """The kernel cannot read the interpreter's name of a program cut there: execve fails with EIO (not a
    SIGBUS or SIGSEGV of the running program, as was said)."""
    import errno

    prog = executable(tmp_path / "prog", "int main(void) { return 0; }\n")
    interp = ElfFile.open(prog).segments_of_type(C.PT_INTERP)[0]
    cut = tmp_path / "cut"
    cut.write_bytes(prog.read_bytes()[:interp.offset + 4])
    cut.chmod(0o755)
    with pytest.raises(OSError) as err:
        subprocess.run([str(cut)], timeout=30)
    assert err.value.errno == errno.EIO
    (change,) = diff_files(str(prog), str(cut)).changes
    assert change.kind == "file-truncated" and "Input/output error" in change.detail
