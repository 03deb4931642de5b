"""Inputs made to blow up memory or time (a QA fuzzing round): a string table whose names overlap over and
over, a one-bucket hash table, an ld.so.cache whose entries share one long string, digit runs past int()'s
limit, and the output streams an encoding or a full device refuse. Each is a real file or a real process."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from soswap.elf import ElfFile
from soswap.errors import ElfError
from support.build import executable, requires_cc, shared_lib

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _soswap(*args: str, env: Dict[str, str] = {}, stdout: object = subprocess.PIPE,  # noqa: B006
            stderr: object = subprocess.PIPE) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=SRC, **env)
    return subprocess.run([sys.executable, "-m", "soswap", *args], env=e, stdout=stdout,  # type: ignore[call-overload]
                          stderr=stderr, text=True, timeout=120)


def _layout(data: bytes) -> Tuple[List[tuple], Dict[int, int]]:
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    phs = [struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * i) for i in range(phnum)]
    dyn = next(p for p in phs if p[0] == 2)
    tags: Dict[int, int] = {}
    for o in range(dyn[2], dyn[2] + dyn[5], 16):
        t, v = struct.unpack_from("<qQ", data, o)
        if t == 0:
            break
        tags.setdefault(t, v)
    return phs, tags


def _offset(phs: List[tuple], vaddr: int) -> int:
    return next(p[2] + vaddr - p[3] for p in phs if p[0] == 1 and p[3] <= vaddr < p[3] + p[5])


@requires_cc
def test_names_overlapping_over_and_over_are_one_error_not_gigabytes(tmp_path: Path) -> None:
    """Every NUL inside DT_STRTAB replaced: each of 8,000 names runs to the end of the table, and decoding
    them took gigabytes. It is now one error line."""
    lib = shared_lib(tmp_path / "libmany.so", "".join(f"int fn_{i}(void) {{ return {i}; }}\n" for i in range(8000)))
    data = bytearray(lib.read_bytes())
    phs, tags = _layout(bytes(data))
    at, size = _offset(phs, tags[5]), tags[10]
    data[at + 1:at + size - 1] = bytes(data[at + 1:at + size - 1]).replace(b"\0", b"A")
    bad = tmp_path / "libbad.so"
    bad.write_bytes(bytes(data))
    with pytest.raises(ElfError, match="names overlapping"):
        ElfFile.open(bad).symbol_table
    r = _soswap("elf", "-s", str(bad))
    assert r.returncode == 2 and r.stderr.count("soswap: error:") == 1 and "names overlapping" in r.stderr
    assert len(ElfFile.open(lib).symbol_table) > 8000  # the real table decodes


@requires_cc
def test_a_one_bucket_gnu_hash_table_binds_in_linear_time(tmp_path: Path) -> None:
    """All symbols in one GNU hash bucket (a valid table: the program runs bound at startup): every lookup
    walked the whole chain, and `tree -r` on 20,000 symbols ran for minutes. The long chain is indexed once;
    the lookups find what the walk finds (`--ldd -r` against ldd -r, and no reference unresolved)."""
    n = 3000
    lib = shared_lib(tmp_path / "libmany.so", "".join(f"int fn_{i}(void) {{ return {i & 7}; }}\n" for i in range(n)),
                     soname="libmany.so")
    prog = executable(tmp_path / "prog", "".join(f"int fn_{i}(void);\n" for i in range(n))
                      + "int main(void) { int s = 0;\n" + "".join(f"s += fn_{i}();\n" for i in range(n))
                      + "return s & 1; }\n", libs=[f"-L{tmp_path}", "-lmany", f"-Wl,-rpath,{tmp_path}"])
    data = bytearray(lib.read_bytes())
    phs, tags = _layout(bytes(data))
    go, symo, stro = _offset(phs, tags[0x6FFFFEF5]), _offset(phs, tags[6]), _offset(phs, tags[5])
    nb, so, bs, sh = struct.unpack_from("<IIII", data, go)
    chain_at = go + 16 + 8 * bs + 4 * nb
    i = max(struct.unpack_from(f"<{nb}I", data, go + 16 + 8 * bs)) - so
    while not struct.unpack_from("<I", data, chain_at + 4 * i)[0] & 1:
        i += 1
    count = so + i + 1

    def gnu_hash(s: bytes) -> int:
        h = 5381
        for c in s:
            h = (h * 33 + c) & 0xFFFFFFFF
        return h

    hs = []
    for k in range(so, count):
        st_name, = struct.unpack_from("<I", data, symo + 24 * k)
        hs.append(gnu_hash(bytes(data[stro + st_name:data.index(b"\0", stro + st_name)])))
    table = struct.pack("<IIII", 1, so, 1, sh) + struct.pack("<Q", 2 ** 64 - 1) + struct.pack("<I", so)
    table += b"".join(struct.pack("<I", (h & ~1) | (j == len(hs) - 1)) for j, h in enumerate(hs))
    data[go:go + len(table)] = table
    lib.write_bytes(bytes(data))
    assert subprocess.run([str(prog)], env={"LD_BIND_NOW": "1"}, timeout=60).returncode in (0, 1)
    r = _soswap("tree", "-r", "--no-cache", str(prog))
    assert r.returncode == 0 and " references checked, 0 unresolved" in r.stdout, r.stdout
    ldd = subprocess.run(["ldd", "-r", str(prog)], capture_output=True, text=True, timeout=60)
    mine = _soswap("tree", "--ldd", "-r", "--no-cache", str(prog))
    strip = lambda s: "\n".join(line.split(" (0x")[0] for line in s.splitlines())  # noqa: E731
    assert (strip(mine.stdout), mine.returncode) == (strip(ldd.stdout), ldd.returncode)


def test_an_ld_so_cache_whose_entries_share_one_long_string(tmp_path: Path) -> None:
    """2,000 entries whose key and value point at one 1 MB string decoded it 4,000 times (gigabytes); each
    string is now decoded once. Entries pointing at 2,000 different places inside it would still add up: the
    cache is then not read, and the problem says why."""
    from soswap.loader.ldcache import LdCache

    n, long = 2000, b"x" * (1 << 20)

    def cache(offsets: List[int]) -> Path:
        header = b"glibc-ld.so.cache1.1" + struct.pack("<IIIIIII", len(offsets), 0, 0, 0, 0, 0, 0)
        header = header.ljust(48, b"\0")
        strings_at = 48 + 24 * len(offsets)
        rows = b"".join(struct.pack("<iIIIQ", 0x0303, strings_at + o, strings_at + o, 0, 0) for o in offsets)
        path = tmp_path / "ld.so.cache"
        path.write_bytes(header + rows + long + b"\0")
        return path

    same = LdCache.load(str(cache([0] * n)))
    assert len(same.entries) == n and same.problem is None
    spread = LdCache.load(str(cache(list(range(0, 20 * n, 20)))))
    assert not spread.entries and "same long strings" in (spread.problem or "")


def test_glibc_version_digits_past_the_int_limit(tmp_path: Path) -> None:
    """`--root` whose ld.so says "release version 9...9.36" (5,000 digits): int() refused it (internal error)."""
    from soswap.loader.profile import Profile

    root = tmp_path / "root"
    (root / "lib64").mkdir(parents=True)
    (root / "lib64" / "ld-linux-x86-64.so.2").write_bytes(b"\x7fELF" + b"release version " + b"9" * 5000 + b".36\0")
    assert Profile.detect(str(root)).glibc_version != (99, 36)  # read as no version, and no exception


def test_file_names_an_ascii_output_cannot_encode(tmp_path: Path) -> None:
    """PYTHONIOENCODING=ascii and a name with é (or a byte that is not UTF-8): "internal error:
    UnicodeEncodeError" in nearly every command."""
    for name in ("libé.so", "lib\udcff.so"):
        path = os.path.join(os.fsencode(str(tmp_path)), os.fsencode(name))
        with open(path, "wb") as f:
            f.write(b"not an ELF file\n")
        for args in (["elf", os.fsdecode(path)], ["tree", os.fsdecode(path) + "-missing"]):
            r = _soswap(*args, env={"PYTHONIOENCODING": "ascii"})
            assert r.returncode == 2 and "internal error" not in r.stderr and r.stderr.count("soswap: error:") == 1


