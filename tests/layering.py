"""The import layering of the project, and a checker that walks every module's AST.

A module may import only from the layers its own layer lists (and from its own package).
`services.<name>` for each service is its own package: no service imports another.
Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SERVICES = ("condition_encoder", "vae_codec", "sampler", "filter", "motion_extractor")

# layer -> the layers it may import (besides itself). Order: bottom first.
ALLOWED: dict[str, tuple[str, ...]] = {
    "genaug": (),  # the wire contract: tensors, stubs, neutral errors, ports, deadlines
    "clients.rpc": ("genaug",),  # the client library
    "services.common": ("genaug",),  # the server runtime
    "services.data": ("genaug",),  # files, layouts, ingest: no gRPC, no torch models
    "services.models": ("genaug", "services.data"),  # networks, algorithms, training
    "service": ("genaug", "clients.rpc", "services.common", "services.data", "services.models"),
    "clients": ("genaug", "clients.rpc", "services.data", "services.models"),  # applications
    "benchmarks": (
        "genaug",
        "clients.rpc",
        "clients",
        "services.common",
        "services.data",
        "services.models",
        "service",
    ),
    "tests": tuple(),  # tests may import anything
}
PROJECT_ROOTS = ("genaug", "services", "clients", "benchmarks", "tests")


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to (None: not a project module)."""
    parts = module.split(".")
    if parts[0] not in PROJECT_ROOTS:
        return None
    if parts[0] == "services" and len(parts) > 1:
        if parts[1] in SERVICES:
            return "service"
        return f"services.{parts[1]}" if f"services.{parts[1]}" in ALLOWED else "services.common"
    if parts[0] == "clients" and len(parts) > 1 and parts[1] == "rpc":
        return "clients.rpc"
    return parts[0]


def package_of(module: str) -> str:
    """The unit whose internals stay private: one service, or the layer itself."""
    parts = module.split(".")
    if parts[0] == "services" and len(parts) > 1 and parts[1] in SERVICES:
        return ".".join(parts[:2])
    return layer_of(module) or module


@dataclass(frozen=True)
class Violation:
    module: str
    imported: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported}: {self.why}"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "protos":  # the wire package lives under protos/
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def iter_modules(root: Path) -> Iterable[tuple[str, Path]]:
    for top in ("protos/genaug", "services", "clients", "benchmarks", "tests"):
        for path in sorted((root / top).rglob("*.py")):
            if "_pb2" not in path.name:
                yield module_name(path, root), path


def imports_of(module: str, path: Path) -> list[tuple[str, int]]:
    """Absolute names imported by a module, at any depth of its AST (relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, node.lineno))
            # `from pkg import submodule` depends on the submodule too
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def check(root: Path) -> tuple[list[Violation], list[list[str]]]:
    """Layering violations and import circles (between modules) under `root`."""
    modules = dict(iter_modules(root))
    violations: list[Violation] = []
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        src_layer = layer_of(module)
        for name, line in imports_of(module, path):
            if name not in modules:
                continue  # an attribute, not a module, or outside the project
            dst_layer = layer_of(name)
            if src_layer is None or dst_layer is None:
                continue
            src_pkg, dst_pkg = package_of(module), package_of(name)
            # a package's __init__ re-exporting its submodules is not a circle
            if name != module and not module.startswith(name + ".") and src_layer != "tests":
                graph.setdefault(module, set()).add(name)
            if src_layer == "tests" or src_pkg == dst_pkg:
                continue
            if dst_layer == "tests":
                violations.append(Violation(module, name, line, "only tests import tests"))
            elif src_layer == "service" and dst_layer == "service":
                violations.append(Violation(module, name, line, "a service imports another"))
            elif dst_layer != src_layer and dst_layer not in ALLOWED[src_layer]:
                violations.append(
                    Violation(module, name, line, f"layer {src_layer} may not import {dst_layer}")
                )
    return violations, _circles(graph)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups
