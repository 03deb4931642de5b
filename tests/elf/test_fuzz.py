"""Fuzzing the ELF reader with hypothesis: mutations and truncations of real files.

The only exception allowed is ElfError; a decode that takes more than a few seconds counts as a hang. CI runs a
bounded number of examples; ``bench/fuzz_elf.py`` runs the same property for as long as you give it.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Iterator, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elf.decode_all import decode_all
from soswap.elf import ElfFile
from soswap.elf import symbols as symbols_module
from soswap.errors import ElfError
from support.build import executable, have_cc, shared_lib

HANG_SECONDS = 5


def _seeds(tmp: Path) -> List[bytes]:
    seeds = [Path("/bin/true").read_bytes()]
    if have_cc():
        lib = shared_lib(tmp / "libseed.so.1", r"""
            int counter = 1; __thread int tv;
            int foo_v1(void) { return 1; } int foo_v2(void) { return tv; }
            __asm__(".symver foo_v1,foo@VER_1"); __asm__(".symver foo_v2,foo@@VER_2");
            extern int ext(void); int call(void) { return ext() + counter; }
        """, soname="libseed.so.1", version_script="VER_1 { global: foo; counter; local: *; };\n"
                                                   "VER_2 { global: call; tv; } VER_1;\n",
            flags=["-Wl,-rpath,/opt/x", "-Wl,--unresolved-symbols=ignore-all", "-Wl,--hash-style=both"])
        app = executable(tmp / "app", "int call(void); int main(void){return call();}", libs=[str(lib)],
                         flags=["-Wl,--allow-shlib-undefined"])
        seeds += [lib.read_bytes(), app.read_bytes()]
    return seeds


SEEDS: List[bytes] = []


@pytest.fixture(scope="module", autouse=True)
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    SEEDS[:] = _seeds(tmp_path_factory.mktemp("fuzzseeds"))
    yield


class _Hang(Exception):
    pass


def _alarm(_sig: int, _frame: object) -> None:
    raise _Hang()


def check(data: bytes) -> None:
    """The property: decoding everything either works or raises ElfError, within HANG_SECONDS."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    try:
        decode_all(ElfFile.from_bytes(data, "fuzz.so"))
    except ElfError:
        pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    seed = draw(st.sampled_from(range(len(SEEDS)))) if SEEDS else 0
    data = bytearray(SEEDS[seed])
    # the first pages hold the headers, the dynamic tables and the strings: mutate there most
    hot = min(len(data), 0x1000)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["byte", "word", "qword", "zero-run"]))
        pos = draw(st.integers(0, hot - 1)) if draw(st.booleans()) else draw(st.integers(0, len(data) - 1))
        if kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "word" and pos + 4 <= len(data):
            data[pos:pos + 4] = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000,
                                                      draw(st.integers(0, 2**32 - 1))])).to_bytes(4, "little")
        elif kind == "qword" and pos + 8 <= len(data):
            data[pos:pos + 8] = draw(st.sampled_from([0, 2**63, 2**64 - 1, len(data), len(data) - 1,
                                                      draw(st.integers(0, 2**64 - 1))])).to_bytes(8, "little")
        elif kind == "zero-run":
            n = draw(st.integers(1, 64))
            data[pos:pos + n] = bytes(min(n, len(data) - pos))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutations_raise_only_elferror(data: bytes) -> None:
    check(data)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutations_with_names_read_by_pointer(data: bytes) -> None:
    """The same property with every table's names read through ctypes (otherwise only tables with
    POINTER_NAMES_MIN symbols or more, which the seeds are not): a bad offset must never be dereferenced."""
    saved = symbols_module.POINTER_NAMES_MIN
    symbols_module.POINTER_NAMES_MIN = 1
    try:
        check(data)
    finally:
        symbols_module.POINTER_NAMES_MIN = saved


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=0, max_size=512))
def test_random_bytes_with_an_elf_magic(data: bytes) -> None:
    check(b"\x7fELF" + data)
