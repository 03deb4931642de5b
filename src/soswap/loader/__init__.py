"""A static model of glibc's dynamic loader: what ``ld.so`` loads, from where and why, and which symbol and
version references fail — from the files alone, without running anything. See docs/loader-api.md.

>>> from soswap.loader import Environment, Loader, Profile
>>> loader = Loader(Profile.detect(), Environment.from_environ(os.environ))
>>> res = loader.load("/usr/bin/ls")
>>> [o.path for o in res.objects]
"""

from soswap.loader.environment import Environment
from soswap.loader.ldcache import CacheEntry, LdCache, libcmp
from soswap.loader.loading import Loader
from soswap.loader.model import (
    BindResult,
    Definition,
    Failure,
    LoadedObject,
    LoadResult,
    Reason,
    Reference,
    Unresolved,
    VersionRef,
)
from soswap.loader.profile import Abi, Profile

__all__ = [
    "Abi",
    "BindResult",
    "CacheEntry",
    "Definition",
    "Environment",
    "Failure",
    "LdCache",
    "LoadResult",
    "LoadedObject",
    "Loader",
    "Profile",
    "Reason",
    "Reference",
    "Unresolved",
    "VersionRef",
    "libcmp",
]
