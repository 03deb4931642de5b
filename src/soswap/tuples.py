"""``NamedTuple`` for soswap's record types: :class:`typing.NamedTuple` without the start-up cost.

``typing.NamedTuple`` checks each field's annotation when the class is created; under ``from __future__ import
annotations`` every annotation is a string, so each field compiles a ``ForwardRef`` that nothing reads. The
record classes a ``soswap tree`` imports have about 200 fields: that check was 11 % of the instructions of a
one-file ``tree``. This base builds the same :func:`collections.namedtuple` class (fields, defaults,
``__annotations__`` as written, docstring, methods and properties) and skips only the check. Type checkers see
:class:`typing.NamedTuple` itself.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Dict, Tuple

__all__ = ["NamedTuple"]

#: What a record class may not define itself (the namedtuple's own machinery), as in typing.
_PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
                         "_make", "_replace", "_asdict", "_source"})
#: Set by the class statement, kept from the namedtuple (or, for annotations, set as written).
_SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})


class _RecordMeta(type):
    def __new__(mcs, typename: str, bases: Tuple[type, ...], ns: Dict[str, Any]) -> Any:
        if not bases:  # the NamedTuple base itself
            return super().__new__(mcs, typename, bases, ns)
        if bases != (NamedTuple,):
            raise TypeError("a record class derives from NamedTuple alone")
        annotations = ns.get("__annotations__", {})
        fields = list(annotations)
        defaults = []
        for name in fields:
            if name in ns:
                defaults.append(ns[name])
            elif defaults:
                raise TypeError(f"non-default field {name} follows a default field in {typename}")
        cls = collections.namedtuple(typename, fields, defaults=defaults, module=ns["__module__"])
        cls.__annotations__ = dict(annotations)
        for key, value in ns.items():
            if key in _PROHIBITED:
                raise AttributeError(f"cannot overwrite NamedTuple attribute {key}")
            if key not in _SPECIAL and key not in cls._fields:
                setattr(cls, key, value)
        return cls


if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    class NamedTuple(metaclass=_RecordMeta):
        """Derive a record class from this as from :class:`typing.NamedTuple`."""