def test_help_version_and_reports_into_a_full_device() -> None:
    """--help and --version written to /dev/full: the output was lost and the status 0. A report (small, or
    larger than the stream's buffer) said only "No space left on device", not of what."""
    for args in (["--help"], ["--version"], ["elf", "--help"], ["elf", "/bin/true"], ["elf", "-s", sys.executable],
                 ["tree", "--no-cache", "/bin/true"]):
        with open("/dev/full", "w") as full:
            r = _soswap(*args, stdout=full)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr == "soswap: error: standard output: No space left on device\n", (args, r.stderr)


def test_stale_nagios_is_unknown_when_its_usage_error_cannot_be_written() -> None:
    """``stale --nagios`` never exits 2 (a monitoring plugin's UNKNOWN is 3), not even when argparse's usage
    message cannot be written (standard error full)."""
    with open("/dev/full", "w") as full:
        r = _soswap("stale", "--nagios", "--pid", "abc", stderr=full)
    assert r.returncode == 3 and r.stdout.startswith("STALE UNKNOWN"), r


@requires_cc
def test_thousands_of_missing_search_directories(tmp_path: Path) -> None:
    """A program with 300 DT_NEEDED entries (one missing) and an LD_LIBRARY_PATH of 3,000 directories that do
    not exist: every name walked every directory and subdirectory (minutes for 1,000 names and 10,000
    directories; ld.so marks a missing one and skips it). What `--ldd` prints stays ldd's, the "No such file
    or directory" of the missing one included."""
    stub = shared_lib(tmp_path / "stub.so", "int f(void) { return 0; }\n")
    for i in range(300):
        (tmp_path / f"libn{i}.so").symlink_to(stub)
    prog = executable(tmp_path / "prog", "int main(void) { return 0; }\n",
                      libs=["-Wl,--no-as-needed", f"-L{tmp_path}", *(f"-l:libn{i}.so" for i in range(300)),
                            "-Wl,-rpath,$ORIGIN"])
    (tmp_path / "libn299.so").unlink()
    env = {"LD_LIBRARY_PATH": ":".join(f"/nonexistent-soswap-{i}" for i in range(3000))}
    ldd = subprocess.run(["ldd", str(prog)], env=dict(os.environ, **env), capture_output=True, text=True,
                         timeout=120)
    mine = _soswap("tree", "--ldd", "--no-cache", str(prog), env=env)
    strip = lambda s: "\n".join(line.split(" (0x")[0] for line in s.splitlines())  # noqa: E731
    assert (strip(mine.stdout), mine.returncode) == (strip(ldd.stdout), ldd.returncode)
    assert "libn299.so => not found" in mine.stdout
    r = _soswap("tree", "--no-cache", str(prog), env=env)
    assert "libn299.so: cannot open shared object file: No such file or directory" in r.stdout


