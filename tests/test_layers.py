"""The package's layers, read from its imports: faces -> core -> llamacpp, the viewer beside them
reading step records only, and no import cycle anywhere (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import edge_tree

PACKAGE = Path(edge_tree.__file__).parent
BASE = {"edge_tree.errors", "edge_tree.records", "edge_tree.files", "edge_tree.progress", "edge_tree.derived",
        "edge_tree.endpoints"}
# what each layer may import besides itself and the base modules
MAY_IMPORT = {"base": set(), "llamacpp": set(), "core": {"llamacpp"}, "viz": set(),
              "face": {"llamacpp", "core", "viz", "face"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every edge_tree module the file imports, wherever the import statement stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("edge_tree"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("edge_tree"):
                continue
            # `from pkg import module` imports the module; `from module import name` the module
            names = [f"{target}.{a.name}" for a in node.names]
            found.update(n if known(n) else target for n in names)
    return {m for m in found if m != name}


def known(name: str) -> bool:
    return name in MODULES


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def layer(name: str) -> str:
    if name in BASE:
        return "base"
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in ("llamacpp", "core", "viz"):
        return parts[1]
    return "face"  # edge_tree (the Python API), cli, bench, server


def test_every_module_imports_only_what_its_layer_may():
    wrong = []
    for name, deps in GRAPH.items():
        own = layer(name)
        for dep in deps:
            other = layer(dep)
            if other not in ("base", own) and other not in MAY_IMPORT[own]:
                wrong.append(f"{name} ({own}) imports {dep} ({other})")
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_cycle():
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for dep in sorted(GRAPH.get(name, ())):
            visit(dep, path + [name])
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, [])


def test_the_reader_finds_the_imports_it_must():
    """The checks above are only as good as the import reader: it sees relative, absolute and
    function-level imports."""
    assert "edge_tree.core.engine" in GRAPH["edge_tree"]
    assert "edge_tree.llamacpp.llama" in GRAPH["edge_tree.core.target"]
    assert "edge_tree.errors" in GRAPH["edge_tree.llamacpp.llama"]
    assert any(layer(m) == "viz" for m in GRAPH["edge_tree.cli"])  # imported inside functions


def test_no_module_is_over_500_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 500}
    assert not long, long


def test_the_policy_plans_without_knowing_a_drafter():
    """The policy plans shapes and drafters obey: what both read (GUESS_LEN) lives in plan.py."""
    drafters = {"edge_tree.core.lookup", "edge_tree.core.model_drafter", "edge_tree.core.compose",
                "edge_tree.core.drafting"}
    assert not GRAPH["edge_tree.core.policy"] & drafters


def test_the_options_reach_no_llama_module():
    """The typed options are the ground every face stands on: they check values without
    reaching into llama.cpp's wrapper (the RPC endpoint syntax lives in edge_tree.endpoints)."""
    assert not {m for m in GRAPH["edge_tree.core.options"] if layer(m) == "llamacpp"}


def test_test_modules_do_not_import_each_other():
    """Helpers live in helper modules beside the tests (tests/*.py not named test_*): a test
    module runs alone, whatever else was collected."""
    tests = Path(__file__).parent
    for path in tests.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.startswith("test_")], f"{path.name} imports {names}"
