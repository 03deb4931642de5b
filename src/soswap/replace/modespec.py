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

_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o1007}
_PERM_BITS = {"r": 0o444, "w": 0o222, "x": 0o111, "X": 0o111, "s": 0o6000, "t": 0o1000}
_CLAUSE = re.compile(r"^([ugoa]*)([-+=][rwxXst]*)+$")
_ACTION = re.compile(r"([-+=])([rwxXst]*)")


def parse_mode(text: str) -> int:
    """The permission bits (setuid/setgid/sticky included) that ``-m text`` gives a new file."""
    if not text:
        raise UsageError("empty mode")
    if re.fullmatch(r"[0-7]{1,4}", text):
        return int(text, 8)
    mode = 0
    for clause in text.split(","):
        m = _CLAUSE.match(clause)
        if not m:
            raise UsageError(f"invalid mode: {text!r}")
        who = m.group(1) or "a"
        mask = 0
        for w in who:
            mask |= 0o7777 if w == "a" else _WHO[w]
        for op, perms in _ACTION.findall(clause[len(m.group(1)):]):
            bits = 0
            for p in perms:
                bits |= _PERM_BITS[p]
            bits &= mask
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                mode = (mode & ~(mask & 0o7777)) | bits
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
