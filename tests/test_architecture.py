"""The layout docs/ARCHITECTURE.md draws, checked on the source: front ends use the Generator's
public members only, every family defines every member the engine calls, the package's modules
import each other without a cycle and never reach up to the package root, and one list names
the extension modules."""

import ast
import inspect
import pathlib
import re

import pytest

from llamadiff import families
from llamadiff.families.base import Family

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "llamadiff"
# the front ends: they sit on top and may use the package root's names
FRONT_ENDS = {"__init__", "__main__", "cli", "server", "bench", "eval"}


def _modules() -> dict:
    """Module name -> parsed source, for the package's Python and Cython modules (a .pyx is
    read for its Python-level imports only: its cimports are a compile-time matter)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")) + sorted(PACKAGE.glob("*.pyx")) + sorted(PACKAGE.glob("*.pxi")):
        if "_hf_convert" in path.parts:
            continue
        rel = path.relative_to(PACKAGE).with_suffix("")
        name = ".".join(rel.parts)
        if path.suffix == ".pxi":               # a part of its module: _core_model.pxi is _core's
            name = name.rsplit("_", 1)[0]
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        if path.suffix in (".pyx", ".pxi"):
            statements = []
            for m in re.finditer(r"^\s*(from (llamadiff[\w.]*) import \(?([^)\n]*)|import (llamadiff[\w.]*))",
                                 path.read_text(), re.M):
                if m.group(2):
                    names = [n.strip() for n in m.group(3).rstrip("\\").split(",") if n.strip()]
                    statements.append(f"from {m.group(2)} import {', '.join(names)}")
                else:
                    statements.append(f"import {m.group(4)}")
            tree = ast.parse("\n".join(statements))
            if name in out:
                out[name].body += tree.body
            else:
                out[name] = tree
        else:
            out[name] = ast.parse(path.read_text())
    return out


MODULES = _modules()


def _imports(name: str, tree) -> set:
    """llamadiff modules module ``name`` imports, at its top, inside functions or under
    ``if __name__ == "__main__"`` (a lazy import is an edge too)."""
    found = set()

    def walk(node):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llamadiff"):
            if node.module == "llamadiff":
                found.update(f"llamadiff.{a.name}" for a in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("llamadiff"))
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(tree)
    modules = set()
    own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    for imported in found:
        parts = imported.split(".")[1:] or ["__init__"]
        # importing a.b.c runs the packages above it first (its own are already running)
        modules.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                       if p not in own_packages)
    return modules


def test_serving_uses_only_public_members_of_the_generator():
    tree = MODULES["serving"]
    private = [node.attr for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
               and "generator" in ast.unparse(node.value)]
    assert private == []
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
    assert not {name for name in imported if name.startswith("_")}


@pytest.mark.parametrize("family", list(families.FAMILIES.values()), ids=list(families.FAMILIES))
def test_each_family_defines_every_member_the_engine_calls(family):
    required = [name for name, member in vars(Family).items()
                if callable(member) and "NotImplementedError" in inspect.getsource(member)]
    assert len(required) >= 10
    missing = [name for name in required if name not in vars(type(family))]
    assert missing == [], f"{type(family).__name__} lacks {missing}"
    assert family.name and families.FAMILIES[family.name] is family


def test_the_package_imports_without_a_cycle():
    graph = {name: {dep for dep in _imports(name, tree) if dep in MODULES and dep != name}
             for name, tree in MODULES.items()}
    state: dict = {}

    def visit(node, path):
        state[node] = "open"
        for dep in graph[node]:
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path + [node, dep]))
            if dep not in state:
                visit(dep, path + [node])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])


def test_lower_modules_import_no_name_from_the_package_root():
    submodules = set(MODULES) | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    offenders = []
    for name, tree in MODULES.items():
        if name.split(".")[0] in FRONT_ENDS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "llamadiff":
                offenders += [f"{name}: {a.name}" for a in node.names if a.name not in submodules]
            elif isinstance(node, ast.Import) and any(a.name == "llamadiff" for a in node.names):
                offenders.append(f"{name}: import llamadiff")
    assert offenders == []


def test_one_list_of_extension_modules():
    import runpy
    stubs = runpy.run_path(str(PACKAGE.parent / "scripts" / "make_stubs.py"))   # reads setup.py's EXTENSIONS
    modules = stubs["MODULES"]
    assert modules[0] == "_core" and len(modules) >= 7
    assert all((PACKAGE / f"{name}.pyx").is_file() for name in modules)
    # every extension module of the package is in it (the CUDA sampler joins in CUDA builds)
    assert {p.stem for p in PACKAGE.glob("*.pyx")} == set(modules)


def test_former_names_stay_importable():
    import llamadiff
    from llamadiff import _remask, policy, serving
    assert llamadiff.Engine is llamadiff.Batcher is serving.Batcher
    assert llamadiff.EngineClosedError is llamadiff.BatcherClosedError
    assert _remask.RemaskPolicy is policy.RemaskPolicy
    assert set(policy.ALGORITHM_POLICIES) == set(policy.ALGORITHMS)
