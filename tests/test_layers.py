"""The package's floors: every import goes to the same floor or one below, and the pure core
imports no Ray. Read from the source (every import, function-level ones too), so a lazy import
that runs back up a floor is caught as well."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lrat_ray"
# Floors, lowest first. The registry names every stage (the flywheel among them) and the CLI sits
# on top of everything.
FLOORS = {
    "infra": 0,
    "core": 1,
    "models": 2,
    "stages": 3,
    "agents": 4,
    "serving": 4,
    "experiments": 5,
    "registry": 5,
    "cli": 6,
    "__init__": 0,
}


def floor_of(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "lrat_ray":
        raise ValueError(module)
    return FLOORS[parts[1]] if len(parts) > 1 and parts[1] != "__version__" else 0


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if node.module == "lrat_ray" else node.module for a in node.names]
            found += [(node.lineno, n) for n in names]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_module_has_a_floor():
    for path in MODULES:
        floor_of(module_name(path) if module_name(path) != "lrat_ray" else "lrat_ray.__init__")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_up_a_floor(path):
    name = module_name(path)
    own = floor_of(name)
    upward = [
        f"line {line}: {target}"
        for line, target in imports(path)
        if target.startswith("lrat_ray.") and floor_of(target) > own
    ]
    assert not upward, f"{name} (floor {own}) imports from above: {upward}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").rglob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_no_ray(path):
    assert not [t for _, t in imports(path) if t == "ray" or t.startswith("ray.")], path
