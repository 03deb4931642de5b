"""``soswap tree`` from the command line: exit statuses, the --ldd contract, --json (docs/json-tree.md),
--root (checked against the program run in a chroot), and bad input as one error line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loader.helpers import BASE_ENV, PROFILE, env_with, lib_source, real_ldd, sources_needing
from support.build import executable, requires_cc, requires_root, rpath_flags, run_cc, shared_lib

pytestmark = requires_cc

SRC = str(Path(__file__).resolve().parents[2] / "src")


def soswap(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    e = dict(env if env is not None else BASE_ENV)
    e["PYTHONPATH"] = SRC
    return subprocess.run([sys.executable, "-m", "soswap", "tree", *args], cwd=cwd, env=e, capture_output=True,
                          text=True, errors="surrogateescape", timeout=120)


def _ok_and_broken(tmp: Path):  # type: ignore[no-untyped-def]
    d = tmp / "d"
    shared_lib(d / "libb.so", lib_source("b"), soname="libb.so")
    shared_lib(d / "liba.so", lib_source("a", calls=["b"]), soname="liba.so", libs=[f"-L{d}", "-lb"])
    ok = executable(tmp / "ok", sources_needing("a"), flags=rpath_flags(str(d), old_dtags=True),
                    libs=[f"-L{d}", "-la"])
    broken = executable(tmp / "broken", sources_needing("a"), flags=rpath_flags(str(d)), libs=[f"-L{d}", "-la"])
    return ok, broken


def test_exit_status_and_text(tmp_path: Path) -> None:
    ok, broken = _ok_and_broken(tmp_path)
    r = soswap(str(ok))
    assert r.returncode == 0, r.stderr
    assert "liba.so => " in r.stdout and "[RPATH" in r.stdout and "libb.so" in r.stdout
    r = soswap(str(ok), str(broken))
    assert r.returncode == 1
    assert (f"fails at startup: {broken}: error while loading shared libraries: libb.so: cannot open shared object "
            "file: No such file or directory") in r.stdout
    r = soswap(str(ok), str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("soswap: error: ")


def test_a_program_given_again_through_links_is_reported_the_same(tmp_path: Path) -> None:
    """A FILE's program is released after the last of its names (Loader.release): the same program given
    again through a symbolic and a hard link, between others and after its libraries, is reported each time
    as alone."""
    ok, broken = _ok_and_broken(tmp_path)
    (tmp_path / "sym").symlink_to(ok)
    os.link(ok, tmp_path / "hard")
    lib = str(tmp_path / "d" / "liba.so")
    files = [str(ok), lib, str(broken), str(tmp_path / "sym"), str(ok), str(tmp_path / "hard"), lib]
    for flags in (["-r"], ["--ldd", "-r"], []):
        for jobs in ("1", "3"):
            together = soswap("--no-cache", "-j", jobs, *flags, *files)
            alone = [soswap("--no-cache", *flags, f) for f in files]
            header = (lambda f: f"{f}:\n") if "--ldd" in flags else (lambda f: "")
            assert together.stdout == "".join(header(f) + r.stdout for f, r in zip(files, alone)), (flags, jobs)
            assert together.returncode == max(r.returncode for r in alone), (flags, jobs)


def test_not_an_elf_file_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "script").write_text("#!/bin/sh\necho hi\n")
    r = soswap(str(tmp_path / "script"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_ldd_mode_is_byte_identical(tmp_path: Path) -> None:
    ok, broken = _ok_and_broken(tmp_path)
    (tmp_path / "text").write_text("hello\n")
    files = [str(ok), str(broken), "text", "/usr/bin/true", "missing"]
    for flag in ([], ["-r"]):
        want = real_ldd(*files, cwd=tmp_path, flag=flag[0] if flag else None)
        got = soswap("--ldd", *flag, *files, cwd=tmp_path)
        assert got.stdout == want.stdout and got.returncode == want.status and got.stderr == want.stderr


def test_ldd_mode_goes_on_after_a_file_it_cannot_emulate(tmp_path: Path) -> None:
    """A FILE soswap cannot emulate (its DT_STRTAB outside every segment) is one error line in its place; the
    other FILEs are printed as ldd prints them, in order, on any number of workers, and the status is 2. The
    whole run stopped at the first such file, and which one was named depended on the workers."""
    import struct

    ok, _broken = _ok_and_broken(tmp_path)
    data = bytearray(Path("/usr/bin/true").read_bytes())
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phnum, = struct.unpack_from("<H", data, 0x38)
    dyn = next(struct.unpack_from("<Q", data, phoff + i * 56 + 8)[0] for i in range(phnum)
               if struct.unpack_from("<I", data, phoff + i * 56)[0] == 2)
    n = 0
    while struct.unpack_from("<q", data, dyn + 16 * n)[0] not in (0, 5):  # DT_STRTAB
        n += 1
    struct.pack_into("<Q", data, dyn + 16 * n + 8, 1 << 44)
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    bad.chmod(0o755)
    files = [str(ok), str(bad), *[str(ok)] * 60, str(bad), "/usr/bin/true"]
    want = real_ldd(str(ok), "/usr/bin/true", cwd=tmp_path)
    for jobs in ("1", "2", "3"):
        got = soswap("--ldd", "-j", jobs, *files, cwd=tmp_path)
        assert got.returncode == 2 and "Traceback" not in got.stderr
        assert got.stderr.count("soswap: error: ") == 2 and got.stderr.count("\n") == 2, got.stderr
        assert got.stdout.startswith(want.stdout.split("/usr/bin/true:\n")[0] + f"{bad}:\n{ok}:\n")
        assert got.stdout.endswith(f"{bad}:\n/usr/bin/true:\n" + want.stdout.split("/usr/bin/true:\n")[1])


def _dynamic_entry(data: bytes, tag: int) -> int:
    """The file offset of the value of ``tag`` in the dynamic section of the x86-64 ELF file ``data``."""
    import struct

    phoff, = struct.unpack_from("<Q", data, 0x20)
    phnum, = struct.unpack_from("<H", data, 0x38)
    dyn = next(struct.unpack_from("<Q", data, phoff + i * 56 + 8)[0] for i in range(phnum)
               if struct.unpack_from("<I", data, phoff + i * 56)[0] == 2)
    n = 0
    while struct.unpack_from("<q", data, dyn + 16 * n)[0] != tag:
        assert struct.unpack_from("<q", data, dyn + 16 * n)[0] != 0, tag
        n += 1
    return dyn + 16 * n + 8


def _a_calls_b(tmp: Path):  # type: ignore[no-untyped-def]
    """liba.so (both hash tables) calling libb.so, and a program using liba.so through an RPATH."""
    d = tmp / "d"
    shared_lib(d / "libb.so", lib_source("b"), soname="libb.so")
    lib = shared_lib(d / "liba.so", lib_source("a", calls=["b"]), soname="liba.so", libs=[f"-L{d}", "-lb"],
                     flags=["-Wl,--hash-style=both"])
    prog = executable(tmp / "prog", sources_needing("a"), flags=rpath_flags(str(d), old_dtags=True),
                      libs=[f"-L{d}", "-la"])
    return lib, prog


def _shrink_dt_hash(lib: Path) -> None:
    """Set the nchain of ``lib``'s DT_HASH to 1 (its DT_GNU_HASH is left as it is)."""
    import struct

    data = bytearray(lib.read_bytes())
    at = struct.unpack_from("<Q", data, _dynamic_entry(data, 4))[0]  # DT_HASH: its vaddr is its offset here
    struct.pack_into("<I", data, at + 4, 1)
    lib.write_bytes(bytes(data))


