"""The startup version check (``_dl_check_all_versions`` → ``_dl_check_map_versions`` → ``match_symbol``, verbose):
``version `V' not found`` errors and the ``no version information available`` / ``weak version`` warnings."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from soswap.errors import ElfError
from soswap.loader import model as M
from soswap.loader.assertions import verneed_assertion

if TYPE_CHECKING:
    from soswap.loader.binding import Binder


def version_check(b: Binder, o: M.LoadedObject) -> List[M.Failure]:
    """``_dl_check_map_versions`` (verbose) for one object: E4 errors and the warnings."""
    res = b.res
    out: List[M.Failure] = []
    clean = b.cache.versions_clean
    if clean.get(id(o)) is o:
        return out
    elf = o.elf
    assert elf is not None
    try:
        needs = elf.version_needs
    except ElfError:
        return out
    if not needs:
        return out
    targets = []
    index = b.name_index()
    objs = res.objects
    program = False
    unknown = None  # the first need whose file no object is known by: ld.so's assertion
    for n, need in enumerate(needs):
        target = index.get(need.file)
        t = objs[target] if target is not None else None
        targets.append(t if t is not None and t.found and t.elf is not None else None)
        program = program or target == 0
        if target is None and unknown is None:
            unknown = n
    # The outcome depends only on the requiring file and the files its needs resolve to: memoized per run.
    key = (id(elf), *[id(t.elf) if t is not None else 0 for t in targets])
    outcomes = b.cache.version_outcomes.get(key)
    if outcomes is None:
        found: List[tuple] = []
        for n, (need, t) in enumerate(zip(needs, targets)):
            if t is None:
                continue
            vd = b.verdefs(t.index)
            if vd is None:
                continue
            has_verdef, verdefs = vd
            for e in need.entries:
                if not has_verdef:
                    found.append((n, M.NO_VERSION_INFO, e.name))
                elif (e.hash, e.name) in verdefs:
                    continue
                elif e.weak:
                    found.append((n, M.WEAK_VERSION, e.name))
                else:
                    found.append((n, M.VERSION, e.name))
        # the files are kept in the value so that their ids in the key stay theirs
        outcomes = b.cache.version_outcomes[key] = (tuple(found), elf, tuple(t.elf for t in targets if t))
    if not outcomes[0] and unknown is None:
        if o.index != 0 and not program:
            # A library object is shared only by results of the same shape (loading.py: the same objects at
            # the same places); its needs resolve to the same files there unless they name the program.
            clean[id(o)] = o
        return out
    requirer = o.display or res.argv0
    argv0 = res.argv0
    for n, kind, version in outcomes[0]:
        if unknown is not None and n > unknown:
            break
        t = targets[n]
        assert t is not None
        tname = t.path or argv0
        if kind == M.NO_VERSION_INFO:
            msg = f"no version information available (required by {requirer})"
            out.append(M.Failure(kind, tname, o.index, f"{tname}: {msg}", f"{argv0}: {tname}: {msg}", M.WARNING,
                                 False, version=version))
        elif kind == M.WEAK_VERSION:
            msg = f"weak version `{version}' not found (required by {requirer})"
            out.append(M.Failure(kind, tname, o.index, f"{tname}: {msg}", f"{argv0}: {tname}: {msg}", M.WARNING,
                                 False, version=version))
        else:
            msg = f"version `{version}' not found (required by {requirer})"
            out.append(M.Failure(kind, tname, o.index, f"{tname}: {msg}", f"{argv0}: {tname}: {msg}", M.STARTUP,
                                 True, version=version, exit_status=1))
    if unknown is not None:
        # _dl_check_map_versions: find_needed found no object by the need's vn_file (a DT_NEEDED removed or
        # renamed without its version needs, as "patchelf --remove-needed" leaves them): assert (needed != NULL)
        text = verneed_assertion(res.profile.glibc_version)
        out.append(M.Failure(M.ASSERTION, o.display or argv0, o.index, text, text,
                             M.STARTUP, True, exit_status=127))
    return out


def find_needed(res: M.LoadResult, name: str) -> Optional[int]:
    # find_needed (elf/dl-version.c): the first object of the link-map chain known by that name
    for o in res.objects:
        if name == o.path or name in o.names:
            return o.index
    return None
