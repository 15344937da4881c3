"""Write the .pyi stubs of llamadiff's compiled modules from their embedded signatures.

    python scripts/make_stubs.py            # rewrite llamadiff/*.pyi
    python scripts/make_stubs.py --check    # exit 1 when a stub is out of date

Cython embeds each function's signature in its docstring (``embedsignature``); this turns
them into Python stub syntax so editors and type checkers see the compiled API. Run it after
changing a ``.pyx`` module's Python-visible API (tests/test_stubs.py checks they agree).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _extension_modules() -> list:
    """setup.py's EXTENSIONS (read, not imported: importing setup.py would run the build)."""
    import ast
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXTENSIONS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit("setup.py has no EXTENSIONS list")


MODULES = _extension_modules()

C_TYPES = {"int": "int", "long": "int", "unsigned long long": "int", "int32_t": "int", "int64_t": "int",
           "uint64_t": "int", "size_t": "int", "Py_ssize_t": "int", "bint": "bool", "bool": "bool",
           "float": "float", "double": "float", "str": "str", "bytes": "bytes", "list": "list",
           "dict": "dict", "tuple": "tuple"}


def _param(text: str) -> str:
    """One Cython parameter as Python stub syntax: ``int n=1`` -> ``n: int = ...``."""
    text = text.strip()
    if text in ("*", "/", "self") or text.startswith("*"):
        return text
    name_part, eq, default = text.partition("=")
    words = name_part.replace(" not None", "").split()
    name = words[-1]
    ctype = " ".join(words[:-1])
    hint = C_TYPES.get(ctype, ctype) if ctype else ""
    if hint:
        return f"{name}: {hint}" + (" = ..." if eq else "")
    return name + ("=..." if eq else "")


def _split_params(params: str) -> list:
    out, depth, cur = [], 0, ""
    for ch in params:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


def _signature(doc: str, name: str) -> str:
    """``(params)`` from an embedded signature line, else ``(*args, **kwargs)``."""
    first = (doc or "").split("\n", 1)[0]
    m = re.match(r"^[\w.]*?" + re.escape(name) + r"\((.*)\)(?:\s*->\s*(.+))?$", first)
    if not m:
        return "(*args, **kwargs)"
    return "(" + ", ".join(_param(p) for p in _split_params(m.group(1))) + ")"


def _class_stub(cls) -> list:
    bases = [b.__name__ for b in cls.__bases__ if b is not object]
    lines = [f"class {cls.__name__}{'(' + ', '.join(bases) + ')' if bases else ''}:"]
    body = []
    init = _signature(cls.__doc__, cls.__name__)
    if init != "(*args, **kwargs)":
        params = init[1:-1]
        body.append(f"    def __init__(self{', ' + params if params else ''}) -> None: ...")
    for key, value in sorted(vars(cls).items()):
        if key.startswith("_") and key not in ("__enter__", "__exit__", "__iter__", "__len__"):
            continue
        if inspect.isdatadescriptor(value) or isinstance(value, property):
            body.append(f"    @property\n    def {key}(self): ...")
        elif callable(value):
            sig = _signature(getattr(value, "__doc__", ""), key)
            if isinstance(value, (classmethod, staticmethod)) or "self" not in sig:
                body.append(f"    @staticmethod\n    def {key}{sig}: ..." if "self" not in sig and
                            sig != "(*args, **kwargs)" else f"    def {key}(self, *args, **kwargs): ...")
            else:
                body.append(f"    def {key}{sig}: ...")
        elif not callable(value):
            body.append(f"    {key}: {type(value).__name__}")
    return lines + (body or ["    ..."])


# classes that signatures of other modules name
HOMES = {"Model": "_core", "Context": "_core", "RowSampler": "_sampling", "RemaskPolicy": "policy",
         "Sequence": "engine"}


def stub(module_name: str) -> str:
    mod = importlib.import_module(f"llamadiff.{module_name}")
    out = [f'"""Stubs of the compiled module llamadiff.{module_name} (scripts/make_stubs.py)."""', ""]
    for name, value in sorted(vars(mod).items()):
        if name.startswith("__") or getattr(value, "__module__", mod.__name__) != mod.__name__:
            continue
        if inspect.isclass(value):
            out += [""] + _class_stub(value) + [""]
        elif callable(value):
            out += [f"def {name}{_signature(value.__doc__, name)}: ...", ""]
        elif isinstance(value, (int, float, str, tuple, dict, frozenset)) and not name.startswith("_"):
            out.append(f"{name}: {type(value).__name__}")
    text = "\n".join(out).rstrip() + "\n"
    imports = [f"from llamadiff.{home} import {cls}" for cls, home in HOMES.items()
               if home != module_name and re.search(r": " + cls + r"\b", text)]
    if imports:
        head, rest = text.split("\n", 1)
        text = head + "\n" + "\n".join(imports) + "\n" + rest
    return text


def main(argv) -> int:
    check = "--check" in argv
    stale = []
    for name in MODULES:
        path = ROOT / "llamadiff" / f"{name}.pyi"
        text = stub(name)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python scripts/make_stubs.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
