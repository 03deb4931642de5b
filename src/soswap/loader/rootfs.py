"""Paths inside a target root (``--root DIR``): the loader works with the target's absolute paths; this module
maps them to host paths, resolving symlinks *inside* the root as a chroot would (an absolute link target
starts again at the root, ``..`` never climbs above it)."""

from __future__ import annotations

import os
import posixpath
from typing import Dict, Optional

#: As the kernel's limit on nested symlinks (ELOOP).
MAX_SYMLINKS = 40


class RootFS:
    """Map target paths to host paths for a root directory (``/`` maps every path to itself)."""

    def __init__(self, root: str = "/") -> None:
        root = os.path.abspath(root or "/")
        self.root = root
        self.is_host = root == "/"
        self._memo: Dict[str, Optional[str]] = {}

    def host(self, path: str) -> str:
        """The host path of target path ``path`` (symlinks resolved inside the root when it is not ``/``).

        A relative ``path`` is returned unchanged for the host root. For another root it must be absolute.
        """
        if self.is_host:
            return path
        hit = self._memo.get(path)
        if hit is not None:
            return hit
        resolved = self._resolve(path)
        out = self.root + resolved if resolved != "/" else self.root
        self._memo[path] = out
        return out

    def _resolve(self, path: str) -> str:
        """Resolve ``path`` component by component inside the root; returns a target path."""
        if not path.startswith("/"):
            path = "/" + path
        parts = [p for p in path.split("/") if p]
        done = "/"
        links = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                done = posixpath.dirname(done.rstrip("/")) or "/"
                continue
            candidate = posixpath.join(done, part)
            host = self.root + candidate
            try:
                target = os.readlink(host)
            except OSError:
                done = candidate
                continue
            links += 1
            if links > MAX_SYMLINKS:
                return candidate  # the open will fail with ELOOP-like ENOENT; keep a stable answer
            new_parts = [p for p in target.split("/") if p]
            if target.startswith("/"):
                done = "/"
            parts = new_parts + parts
        return done

    def target_realpath(self, path: str) -> str:
        """The canonical target path of ``path`` (``realpath`` inside the root)."""
        if self.is_host:
            return os.path.realpath(path)
        return self._resolve(path)
