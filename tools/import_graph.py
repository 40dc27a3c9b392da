"""The import graph of bafo_pipeline: drawn as a text tree, and checked against the layer rules.

    python tools/import_graph.py            # the graph between units (what docs/ARCHITECTURE.md shows)
    python tools/import_graph.py --modules  # ... and between every module
    python tools/import_graph.py --check    # exit 1 listing every broken rule
    python tools/import_graph.py --write-doc  # refresh the tree inside docs/ARCHITECTURE.md

Rules (docs/ARCHITECTURE.md): every import points to the same layer or one below; no
cycle among modules; a module never imports another module's private name (``_x``); the
audit never imports the model (``_nn``, ``transformers``) nor the data loaders. Imports
inside functions count as much as those at the top of a module.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "bafo_pipeline"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
BEGIN, END = "<!-- BEGIN import graph -->", "<!-- END import graph -->"

#: Units from the bottom layer up; a unit may import its own layer's units and lower ones.
LAYERS = [
    ("_version", "_lazy", "_utils"),
    ("attributes",),
    ("data",),
    ("io",),
    ("_nn",),
    ("transformers",),
    ("audits",),
    ("pipeline",),
    ("cli", "__init__"),
]
#: Units a unit must never import, whatever the layers say.
FORBIDDEN = {"audits": {"data", "_nn", "transformers"}}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def unit(module: str) -> str:
    """The layer unit of a module: the first name below the package (``__init__`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    name = unit(module)
    return next(i for i, units in enumerate(LAYERS) if name in units)


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import of the package in ``module``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in known:  # "from . import metrics": the submodule itself
                    found.append((submodule, None, node.lineno))
                else:
                    found.append((target, alias.name, node.lineno))
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the package modules it imports."""
    known = modules(root)
    return {m: {target for target, _, _ in imports(m, p, known) if target != m} for m, p in known.items()}


def problems(root: Path = ROOT) -> list[str]:
    """Every broken rule, one line each (empty when the graph is clean)."""
    known = modules(root)
    out = []
    for module, path in known.items():
        where = path.relative_to(root)
        for target, name, line in imports(module, path, known):
            if target not in known:
                out.append(f"{where}:{line}: imports {target}, which is not a module of the package")
                continue
            if layer(target) > layer(module):
                out.append(f"{where}:{line}: upward import of {target} ({unit(target)} is above {unit(module)})")
            if unit(target) in FORBIDDEN.get(unit(module), ()):
                out.append(f"{where}:{line}: {unit(module)} must not import {unit(target)} ({target})")
            if name is not None and name.startswith("_") and not name.startswith("__") and target != module:
                out.append(f"{where}:{line}: imports the private name {name} of {target}")
    out += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph(root))]
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def units_tree(root: Path = ROOT) -> str:
    """The graph between units (the top-level modules and packages), the layers from the top down."""
    edges = graph(root)
    lines = []
    for units in reversed(LAYERS):
        for name in units:
            members = [m for m in edges if unit(m) == name]
            if not members:
                continue
            below = {unit(t) for m in members for t in edges[m] if unit(t) != name}
            label = f"{PACKAGE} (__init__)" if name == "__init__" else name + ("/" if len(members) > 1 else "")
            arrows = ", ".join(sorted(below, key=lambda u: (-layer(f"{PACKAGE}.{u}"), u)))
            lines.append(label + (f" -> {arrows}" if arrows else ""))
    return "\n".join(lines)


def tree(root: Path = ROOT) -> str:
    """The graph as text: the layers from the top down; each module with the units (or, inside its own
    unit, the ``.modules``) it imports."""
    known = modules(root)
    edges = graph(root)
    lines = []
    for units in reversed(LAYERS):
        for name in units:
            members = sorted(m for m in edges if unit(m) == name)
            if not members:
                continue
            for module in members:
                targets = edges[module]
                below = sorted({unit(t) for t in targets if unit(t) != name}, key=lambda u: (-layer(f"{PACKAGE}.{u}"), u))
                same = sorted("." + t.rsplit(".", 1)[-1] for t in targets if unit(t) == name and t != module)
                arrows = " -> " + ", ".join(below + same) if below or same else ""
                if known[module].name != "__init__.py" or module == PACKAGE:
                    label = module.split(".", 1)[-1] if module != PACKAGE else f"{PACKAGE} (__init__)"
                    lines.append(("  " if module.count(".") > 1 else "") + label.rsplit(".", 1)[-1] + arrows)
                else:
                    lines.append(f"{name}/ (__init__){arrows}")
    return "\n".join(lines)


def write_doc(root: Path = ROOT) -> None:
    text = DOC.read_text(encoding="utf-8")
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n```text\n" + units_tree(root) + "\n```\n" + text[stop:], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="list broken rules; exit 1 if any")
    parser.add_argument("--write-doc", action="store_true", help=f"refresh the tree in {DOC.relative_to(ROOT)}")
    parser.add_argument("--modules", action="store_true", help="the graph between modules, not only units")
    args = parser.parse_args(argv)
    if args.check:
        broken = problems()
        print("\n".join(broken) if broken else "import graph: no upward import, no cycle, no private name imported")
        return 1 if broken else 0
    if args.write_doc:
        write_doc()
        return 0
    print(tree() if args.modules else units_tree())
    return 0


if __name__ == "__main__":
    sys.exit(main())
