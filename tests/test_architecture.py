"""The layout's rules (ARCHITECTURE.md), read from the source: each room
imports only what it may, nothing imports the command line, and the
module-level imports have no cycle."""

import ast
import os

from helpers import only_on

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "keras_dstee")
BASE = {"arguments", "host", "layers", "layer_kinds", "calibration", "version"}
# What each part may import from the package (besides itself and BASE).
ALLOWED = {
    "base": set(),
    "models": set(),
    "structure": set(),
    "deploy": {"structure"},
    "training": {"structure"},
    "report": {"training", "structure"},
    "cli": {"deploy", "structure", "training", "report", "package"},
    "package": {"training", "structure", "deploy", "report", "models"},
}


def _modules():
    """`{module name: (path, part)}` for every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts)
            found[name] = (path, _part(parts))
    return found


def _part(parts):
    if len(parts) == 1:
        return "package"
    if parts[1] in ("training", "structure", "deploy", "models"):
        return parts[1]
    if parts[1] in BASE:
        return "base"
    return parts[1]  # report, cli


def _imports(path, modules, top_level_only):
    """The package modules `path` imports (module level only, or anywhere)."""
    tree = ast.parse(open(path).read())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # a submodule, or a name from the module
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in modules else node.module)
    return {n for n in names if n in modules}


@only_on("jax", "reads source files: the same on every backend")
def test_each_room_imports_only_what_it_may():
    modules = _modules()
    wrong = []
    for name, (path, part) in modules.items():
        for target in _imports(path, modules, top_level_only=False):
            target_part = modules[target][1]
            if target_part in (part, "base") or target_part in ALLOWED[part]:
                continue
            wrong.append(f"{name} ({part}) imports {target} ({target_part})")
    assert wrong == []


@only_on("jax", "reads source files: the same on every backend")
def test_nothing_imports_the_command_line():
    modules = _modules()
    importers = [name for name, (path, _) in modules.items() if "keras_dstee.cli" in _imports(path, modules, False)]
    assert importers == []


@only_on("jax", "reads source files: the same on every backend")
def test_module_level_imports_have_no_cycle():
    modules = _modules()
    graph = {name: _imports(path, modules, top_level_only=True) - {name} for name, (path, _) in modules.items()}
    # A package's own submodule is imported with it, not a cycle.
    graph = {name: {t for t in targets if not name.startswith(t + ".") and t != "keras_dstee"}
             for name, targets in graph.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in graph[node]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
