"""A program replaced by a shared library: NEW cannot run (no program interpreter, no entry point); the real
run is the oracle. The reverse (a library replaced by a program) is refused by ld.so itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from soswap.abi import diff_files
from support.build import executable, requires_cc, shared_lib

pytestmark = requires_cc


def test_a_program_replaced_by_a_library_is_breaking(tmp_path: Path) -> None:
    prog = executable(tmp_path / "prog", "int main(void) { return 0; }\n")
    lib = shared_lib(tmp_path / "libplain.so", "static int x; int helper_only(void) { return x; }\n")
    replaced = tmp_path / "replaced"
    shutil.copy(lib, replaced)
    replaced.chmod(0o755)
    run = subprocess.run([str(replaced)], capture_output=True, timeout=30)
    assert run.returncode < 0  # killed by a signal: it cannot run as a program
    d = diff_files(str(prog), str(lib))
    kinds = {(c.kind, c.severity) for c in d.changes}
    assert ("elf-type-changed", "breaking") in kinds
    back = diff_files(str(lib), str(prog))
    assert ("elf-type-changed", "breaking") in {(c.kind, c.severity) for c in back.changes}
