"""The package layering of docs/architecture.md, checked statically (``ast``, nothing imported).

* trainer, converter and serving never import bot;
* durable imports only the standard library (it is the leaf everyone may use);
* the modules of bot import one another without a circle, counting imports inside functions too
  (a lazy import hides a circle from Python, not from a reader).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name → file, for every module of ``package``."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # ``from bot import jobs`` imports the module bot.jobs
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_lower_packages_never_import_bot():
    offenders = [f"{name} imports {target}"
                 for package in ("trainer", "converter", "serving")
                 for name, path in _modules(package).items()
                 for target in _imports(name, path)
                 if target == "bot" or target.startswith("bot.")]
    assert not offenders, "trainer, converter and serving must not import bot: " + "; ".join(offenders)


LEAF_OPTIONAL = {"families": {"transformers"}}
"""Libraries a leaf may import lazily inside one function (documented in docs/architecture.md)."""


@pytest.mark.parametrize("leaf", ["durable", "families"])
def test_leaves_import_only_the_standard_library(leaf: str):
    allowed = {leaf, "__future__", *LEAF_OPTIONAL.get(leaf, ())}
    outside = sorted({f"{name} imports {target}"
                      for name, path in _modules(leaf).items()
                      for target in _imports(name, path)
                      if target.split(".")[0] not in sys.stdlib_module_names
                      and target.split(".")[0] not in allowed})
    assert not outside, f"{leaf} is a leaf (stdlib only): " + "; ".join(outside)


def _bot_graph() -> dict[str, set[str]]:
    modules = _modules("bot")
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for t in _imports(name, path) if t in modules and t != name and t != "bot"}
        graph[name] = targets
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, …, a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
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


def test_bot_modules_import_without_a_circle():
    cycle = _find_cycle(_bot_graph())
    assert cycle is None, "import circle among bot modules: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_circle():
    # The check above must be able to fail: a planted circle is reported with its path.
    graph = {"bot.a": {"bot.b"}, "bot.b": {"bot.c"}, "bot.c": {"bot.a"}, "bot.d": set()}
    assert _find_cycle(graph) == ["bot.a", "bot.b", "bot.c", "bot.a"]
    assert _find_cycle({"bot.a": {"bot.b"}, "bot.b": set()}) is None
