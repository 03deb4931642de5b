"""soswap.tuples.NamedTuple builds the class typing.NamedTuple builds (fields, defaults, methods, docstring,
annotations, pickling), without the annotation check, and refuses what typing refuses."""

from __future__ import annotations

import pickle
import typing

import pytest

from soswap.loader.model import Reason
from soswap.tuples import NamedTuple


class Point(NamedTuple):
    """A point."""

    x: int
    y: int = 2
    label: typing.Optional[str] = None

    @property
    def total(self) -> int:
        return self.x + self.y

    def moved(self, dx: int) -> Point:
        return self._replace(x=self.x + dx)


class TypingPoint(typing.NamedTuple):
    """A point."""

    x: int
    y: int = 2
    label: typing.Optional[str] = None


def test_same_shape_as_typing() -> None:
    p = Point(1)
    assert p == (1, 2, None) == TypingPoint(1)
    assert Point._fields == TypingPoint._fields == ("x", "y", "label")
    assert Point._field_defaults == TypingPoint._field_defaults == {"y": 2, "label": None}
    # the annotations as written (typing keeps them as ForwardRefs): they resolve to the same types
    assert Point.__annotations__ == {"x": "int", "y": "int", "label": "typing.Optional[str]"}
    assert typing.get_type_hints(Point) == typing.get_type_hints(TypingPoint) == {
        "x": int, "y": int, "label": typing.Optional[str]}
    assert Point.__doc__ == "A point."
    assert Point.__module__ == __name__ and Point.__qualname__ == "Point"
    assert isinstance(p, tuple) and Point.__mro__[1] is tuple
    assert p.total == 3 and p.moved(5) == Point(6, 2)
    assert repr(p) == "Point(x=1, y=2, label=None)"
    with pytest.raises(AttributeError):
        p.z = 1  # type: ignore[attr-defined]  # __slots__ = () as in typing


def test_pickles_by_name() -> None:
    # the tree workers send their results to the parent pickled
    r = Reason("cache", "ld.so.cache", "/usr/lib", None, None)
    assert pickle.loads(pickle.dumps(r)) == r
    assert type(pickle.loads(pickle.dumps(r))) is Reason
    assert pickle.loads(pickle.dumps(Point(4, label="a"))) == Point(4, 2, "a")


def test_refuses_what_typing_refuses() -> None:
    with pytest.raises(TypeError, match="non-default field y follows a default field"):
        class Bad(NamedTuple):
            x: int = 0
            y: int
    with pytest.raises(AttributeError, match="_replace"):
        class Worse(NamedTuple):
            x: int

            def _replace(self) -> None:  # type: ignore[override]
                pass
    with pytest.raises(TypeError, match="from NamedTuple alone"):
        class Both(NamedTuple, int):  # type: ignore[misc]
            z: int
