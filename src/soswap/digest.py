"""SHA-256 and BLAKE2b digests that cost nothing to import.

``import hashlib`` loads OpenSSL's ``_hashlib`` (4–8 ms, measured with ``python -X importtime``): a tenth of a
one-file ``soswap tree``, which only hashes a few cache keys. CPython's own C implementations (``_sha2``, before
3.12 ``_sha256``; ``_blake2``) give the same digests and load in microseconds. OpenSSL's SHA-256 is several
times faster on large data (SHA-NI: 1.1 ms against 7.2 ms for 2 MB on the AMD EPYC of bench/RESULTS-tree.md),
so data from :data:`LARGE` bytes on goes to :mod:`hashlib`, imported then.
"""

from __future__ import annotations

from typing import Any, Callable

#: From this size on, OpenSSL's SHA-256 (through hashlib) is worth its import.
LARGE = 1 << 16

_builtin_sha256: Callable[..., Any]
try:
    from _sha2 import sha256 as _builtin_sha256  # type: ignore[import-not-found,no-redef]  # CPython >= 3.12
except ImportError:
    try:
        from _sha256 import sha256 as _builtin_sha256  # type: ignore[import-not-found,no-redef]  # CPython < 3.12
    except ImportError:  # pragma: no cover - a Python built without its own hashes
        from hashlib import sha256 as _builtin_sha256  # type: ignore[no-redef]

try:
    from _blake2 import blake2b  # type: ignore[import-not-found]  # what hashlib.blake2b is
except ImportError:  # pragma: no cover
    from hashlib import blake2b  # type: ignore[no-redef]

__all__ = ["LARGE", "blake2b", "sha256_hex"]


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as hex digits."""
    if len(data) < LARGE:
        return _builtin_sha256(data).hexdigest()
    import hashlib

    return hashlib.sha256(data).hexdigest()