def test_a_dt_hash_that_disagrees_with_dt_gnu_hash_is_not_what_ld_so_reads(tmp_path: Path) -> None:
    """A library with both hash tables whose DT_HASH says it has one symbol: ld.so looks up in DT_GNU_HASH
    (``_dl_setup_hash`` never reads DT_HASH then) and the program runs. soswap sized the symbol table by
    DT_HASH: ``-r`` could not check the library's references, and ``check`` said the program would lose
    ``a_fn`` with that library as NEW (a false refusal). The program run is the oracle."""
    lib, prog = _a_calls_b(tmp_path)
    old = tmp_path / "liba-old.so"
    shutil.copy2(lib, old)
    _shrink_dt_hash(lib)
    assert subprocess.run([str(prog)], env=BASE_ENV, timeout=60).returncode == 0
    r = soswap("-r", "--no-cache", str(prog))
    assert (r.returncode, r.stderr) == (0, ""), r.stdout
    assert "symbols: " in r.stdout and ", 0 unresolved" in r.stdout and "not checked" not in r.stdout
    assert soswap("--ldd", "-r", str(prog)).stdout == real_ldd(str(prog), flag="-r").stdout
    # the same library as NEW over the intact one
    e = dict(BASE_ENV, PYTHONPATH=SRC, SOSWAP_STATE_DIR=str(tmp_path / "state"))
    got = subprocess.run([sys.executable, "-m", "soswap", "check", "--cache-dir", str(tmp_path / "cache"), "--full",
                          str(lib), str(old), "--consumer", str(prog)], env=e, capture_output=True, text=True,
                         timeout=120)
    assert got.returncode == 0 and got.stdout.startswith("compatible:"), got.stdout + got.stderr


