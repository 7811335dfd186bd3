"""The import graph's rules (issue 12): entry points are leaves, and the packages' layers point one way.

- no entry point imports another, except ``main.py`` -> ``evaluate.py`` (``--eval``) and ``main.py`` -> ``engine.py``
  (the training loop, as in DETR);
- no package (``models``, ``datasets``, ``inference``, ``metrics``, ``util``, ``testing``) imports an entry point
  (``benchmarks/`` and ``scripts/`` are drivers, like the entry points, and may);
- ``util/`` and ``models/`` import neither ``datasets/``, ``inference/`` nor ``metrics/``;
- ``datasets/`` imports neither ``inference/`` nor ``metrics/``, and ``metrics/`` does not import ``inference/``;
- ``docs/architecture.md``'s layout table names every folder and top-level file, and every module of the packages.

Every ``import`` statement counts, those inside functions included.
"""
import ast
import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("main", "engine", "evaluate", "inference_ytvos", "inference_davis", "inference_mevis", "demo", "app")
ALLOWED_ENTRY_IMPORTS = {("main", "evaluate"), ("main", "engine")}
PACKAGES = ("models", "datasets", "inference", "metrics", "util", "testing")
FORBIDDEN = {"util": ("datasets", "inference", "metrics"), "models": ("datasets", "inference", "metrics"),
             "datasets": ("inference", "metrics"), "metrics": ("inference",)}


def imported_modules(path: Path) -> set[str]:
    """The absolute module names ``path`` imports (``from a.b import c`` gives ``a.b``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def top(name: str) -> str:
    return name.split(".")[0]


def package_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_every_entry_point_exists_and_the_packages_too():
    assert all((REPO / f"{name}.py").is_file() for name in ENTRY_POINTS)
    assert all((REPO / package / "__init__.py").is_file() for package in PACKAGES)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_are_leaves(entry):
    imported = {top(name) for name in imported_modules(REPO / f"{entry}.py")}
    others = {name for name in imported & set(ENTRY_POINTS) if (entry, name) not in ALLOWED_ENTRY_IMPORTS}
    assert not others, f"{entry}.py imports the entry point(s) {sorted(others)}; move the shared code to a package"


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_no_entry_point_and_respect_the_layers(package):
    problems = []
    for path in package_files(package):
        imported = {top(name) for name in imported_modules(path)}
        for name in sorted(imported & (set(ENTRY_POINTS) | set(FORBIDDEN.get(package, ())))):
            problems.append(f"{path.relative_to(REPO)} imports {name}")
    assert not problems, "\n".join(problems)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("import os\n\ndef f():\n    from evaluate import run_evaluation\n    import inference.cli\n")
    assert imported_modules(source) == {"os", "evaluate", "inference.cli"}


def layout_table() -> dict[str, str]:
    """``docs/architecture.md``'s "Layout" table: path -> what it holds."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([^`]+)` \| (.+) \|$", section, flags=re.M))


def named_in(name: str, cell: str) -> bool:
    """Whether ``cell`` names file ``name``, with or without ``.py``, or by a pattern (`dist_train_*.sh`)."""
    return any(fnmatch.fnmatch(name, token) or fnmatch.fnmatch(name.removesuffix(".py"), token)
               for token in re.findall(r"`([^`]+)`", cell))


def test_the_layout_table_names_every_folder_top_level_file_and_module():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    table = layout_table()
    top_level = {path for path in tracked if "/" not in path}
    folders = {path.split("/")[0] + "/" for path in tracked if "/" in path}
    folders |= {"/".join(path.split("/")[:2]) + "/" for path in tracked
                if path.count("/") >= 2 and path.split("/")[0] in ("configs", "models")}
    missing = sorted((top_level | folders) - set(table))
    assert not missing, f"not in docs/architecture.md's layout table: {missing}"
    described = PACKAGES + ("models/backbone", "models/ops", "scripts")
    unnamed = [path for path in tracked if path.rpartition("/")[0] in described
               and path.endswith((".py", ".sh")) and not path.endswith("__init__.py")
               and not named_in(path.rpartition("/")[2], table[path.rpartition("/")[0] + "/"])]
    assert not unnamed, f"files the layout table does not name: {unnamed}"
