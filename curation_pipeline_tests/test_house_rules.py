"""The rules of the house (../shared/design.md), checked on every import statement of the package,
including imports inside functions: `core/` imports nothing else of the package; `core/`, `steps/`
and `resources/` import no Dagster; `resources/` imports no `steps/`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "curation_pipeline"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from . import x` / `from curation_pipeline import steps` name modules in `names`
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _violations(layer: str, forbidden) -> list[str]:
    out = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, module in _imports(path):
            reason = forbidden(module)
            if reason:
                out.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} ({reason})")
    return out


def _is_dagster(module: str) -> bool:
    top = module.split(".")[0]
    return top == "dagster" or top.startswith("dagster_")


@pytest.mark.parametrize("layer", ["core", "steps", "resources"])
def test_the_dagster_free_layers_import_no_dagster(layer):
    assert _violations(layer, lambda m: "Dagster belongs in defs/" if _is_dagster(m) else None) == []


def test_core_imports_nothing_else_of_the_package():
    def forbidden(module: str):
        if module.startswith("curation_pipeline.") and not module.startswith("curation_pipeline.core"):
            return "core/ stands alone"
        return None

    assert _violations("core", forbidden) == []


def test_resources_import_no_steps():
    def forbidden(module: str):
        return "resources/ sits below steps/" if module.startswith("curation_pipeline.steps") else None

    assert _violations("resources", forbidden) == []


def test_the_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    """The rules would be toothless if a function-level or relative import slipped past."""
    fake = tmp_path / "curation_pipeline"
    (fake / "resources").mkdir(parents=True)
    (fake / "resources" / "bad.py").write_text("def f():\n    import dagster\n    from ..steps import embed\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    assert len(_violations("resources", lambda m: "x" if _is_dagster(m) else None)) == 1
    steps = _violations("resources", lambda m: "x" if m.startswith("curation_pipeline.steps") else None)
    assert steps and "curation_pipeline.steps.embed" in steps[-1]
