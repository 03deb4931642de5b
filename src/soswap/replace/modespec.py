"""install(1)'s ``-m MODE``, ``-o OWNER`` and ``-g GROUP`` arguments.

``-m`` takes an octal mode or a symbolic one as chmod(1) does (``u=rwx,go=rx``, ``a+x``), applied to 0 as
install(1) does (coreutils src/install.c ``mode_adjust (0, ...)``).
"""

from __future__ import annotations

import grp
import pwd
import re
import stat

from soswap.errors import UsageError

#: the bits each ``who`` letter affects (coreutils lib/modechange.c mode_compile)
_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o1007, "a": 0o7777}
_PERM_BITS = {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000, "t": 0o1000}
_COPY = {"u": 0o700, "g": 0o070, "o": 0o007}  # "g=u": the permissions of another class
_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=](?:[ugo]|[0-7]+|[rwxXst]*))+)")
_ACTION = re.compile(r"([-+=])([ugo]|[0-7]+|[rwxXst]*)")


def parse_mode(text: str) -> int:
    """The permission bits (setuid/setgid/sticky included) that ``-m text`` gives a new file: an octal number
    up to 07777 (leading zeros allowed), or chmod(1) clauses applied to 0 as install(1) does (``mode_adjust``:
    ``X`` adds execute only where some execute bit is already set; ``g=u`` copies a class)."""
    if not text:
        raise UsageError("empty mode")
    if re.fullmatch(r"[0-7]+", text):
        value = int(text, 8)
        if value > 0o7777:
            raise UsageError(f"invalid mode: {text!r}")
        return value
    mode = 0
    for clause in text.split(","):
        m = _CLAUSE.fullmatch(clause)
        if not m:
            raise UsageError(f"invalid mode: {text!r}")
        affected = 0
        for w in m.group(1):
            affected |= _WHO[w]
        actions = _ACTION.findall(m.group(2))
        for n, (op, perms) in enumerate(actions):
            if perms[:1].isdigit():  # "=755", "+1": octal bits after an operator, with no "who", ending the clause
                if affected or int(perms, 8) > 0o7777 or n != len(actions) - 1:
                    raise UsageError(f"invalid mode: {text!r}")
                value = int(perms, 8)
            elif perms in _COPY:
                value = mode & _COPY[perms]
                value = ((0o444 if value & 0o444 else 0) | (0o222 if value & 0o222 else 0)
                         | (0o111 if value & 0o111 else 0))
            else:
                value = 0
                for p in perms:
                    if p == "X":  # MODE_X_IF_ANY_X: a new regular file, so only when execute is already set
                        if mode & 0o111:
                            value |= 0o111
                    else:
                        value |= _PERM_BITS[p]
            value &= affected if affected else 0o7777  # no who: the umask, 0 for install(1)
            if op == "=":
                mode = (mode & (~affected & 0o7777 if affected else 0)) | value
            elif op == "+":
                mode |= value
            else:
                mode &= ~value
    return stat.S_IMODE(mode)


#: uid_t and gid_t are 32 bits; (uid_t)-1 means "leave it unchanged" to chown(2)
_ID_MAX = 2**32 - 2


def _numeric_id(text: str, what: str) -> int:
    value = int(text)
    if value > _ID_MAX:
        raise UsageError(f"invalid {what}: {text!r} (at most {_ID_MAX})")
    return value


def parse_owner(text: str) -> int:
    """A user name or numeric uid."""
    if text.isascii() and text.isdigit():
        return _numeric_id(text, "user")
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise UsageError(f"invalid user: {text!r}") from None


def parse_group(text: str) -> int:
    """A group name or numeric gid."""
    if text.isascii() and text.isdigit():
        return _numeric_id(text, "group")
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise UsageError(f"invalid group: {text!r}") from None
