"""``soswap.report.output.json_text``: the JSON every reporting command prints. It must parse to exactly what
``json.dumps`` writes for any document, keep the ASCII-safe escapes of undecodable path bytes, and put each
member of the outer two levels on a line of its own."""

from __future__ import annotations

import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from soswap.report.output import json_text

_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.text(max_size=8) | st.sampled_from([os.fsdecode(b"/lib/\xff\xfe.so"), "\n", '"', "\\", "é"]))
_KEYS = st.text(max_size=5) | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
_DOCS = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
                     | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(_DOCS)
def test_parses_to_what_json_dumps_writes(doc: object) -> None:
    text = json_text(doc)
    assert text.isascii()
    assert json.loads(text) == json.loads(json.dumps(doc))


def test_layout_and_escapes() -> None:
    path = os.fsdecode(b"/lib/libz\xff.so")
    doc = {"profile": {"root": "/", "dirs": ["/lib", "/usr/lib"]},
           "results": [{"path": path, "objects": [{"index": 0}]}, {"path": "/bin/true", "objects": []}],
           "empty": [], 3: None}
    lines = json_text(doc).split("\n")
    assert lines == [
        "{",
        '  "profile": {',
        '    "root": "/",',
        '    "dirs": ["/lib", "/usr/lib"]',
        "  },",
        '  "results": [',
        '    {"path": "/lib/libz\\udcff.so", "objects": [{"index": 0}]},',
        '    {"path": "/bin/true", "objects": []}',
        "  ],",
        '  "empty": [],',
        '  "3": null',
        "}",
    ]
    assert os.fsencode(json.loads("\n".join(lines))["results"][0]["path"]) == b"/lib/libz\xff.so"


@settings(max_examples=200, deadline=None)
@given(st.lists(_DOCS, max_size=4))
def test_values_encoded_beforehand_are_written_as_they_are(docs: list) -> None:
    # tree's workers encode their results themselves: the document reads as if the parent had encoded them
    from soswap.report.output import encoded

    plain = json_text({"profile": {"root": "/"}, "results": docs})
    assert json_text({"profile": {"root": "/"}, "results": [encoded(d) for d in docs]}) == plain
