"""``soswap diff`` on bad input: one error line and exit 2, never a traceback, never a hang; and the output
options (--json, --summary, non-UTF-8 paths)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soswap.abi import diff_files
from soswap.errors import SoswapError

from .cases import FOO_BAR, Case, _Builder


def soswap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "soswap", "diff", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def _one_error_line(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("soswap: error: ") and needle in lines[0], r.stderr


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b = _Builder(tmp_path_factory.mktemp("abi-cli"))
    return b.lib(b.v1 / "libfoo.so.1", FOO_BAR)


def test_missing_file(lib: Path, tmp_path: Path) -> None:
    _one_error_line(soswap(str(tmp_path / "nope.so"), str(lib)), "No such file or directory")
    _one_error_line(soswap(str(lib), str(tmp_path / "nope.so")), "nope.so")


def test_not_elf(lib: Path, tmp_path: Path) -> None:
    text = tmp_path / "script.so"
    text.write_text("GROUP ( /lib/libc.so.6 )\n")
    _one_error_line(soswap(str(lib), str(text)), "not an ELF file")
    empty = tmp_path / "empty.so"
    empty.write_bytes(b"")
    _one_error_line(soswap(str(empty), str(lib)), "empty.so")


def test_directory_and_fifo_are_refused_without_blocking(lib: Path, tmp_path: Path) -> None:
    _one_error_line(soswap(str(tmp_path), str(lib)), "not a regular file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _one_error_line(soswap(str(lib), str(fifo)), "not a regular file")


def test_truncated_new(lib: Path, tmp_path: Path) -> None:
    data = lib.read_bytes()
    for n in (10, 64, 200):  # inside the ELF header or the program headers: not an ELF file to compare
        cut = tmp_path / f"cut{n}.so"
        cut.write_bytes(data[:n])
        r = soswap(str(lib), str(cut))
        _one_error_line(r, str(cut))
    # past the program headers, before the dynamic section (where an interrupted copy mostly stops): the
    # file-truncated verdict, not an error about the missing dynamic section
    for n in (len(data) // 8, len(data) // 2):
        cut = tmp_path / f"cut{n}.so"
        cut.write_bytes(data[:n])
        r = soswap(str(lib), str(cut), "--json")
        assert r.returncode == 1, r
        kinds = [c["kind"] for c in json.loads(r.stdout)["changes"]]
        assert kinds == ["file-truncated"], r.stdout


def test_relocatable_object(lib: Path, tmp_path: Path) -> None:
    src = tmp_path / "o.c"
    src.write_text(FOO_BAR)
    obj = tmp_path / "o.o"
    subprocess.run(["gcc", "-c", "-fPIC", "-o", str(obj), str(src)], check=True)
    _one_error_line(soswap(str(obj), str(lib)), "not a shared library or executable (e_type REL)")
    r = soswap("--json", str(lib), str(obj))  # as NEW: the loader refuses it, a breaking change
    assert r.returncode == 1
    (change,) = json.loads(r.stdout)["changes"]
    assert change["kind"] == "elf-type-changed" and "only ET_DYN and ET_EXEC" in change["detail"]


def test_same_file(lib: Path) -> None:
    r = soswap(str(lib), str(lib))
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "compatible: no ELF-level change"
    doc = json.loads(soswap("--json", str(lib), str(lib)).stdout)
    assert doc == {"old": str(lib), "new": str(lib), "verdict": "compatible",
                   "summary": {"breaking": 0, "review": 0, "harmless": 0}, "changes": []}


def test_summary_counts_kinds(abi_cases: Dict[str, Case]) -> None:
    if "T15" not in abi_cases:
        pytest.skip("T15 not built")
    c = abi_cases["T15"]
    r = soswap("--summary", str(c.old), str(c.new))
    assert r.returncode == 1
    assert "  symbol-moved: 2" in r.stdout.splitlines() and "  version-added: 1" in r.stdout.splitlines()
    assert "foo@@VERS_1" not in r.stdout


def test_help_names_the_exit_status() -> None:
    r = soswap("--help")
    assert r.returncode == 0 and "Exit status: 0 when no change is breaking, 1 when one is, 2 on error" in r.stdout
    assert "signatures, struct layouts and vtable slots are not seen" in " ".join(r.stdout.split())


def test_non_utf8_paths_round_trip(lib: Path, tmp_path: Path) -> None:
    odd = os.path.join(os.fsencode(tmp_path), b"lib\xff.so.1")
    shutil.copyfile(lib, odd)
    r = subprocess.run([sys.executable, "-m", "soswap", "diff", "--json", lib, odd], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"lib\\udcff.so.1" in r.stdout
    assert json.loads(r.stdout)["new"] == os.fsdecode(odd)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupt_input_never_escapes_as_another_exception(lib: Path, tmp_path: Path, edits: list) -> None:
    """Random bytes in the headers, dynamic section and tables: a diff or a SoswapError, nothing else."""
    data = bytearray(lib.read_bytes())
    for off, val in edits:
        data[off % len(data)] = val
    bad = tmp_path / "bad.so"
    bad.write_bytes(bytes(data))
    for a, b in ((lib, bad), (bad, lib)):
        try:
            d = diff_files(str(a), str(b))
        except SoswapError:
            continue
        assert d.verdict in ("compatible", "incompatible")
