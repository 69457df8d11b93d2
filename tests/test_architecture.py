"""The layout's rules, checked on the source: layers import one way, no cycles, no private names
across modules, one name per stored key, short functions.

The layers, bottom up (README "Layout"): ``core`` (no torch, Optuna, MLflow or Ray at import) ·
``train`` (torch) and ``stores`` (Optuna, MLflow) on core · ``report`` on stores · ``execution``
on all of them · the top-level modules (CLI, ``ui``, ``submit``) on anything. Each checker also
runs on a small tree that breaks its rule, so a checker that finds nothing cannot pass unseen.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

from sweep.core import keys

SWEEP = Path(__file__).resolve().parent.parent / "sweep"
LAYERS = ("core", "train", "stores", "report", "execution")
MAY_IMPORT = {
    "core": {"core"},
    "train": {"core", "train"},
    "stores": {"core", "stores"},
    "report": {"core", "stores", "report"},
    "execution": {"core", "stores", "report", "train", "execution"},
}
HEAVY = ("torch", "optuna", "mlflow", "ray")  # what core must not import when imported
LONG = 60  # lines; a longer function says why in its docstring ("Long because ...")
# Literals that spell a stored key's value but mean something else, each with why.
NOT_KEYS = {("sweep.core.config", "pack"): "the config key pack=, which a ConfigError names"}


@functools.lru_cache  # parsed once for all the checks (read only)
def modules(root: Path) -> dict[str, ast.Module]:
    """Dotted module name (``sweep.core.config``) -> its syntax tree, for every file under ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def imports(tree: ast.Module, top_level_only: bool = False) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of each import; ``top_level_only``: those run when the module is imported."""
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
    return found


def layer_of(module: str) -> str | None:
    """``core`` for ``sweep.core.x``; None for a top-level module (``sweep.cli``) or the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def imported_modules(module: str, names: list[str], known: dict) -> list[str]:
    """``from sweep.stores import tracking`` imports ``sweep.stores.tracking``, not just the package."""
    return [f"{module}.{n}" for n in names if f"{module}.{n}" in known] or [module]


def layer_violations(found: dict[str, ast.Module]) -> list[str]:
    bad = []
    for name, tree in found.items():
        layer = layer_of(name)
        if layer is None:
            continue
        for module, names, line in imports(tree):
            for target in imported_modules(module, names, found):
                if not target.startswith("sweep."):
                    continue
                other = layer_of(target)
                if other is None and target != "sweep":
                    bad.append(f"{name}:{line} imports the top-level {target}")
                elif other is not None and other not in MAY_IMPORT[layer]:
                    bad.append(f"{name}:{line} ({layer}) imports {target} ({other})")
        if layer == "core":
            bad += [
                f"{name}:{line} imports {module} when imported"
                for module, _, line in imports(tree, True)
                if module.split(".")[0] in HEAVY
            ]
    return bad


def cycles(found: dict[str, ast.Module]) -> list[list[str]]:
    """Import cycles among the modules, counting the imports run when a module is imported."""
    graph = {
        name: {
            t
            for module, names, _ in imports(tree, True)
            for t in imported_modules(module, names, found)
            if t in found and t != name
        }
        for name, tree in found.items()
    }
    seen, stack, on_stack, loops = set(), [], set(), []

    def visit(node):
        seen.add(node)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                loops.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        on_stack.discard(node)

    for name in sorted(graph):
        if name not in seen:
            visit(name)
    return loops


def private_imports(found: dict[str, ast.Module]) -> list[str]:
    return [
        f"{name}:{line} imports {module}.{n}"
        for name, tree in found.items()
        for module, names, line in imports(tree)
        if module.startswith("sweep")
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]


def key_values() -> set[str]:
    return {v for cls in (keys.Attr, keys.Tag) for k, v in vars(cls).items() if k.isupper() and isinstance(v, str)}


def key_literals(found: dict[str, ast.Module]) -> list[str]:
    """String literals spelling a stored key outside ``sweep.core.keys`` (docstrings aside)."""
    values, bad = key_values(), []
    for name, tree in found.items():
        if name == "sweep.core.keys":
            continue
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        bad += [
            f"{name}:{n.lineno} {n.value!r}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant)
            and isinstance(n.value, str)
            and n.value in values
            and id(n) not in docstrings
            and (name, n.value) not in NOT_KEYS
        ]
    return bad


def long_functions(found: dict[str, ast.Module]) -> list[str]:
    return [
        f"{name}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for name, tree in found.items()
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        and n.end_lineno - n.lineno + 1 > LONG
        and "Long because" not in (ast.get_docstring(n) or "")
    ]


# ---- the rules hold in sweep/ ----


def test_layers_import_one_way():
    assert layer_violations(modules(SWEEP)) == []


def test_there_are_no_import_cycles():
    assert cycles(modules(SWEEP)) == []


def test_no_module_imports_another_modules_private_names():
    assert private_imports(modules(SWEEP)) == []


def test_every_stored_key_is_spelled_only_in_the_keys_module():
    assert key_literals(modules(SWEEP)) == []


def test_the_two_stores_names_are_each_declared_once():
    for cls in (keys.Attr, keys.Tag):
        values = [v for k, v in vars(cls).items() if k.isupper()]
        assert len(values) == len(set(values)), cls.__name__
    assert set(keys.MIRRORED) <= set(vars(keys.Attr).values())
    assert set(keys.MIRRORED.values()) <= set(vars(keys.Tag).values())


def test_no_function_is_long_without_a_reason():
    assert long_functions(modules(SWEEP)) == []


def test_every_module_belongs_to_a_layer_or_is_a_known_top_level_one():
    top = {name for name in modules(SWEEP) if layer_of(name) is None}
    assert top == {"sweep", "sweep.api", "sweep.cli", "sweep.ui", "sweep.submit"}


# ---- each checker finds a broken rule ----


@pytest.fixture
def broken(tmp_path):
    """A tree breaking every rule once."""
    root = tmp_path / "sweep"
    files = {
        "__init__.py": "",
        "cli.py": "",
        "core/__init__.py": "",
        "core/config.py": "import torch\nfrom sweep.execution import driver\n",
        "core/keys.py": "",
        "stores/__init__.py": "",
        "stores/a.py": "from sweep.stores.b import thing\nfrom sweep.cli import main\n",
        "stores/b.py": "from sweep.stores.a import _helper\ntag = 'sweep.retry_of'\n",
        "execution/__init__.py": "",
        "execution/driver.py": "def run():\n" + "    x = 1\n" * LONG,
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return modules(root)


def test_the_checkers_find_what_breaks_the_rules(broken):
    assert sorted(layer_violations(broken)) == [
        "sweep.core.config:1 imports torch when imported",
        "sweep.core.config:2 (core) imports sweep.execution.driver (execution)",
        "sweep.stores.a:2 imports the top-level sweep.cli",
    ]
    assert cycles(broken) == [["sweep.stores.a", "sweep.stores.b", "sweep.stores.a"]]
    assert private_imports(broken) == ["sweep.stores.b:1 imports sweep.stores.a._helper"]
    assert key_literals(broken) == ["sweep.stores.b:2 'sweep.retry_of'"]
    assert long_functions(broken) == [f"sweep.execution.driver:1 run ({LONG + 1} lines)"]
