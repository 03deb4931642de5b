"""``install``: replace files as one transaction (replace.md §(a) for each file, §4 for the whole).

1. recover any interrupted transaction (under the state-directory lock);
2. check every destination (read-only mount, bind mount, +i/+a, NFS, file type) before writing anything;
3. preflight (the ``soswap check`` engine) unless disabled: refuse with the problems, changing nothing;
4. journal the plan (``staging``), stage every file (temp + data + metadata + fsync), journal ``prepared``;
5. commit in dependency order (backup link, re-check, rename, soname link flip), fsync the directories,
   journal ``committed``; clean up; prune old backups;
6. hand the replaced inodes to the stale-report hook.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from soswap.errors import Refused, ReplaceError, StateError, UsageError
from soswap.replace import checks, metadata, naming
from soswap.replace.order import DynInfo, dependency_order, read_dyninfo
from soswap.replace.pause import pause_point
from soswap.replace.records import (
    KIND_FILE,
    KIND_SYMLINK,
    Change,
    InodeRecord,
    InstallResult,
    Notice,
    superseded_files,
)
from soswap.replace.sonames import LinkPlan, libcmp, plan_soname_link
from soswap.replace.staging import stage_file, stage_symlink
from soswap.replace.statedir import DEFAULT_LOCK_TIMEOUT, StateDir
from soswap.replace.targets import Request, Target, resolve
from soswap.replace.transaction import (
    FAILED,
    PREPARED,
    AfterCommit,
    Dirs,
    Transaction,
    after_commit,
    change_dir_flags,
    commit_all,
    descriptors_for,
    finish,
    remove_temp,
    restore_dir_flags,
)
from soswap.tuples import NamedTuple

#: ``preflight([(source, destination), ...]) -> problems``: the ``soswap check`` engine, run before anything
#: is written; any problem refuses the install unless ``force``. Problems are rendered with ``str()`` (or their
#: ``message`` attribute) and, in JSON, with their ``to_json()`` method when they have one.
Preflight = Callable[[Sequence[Tuple[str, str]]], Sequence[Any]]
#: ``stale_report([(destination, old InodeRecord), ...]) -> report``: the ``soswap stale`` engine, run after the
#: commit on every replaced inode (renamed-away and hard-linked old versions included).
StaleReport = Callable[[Sequence[Tuple[str, InodeRecord]]], Any]

#: Default number of most recent transactions whose backups are kept for ``soswap rollback``.
DEFAULT_KEEP = 3


class InstallOptions(NamedTuple):
    """Switches of ``install``; the defaults are the CLI's."""

    backup: bool = True
    keep: int = DEFAULT_KEEP
    dry_run: bool = False
    force: bool = False
    check: bool = True
    force_immutable: bool = False
    allow_nfs: bool = False
    replace_link: bool = False
    make_dirs: bool = False
    soname_links: bool = True
    hash: bool = False
    mode: Optional[int] = None
    uid: Optional[int] = None
    gid: Optional[int] = None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT


class _Plan:
    """One file to install, checked."""

    __slots__ = ("dyn", "md", "mode_given", "old_st", "source_st", "target")

    def __init__(self, target: Target, source_st: os.stat_result, old_st: Optional[os.stat_result],
                 md: metadata.Metadata, mode_given: bool) -> None:
        self.target = target
        self.source_st = source_st
        self.old_st = old_st
        self.md = md
        self.mode_given = mode_given
        self.dyn: Optional[DynInfo] = None


#: install(1)'s default mode for a new file.
NEW_FILE_MODE = 0o755


