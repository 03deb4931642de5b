"""Hot reload of a native library inside a running Python program.

>>> from soswap.hotload import NativeReloader
>>> lib = NativeReloader("/opt/app/libplugin.so", on_unload=stop_threads, on_load=restore_state)
>>> lib.function("compute")(21)
>>> lib.reload_if_changed()   # after the file was replaced (e.g. by ``soswap install``)

See :mod:`soswap.hotload.reloader` for the rules (why a copy per generation, when the old one really unloads).
"""

from soswap.hotload.reloader import NativeReloader, ReloadError, ReloadResult, is_loaded, unload_blockers

__all__ = ["NativeReloader", "ReloadError", "ReloadResult", "is_loaded", "unload_blockers"]
