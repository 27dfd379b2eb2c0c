"""Nothing in the project can unpickle: an AST walk fails on any new unsafe load.

Unsafe: `pickle`/`cPickle`/`dill`/`joblib`/`shelve` loads, `np.load` without
`allow_pickle=False`, `torch.load` without `weights_only=True`, anything passing
`allow_pickle=True`, and `pandas.read_pickle`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.layering import iter_modules

ROOT = Path(__file__).resolve().parents[2]
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "cloudpickle"}


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_constant(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unsafe_loads(source: str) -> list[tuple[int, str]]:
    """(line, what) for every unsafe load in a module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                if name and name.split(".")[0] in PICKLE_MODULES:
                    found.append((node.lineno, f"imports {name}"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if _is_constant(_keyword(node, "allow_pickle"), True):
            found.append((node.lineno, f"{name}(allow_pickle=True)"))
        if name in ("np.load", "numpy.load") and not _is_constant(
            _keyword(node, "allow_pickle"), False
        ):
            found.append((node.lineno, f"{name} without allow_pickle=False"))
        if name == "torch.load" and not _is_constant(_keyword(node, "weights_only"), True):
            found.append((node.lineno, "torch.load without weights_only=True"))
        if name.endswith("read_pickle") or name.split(".")[0] in PICKLE_MODULES:
            found.append((node.lineno, name))
    return found


def test_no_module_loads_unsafely():
    found = [
        f"{module}:{line}: {what}"
        for module, path in iter_modules(ROOT)
        for line, what in unsafe_loads(path.read_text())
    ]
    assert found == []


def test_the_walk_catches_each_unsafe_form():
    source = "\n".join(
        [
            "import pickle",
            "import numpy as np, torch",
            "np.load('a.npy')",
            "np.load('a.npy', allow_pickle=True)",
            "torch.load('w.pt')",
            "torch.load('w.pt', weights_only=False)",
            "pickle.loads(b'')",
            "np.load('ok.npy', allow_pickle=False)",
            "torch.load('ok.pt', weights_only=True)",
        ]
    )
    assert [line for line, _ in unsafe_loads(source)] == [1, 3, 4, 4, 5, 6, 7]