def test_references_that_cannot_be_checked_are_an_error_not_silence(tmp_path: Path) -> None:
    """A library whose PLT relocation names a symbol past the end of its symbol table: ``-r`` cannot check its
    references. The tree is printed with the reason, one error line names the library, and the status is 2;
    ``--ldd -r`` has that one line in place of the file's output. Such a library was passed over in silence:
    "every reference resolves"."""
    import struct

    lib, prog = _a_calls_b(tmp_path)
    data = bytearray(lib.read_bytes())
    jmprel = struct.unpack_from("<Q", data, _dynamic_entry(data, 23))[0]  # DT_JMPREL: vaddr == offset here
    struct.pack_into("<I", data, jmprel + 12, 0x7FFF)  # the symbol half of the first entry's r_info
    lib.write_bytes(bytes(data))
    r = soswap("-r", "--no-cache", str(prog))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f"soswap: error: {lib}: its references cannot be checked: relocation names "
                                     f"symbol 32767 of {r.stderr.split(' of ')[-1].strip()}"]
    assert f"symbols: not checked in {lib}: relocation names symbol 32767" in r.stdout and "liba.so => " in r.stdout
    doc = json.loads(soswap("-r", "--json", "--no-cache", str(prog)).stdout)["results"][0]
    assert [u["object"] for u in doc["symbols"]["unchecked"]] == [
        o["index"] for o in doc["objects"] if o["path"] == str(lib)]
    assert soswap(str(prog)).returncode == 0  # without -r nothing reads those tables
    got = soswap("--ldd", "-r", str(prog), "/usr/bin/true")
    assert got.returncode == 2 and got.stderr.splitlines() == r.stderr.splitlines()
    assert got.stdout == f"{prog}:\n/usr/bin/true:\n" + real_ldd("/usr/bin/true", flag="-r").stdout
    assert soswap("--ldd", str(prog)).stdout == real_ldd(str(prog)).stdout


def _patch_and_see_enoexec(path: Path, fmt: str, at: int, value: int) -> None:
    """Write ``value`` (``struct`` format ``fmt``) at offset ``at`` of ``path``, make it executable, and check the
    oracle: the kernel refuses to run it (ENOEXEC)."""
    import struct

    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, at, value)
    path.write_bytes(bytes(data))
    path.chmod(0o755)
    with pytest.raises(OSError) as run:
        subprocess.run([str(path)], timeout=60)
    assert run.value.errno == 8  # ENOEXEC


@pytest.mark.parametrize("e_type, words", [(1, "relocatable object (ET_REL)"), (4, "core dump (ET_CORE)")])
def test_an_object_file_or_a_core_dump_is_never_executed(tmp_path: Path, e_type: int, words: str) -> None:
    """execve runs ET_EXEC and ET_DYN files only (``load_elf_binary``): an object file (or a core dump) is
    ENOEXEC, exit status 126 from a shell. It was shown as a statically linked program that runs."""
    obj = tmp_path / "thing"
    (tmp_path / "t.c").write_text("int main(void) { return 0; }\n")
    run_cc(["-c", "-o", str(obj), str(tmp_path / "t.c")])
    _patch_and_see_enoexec(obj, "<H", 16, e_type)
    r = soswap("--no-cache", str(obj))
    kind = words.split("(")[1].rstrip(")")
    assert r.returncode == 1 and r.stderr == "", r.stderr
    assert r.stdout.splitlines() == [
        f"{obj}  (ELF {words}: neither a program nor a shared library)",
        f"fails at startup: {obj}: cannot execute: Exec format error ({kind}: the kernel executes ET_EXEC and "
        "ET_DYN files only)",
        "verdict: the program cannot start (exit status 126)"]
    doc = json.loads(soswap("--json", "--no-cache", str(obj)).stdout)["results"][0]
    assert not doc["loadable"] and (doc["fatal"]["kind"], doc["fatal"]["exit_status"]) == ("not-executable", 126)
    got, want = soswap("--ldd", str(obj)), real_ldd(str(obj))
    assert (got.stdout, got.stderr, got.returncode) == (want.stdout, want.stderr, want.status)


