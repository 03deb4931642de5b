#!/usr/bin/env python3
"""The parity contract under the environment variables ld.so reads: ``soswap tree --root R --ldd [-r|-d]``
against ``chroot R ldd [-r|-d]`` for random combinations of LD_LIBRARY_PATH (dynamic string tokens, empty
elements, directories of the other ABI), LD_PRELOAD (names, paths, spaces and colons, missing and 32-bit
objects), GLIBC_TUNABLES (malformed, ``glibc.cpu.hwcaps``, ``glibc.rtld.enable_secure``) and LD_BIND_NOW.

    python bench/parity_env.py [--base DIR] [--cases N] [--seed S] [ROOT...]

ROOT names a release root under --base (default /srv/qa-roots; ``bench/parity_roots.py --build`` makes them);
default: every root there built for this machine's CPU. A root built for another machine (bookworm-arm64) runs
under qemu-user (binfmt_misc: see bench/parity_roots.py), the multiarch directories named below become its own,
and the vDSO line, which qemu-user 7.2 does not give, is taken out of soswap's output.

Each case runs ldd in the root over a program, a shell script (``ld.so --verify``
refuses it), a library, bash and, where the root has it, an i386 library. The variables are set inside the root
(``env -i`` there: chroot itself would run under LD_PRELOAD); soswap gets LD_LIBRARY_PATH and LD_PRELOAD as
``--library-path`` and ``--preload`` (the host's ld.so would read them for soswap's own Python) and the others
in its environment. Standard output (load addresses removed), standard error and status must be identical;
each difference is printed as a unified diff (ldd to soswap), and the status is 1 if there is one. Each case
also runs a program in the root under the same variables (``true``, or ``bash -c :``): what it prints on
standard error as it starts and its status must be the startup lines and the verdict of ``tree --json -r``.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

SRC = str(Path(__file__).resolve().parent.parent / "src")
sys.path.insert(0, SRC)

from soswap.loader.profile import Abi, Profile, host_abi, same_cpu  # noqa: E402

PYTHON = sys.executable
ADDR = re.compile(r" \(0x[0-9a-f]+\)")
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"

LIBRARY_PATHS = [None, ":", "/nonexistent", "$ORIGIN/../lib", "/lib/x86_64-linux-gnu:", "$LIB", "/usr/${LIB}",
                 "${PLATFORM}", "/tmp", "::/usr/lib", "/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3",
                 "/usr/lib/i386-linux-gnu"]
PRELOADS = [None, "libm.so.6", "libm.so.6 libz.so.1", "libm.so.6:libnothere.so", "/lib/x86_64-linux-gnu/libm.so.6",
            "$LIB/libm.so.6", "libc.so.6", "/usr/lib/i386-linux-gnu/libm.so.6", "libnothere.so", " libz.so.1 "]
TUNABLES = [None, "a", "glibc.cpu.hwcaps=-AVX2", "glibc.rtld.enable_secure=1", "glibc.cpu.hwcaps=-AVX2,-AVX:x",
            "x=1:"]
BIND_NOW = [None, "1"]
FLAGS = [[], ["-r"], ["-d"]]


VDSO_LINE = re.compile(r"^\tlinux-(?:vdso|vdso64)\.so\.1\n", re.M)


def files_of(base: Path) -> List[str]:
    files = ["/usr/bin/true", "/usr/bin/ldd", "/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/bash"]
    if (base / "lib" / "i386-linux-gnu" / "libc.so.6").exists():
        files.append("/lib/i386-linux-gnu/libc.so.6")
    return files


@functools.cache
def abi_of(base: Path) -> Abi:
    """The loader ABI BASE is built for (read once per root)."""
    return Profile.detect(str(base)).abi


def native(base: Path) -> bool:
    """BASE is built for this machine's CPU (else it runs under qemu-user)."""
    return same_cpu(abi_of(base).name, host_abi())


def localized(value: str, base: Path) -> str:
    """VALUE with x86-64's multiarch directory replaced by BASE's own."""
    return value.replace("x86_64-linux-gnu", abi_of(base).triplet)


