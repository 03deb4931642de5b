"""Data flows one way (docs/architecture.md): elf → loader → proc/abi → replace/restart → report → commands → cli.
A module never imports a package of its own layer or above (imports inside functions and under TYPE_CHECKING
count too)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

SRC = Path(__file__).resolve().parents[1] / "src" / "soswap"

#: package (or top-level module) -> layer; a module may import only lower layers. Layer 0 is for everyone.
LAYERS: Dict[str, int] = {
    "__init__": 0, "errors": 0, "state": 0, "cachefile": 0, "digest": 0, "textfile": 0, "limits": 0, "tuples": 0,
    "cpus": 0,
    "elf": 1,
    "loader": 2, "hotload": 2,
    "proc": 3,
    "abi": 4,
    "replace": 5, "restart": 5,
    "report": 6,
    "commands": 7,
    "cli": 8,
    "console": 9,
    "__main__": 10,
}


def _imports(path: Path) -> Set[str]:
    """The soswap packages or top-level modules ``path`` imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "soswap":
                continue
            if len(parts) > 1:
                out.add(parts[1])
            else:
                out.update(a.name if a.name in LAYERS else "__init__" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("soswap."))
    return out


def test_every_package_has_a_layer() -> None:
    names = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
             if (p.is_file() and p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert names == set(LAYERS)


def test_no_import_goes_up_or_sideways() -> None:
    bad: List[str] = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for target in sorted(_imports(path) - {own}):
            if target not in LAYERS:
                bad.append(f"{rel}: imports unknown soswap.{target}")
            elif LAYERS[target] >= LAYERS[own] and LAYERS[target] != 0:
                bad.append(f"{rel} (layer {LAYERS[own]}) imports soswap.{target} (layer {LAYERS[target]})")
    assert not bad, "\n".join(bad)
