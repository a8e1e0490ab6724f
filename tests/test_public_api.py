"""The public API is what the packages' `__all__` lists: the README, the docs, the notebooks, the
experiments and the benchmarks import nothing else from jaxflows."""

import ast
import importlib
import json
import pathlib
import re

import pytest

import jaxflows

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent.name for p in (ROOT / "jaxflows").glob("*/__init__.py"))


def _python_sources() -> dict[str, str]:
    """Every piece of user-facing Python: scripts, docs' code blocks, notebook cells."""
    sources = {}
    for folder in ("experiments", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            sources[str(path.relative_to(ROOT))] = path.read_text()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
        for i, block in enumerate(blocks):
            sources[f"{path.relative_to(ROOT)}[{i}]"] = block
    for path in sorted((ROOT / "examples").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        sources[str(path.relative_to(ROOT))] = "\n".join(
            line for line in "\n".join(code).splitlines() if not line.lstrip().startswith(("!", "%"))
        )
    return sources


def _imports(source: str) -> list[tuple[str, str]]:
    """(module, name) for every `from jaxflows... import name` and (module, "") for `import jaxflows...`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jaxflows":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "jaxflows"]
    return found


def _private_uses() -> list[str]:
    """Imports of names a package does not export. A public name may be imported from its own
    module (benchmarks do, to import as little as possible before setting process options)."""
    problems = []
    for where, source in _python_sources().items():
        for module, name in _imports(source):
            parts = module.split(".")
            package = importlib.import_module(".".join(parts[:2]))
            public = getattr(package, "__all__", ())
            if len(parts) > 2:
                same = name in public and getattr(importlib.import_module(module), name) is getattr(
                    package, name
                )
                if not same:
                    problems.append(
                        f"{where}: {module}.{name} is not jaxflows.{parts[1]}.{name} (not public)"
                    )
            elif name and name not in public and not (len(parts) == 1 and name in PACKAGES):
                problems.append(f"{where}: {module}.{name} is not in {module}.__all__")
    return problems


def test_every_package_says_what_is_public():
    for package in ["jaxflows", *(f"jaxflows.{p}" for p in PACKAGES)]:
        module = importlib.import_module(package)
        public = getattr(module, "__all__", None)
        assert public, f"{package} has no __all__"
        missing = [name for name in public if not hasattr(module, name)]
        assert not missing, f"{package}.__all__ lists names it lacks: {missing}"


def test_user_facing_code_uses_only_the_public_api():
    problems = _private_uses()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from jaxflows.train.steps import x", [("jaxflows.train.steps", "x")]),
        ("import jaxflows.models", [("jaxflows.models", "")]),
        ("from os import path", []),
    ],
)
def test_the_import_finder(source, expected):
    assert _imports(source) == expected


def test_the_top_level_package_exports_the_subpackages():
    for package in ("core", "bijectors", "models"):
        assert package in jaxflows.__all__