def one_case(base: Path, files: List[str], env: Dict[str, str], flag: List[str]) -> Optional[str]:
    """None when both say the same, else the diffs."""
    inside = [f"{k}={v}" for k, v in env.items()]
    real = subprocess.run([CHROOT, str(base), "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", *inside, "/usr/bin/ldd",
                           *flag, *files], env={}, capture_output=True, text=True, errors="surrogateescape",
                          timeout=300)
    opts, soswap_env = _soswap_args(env)
    got = subprocess.run([PYTHON, "-m", "soswap", "tree", "--no-cache", "--root", str(base), *opts, "--ldd", *flag,
                          *files], env=soswap_env, capture_output=True, text=True, errors="surrogateescape",
                         timeout=300)
    want = (ADDR.sub("", real.stdout), real.stderr, real.returncode)
    got_out = got.stdout if native(base) else VDSO_LINE.sub("", got.stdout)
    if want == (got_out, got.stderr, got.returncode):
        return None
    out = [f"status: ldd {real.returncode}, soswap {got.returncode}"]
    for name, a, b in (("out", want[0], got_out), ("err", want[1], got.stderr)):
        out += difflib.unified_diff(a.splitlines(), b.splitlines(), f"ldd.{name}", f"soswap.{name}", lineterm="",
                                    n=1)
    return "\n".join(out)


#: Programs run in the root (with these arguments they print nothing and exit 0 when they start).
RUNS = [("/usr/bin/true", []), ("/usr/bin/bash", ["-c", ":"])]


def one_run(base: Path, prog: str, args: List[str], env: Dict[str, str]) -> Optional[str]:
    """The program itself as the oracle: what it prints on standard error as it starts (preload errors, the
    tunables warning, a fatal error) and its status, against ``tree --json -r``'s startup lines and verdict."""
    import json

    real = subprocess.run([CHROOT, str(base), "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in env.items()], prog,
                           *args], env={}, capture_output=True, text=True, errors="surrogateescape", timeout=300)
    opts, soswap_env = _soswap_args(env)
    got = subprocess.run([PYTHON, "-m", "soswap", "tree", "--no-cache", "--root", str(base), *opts, "--json", "-r",
                          prog], env=soswap_env, capture_output=True, text=True, errors="surrogateescape",
                         timeout=300)
    doc = json.loads(got.stdout)["results"][0]
    lines = [f["line"] for f in doc["failures"] if f["when"] in ("startup", "warning")]
    status = doc["fatal"]["exit_status"] if doc["fatal"] else 0
    if (lines, status) == (real.stderr.splitlines(), real.returncode):
        return None
    return f"ran: status {real.returncode}, {real.stderr.splitlines()}\npredicted: status {status}, {lines}"


def _soswap_args(env: Dict[str, str]):  # type: ignore[no-untyped-def]
    """soswap's options and environment for ``env``."""
    opts: List[str] = []
    soswap_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": SRC}
    for k, v in env.items():
        if k == "LD_LIBRARY_PATH":
            opts += ["--library-path", v]
        elif k == "LD_PRELOAD":
            opts += ["--preload", v]
        else:
            soswap_env[k] = v
    return opts, soswap_env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="*", metavar="ROOT")
    ap.add_argument("--base", default="/srv/qa-roots", help="where the roots are (default /srv/qa-roots)")
    ap.add_argument("--cases", type=int, default=40, help="random combinations per root (default 40)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = ap.parse_args()
    base = Path(args.base)
    roots = args.roots or sorted(p.name for p in base.iterdir() if (p / "usr" / "bin" / "ldd").exists()
                                 and native(p))
    if not roots:
        print(f"no release root under {base} (bench/parity_roots.py --build makes them)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    total = differ = 0
    for root in roots:
        files = [localized(f, base / root) for f in files_of(base / root)]
        bad = 0
        for _ in range(args.cases):
            env = {}
            for name, choices in (("LD_LIBRARY_PATH", LIBRARY_PATHS), ("LD_PRELOAD", PRELOADS),
                                  ("GLIBC_TUNABLES", TUNABLES), ("LD_BIND_NOW", BIND_NOW)):
                value = rng.choice(choices)
                if value is not None:
                    env[name] = localized(value, base / root)
            flag = rng.choice(FLAGS)
            diff = one_case(base / root, files, env, flag)
            prog, prog_args = rng.choice(RUNS)
            ran = one_run(base / root, prog, prog_args, env)
            total += 1
            if diff is not None or ran is not None:
                bad += 1
                print(f"{root} {' '.join(flag) or '(no flag)'} {env}:\n{diff or ''}\n{ran or ''}\n")
        differ += bad
        print(f"{root}: {args.cases} cases, {args.cases - bad} identical")
    print(f"all: {total} cases, {total - differ} identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
