"""The package's modules import downward only: no import cycle, module-level or inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "discodiff"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The package modules that `path` imports anywhere in its code (lazy imports inside functions included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("discodiff"):
                continue
            for alias in node.names:  # `from . import x` may name a submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("discodiff"))
    return {m for m in found if m != name}


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    # A package's __init__ re-exports its submodules: importing a.b runs a/__init__ first, which is no dependency
    # of a.b's own. Edges from a submodule to its parent package are therefore left out.
    return {m: {t for t in deps if not m.startswith(t + ".")} for m, deps in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_errors_module_imports_nothing_of_the_package():
    assert import_graph()["discodiff.errors"] == set()


CORE = ("discodiff.errors", "discodiff.config", "discodiff.edm", "discodiff.process", "discodiff.latents",
        "discodiff.model", "discodiff.prior", "discodiff.sampling", "discodiff.pipeline", "discodiff.train.stage1",
        "discodiff.train.prior", "discodiff.train.loop")


def test_the_core_imports_no_research_variant():
    """The paper's method reads on its own: the variants (discodiff/variants) plug in by name through registries,
    and no core module imports one, directly or through another core module."""
    graph = import_graph()
    for module in CORE:
        seen, todo = set(), [module]
        while todo:
            m = todo.pop()
            for dep in graph.get(m, ()):
                assert not dep.startswith("discodiff.variants"), f"{module} reaches {dep} through {m}"
                if dep in CORE and dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
