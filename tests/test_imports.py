"""Every import of the project's own code resolves, even one inside a function that only a benchmark or a rarely
run path reaches: a renamed function must not leave a benchmark that fails only when someone runs it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("shared", "trainer", "inference", "testkit", "tests", "bench")
CHECKED = ("bench", "testkit", "scripts", "shared", "trainer", "inference")


def project_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name or None) of every absolute import of the project's code in `path`, at any depth."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in PROJECT_PACKAGES:
                found.extend((node.lineno, node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend(
                (node.lineno, alias.name, None) for alias in node.names if alias.name.split(".")[0] in PROJECT_PACKAGES
            )
    return found


def python_files() -> list[Path]:
    return sorted(
        p
        for folder in CHECKED
        for p in (REPO_ROOT / folder).rglob("*.py")
        if "api" not in p.relative_to(REPO_ROOT).parts
    )


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_import_of_the_project_names_something_that_exists(path):
    missing = []
    for line, module, name in project_imports(path):
        try:
            imported = importlib.import_module(module)
        except ImportError as e:
            missing.append(f"line {line}: {module}: {e}")
            continue
        if name is not None and name != "*" and not hasattr(imported, name):
            try:  # a submodule: `from package import module`
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"line {line}: {module} has no {name}")
    assert not missing, "\n".join(missing)
