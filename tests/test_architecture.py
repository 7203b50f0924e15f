"""The package's layering (docs/architecture.md), checked on the source: each layer imports only
the layers below it, nothing but pcam-train, the quickstart and tests imports the trainer, and
no module outgrows its room."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pcam_jax"

# Bottom to top. A module may import its own layer and any layer with a lower rank; train,
# explain and wsi share a rank and must not import each other.
LAYERS: dict[str, int] = {
    "errors": 0,
    "runtime": 1,
    "equivariant": 2,
    "models": 3,
    "data": 4,
    "config": 5,
    "workdir": 6,
    "infer": 7,
    "explain": 8,
    "train": 8,
    "wsi": 8,
    "camelyon": 9,
    "quickstart": 10,
    "cli": 11,
}
MAX_MODULE_LINES = 500


def layer_of(module: str) -> str | None:
    """The layer of a dotted pcam_jax module name ("pcam_jax.infer.load" -> "infer")."""
    parts = module.split(".")
    if parts[0] != "pcam_jax" or len(parts) < 2:
        return None  # pcam_jax itself: only __version__
    return parts[1]


def imported_modules(path: Path) -> set[str]:
    """Every pcam_jax module `path` imports (at any depth of the file, functions included)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pcam_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pcam_jax":
                found |= {f"pcam_jax.{a.name}" for a in node.names if a.name != "__version__"}
            elif node.module.startswith("pcam_jax"):
                found.add(node.module)
    return found


def violations(path: Path, package: Path = PACKAGE) -> list[str]:
    """The imports of `path` (a module of the package folder `package`) that break the
    layering."""
    own = layer_of(".".join(("pcam_jax", *path.relative_to(package).with_suffix("").parts)))
    if own is None or own not in LAYERS:
        return []
    bad = []
    for module in sorted(imported_modules(path)):
        target = layer_of(module)
        if target is None or target == own:
            continue
        if target not in LAYERS:
            bad.append(f"{module}: not a known layer")
        elif LAYERS[target] >= LAYERS[own]:
            bad.append(f"{module} ({target}) from the {own} layer")
    return bad


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    top = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in package_modules()}
    assert top - {"__init__"} == set(LAYERS)


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_the_layers_below(path):
    assert violations(path) == []


def test_the_layering_check_catches_upward_imports(tmp_path):
    # negative control: modules that import a layer above their own are flagged
    (tmp_path / "infer").mkdir()
    (tmp_path / "data").mkdir()
    trains = tmp_path / "infer" / "trains.py"
    trains.write_text("def f():\n    from pcam_jax.train import loop\n")
    predicts = tmp_path / "data" / "predicts.py"
    predicts.write_text("from pcam_jax import infer, models\n")
    assert violations(trains, tmp_path) == ["pcam_jax.train (train) from the infer layer"]
    assert violations(predicts, tmp_path) == ["pcam_jax.infer (infer) from the data layer"]


def test_only_pcam_train_and_the_quickstart_import_the_trainer():
    importers = {
        str(p.relative_to(PACKAGE))
        for p in package_modules()
        if any(layer_of(m) == "train" for m in imported_modules(p)) and "train" not in p.parts
    }
    assert importers == {"cli/train.py", "quickstart.py"}


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outgrows_its_room(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


def test_the_architecture_page_lists_exactly_these_layers_and_ranks():
    table = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| `([a-z_]+)(?:/|\.py)` \|", table, flags=re.M)
    assert {name: int(rank) for rank, name in rows} == LAYERS