#: (name, header field offset, struct format, value, what the refusal says): ELF64 e_phoff 32, e_phentsize 54,
#: e_phnum 56
_BAD_PHDRS = [
    ("entry-size", 54, "<H", 48, "e_phentsize is 48, not the 56 bytes of an Elf64_Phdr"),
    ("no-entries", 56, "<H", 0, "it has no program headers"),
    ("over-64k", 56, "<H", 1200, "its program header table is larger than 64 KiB (67200 bytes)"),
    ("past-the-end", 32, "<Q", -100, "runs past the end of the file"),
]


@pytest.mark.parametrize("name, at, fmt, value, why", _BAD_PHDRS, ids=[c[0] for c in _BAD_PHDRS])
def test_a_program_header_table_the_kernel_cannot_read(tmp_path: Path, name: str, at: int, fmt: str, value: int,
                                                        why: str) -> None:
    """binfmt_elf ``load_elf_phdrs`` reads the whole program header table before anything else: a wrong entry
    size, no entry, more than 64 KiB or a table past the end of the file is ENOEXEC (the shell's 126). Before,
    the first three gave an error line (status 2) and a program without program headers was shown as a static
    program that runs; ``--ldd`` stays ldd's "not a dynamic executable"."""
    (tmp_path / "p.c").write_text("int main(void) { return 0; }\n")
    prog = tmp_path / name
    run_cc(["-o", str(prog), str(tmp_path / "p.c")])
    _patch_and_see_enoexec(prog, fmt, at, value if value >= 0 else prog.stat().st_size + value)
    r = soswap("--no-cache", str(prog))
    assert r.returncode == 1 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == (f"{prog}  (no program headers: nothing can be loaded)" if value == 0 else str(prog))
    assert lines[1].startswith(f"fails at startup: {prog}: cannot execute: Exec format error (")
    assert why in lines[1] and len(lines) == 3
    assert lines[2] == "verdict: the program cannot start (exit status 126)"
    doc = json.loads(soswap("--json", "-r", "--no-cache", str(prog)).stdout)["results"][0]
    assert (doc["fatal"]["kind"], doc["fatal"]["exit_status"]) == ("not-executable", 126)
    got, want = soswap("--ldd", str(prog)), real_ldd(str(prog))
    assert (got.stdout, got.stderr, got.returncode) == (want.stdout, want.stderr, want.status)
    # a consumer loaded to be checked, not run, still meets the file's own error (soswap elf, check)
    from soswap.elf import ElfFile
    from soswap.errors import ElfError
    from soswap.loader import Environment, Loader

    if value != 0:
        with pytest.raises(ElfError):
            Loader(PROFILE, Environment.from_environ(BASE_ENV)).load(str(prog))
        with pytest.raises(ElfError):
            ElfFile.open(prog)


def test_a_program_without_execute_permission_cannot_start(tmp_path: Path) -> None:
    """execve checks MAY_EXEC first (``do_open_execat``): a program with no execute bit for the caller (for
    root: none at all) is EACCES, the shell's 126. ``ldd`` does not look at the bit (it runs ld.so on it)."""
    ok, _broken = _ok_and_broken(tmp_path)
    ok.chmod(0o644)
    if os.geteuid() != 0 and os.access(ok, os.X_OK):  # pragma: no cover - an ACL grants it
        pytest.skip("an ACL grants execute permission here")
    with pytest.raises(PermissionError):  # the oracle: the kernel refuses it
        subprocess.run([str(ok)], timeout=60)
    r = soswap("--no-cache", str(ok))
    assert r.returncode == 1 and r.stderr == "", r.stderr
    assert (f"fails at startup: {ok}: cannot execute: Permission denied (no execute permission for this user)"
            in r.stdout.splitlines())
    assert r.stdout.splitlines()[-1] == "verdict: the program cannot start (exit status 126)"
    doc = json.loads(soswap("--json", "--no-cache", str(ok)).stdout)["results"][0]
    assert (doc["fatal"]["kind"], doc["fatal"]["exit_status"]) == ("not-executable", 126)
    got, want = soswap("--ldd", str(ok)), real_ldd(str(ok))
    assert (got.stdout, got.stderr, got.returncode) == (want.stdout, want.stderr, want.status)
    ok.chmod(0o700)  # the owner's bit alone: enough for its owner
    r = soswap("--no-cache", str(ok))
    assert r.returncode == 0 and "cannot execute" not in r.stdout, r.stdout


