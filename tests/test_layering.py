"""The package layering of ``src/medsec``, read from the imports (every ``import`` and
``from ... import`` statement, function-level ones included; type-only imports under
``if TYPE_CHECKING:`` too).

Data flows one way: config -> data + model -> attacks/backdoors/defences -> metrics ->
results -> report. A package may import only packages of a lower layer or its own; the
registries are the one indirection upwards (kinds, recipes and executors are listed there by
module name and imported on first use). The test fails on any upward import and on any cycle
between packages, and names the file and the import.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parent.parent / "src" / "medsec"

# lowest first; a package may import packages of its own layer or below (never above), and the
# packages of one layer may not import each other in a cycle
LAYERS: list[set[str]] = [
    {"errors", "version"},
    {"types", "io", "registry", "progress", "seeding"},
    {"validation"},
    {"metrics", "masks", "tasks"},
    {"data", "models"},
    {"objectives"},
    {"attacks"},
    {"training"},
    {"backdoors", "defenses"},
    {"recipes"},
    {"wsi"},
    {"config"},
    {"report"},
    {"runs"},
    {"experiments"},
    {"demo", "zoo", "cli", "__init__", "__main__"},
]
LAYER = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def package_of(module: str) -> str | None:
    """``medsec.attacks.pgd`` -> ``attacks``; ``medsec`` -> ``__init__``; others -> None."""
    parts = module.split(".")
    if parts[0] != "medsec":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def imports() -> list[tuple[str, str, str, int]]:
    """(source package, target package, file, line) of every import between medsec packages."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        src = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "__init__"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "medsec" else [])
            else:
                continue
            for name in names:
                tgt = package_of(name)
                if name == "medsec" and isinstance(node, ast.ImportFrom):
                    continue  # `from medsec import x` is read through its submodule names above
                if tgt is not None and tgt != src:
                    out.append((src, tgt, str(rel), node.lineno))
    return out


def test_every_package_has_a_layer() -> None:
    packages = {p.name.removesuffix(".py") for p in SRC.iterdir()
                if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py")}
    missing = sorted(packages - set(LAYER))
    assert not missing, f"packages without a layer in tests/test_layering.py: {missing}"


def test_no_upward_import() -> None:
    bad = [f"{f}:{line}: {s} (layer {LAYER[s]}) imports {t} (layer {LAYER[t]})"
           for s, t, f, line in imports() if s in LAYER and t in LAYER and LAYER[t] > LAYER[s]]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], str] = {}
    for s, t, f, line in imports():
        graph[s].add(t)
        where.setdefault((s, t), f"{f}:{line}")
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in seen:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        seen[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in seen:
            cycle = visit(node)
            assert cycle is None, "import cycle: " + " -> ".join(cycle) + " (" + ", ".join(
                where[(a, b)] for a, b in zip(cycle, cycle[1:])) + ")"


def test_the_checker_sees_function_level_and_type_only_imports(tmp_path: Path) -> None:
    """The reader is not fooled by an import inside a function or under TYPE_CHECKING."""
    code = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from medsec.runs.kind import Kind\n"
            "def f():\n    import medsec.experiments.evasion\n")
    tree = ast.parse(code)
    found = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert {package_of(getattr(n, "module", None) or n.names[0].name) for n in found} >= {"runs", "experiments"}


# third-party modules whose private names medsec may use (torch's batch-norm base class)
THIRD_PARTY_ROOTS = {"torch", "nn", "F", "np", "importlib", "os", "sys"}


def defined_names(tree: ast.AST) -> set[str]:
    """Names a module defines: functions, classes, assignment targets and ``self.x`` attributes."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return out


def private_uses() -> list[str]:
    """``from medsec.x import _name`` in another module, and ``obj._name`` where the module
    does not define ``_name`` itself (so it reaches into another module's privates)."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        module = "medsec." + ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = defined_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("medsec"):
                bad += [f"{rel}:{node.lineno}: from {node.module} import {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__") and node.module != module]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Call) and isinstance(root.func, ast.Name) and root.func.id == "super":
                    continue
                if isinstance(root, ast.Name) and root.id in ({"self", "cls"} | THIRD_PARTY_ROOTS):
                    continue
                if node.attr not in own:
                    bad.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return bad


def test_no_private_name_used_across_modules() -> None:
    bad = private_uses()
    assert not bad, "private names used outside their module (make them public):\n" + "\n".join(bad)
