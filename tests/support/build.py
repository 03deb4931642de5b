"""Build real fixtures with the system C compiler.

Every helper writes into a directory the test owns (usually ``tmp_path``) and returns the output path.
Compilation errors fail the test with the compiler's message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import pytest

CC = os.environ.get("CC", "gcc")

PathLike = Union[str, "os.PathLike[str]"]


def have_cc() -> bool:
    return shutil.which(CC) is not None


def have_m32() -> bool:
    """True when ``gcc -m32`` can link a shared library (gcc-multilib installed)."""
    return _probe_m32()


_m32_cache: Optional[bool] = None


def _probe_m32() -> bool:
    global _m32_cache
    if _m32_cache is None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            src = Path(d, "t.c")
            src.write_text("int f(void){return 1;}\nint main(void){return f()-1;}\n")
            r = subprocess.run([CC, "-m32", "-o", str(Path(d, "t")), str(src)], capture_output=True)
            _m32_cache = r.returncode == 0
    return _m32_cache


def run_cc(args: Sequence[str], cwd: Optional[PathLike] = None) -> None:
    """Run the compiler; fail the test with its stderr when it fails."""
    r = subprocess.run([CC, *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"{CC} {' '.join(args)} failed:\n{r.stderr}")


def write(path: PathLike, text: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def shared_lib(
    out: PathLike,
    source: str,
    *,
    soname: Optional[str] = None,
    version_script: Optional[str] = None,
    libs: Iterable[str] = (),
    flags: Iterable[str] = (),
    m32: bool = False,
) -> Path:
    """Compile C ``source`` into the shared library ``out``.

    ``version_script`` is the text of a GNU ld version script; ``libs`` are extra linker arguments placed after
    the source (``-L...``, ``-lfoo``, paths); ``flags`` go before it (``-Wl,-z,now``, ``-fno-plt``...).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_name(out.name + ".c")
    src.write_text(source)
    args = ["-shared", "-fPIC", "-o", str(out)]
    if m32:
        args.insert(0, "-m32")
    if soname:
        args.append(f"-Wl,-soname,{soname}")
    if version_script is not None:
        vs = out.with_name(out.name + ".map")
        vs.write_text(version_script)
        args.append(f"-Wl,--version-script={vs}")
    args.extend(flags)
    args.append(str(src))
    args.extend(libs)
    run_cc(args)
    return out


def executable(
    out: PathLike,
    source: str,
    *,
    libs: Iterable[str] = (),
    flags: Iterable[str] = (),
    m32: bool = False,
) -> Path:
    """Compile C ``source`` into the executable ``out`` (PIE, the Debian default)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_name(out.name + ".c")
    src.write_text(source)
    args = ["-o", str(out)]
    if m32:
        args.insert(0, "-m32")
    args.extend(flags)
    args.append(str(src))
    args.extend(libs)
    run_cc(args)
    return out


def rpath_flags(*dirs: str, old_dtags: bool = False) -> list:
    """Linker flags for DT_RUNPATH (default on Debian) or, with ``old_dtags``, DT_RPATH."""
    flags = [f"-Wl,-rpath,{':'.join(dirs)}"]
    if old_dtags:
        flags.append("-Wl,--disable-new-dtags")
    else:
        flags.append("-Wl,--enable-new-dtags")
    return flags


requires_cc = pytest.mark.skipif(not have_cc(), reason="no C compiler")
requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


#: A tiny library in assembly, for cross binutils: ``{body}`` is the code of ``exported``.
ASM_LIB = """
    .text
    .globl  exported
    .type   exported, @function
exported:
    {body}
    .size   exported, .-exported
    .data
    .globl  counter
    .type   counter, @object
    .size   counter, 4
counter:
    .long   42
"""


def cross_tool(tool: str) -> str:
    """The path of a cross binutils tool, or skip the test."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed")
    return path


def big_endian_ppc_lib(directory: PathLike, ld_flags: Sequence[str] = ()) -> Path:
    """``libbe.so.1``: 32-bit big-endian PowerPC, SONAME libbe.so.1, version node BE_1.0 holding ``exported``
    and ``counter`` (4 bytes), an undefined ``helper`` called through the PLT. Skips without powerpc binutils."""
    asm, ld = cross_tool("powerpc-linux-gnu-as"), cross_tool("powerpc-linux-gnu-ld")
    d = Path(directory)
    src = write(d / "be.s", ASM_LIB.format(body="bl helper@plt\n    blr"))
    vs = write(d / "be.map", "BE_1.0 { global: exported; counter; local: *; };\n")
    subprocess.run([asm, "-o", str(d / "be.o"), str(src)], check=True)
    lib = d / "libbe.so.1"
    subprocess.run([ld, "-shared", "-soname", "libbe.so.1", f"--version-script={vs}", "-o", str(lib),
                    str(d / "be.o"), "--unresolved-symbols=ignore-all", *ld_flags], check=True)
    return lib
