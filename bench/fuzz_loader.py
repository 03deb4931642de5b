#!/usr/bin/env python3
"""Long fuzzing run of the loader and binding (`soswap tree -r`, `--ldd -r`, the what-if API) on mutated real
files; bench/fuzz_elf.py covers the ELF reader alone.

    python bench/fuzz_loader.py [SECONDS]

Each input is a real program or one of the libraries it loads, mutated (mostly inside .dynsym, .dynstr,
.gnu.hash, the relocation and version sections, the dynamic section: what binding reads), then loaded as the
program (or with the library substituted, the what-if API), bound with every relocation, rendered as text and
JSON, and given to the ldd model; a mutated library is also compared with its original (``soswap diff``, whose
checks decode its references too). Prints how many inputs were handled and how many raised the one-line
SoswapError; any other exception or a hang (> 20 s) is a bug: its input is kept in /tmp/fuzz-loader-*.bin and
the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from elftools.elf.elffile import ELFFile

from fuzz_elf import Hang, _alarm, mutate
from soswap.abi import diff_files
from soswap.elf import ElfCache
from soswap.errors import SoswapError
from soswap.loader import Environment, Loader, Profile
from soswap.loader.ldd import RELOCS_FUNCTION, LddModel
from soswap.report.tree import render_text, result_json

PROGRAMS = ("/usr/bin/curl", "/usr/bin/ssh", "/usr/bin/gpg", "/usr/bin/ls", "/usr/bin/cmake", "/usr/bin/jq")
SECTIONS = (".dynsym", ".dynstr", ".gnu.hash", ".hash", ".rela.dyn", ".rela.plt", ".gnu.version",
            ".gnu.version_r", ".gnu.version_d", ".dynamic", ".tdata", ".note.gnu.property", ".interp")


def pairs(profile: Profile) -> List[Tuple[str, str]]:
    """(program, a library it loads) for the programs of PROGRAMS present here."""
    out = []
    loader = Loader(profile, Environment.from_environ({}), cache=ElfCache())
    for prog in PROGRAMS:
        if not os.path.exists(prog):
            continue
        res = loader.load(prog)
        out += [(prog, o.path) for o in res.objects[1:] if o.found and o.path and o.kind == "library"][:4]
    return out


def ranges(path: str) -> List[Tuple[int, int]]:
    with open(path, "rb") as f:
        e = ELFFile(f)
        return [(s["sh_offset"], s["sh_size"]) for s in e.iter_sections()
                if s.name in SECTIONS and s["sh_type"] != "SHT_NOBITS" and s["sh_size"]]


def targeted(rng: random.Random, data: bytes, spans: List[Tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        off, size = rng.choice(spans)
        pos = off + rng.randrange(size)
        k = rng.random()
        if k < 0.5:
            b[pos] = rng.randrange(256)
        elif k < 0.8 and pos + 4 <= len(b):
            v = rng.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, rng.getrandbits(32), rng.randrange(64)])
            b[pos:pos + 4] = v.to_bytes(4, "little")
        elif pos + 8 <= len(b):
            b[pos:pos + 8] = rng.choice([0, 2**64 - 1, len(b), rng.getrandbits(64), rng.randrange(4096)]).to_bytes(
                8, "little")
    return bytes(b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seconds", nargs="?", type=float, default=300.0, help="how long to run (default 300)")
    seconds = ap.parse_args().seconds
    profile = Profile.detect()
    env = Environment.from_environ({})
    work = Path(tempfile.mkdtemp(prefix="fuzz-loader-"))
    todo = pairs(profile)
    seeds: Dict[str, bytes] = {}
    spans: Dict[str, List[Tuple[int, int]]] = {}
    for prog, lib in todo:
        for f in (prog, lib):
            if f not in seeds:
                seeds[f] = Path(os.path.realpath(f)).read_bytes()
                spans[f] = ranges(os.path.realpath(f))
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "1")))
    signal.signal(signal.SIGALRM, _alarm)
    n = errors = bugs = 0
    loader = None
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            if n % 40 == 0:
                loader = Loader(profile, env, cache=ElfCache())
            n += 1
            prog, lib = rng.choice(todo)
            which = lib if rng.random() < 0.8 else prog
            data = (mutate(rng, seeds[which]) if rng.random() < 0.3 or not spans[which]
                    else targeted(rng, seeds[which], spans[which]))
            path = work / f"m{n}"
            path.write_bytes(data)
            path.chmod(0o755)
            subst = {which: str(path)} if which == lib else None
            signal.alarm(20)
            try:
                try:
                    res = loader.load(prog if subst else str(path), substitutions=subst)
                    bound = loader.bind(res)
                    render_text(res, bound, symbols=True)
                    json.dumps(result_json(res, bound, True))
                except SoswapError:
                    errors += 1
                if subst is None:
                    try:
                        LddModel(loader, RELOCS_FUNCTION).one(str(path))
                    except SoswapError:
                        errors += 1
                else:
                    try:
                        diff_files(lib, str(path))
                    except SoswapError:
                        errors += 1
            except Hang:
                bugs += 1
                print(f"HANG on a mutation of {which}", file=sys.stderr)
                os.replace(path, f"/tmp/fuzz-loader-hang-{bugs}.bin")
                continue
            except Exception:
                bugs += 1
                print(f"BUG on a mutation of {which}", file=sys.stderr)
                traceback.print_exc()
                os.replace(path, f"/tmp/fuzz-loader-bug-{bugs}.bin")
                continue
            finally:
                signal.alarm(0)
            path.unlink()
    finally:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    print(f"{n} inputs in {time.monotonic() - start:.0f} s: {errors} one-line errors, {bugs} bugs")
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