def test_execute_permission_of_another_identity_follows_the_mode_bits(tmp_path: Path) -> None:
    """For an identity other than soswap's own, the mode bits decide as ``generic_permission`` does: root
    needs any execute bit, anyone else the owner's, group's or others' bit that applies to them."""
    from soswap.loader.environment import mode_allows_execute

    f = tmp_path / "prog"
    f.write_bytes(b"")
    me = os.stat(f)
    uid = 65534 if me.st_uid != 65534 else 65533  # neither the owner nor root
    gid = 65534 if me.st_gid != 65534 else 65533
    cases = [
        (0o744, 0, 0, True), (0o644, 0, 0, False), (0o010, 0, 0, True), (0o001, 0, 0, True),
        (0o744, uid, gid, False), (0o751, uid, gid, True),
        (0o710, uid, me.st_gid, True), (0o701, uid, me.st_gid, False),
        (0o100, me.st_uid or uid, gid, me.st_uid != 0), (0o011, me.st_uid or uid, gid, me.st_uid == 0),
    ]
    for mode, euid, egid, want in cases:
        f.chmod(mode)
        assert mode_allows_execute(os.stat(f), euid, egid) is want, (oct(mode), euid, egid)
    # a test run as another user than root checks its own rule against the kernel
    if os.geteuid() != 0:  # pragma: no cover - CI runs as root
        for mode in (0o700, 0o070, 0o007, 0o644):
            f.chmod(mode)
            assert mode_allows_execute(os.stat(f), os.geteuid(), os.getegid()) == os.access(f, os.X_OK), oct(mode)


@pytest.mark.parametrize("flag, present", [("-f", False), ("-f", True), ("-F", True)])
def test_a_filter_library_as_file_keeps_its_tree_and_ldd_output(tmp_path: Path, flag: str, present: bool) -> None:
    """A library with DT_AUXILIARY (``-f``) or DT_FILTER (``-F``) as FILE: ld.so links the filtee in front of
    its filter (dl-deps.c), i.e. before the FILE, so its list from the FILE never shows it. The filtee came
    first in the result: ``--ldd`` printed "statically linked" (a missing auxiliary filtee, as a CUDA library
    under /usr/local has) or the FILE itself as a library line. ldd is the oracle."""
    d = tmp_path / "d"
    if present:
        shared_lib(d / "libaux.so", "int aux(void) { return 1; }\n", soname="libaux.so")
    lib = shared_lib(d / "libflt.so", '#include <stdio.h>\nint flt(void) { return puts("x"); }\n',
                     soname="libflt.so", flags=[f"-Wl,{flag},libaux.so", f"-Wl,-rpath,{d}"])
    for extra in ((), ("-r",)):
        got = soswap("--no-cache", "--ldd", *extra, str(lib))
        want = real_ldd(str(lib), flag=extra[0] if extra else None)
        assert (got.stdout, got.stderr, got.returncode) == (want.stdout, want.stderr, want.status)
    assert "libc.so.6 => " in got.stdout and "libaux" not in got.stdout
    r = soswap("--no-cache", str(lib))
    assert r.returncode == 0 and r.stdout.splitlines()[0] == str(lib)
    assert ("libaux.so => " in r.stdout) == present
    tag = {"-f": "auxiliary", "-F": "filter"}[flag]
    if present:
        assert f"libaux.so => {d / 'libaux.so'}  (filtee: DT_{tag.upper()})  [" in r.stdout, r.stdout
    doc = json.loads(soswap("--no-cache", "--json", str(lib)).stdout)["results"][0]
    assert doc["objects"][0]["kind"] == "executable" and doc["objects"][0]["file"] == str(lib)
    kinds = dict(zip(doc["objects"][0]["needed"], doc["objects"][0]["needed_kinds"]))
    assert sorted(kinds.values()) == sorted(["needed", tag] if present else ["needed"]), doc["objects"][0]
    # a second FILE of the same shape (a copy) shares the first one's load: the filtee stays unlisted there too
    # (the copy of the shared result left it out, and --ldd printed "libaux.so => ..." for the second FILE)
    twin = d / "libflt2.so"
    shutil.copyfile(lib, twin)
    got = soswap("--no-cache", "--ldd", "-j", "1", str(lib), str(twin))
    want = real_ldd(str(lib), str(twin))
    assert (got.stdout, got.stderr, got.returncode) == (want.stdout, want.stderr, want.status)