def _check_source(req: Request) -> os.stat_result:
    """The source's identity, once it is known to be a regular file that reads as its size says (a dry run
    refuses what the install would)."""
    try:
        st = os.stat(req.source)
    except OSError as exc:
        raise ReplaceError(f"{req.source}: cannot read the source: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ReplaceError(f"{req.source}: the source is not a regular file")
    try:  # O_NONBLOCK: a FIFO put there since the stat is not waited for (fifo(7))
        fd = os.open(req.source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ReplaceError(f"{req.source}: cannot read the source: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ReplaceError(f"{req.source}: the source is not a regular file")
        checks.check_source_data(fd, req.source, st)
    finally:
        os.close(fd)
    return st


def _plan_one(target: Target, opts: InstallOptions, dir_flags: Dict[str, int], refusals: List[str],
              notices: List[Notice]) -> _Plan:
    req = target.request
    source_st = _check_source(req)
    directory = target.directory
    if not os.path.isdir(directory):
        # -D in a dry run: the directory would be created; nothing more to check.
        md = metadata.Metadata(_pick(req.uid, opts.uid), _pick(req.gid, opts.gid),
                               _pick(req.mode, opts.mode, NEW_FILE_MODE))
        return _Plan(target, source_st, None, md, req.mode is not None or opts.mode is not None)
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ReplaceError(checks.describe_oserror(directory, exc, "opening the directory")) from None
    try:
        checks.check_directory(dfd, directory, opts.allow_nfs)
        if directory not in dir_flags:
            dir_flags[directory] = checks.directory_flags(dfd)
            if dir_flags[directory] and not opts.force_immutable:
                refusals.append(str(checks.blocking_refusal(directory, dir_flags[directory])))
        try:
            old_st: Optional[os.stat_result] = os.lstat(target.name, dir_fd=dfd)
        except FileNotFoundError:
            old_st = None
        if old_st is None:
            md = metadata.Metadata(_pick(req.uid, opts.uid), _pick(req.gid, opts.gid),
                                   _pick(req.mode, opts.mode, NEW_FILE_MODE))
            return _Plan(target, source_st, None, md, req.mode is not None or opts.mode is not None)
        if stat.S_ISLNK(old_st.st_mode):
            if not opts.replace_link:  # resolve() followed the link; a link here is a race
                raise ReplaceError(f"{target.path}: became a symbolic link while soswap was checking it")
        else:
            checks.check_regular(target.path, old_st)
            dir_st = os.fstat(dfd)
            checks.check_mount_point(dfd, target.name, target.path, dir_st, old_st)
        if (old_st.st_dev, old_st.st_ino) == (source_st.st_dev, source_st.st_ino):
            raise UsageError(f"{req.source} and {target.path} are the same file")
        if stat.S_ISLNK(old_st.st_mode):
            md = metadata.Metadata(_pick(req.uid, opts.uid), _pick(req.gid, opts.gid),
                                   _pick(req.mode, opts.mode, NEW_FILE_MODE))
        else:
            try:
                fd = os.open(target.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as exc:
                raise ReplaceError(checks.describe_oserror(target.path, exc, "reading the file being replaced")) \
                    from None
            try:
                snap = metadata.snapshot(fd, os.fstat(fd))
            finally:
                os.close(fd)
            md = snap._replace(
                uid=_pick(req.uid, opts.uid, snap.uid),
                gid=_pick(req.gid, opts.gid, snap.gid),
                mode=_pick(req.mode, opts.mode, snap.mode),
            )
            blocking = (snap.flags or 0) & metadata.BLOCKING_FLAGS
            if blocking and not opts.force_immutable:
                refusals.append(str(checks.blocking_refusal(target.path, blocking)))
            warning = checks.hard_link_warning(old_st)
            if warning:
                notices.append(Notice(target.path, warning))
            for name in snap.skipped:
                notices.append(Notice(target.path, f"{name} not copied (it is a hash of the old content); "
                                                   "re-sign the file or let IMA fix it"))
        return _Plan(target, source_st, old_st, md, req.mode is not None or opts.mode is not None)
    finally:
        os.close(dfd)


def _pick(*values: Optional[int]) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


def plan(requests: Sequence[Request], opts: InstallOptions) -> Tuple[List[_Plan], Dict[str, int], List[Notice]]:
    """Resolve and check every request; raise on the first error, or Refused with every refusal."""
    if not requests:
        raise UsageError("nothing to install")
    notices: List[Notice] = []
    refusals: List[str] = []
    dir_flags: Dict[str, int] = {}
    plans: List[_Plan] = []
    seen: Dict[str, str] = {}
    for req in requests:
        target = resolve(req, opts.replace_link, opts.make_dirs)
        if target.path in seen:
            raise UsageError(f"{target.path} is the destination of both {seen[target.path]} and {req.source}")
        seen[target.path] = req.source
        if target.path != target.requested:
            what = ("is a symbolic link" if os.path.islink(target.requested)
                    else "is reached through a symbolically linked directory")
            notices.append(Notice(target.requested, f"{what}; replacing {target.path}"))
        plans.append(_plan_one(target, opts, dir_flags, refusals, notices))
    if refusals:
        raise Refused(checks.collect_hint(refusals))
    for p in plans:
        p.dyn = read_dyninfo(p.target.request.source)
    return plans, {d: f for d, f in dir_flags.items() if f}, notices


def _link_plans(plans: Sequence[_Plan], order: Sequence[int], notices: List[Notice]) -> Dict[int, LinkPlan]:
    """Soname link flips, keyed by the index of the library file they follow in commit order."""
    out: Dict[int, LinkPlan] = {}
    installed = {p.target.path for p in plans}
    chosen: Dict[str, int] = {}  # link -> the plan whose file it will point to
    for i in order:
        p = plans[i]
        if p.dyn is None or not p.dyn.soname:
            continue
        result = plan_soname_link(p.target.directory, p.target.name, p.dyn.soname if p.dyn.shared else None)
        if isinstance(result, str):
            notices.append(Notice(p.target.path, result))
        elif result is not None:
            if result.link in installed:
                continue  # the soname itself is being installed as a file in this transaction
            # several new files with one SONAME: the link goes to the highest version, as ldconfig would
            # (whatever the order they were given in)
            j = chosen.get(result.link)
            if j is not None and libcmp(result.target, out[j].target) <= 0:
                continue
            if j is not None:
                del out[j]
            chosen[result.link] = i
            out[i] = result
    return out


def _preflight_pairs(plans: Sequence[_Plan], links: Dict[int, LinkPlan]) -> List[Tuple[str, str]]:
    """(source, installed file it replaces) for the preflight: each destination, and for each soname link the
    transaction flips, the file the link leads to now. Consumers load that file through the link: after the
    flip they load the new library in its place (``libfoo.so.1 -> libfoo.so.1.0`` becoming ``-> .1.1``)."""
    pairs = [(os.path.abspath(p.target.request.source), p.target.path) for p in plans]
    for i, lp in links.items():
        if lp.old_target is None:
            continue
        old = os.path.realpath(os.path.join(os.path.dirname(lp.link), lp.old_target))
        pair = (os.path.abspath(plans[i].target.request.source), old)
        # also when the transaction replaces that file too: consumers reach it through the link, which then
        # leads to the flip's file, not to the file's own replacement
        if pair not in pairs and os.path.isfile(old):
            pairs.append(pair)
    return pairs


def _planned_changes(plans: Sequence[_Plan], order: Sequence[int], links: Dict[int, LinkPlan],
                     txid: Optional[str]) -> List[Change]:
    changes: List[Change] = []
    link_seen = set()
    for i in order:
        p = plans[i]
        t = p.target
        old = InodeRecord.of(p.old_st) if p.old_st is not None else None
        flags = ((p.md.flags or 0) & metadata.BLOCKING_FLAGS) if old is not None else 0
        changes.append(Change(
            kind=KIND_FILE,
            dest=t.path,
            requested=t.requested,
            source=os.path.abspath(t.request.source),
            temp=naming.temp_name(t.name, txid) if txid else None,
            backup=naming.backup_name(t.name, txid) if txid and old is not None else None,
            old=old,
            flags=flags,
            privileges=metadata.privileges_of(t.path, p.old_st) if p.old_st is not None else None,
        ))
        lp = links.get(i)
        if lp is not None and lp.link not in link_seen:
            link_seen.add(lp.link)
            name = os.path.basename(lp.link)
            try:
                lst: Optional[os.stat_result] = os.lstat(lp.link)
            except FileNotFoundError:
                lst = None
            changes.append(Change(
                kind=KIND_SYMLINK,
                dest=lp.link,
                requested=lp.link,
                temp=naming.temp_name(name, txid) if txid else None,
                backup=None,
                old=InodeRecord.of(lst) if lst is not None else None,
                link_old=lp.old_target,
                link_new=lp.target,
            ))
    return changes


def _make_dirs(plans: Sequence[_Plan]) -> None:
    for p in plans:
        d = p.target.directory
        if not os.path.isdir(d):
            try:
                os.makedirs(d, mode=0o755, exist_ok=True)
                fd = os.open(os.path.dirname(d), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise ReplaceError(checks.describe_oserror(d, exc, "creating the directory")) from None


def install(
    requests: Sequence[Request],
    opts: Optional[InstallOptions] = None,
    state: Optional[StateDir] = None,
    preflight: Optional[Preflight] = None,
    stale_report: Optional[StaleReport] = None,
    argv: Sequence[str] = (),
) -> InstallResult:
    """Install ``requests`` as one transaction (see the module docstring). Raises :class:`Refused` (a policy
    refusal: nothing changed), :class:`ReplaceError`/:class:`StateError` (nothing changed, or the journal
    records an interrupted transaction for ``soswap recover``); returns the result otherwise, with status
    ``refused`` when the preflight found problems."""
    from soswap.replace.recovery import known_hashes, pending_txids, prune, recover_locked, recovery_warnings

    opts = opts or InstallOptions()
    state = state or StateDir()
    if opts.dry_run:
        plans, dir_flags, notices = plan(requests, opts)
        notices.extend(Notice(state.path, f"interrupted transaction {t} would be recovered first")
                       for t in pending_txids(state))
        return _preflight_and_plan(plans, dir_flags, notices, opts, preflight, None, ())

    state.lock(opts.lock_timeout)
    try:
        recovered = state.recovered = tuple(recover_locked(state))
        known = known_hashes(state) if opts.hash else {}
        plans, dir_flags, notices = plan(requests, opts)
        descriptors_for(len({p.target.directory for p in plans}))  # before anything is written
        result = _preflight_and_plan(plans, dir_flags, notices, opts, preflight, state, recovered, argv, known)
        if recovery_warnings(recovered):
            result = result._replace(warnings=(*recovery_warnings(recovered), *result.warnings))
        if result.status == "refused":
            return result
        try:
            pruned = prune(state, opts.keep) if opts.backup else []
        except KeyboardInterrupt:
            raise AfterCommit(result.txid, KeyboardInterrupt(), "done") from None
        except (OSError, StateError) as exc:  # housekeeping after the transaction ended: not its failure
            pruned = []
            result = result._replace(warnings=(*result.warnings, Notice(
                state.path, f"every file is its new version, but pruning older backups failed ({exc}); the next "
                "install tries again")))
        # --keep 0 prunes this transaction's own backups too: then none is kept
        result = result._replace(pruned=tuple(pruned), backups_kept=result.backups_kept and result.txid not in pruned)
    finally:
        state.unlock()
    if stale_report is not None:
        olds = [(c.dest, c.old) for c in result.changes if c.old is not None and c.kind == KIND_FILE]
        olds += superseded_files(result.changes)  # the previous version a flipped soname link led to
        if olds:
            try:
                result = result._replace(after=stale_report(olds))
            except KeyboardInterrupt:
                raise AfterCommit(result.txid, KeyboardInterrupt(), "done") from None
    return result


def _preflight_and_plan(plans: List[_Plan], dir_flags: Dict[str, int], notices: List[Notice],
                        opts: InstallOptions, preflight: Optional[Preflight], state: Optional[StateDir],
                        recovered: Sequence[Any], argv: Sequence[str] = (),
                        known: Optional[Dict[Tuple[int, int, int, int], str]] = None) -> InstallResult:
    problems: Tuple[Any, ...] = ()
    order = dependency_order([p.target.name for p in plans], [p.dyn for p in plans])
    links = _link_plans(plans, order, notices) if opts.soname_links else {}
    if preflight is not None and opts.check:
        from soswap.abi.preflight import REVIEW_NOTE

        refusing = []
        for p in preflight(_preflight_pairs(plans, links)):
            if getattr(p, "kind", None) == REVIEW_NOTE:  # what ELF cannot decide (a grown object): said, not refused
                notices.append(Notice(p.target, p.message.split(": ", 1)[-1]))
            else:
                refusing.append(p)
        problems = tuple(refusing)
    if problems and not opts.force:
        changes = _planned_changes(plans, order, links, None)
        return InstallResult(None, "refused", tuple(changes), tuple(notices), tuple(recovered), problems)
    if state is None:  # dry run
        changes = _planned_changes(plans, order, links, None)
        return InstallResult(None, "dry-run", tuple(changes), tuple(notices), tuple(recovered), problems)
    return _run(plans, order, links, dir_flags, notices, opts, state, recovered, problems, argv, known or {})


def _run(plans: List[_Plan], order: List[int], links: Dict[int, LinkPlan], dir_flags: Dict[str, int],
         notices: List[Notice], opts: InstallOptions, state: StateDir, recovered: Sequence[Any],
         problems: Tuple[Any, ...], argv: Sequence[str],
         known: Dict[Tuple[int, int, int, int], str]) -> InstallResult:
    if opts.make_dirs:
        _make_dirs(plans)
    txid = naming.new_txid()
    while not state.claim(txid):
        txid = naming.new_txid()
    tx = Transaction.new(state, txid, "install", argv, keep_backups=opts.backup)
    changes = _planned_changes(plans, order, links, txid)
    tx.set_changes(changes)
    tx.record["dir_flags"] = [{"dir": d, "flags": f} for d, f in sorted(dir_flags.items())]
    pause_point("checked")
    tx.save("staging")
    pause_point("journal-staging")
    by_path = {p.target.path: p for p in plans}
    with Dirs() as dirs:
        staged: List[Change] = []
        try:
            for d in dir_flags:
                change_dir_flags(d, 0, metadata.BLOCKING_FLAGS)
            for ch in changes:
                dfd = dirs.get(ch.directory)
                if ch.kind == KIND_SYMLINK:
                    assert ch.temp is not None and ch.link_new is not None
                    new = stage_symlink(dfd, ch.dest, ch.temp, ch.link_new)
                    staged.append(ch._replace(new=new, method="symlink"))
                    continue
                p = by_path[ch.dest]
                assert ch.temp is not None
                old_st = p.old_st if p.old_st is not None and stat.S_ISREG(p.old_st.st_mode) else None
                known_old = known.get((old_st.st_dev, old_st.st_ino, old_st.st_size, old_st.st_mtime_ns)) \
                    if old_st is not None else None
                sf = stage_file(dfd, ch.dest, ch.temp, p.target.request.source, p.source_st, old_st, p.md,
                                p.mode_given, opts.hash, known_old)
                old = ch.old._replace(sha256=sf.old_sha256) if ch.old is not None else None
                staged.append(ch._replace(new=sf.new, old=old, method=sf.method))
            pause_point("staged")
            tx.set_changes(staged)
            tx.save(PREPARED)
            pause_point("journal-prepared")  # a SIGTERM here still cleans up like one while staging
        except BaseException as exc:
            _abort_staging(tx, changes, dirs, exc)
            raise
        with after_commit(tx):  # past the committed mark, the files are their new versions: said so
            committed = commit_all(tx, staged, dirs)
            warnings = finish(tx, committed, dirs)
        notices.extend(Notice(path, message) for path, message in warnings)
    return InstallResult(txid, "installed", tuple(committed), tuple(notices), tuple(recovered), problems,
                         backups_kept=opts.backup)


def _abort_staging(tx: Transaction, changes: Sequence[Change], dirs: Dirs, exc: BaseException) -> None:
    """Remove every temp of a transaction that failed before committing; the journal ends ``failed``."""
    for ch in changes:
        try:
            remove_temp(ch, dirs.get(ch.directory))
        except OSError:
            pass
    restore_dir_flags(tx)
    tx.record["error"] = str(exc) or type(exc).__name__
    try:
        tx.save(FAILED)
    except Exception:  # the original error matters more; recovery will clean up the staging journal
        pass

