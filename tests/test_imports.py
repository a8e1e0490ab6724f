"""Imports flow one way: no module of jaxflows or experiments imports, even lazily inside a
function, a module that imports it back (imports under `if TYPE_CHECKING:` are for type checkers
only and are not counted)."""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("jaxflows", "experiments")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST, package: str) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            node.body = []  # drop what only type checkers see
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in _imports(ast.parse(path.read_text()), package) if m in files and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    graph = _graph()
    assert len(graph) > 80
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


LEVELS = {  # imports flow downward: a module may import its own level and the levels below
    **dict.fromkeys(("core", "linalg", "ops"), 0),
    "bijectors": 1,
    "models": 2,
    **dict.fromkeys(("analysis", "data", "testing", "pretrained"), 3),
    "train": 4,
}


def _level(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] == "experiments":
        return 5
    if parts[0] == "jaxflows" and len(parts) > 1:
        return LEVELS.get(parts[1])
    return None


def test_imports_flow_downward():
    upward = [
        f"{module} (level {_level(module)}) imports {target} (level {_level(target)})"
        for module, targets in _graph().items()
        for target in targets
        if _level(module) is not None and _level(target) is not None and _level(target) > _level(module)
    ]
    assert not upward, "\n".join(upward)


def test_every_subpackage_has_a_level():
    subpackages = {p.parent.name for p in (ROOT / "jaxflows").glob("*/__init__.py")}
    assert subpackages == set(LEVELS)
