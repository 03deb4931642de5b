#!/usr/bin/env python3
"""Long fuzzing run of the ELF reader (the CI runs a bounded version: tests/elf/test_fuzz.py).

    python bench/fuzz_elf.py [SECONDS] [FILE...]

Mutates and truncates real ELF files (default: a sample of /usr/bin and /usr/lib) for SECONDS (default 300)
and decodes every lazy part of each result. Prints how many inputs decoded fully, how many raised ElfError, and
any other exception or hang (> 5 s), which are bugs. Exit status 1 if any bug was found. Every other input
reads its symbol names by pointer (soswap.elf.symbols, normally only for tables of 2,048 symbols or more): a
bad offset dereferenced there would kill this process, which the run would show as a crash.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from elf.decode_all import decode_all
from soswap.elf import ElfFile
from soswap.elf import symbols as symbols_module
from soswap.errors import ElfError

INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63, 2**64 - 1]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    hot = min(len(b), 0x2000)
    for _ in range(rng.randint(1, 10)):
        pos = rng.randrange(hot) if rng.random() < 0.8 else rng.randrange(len(b))
        k = rng.random()
        if k < 0.4:
            b[pos] = rng.randrange(256)
        elif k < 0.7 and pos + 4 <= len(b):
            v = rng.choice([*INTERESTING, rng.getrandbits(32)]) & 0xFFFFFFFF
            b[pos:pos + 4] = v.to_bytes(4, "little")
        elif k < 0.9 and pos + 8 <= len(b):
            v = rng.choice([*INTERESTING, len(b), rng.getrandbits(64)]) & (2**64 - 1)
            b[pos:pos + 8] = v.to_bytes(8, "little")
        else:
            n = rng.randint(1, 128)
            b[pos:pos + n] = bytes(min(n, len(b) - pos))
    if rng.random() < 0.2:
        b = b[:rng.randrange(len(b) + 1)]
    return bytes(b)


class Hang(Exception):
    pass


def _alarm(_s: int, _f: object) -> None:
    raise Hang()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seconds", nargs="?", type=float, default=300.0, help="how long to run (default 300)")
    ap.add_argument("files", nargs="*", help="ELF files to mutate (default: a sample of /usr/bin and /usr/lib)")
    args = ap.parse_args()
    seconds, files = args.seconds, args.files
    if not files:
        rng0 = random.Random(1)
        pool = [str(p) for d in ("/usr/bin", "/usr/lib/x86_64-linux-gnu") for p in Path(d).iterdir()
                if p.is_file() and not p.is_symlink() and 0 < p.stat().st_size < 4_000_000]
        pool = [p for p in pool if Path(p).read_bytes()[:4] == b"\x7fELF"]
        files = rng0.sample(pool, min(40, len(pool)))
    seeds = [Path(f).read_bytes() for f in files]
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "12345")))
    signal.signal(signal.SIGALRM, _alarm)
    ok = elferr = bugs = 0
    start = time.monotonic()
    pointer_min = symbols_module.POINTER_NAMES_MIN
    n = 0
    while time.monotonic() - start < seconds:
        data = mutate(rng, rng.choice(seeds))
        n += 1
        symbols_module.POINTER_NAMES_MIN = 1 if n % 2 else pointer_min
        signal.alarm(5)
        try:
            decode_all(ElfFile.from_bytes(data, "fuzz"))
            ok += 1
        except ElfError:
            elferr += 1
        except Hang:
            bugs += 1
            print("HANG", file=sys.stderr)
            Path(f"/tmp/fuzz-hang-{bugs}.bin").write_bytes(data)
        except Exception:
            bugs += 1
            traceback.print_exc()
            Path(f"/tmp/fuzz-bug-{bugs}.bin").write_bytes(data)
        finally:
            signal.alarm(0)
    total = ok + elferr + bugs
    print(f"{total} inputs in {seconds:.0f} s from {len(seeds)} seed files: {ok} decoded, {elferr} ElfError, "
          f"{bugs} bugs (other exceptions or hangs)")
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
