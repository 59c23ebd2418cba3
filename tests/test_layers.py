"""The package's layers import downwards only: model side (the top-level modules, what a served model carries)
<- the commands' settings <- data <- tracking <- training, evaluation <- bench <- the command line. Read from the
source, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "asr"
# Layer of each part of the package; a module may import its own layer and those below it.
LAYERS = {"model": 0, "settings": 0.5, "data": 1, "tracking": 2, "training": 3, "evaluation": 3, "bench": 4, "cli": 5}


def part(module: str) -> str:
    """`asr.training.train` -> training; `asr.cli`, `asr.__main__` -> cli; `asr.settings` -> settings; other
    top-level modules -> model."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "cli" if parts[-1] in ("cli", "__main__") else "model"


def imports(path: Path) -> set[str]:
    """The asr modules a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "asr":
            found |= {f"{node.module}.{a.name}" if node.module == "asr" else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "asr"}
    return found


def test_every_import_points_down_or_across():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for target in imports(path):
            if LAYERS[part(target)] > LAYERS[part(module)]:
                upward.append(f"{module} imports {target}")
    assert upward == []


def test_the_layer_map_knows_every_subpackage():
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(LAYERS) - {"model", "settings",
                                                                                                  "cli"}


def test_an_upward_import_is_seen(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from asr.training.train import train\n")
    assert imports(sample) == {"asr.training.train"} and part("asr.training.train") == "training"
    assert LAYERS[part("asr.training.train")] > LAYERS[part("asr.transcribe")]
