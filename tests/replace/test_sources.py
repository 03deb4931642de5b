"""Sources and manifests that are not what their size or type says: pseudo-files of /proc and /sys, a source
that fails to read, a FIFO named as the manifest. Each is one error line and exit 2, the destination untouched
and nothing left behind, never an empty file installed nor a wait."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from replace.helpers import SRC, backups, leftovers, sha256, soswap
from soswap.errors import ReplaceError
from soswap.replace.checks import check_source_data
from support.build import requires_cc

THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _one_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("soswap: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@requires_cc
@pytest.mark.parametrize("dry_run", [False, True], ids=["install", "dry-run"])
@pytest.mark.parametrize("source", ["/proc/self/mem", "/proc/self/maps", THP])
def test_a_pseudo_file_source_is_refused_and_the_target_kept(tmp_path: Path, libfoo, state: Path,
                                                            source: str, dry_run: bool) -> None:
    """/proc/self/mem (st_size 0, a read there fails with EIO) was installed as an empty file, exit 0; a sysfs
    file (st_size 4096, 23 bytes to read) failed as "the source changed while being copied"."""
    if not os.path.exists(source):
        pytest.skip(f"{source} is missing on this kernel")
    d = tmp_path / "app"
    lib = libfoo.deploy(d, with_programs=False)
    r = soswap(["install", "--no-check", *(["--dry-run"] if dry_run else []), source, lib], state)
    assert r.returncode == 2, r.stdout + r.stderr
    line = _one_error(r.stderr)
    assert f"{source}: a " in line and "pseudo-file, whose size" in line and "says nothing of its content" in line
    assert "nothing was replaced" in line
    assert sha256(lib) == libfoo.sha1
    assert leftovers(d) == [] and backups(d) == []


def test_the_data_check_refuses_a_source_that_fails_to_read(tmp_path: Path) -> None:
    """The check behind the filesystem type: a read error (a directory: EISDIR; /proc/self/mem: EIO) is
    refused, it was taken for "nothing past the end"."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ReplaceError, match="cannot read the source: Is a directory; nothing was replaced"):
            check_source_data(fd, str(tmp_path), os.fstat(fd))
    finally:
        os.close(fd)


def test_the_data_check_refuses_a_size_that_is_not_the_content(tmp_path: Path) -> None:
    """A file read against the size of a bigger or smaller one: holds fewer / more bytes than that size."""
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"23 bytes of content....")
    big.write_bytes(b"x" * 4096)
    fd = os.open(small, os.O_RDONLY)
    try:
        check_source_data(fd, str(small), os.fstat(fd))  # a regular file as big as it says
        with pytest.raises(ReplaceError, match="holds fewer than the 4096 bytes its size says"):
            check_source_data(fd, str(small), big.stat())
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        with pytest.raises(ReplaceError, match="holds more than the 0 bytes its size says"):
            check_source_data(fd, str(small), empty.stat())
    finally:
        os.close(fd)


@requires_cc
def test_a_fifo_manifest_is_read_not_waited_for(tmp_path: Path, libfoo, state: Path) -> None:
    """--manifest FIFO blocked for ever in open(2) waiting for a writer. A FIFO nobody writes to now reads as
    empty (one error line, exit 2); a pipe that a process writes (``--manifest /dev/stdin``, ``<(command)``) is
    read to its end (the subprocess's timeout fails the test instead of hanging it)."""
    d = tmp_path / "app"
    lib = libfoo.deploy(d, with_programs=False)
    fifo = tmp_path / "manifest"
    os.mkfifo(fifo)
    for argv in (["install", "--manifest", fifo], ["install", "--dry-run", "--manifest", fifo]):
        r = soswap(argv, state, timeout=30)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "the manifest lists no files" in _one_error(r.stderr)
    r = soswap(["install", "--manifest", tmp_path], state, timeout=30)
    assert r.returncode == 2 and "cannot read the manifest: Is a directory" in _one_error(r.stderr)
    r = soswap(["install", "--manifest", "/dev/zero"], state, timeout=30)
    assert r.returncode == 2 and "cannot read the manifest: not a regular file" in _one_error(r.stderr)
    assert sha256(lib) == libfoo.sha1 and leftovers(d) == []
    # a manifest piped in
    e = dict(os.environ, PYTHONPATH=SRC, SOSWAP_STATE_DIR=str(state))
    r = subprocess.run([sys.executable, "-m", "soswap", "install", "--no-check", "--manifest", "/dev/stdin"],
                       input=f"{libfoo.v2} {lib}\n", env=e, cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert sha256(lib) == libfoo.sha2
    # a regular manifest still installs
    manifest = tmp_path / "MANIFEST"
    manifest.write_text(f"{libfoo.v1} {lib}\n")
    soswap(["install", "--no-check", "--manifest", manifest], state, check=0, timeout=30)
    assert sha256(lib) == libfoo.sha1
