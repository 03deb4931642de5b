#!/usr/bin/env python3
"""The parity contract on other glibc releases: ``soswap tree --root R --ldd [-r]`` against the root's own
loader, ``chroot R ldd [-r]``, for every ELF file of R's /usr/bin, /usr/sbin and /usr/lib (recursive).

    python bench/parity_roots.py [--build] [--base DIR] [ROOT...]

ROOT names a directory under --base (default /srv/qa-roots): bullseye (glibc 2.31), jammy (2.35), noble
(2.39), trixie (2.41), sid (2.43). With --build, a missing root is made with debootstrap (network, a few
minutes each; run as root). Prints, per root and flag, how many files are identical and every one that differs.
Results: docs/tree.md, "The parity contract".
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

SRC = str(Path(__file__).resolve().parent.parent / "src")
sys.path.insert(0, SRC)

from soswap.loader.rootfs import RootFS  # noqa: E402

ROOTS = {
    "bullseye": ("bullseye", "http://deb.debian.org/debian", "libssl1.1,openssh-client,curl,python3"),
    "jammy": ("jammy", "http://archive.ubuntu.com/ubuntu", "openssh-client,curl,python3"),
    "noble": ("noble", "http://archive.ubuntu.com/ubuntu", "openssh-client,curl,python3"),
    "trixie": ("trixie", "http://deb.debian.org/debian", "libssl3t64,openssh-client,curl,python3"),
    "sid": ("sid", "http://deb.debian.org/debian", "openssh-client,curl"),
}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ADDR = re.compile(r" \(0x[0-9a-f]+\)$", re.M)


def build(root: Path, name: str) -> None:
    suite, mirror, extra = ROOTS[name]
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={extra}", "--no-check-gpg", suite, str(root),
                    mirror], check=True)


def elf_files(root: Path) -> List[str]:
    fs = RootFS(str(root))
    out = set()
    for d, recursive in (("/usr/bin", False), ("/usr/sbin", False), ("/usr/lib", True)):
        top = str(root) + d
        walk = os.walk(top) if recursive else [(top, [], os.listdir(top))]
        for here, _dirs, names in walk:
            for n in names:
                target = here[len(str(root)):] + "/" + n
                if "\n" in target or " " in target or ":" in target:
                    continue  # the FILE: headers could not be split back
                try:
                    with open(fs.host(target), "rb") as f:
                        if f.read(4) == b"\x7fELF":
                            out.add(target)
                except OSError:
                    pass
    return sorted(out)


def oracle(root: Path, flag: str, files: List[str]) -> Dict[str, Tuple[str, str, int]]:
    def one(f: str) -> Tuple[str, Tuple[str, str, int]]:
        p = subprocess.run(["chroot", str(root), "/usr/bin/ldd", *([flag] if flag else []), f], env={"PATH": PATH},
                           capture_output=True, cwd="/", timeout=120)
        return f, (ADDR.sub("", p.stdout.decode("utf-8", "surrogateescape")),
                   p.stderr.decode("utf-8", "surrogateescape"), p.returncode)

    with ThreadPoolExecutor(8) as ex:
        return dict(ex.map(one, files))


def soswap(root: Path, flag: str, files: List[str]) -> Tuple[Dict[str, str], str, int]:
    env = {"PATH": PATH, "PYTHONPATH": SRC, "SOSWAP_CACHE_DIR": "/tmp/parity-roots-cache",
           "SOSWAP_STATE_DIR": "/tmp/parity-roots-state"}
    p = subprocess.run([sys.executable, "-m", "soswap", "tree", "--root", str(root), "--ldd",
                        *([flag] if flag else []), *files], env=env, capture_output=True, cwd="/", timeout=3600)
    out = p.stdout.decode("utf-8", "surrogateescape")
    segments: Dict[str, str] = {}
    pos = 0
    for i, f in enumerate(files):
        start = pos + len(f) + 2  # "FILE:\n"
        end = len(out)
        if i + 1 < len(files):
            end = out.find("\n" + files[i + 1] + ":\n", start - 1) + 1
            while end > 0 and not out.startswith(files[i + 1] + ":\n", end):
                end = out.find("\n" + files[i + 1] + ":\n", end) + 1
        segments[f] = out[start:end]
        pos = end
    return segments, p.stderr.decode("utf-8", "surrogateescape"), p.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="*", default=list(ROOTS))
    ap.add_argument("--base", default="/srv/qa-roots")
    ap.add_argument("--build", action="store_true", help="make missing roots with debootstrap")
    args = ap.parse_args()
    bad = 0
    for name in args.roots:
        root = Path(args.base) / name
        if not (root / "usr/bin/ldd").exists():
            if not args.build:
                print(f"{name}: no root at {root} (--build makes it)")
                continue
            build(root, name)
        files = elf_files(root)
        for flag in ("", "-r"):
            want = oracle(root, flag, files)
            got, err, status = soswap(root, flag, files)
            differ = [f for f in files if got.get(f) != want[f][0]]
            want_err = "".join(want[f][1] for f in files)
            want_status = 1 if any(want[f][2] for f in files) else 0
            print(f"{name} ldd {flag or '  '}: {len(files)} files, {len(files) - len(differ)} identical; standard "
                  f"error {'identical' if err == want_err else 'DIFFERS'}; status {status} (ldd {want_status})")
            for f in differ:
                print(f"  differs: {f}")
            bad += len(differ) + (err != want_err) + (status != want_status)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
