"""The house keeps its floors: every import inside pimail goes to its own floor or a lower one, and
no modules import each other in a circle.

The floors are written once, here (``LAYERS``), and drawn in docs/ARCHITECTURE.md. Imports are read
with ``ast`` from the source, so an import inside a function or under ``TYPE_CHECKING`` counts as
much as one at the top (it still ties the rooms together), relative imports are resolved against
their package, and ``importlib.import_module("pimail.…")`` with a literal name counts as an import.
A new package must be given a floor before it can pass.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "pimail"

#: the floors, ground first; a module belongs to the longest package or module name that names it
#: (``pimail`` itself is only the package's own ``__init__``, which holds the version: a new top-level
#: module has no floor until it is given one). Mirrored in docs/ARCHITECTURE.md.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", ("pimail", "pimail.errors", "pimail.config", "pimail.rlpcodec", "pimail.crypto",
                "pimail.health", "pimail.envelope")),
    ("rlpx", ("pimail.rlpx",)),
    ("devp2p", ("pimail.devp2p",)),
    ("discovery", ("pimail.discovery",)),
    ("node", ("pimail.node",)),
    ("archive", ("pimail.archive",)),
    ("relay", ("pimail.relay",)),
    ("adapters", ("pimail.whisper", "pimail.waku")),
    ("mailserver", ("pimail.mailserver",)),
    ("appliance", ("pimail.appliance",)),
    ("composition", ("pimail.configfile", "pimail.daemon")),
    ("cli", ("pimail.cli", "pimail.__main__")),
)


def floor_of(module: str) -> int | None:
    """Index in ``LAYERS`` of the floor ``module`` stands on (None: no floor names it)."""
    best: tuple[int, int] | None = None  # (prefix length, floor)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "pimail" and module.startswith(prefix + "."))
            if inside and (
                best is None or len(prefix) > best[0]
            ):
                best = (len(prefix), index)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, imported pimail module) for every import in the file, wherever it stands."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base  # a submodule, or a name in base
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def import_graph() -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    """The modules and, per module, the pimail modules it imports (with the first line doing it)."""
    modules = all_modules()
    known = set(modules)
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        for line, target in imports_of(module, path, known):
            if target != module and (target == "pimail" or target.startswith("pimail.")):
                graph[module].setdefault(target, line)
    return modules, graph


def _floor_name(index: int) -> str:
    return f"{LAYERS[index][0]} floor"


def test_every_module_has_a_floor() -> None:
    modules, graph = import_graph()
    homeless = sorted(m for m in modules if floor_of(m) is None)
    targets = sorted({t for edges in graph.values() for t in edges if t not in modules})
    assert not homeless, "modules on no floor (add them to LAYERS in tests/test_layers.py and to " \
        "docs/ARCHITECTURE.md): " + ", ".join(homeless)
    assert not targets, "imports of pimail modules that do not exist: " + ", ".join(targets)


def test_no_import_climbs() -> None:
    modules, graph = import_graph()
    root = PACKAGE_DIR.parent
    climbs = []
    for module, edges in sorted(graph.items()):
        here = floor_of(module)
        for target, line in sorted(edges.items()):
            there = floor_of(target)
            if here is not None and there is not None and there > here:
                climbs.append(f"  {modules[module].relative_to(root)}:{line}: {module} ({_floor_name(here)})"
                              f" imports {target} ({_floor_name(there)})")
    assert not climbs, (
        f"{len(climbs)} import(s) climb to a higher floor (a module may import only its own floor or "
        "lower; see LAYERS in tests/test_layers.py):\n" + "\n".join(climbs)
    )


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    modules, graph = import_graph()
    root = PACKAGE_DIR.parent
    report = []
    for component in _cycles(graph):
        members = set(component)
        report.append("  circle: " + ", ".join(component))
        for module in component:
            for target, line in sorted(graph[module].items()):
                if target in members:
                    report.append(f"    {modules[module].relative_to(root)}:{line}: {module} -> {target}")
    assert not report, "modules that import each other in a circle (function-level imports count):\n" \
        + "\n".join(report)


def test_the_checker_sees_what_it_must() -> None:
    """The resolver itself: a relative import, a function-level one, one under TYPE_CHECKING."""
    assert floor_of("pimail.archive.sqlite") == floor_of("pimail.archive")
    assert floor_of("pimail") == 0 and floor_of("pimail.cli.run") == len(LAYERS) - 1
    assert floor_of("pimailx") is None and floor_of("os") is None and floor_of("pimail.newroom") is None
    tree = ast.parse("from .x import y\nfrom .. import z\n")
    first, second = (n for n in tree.body if isinstance(n, ast.ImportFrom))
    assert _resolve_from(first, "pimail.a.b", False) == "pimail.a.x"
    assert _resolve_from(second, "pimail.a.b", False) == "pimail"
    assert _resolve_from(first, "pimail.a", True) == "pimail.a.x"
    sample = PACKAGE_DIR.parent / "tests" / "_layers_sample.py"
    try:
        sample.write_text(
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pimail.cli\n"
            "def f() -> None:\n    from pimail import daemon\n"
        )
        found = {t for _, t in imports_of("pimail.x", sample, {"pimail.daemon"})}
    finally:
        sample.unlink()
    assert found == {"typing", "pimail.cli", "pimail.daemon"}
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
