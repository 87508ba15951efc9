"""The package's layers: data flows one way, from the vocabulary up to the applications.

Every module of ``ferkit`` belongs to one layer (docs/architecture.md draws them) and may import only from its
own layer or the ones below, at the top of the module or inside a function alike. A new module must be placed
here, which is the point: its author decides where it sits.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ferkit"

LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": ("settings", "errors", "files", "progress", "notebook", "options"),
    "data": ("images", "_csvcodec", "dataset_csv", "dataset_images", "dataset_layout", "dataset_zip",
             "dataset_npz", "data", "sample", "faces", "photos", "plots"),
    "model": ("portable", "architectures", "model", "inference"),
    "training and inference": ("augmentation", "hardware", "history", "finetune", "training", "callbacks", "evaluation",
                               "prediction", "tracking", "video", "batch", "fidelity", "export", "quantize"),
    "applications": ("cli", "commands", "server", "web_assets", "web_security", "video_jobs", "webcam", "analyse",
                     "report", "recordings", "__main__", "__init__"),
}
LEVEL = {module: level for level, modules in enumerate(LAYERS.values()) for module in modules}
MAX_LINES = 420


def modules() -> list[Path]:
    return sorted(PACKAGE.glob("*.py"))


def ferkit_imports(path: Path) -> set[str]:
    """The ferkit modules ``path`` imports, anywhere in it (``from ferkit import x`` counts as importing x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("ferkit.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ferkit":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("ferkit."):
                found.add(node.module.split(".")[1])
    return found - {"web", "models", "assets"}


def test_every_module_has_a_layer():
    assert [p.stem for p in modules() if p.stem not in LEVEL] == []


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.stem)
def test_no_module_imports_from_a_layer_above(path):
    upward = {name: LEVEL.get(name) for name in ferkit_imports(path) if LEVEL.get(name, -1) > LEVEL[path.stem]}
    assert upward == {}, f"{path.stem} (layer {LEVEL[path.stem]}) imports from higher layers: {upward}"


def test_modules_stay_readable():
    long = {p.stem: n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_rule_sees_imports_inside_functions(tmp_path):
    """The check must catch the deferred import, the easiest way back up the layers."""
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from ferkit.cli import main\n    import ferkit.server\n    from ferkit import webcam\n")
    assert ferkit_imports(module) == {"cli", "server", "webcam"}