def test_a_file_without_dt_needed_still_loads_its_preloads_and_filtees(tmp_path: Path) -> None:
    """ldd says "statically linked" for a dynamic file without DT_NEEDED, but ld.so still loads its preloads
    and filtees: the tree said "nothing is loaded" (LD_DEBUG=libs of the program is the oracle)."""
    d = tmp_path / "d"
    shared_lib(d / "libaux.so", "int aux(void) { return 1; }\n", soname="libaux.so")
    flt = shared_lib(d / "libflt.so", "int flt(void) { return 1; }\n", soname="libflt.so",
                     flags=["-nostdlib", "-Wl,-F,libaux.so", f"-Wl,-rpath,{d}"])
    r = soswap("--no-cache", str(flt))
    assert r.stdout.splitlines() == [
        f'{flt}  (no DT_NEEDED: ldd says "statically linked")',
        f"└── libaux.so => {d / 'libaux.so'}  (filtee: DT_FILTER)  [RUNPATH {d}/ of {flt}]"], r.stdout
    assert real_ldd(str(flt)).stdout == "\tstatically linked\n"
    prog = tmp_path / "noneeds"
    src = tmp_path / "noneeds.c"
    src.write_text('void start(void) { for (;;) __asm__ volatile (""); }\n')
    run_cc(["-nostdlib", "-pie", "-fPIE", "-Wl,-e,start", f"-Wl,--dynamic-linker={PROFILE.interpreter}", "-o",
            str(prog), str(src)])
    preload = shared_lib(d / "libpre.so", "int pre(void) { return 1; }\n", soname="libpre.so", flags=["-nostdlib"])
    env = env_with(LD_PRELOAD=str(preload))
    r = soswap("--no-cache", str(prog), env=env)
    assert r.returncode == 0 and f"└── {preload}  [" in r.stdout and "statically linked" in r.stdout, r.stdout
    try:  # it spins once started: run() kills and reaps it at the timeout, with what it printed until then
        loaded = subprocess.run([str(prog)], env=env_with(LD_PRELOAD=str(preload), LD_DEBUG="libs"),
                                capture_output=True, text=True, timeout=2).stderr
    except subprocess.TimeoutExpired as exc:
        loaded = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    assert f"calling init: {preload}" in loaded, loaded