@requires_cc
def test_control_characters_from_a_file_never_reach_the_terminal(tmp_path: Path) -> None:
    """A SONAME (and so the program's DT_NEEDED) holding an escape sequence and a newline: ``elf``, ``tree`` and
    ``diff`` wrote it raw, so inspecting a hostile file could drive the terminal. They show it escaped; ``tree
    --ldd`` still prints what ldd prints (ldd writes it raw)."""
    hostile = "lib\x1b[31mRED\nx.so"
    lib = shared_lib(tmp_path / "libesc.so", "int f(void) { return 0; }\n", soname=hostile)
    prog = executable(tmp_path / "prog", "int f(void);\nint main(void) { return f(); }\n", libs=[str(lib)])
    shown = "lib\\x1b[31mRED\\nx.so"
    for args in (["elf", str(lib)], ["tree", "--no-cache", str(prog)], ["diff", str(lib), str(lib)]):
        r = _soswap(*args)
        assert r.returncode in (0, 1) and "\x1b" not in r.stdout, (args, r)
        if args[0] != "diff":
            assert shown in r.stdout, (args, r.stdout)
    r = _soswap("tree", "--no-cache", "--ldd", str(prog))
    assert f"\t{hostile} => not found" in r.stdout


def test_an_error_writing_a_file_names_it_not_its_temporary_file(tmp_path: Path) -> None:
    """``stale --prometheus DIR/x.prom`` with DIR missing named soswap's temporary file (``DIR/.x.prom.PID.tmp``)."""
    target = tmp_path / "nodir" / "x.prom"
    r = _soswap("stale", "--prometheus", str(target), "--pid", str(os.getpid()))
    assert r.returncode == 2 and r.stderr == f"soswap: error: {target}: No such file or directory\n", r
