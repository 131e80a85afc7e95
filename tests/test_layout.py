"""The package's shape, checked on its source: packages by concern whose imports go downwards only (every
`import hw3...` counted, lazy ones inside functions too, so there is no circle), at most 10 modules directly in
hw3/, no module over 400 lines and no function over 60."""

import ast
from pathlib import Path

import pytest

from helpers import ROOT

PACKAGE = ROOT / "hw3"
# From the bottom up; a package may import its own modules and those of lower layers, never a sibling's.
LAYERS = (
    ("errors",),
    ("config",),
    ("storage",),
    ("dist",),
    ("runs",),
    ("data", "models", "optim"),
    ("engine",),
    ("reports",),
    ("experiments", "inference"),
    ("cli",),
    ("evaluate", "predict", "export", "sweep", "search", "report", "shards", ""),  # `python -m hw3.X`; hw3.load_model
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in sorted(PACKAGE.rglob("*.py"))}


def concern(module: str) -> str:
    """hw3.engine.loop -> engine; hw3.errors -> errors; hw3.__init__ -> ''."""
    parts = module.split(".")
    return "" if parts[1:] == ["__init__"] else parts[1]


def imports(path: Path) -> set[str]:
    """Every hw3 module `path` imports, wherever the import statement is (module level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hw3.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hw3"):
            found.add(node.module)
    return found


def edges() -> list[tuple[str, str]]:
    return [(m, target) for m, path in modules().items() for target in imports(path)]


def test_imports_go_downwards_only():
    wrong = []
    for source, target in edges():
        a, b = concern(source), concern(target if target != "hw3" else "hw3.__init__")
        if a != b and (LAYER[a] < LAYER[b] or (LAYER[a] == LAYER[b])):
            wrong.append(f"{source} imports {target} ({a or 'hw3'} may not import {b})")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle_between_modules():
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    known = set(graph)
    for source, target in edges():
        while target not in known and "." in target:
            target = target.rpartition(".")[0]
        if target != source and target in known:
            graph[source].add(target)
    seen, on_path = set(), []

    def visit(node: str) -> None:
        on_path.append(node)
        for nxt in sorted(graph[node]):
            assert nxt not in on_path, "import circle: " + " -> ".join([*on_path[on_path.index(nxt) :], nxt])
            if nxt not in seen:
                visit(nxt)
        on_path.pop()
        seen.add(node)

    for node in sorted(graph):
        if node not in seen:
            visit(node)


def test_every_package_says_what_lives_there_and_what_it_may_import():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 200 and "import" in doc, f"{init}: say what lives here and what it may import"


def test_at_most_ten_modules_directly_in_hw3():
    direct = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(direct) <= 10, direct


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_400_lines_no_function_over_60(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= 400, f"{path}: {len(lines)} lines"
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path}:{node.lineno} {node.name}: {length} lines"