def test_ldd_mode_exits_where_the_ldd_script_exits(tmp_path: Path) -> None:
    """``ld.so --verify`` killed by SIGBUS (a program cut in its data): ldd says "exited with unknown exit code
    (135)" and exits 1 at once, on any number of workers: the FILEs after it are not listed."""
    ok, _broken = _ok_and_broken(tmp_path)
    prog = executable(tmp_path / "big", "static char buf[100000];\nint main(int c, char **v) { (void)v; "
                      "buf[c] = 1; return buf[0]; }\n")
    data = prog.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[:len(data) // 2])  # the end of its data, and its dynamic section, are gone
    cut.chmod(0o755)
    files = [str(ok), str(cut), *[str(ok)] * 60]
    want = real_ldd(*files, cwd=tmp_path)
    assert want.status == 1 and "unknown exit code (135)" in want.stderr and want.stdout.count(f"{ok}:") == 1
    for jobs in ("1", "2"):
        got = soswap("--ldd", "-j", jobs, *files, cwd=tmp_path)
        assert (got.stdout, got.stderr, got.returncode) == (want.stdout, want.stderr, want.status)


def test_json_schema(tmp_path: Path) -> None:
    ok, broken = _ok_and_broken(tmp_path)
    r = soswap("--json", "-r", str(ok), str(broken), str(tmp_path / "missing"))
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert doc["profile"]["glibc_version"] == "{}.{}".format(*PROFILE.glibc_version)
    first, second, third = doc["results"]
    assert first["loadable"] is True and first["fatal"] is None
    assert first["objects"][0]["kind"] == "executable"
    names = {o["name"]: o for o in first["objects"]}
    assert names["libb.so"]["reason"]["rule"] == "rpath"
    assert names["libb.so"]["reason"]["owner"] == 0
    assert first["symbols"]["checked"] > 0 and first["symbols"]["unresolved"] == []
    assert set(first) == {"file", "loadable", "static", "secure", "objects", "scope", "failures", "fatal", "symbols"}
    assert second["loadable"] is False and second["fatal"]["kind"] == "not-found"
    assert second["fatal"]["exit_status"] == 127 and second["fatal"]["when"] == "startup"
    assert "error" in third and third["file"].endswith("missing")


def test_library_path_and_preload_options(tmp_path: Path) -> None:
    ok, broken = _ok_and_broken(tmp_path)
    r = soswap("--library-path", str(tmp_path / "d"), str(broken))
    assert r.returncode == 0 and "LD_LIBRARY_PATH" in r.stdout
    r = soswap("--preload", "libnothere.so", str(ok))
    assert "cannot be preloaded" in r.stdout and r.returncode == 0
    r = soswap("--clean-env", str(broken), env=env_with(LD_LIBRARY_PATH=str(tmp_path / "d")))
    assert r.returncode == 1


def test_replace_option(tmp_path: Path) -> None:
    ok, _ = _ok_and_broken(tmp_path)
    new = shared_lib(tmp_path / "new" / "libb.so", "int other(void) { return 1; }\n", soname="libb.so")
    r = soswap("-r", "--replace", f"{tmp_path / 'd' / 'libb.so'}={new}", str(ok))
    assert r.returncode == 1 and "undefined symbol: b" in r.stdout and "what-if" in r.stdout
    r = soswap("--replace", "nonsense", str(ok))
    assert r.returncode == 2 and r.stderr.startswith("soswap: error: --replace")
    target = tmp_path / "d" / "libb.so"
    r = soswap("--replace", f"{target}={new}", "--replace", f"{target}={ok}", str(ok))  # the last one won
    assert r.returncode == 2 and r.stderr == f"soswap: error: --replace {target}: given twice, with {new} and {ok}\n"


@requires_root
def test_root_option_against_a_chroot(tmp_path: Path) -> None:
    root = tmp_path / "root"
    interp = Path(PROFILE.interpreter)
    libdir = root / PROFILE.system_dirs[0].strip("/")
    libdir.mkdir(parents=True)
    (root / interp.parent.relative_to("/")).mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.realpath(interp), root / interp.relative_to("/"))
    shutil.copy(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6"), libdir / "libc.so.6")
    opt = root / "opt" / "x"
    shared_lib(opt / "libx.so.1", "int x(void) { return 6; }\n", soname="libx.so.1")
    prog = executable(tmp_path / "prog", "int x(void);\nint main(void) { return x(); }\n",
                      libs=[f"-L{opt}", "-l:libx.so.1"])
    (root / "usr" / "bin").mkdir(parents=True)
    shutil.copy(prog, root / "usr" / "bin" / "prog")
    (root / "etc").mkdir()
    (root / "etc" / "ld.so.conf").write_text("/opt/x\n")
    subprocess.run(["ldconfig", "-r", str(root)], check=True, capture_output=True, timeout=120)
    real = subprocess.run(["chroot", str(root), "/usr/bin/prog"], capture_output=True, text=True, timeout=60)
    assert real.returncode == 6, real.stderr
    r = soswap("--root", str(root), "--json", "/usr/bin/prog")
    doc = json.loads(r.stdout)["results"][0]
    assert r.returncode == 0 and doc["loadable"]
    x = next(o for o in doc["objects"] if o["name"] == "libx.so.1")
    assert x["path"] == "/opt/x/libx.so.1" and x["reason"]["rule"] == "cache"
    # outside the root the same program cannot find libx
    shutil.copy(prog, tmp_path / "outside")
    assert soswap(str(tmp_path / "outside")).returncode == 1
    # ld.so reads past a broken cache (_dl_load_cache_lookup): a bad extension directory keeps the entries,
    # garbage is no cache at all; the real run is the oracle
    cache = root / "etc" / "ld.so.cache"
    good = cache.read_bytes()
    for data, finds in ((good[:32] + b"\xf0\xff\xff\x7f" + good[36:], True), (os.urandom(5000), False),
                        (good[:40], False)):
        cache.write_bytes(data)
        real = subprocess.run(["chroot", str(root), "/usr/bin/prog"], capture_output=True, text=True, timeout=60)
        r = soswap("--root", str(root), "/usr/bin/prog")
        assert (real.returncode == 6) == finds and r.returncode == (0 if finds else 1), (real, r.stdout, r.stderr)
        if not finds:
            assert "libx.so.1: cannot open shared object file" in real.stderr + r.stdout
        assert "ld.so ignores" in r.stderr and "Traceback" not in r.stderr
    # FIFOs where ld.so reads whole files (the real ld.so would wait for a writer for ever): never a hang
    cache.unlink()
    os.mkfifo(cache)
    os.mkfifo(root / "etc" / "ld.so.preload")
    (root / "usr" / "bin" / "ldd").unlink(missing_ok=True)
    os.mkfifo(root / "usr" / "bin" / "ldd")
    for args, status in ((("/usr/bin/prog",), 1), (("--ldd", "/usr/bin/prog"), 0)):
        r = soswap("--root", str(root), *args)  # soswap() gives up after 120 s
        assert r.returncode == status and "libx.so.1 => not found" in r.stdout, r.stdout + r.stderr
    assert "not a regular file: ld.so would wait on a FIFO there for ever" in soswap(
        "--root", str(root), "/usr/bin/prog").stderr


def test_help() -> None:
    e = dict(BASE_ENV)
    e["PYTHONPATH"] = SRC
    r = subprocess.run([sys.executable, "-m", "soswap", "tree", "--help"], env=e, capture_output=True, text=True)
    assert r.returncode == 0 and "--ldd" in r.stdout and "Exit status" in r.stdout


@pytest.mark.parametrize("args", [["-d", "/usr/bin/true"], ["--json", "--ldd", "/usr/bin/true"],
                                  ["--root", "/nonexistent", "/usr/bin/true"]])
def test_bad_arguments(args) -> None:  # type: ignore[no-untyped-def]
    r = soswap(*args)
    assert r.returncode == 2 and r.stderr.startswith("soswap: error: ")


def test_non_utf8_file_names(tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/lib\xff"
    lib_dir = Path(os.fsdecode(raw))
    shared_lib(lib_dir / "libu.so", lib_source("u"), soname="libu.so")
    e = executable(tmp_path / "e", sources_needing("u"), flags=rpath_flags(str(lib_dir)),
                   libs=[f"-L{lib_dir}", "-lu"])
    want = real_ldd(e)
    got = soswap("--ldd", str(e))
    assert got.stdout == want.stdout and got.returncode == 0
    r = soswap("--json", str(e))
    doc = json.loads(r.stdout)["results"][0]
    u = next(o for o in doc["objects"] if o["name"] == "libu.so")
    assert os.fsencode(u["path"]) == raw + b"/libu.so"
    assert "\\udcff" in r.stdout


@requires_root
def test_a_program_on_a_noexec_mount(tmp_path: Path) -> None:
    """execve refuses a program on a noexec mount (the shell's 126); ldd prints "not a dynamic executable"
    (ld.so --verify cannot map it executable) and so does --ldd."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    prog = executable(tmp_path / "prog", "int main(void) { return 0; }\n")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=8m", "tmpfs", str(mnt)], check=True)
    try:
        shutil.copy(prog, mnt / "prog")
        r = soswap(str(mnt / "prog"))
        assert r.returncode == 1 and "Permission denied (its mount is noexec)" in r.stdout, r.stdout
        doc = json.loads(soswap("--json", str(mnt / "prog")).stdout)["results"][0]
        assert [f["kind"] for f in doc["failures"]] == ["not-executable"]
        want = real_ldd(mnt / "prog")
        got = soswap("--ldd", str(mnt / "prog"))
        assert (got.stdout, got.stderr, got.returncode) == (want.stdout, want.stderr, want.status) == (
            "", "\tnot a dynamic executable\n", 1)
        run = subprocess.run(["/bin/sh", "-c", f'"{mnt / "prog"}"'], capture_output=True, timeout=60)
        assert run.returncode == 126
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
