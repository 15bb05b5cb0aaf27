"""Structure: the command line starts without the heavy libraries, and the modules import in one direction."""
import ast
import subprocess
import sys

from helpers import ROOT

SRC = ROOT / "src" / "rdd"


def test_help_builds_every_parser_without_torch():
    code = ("import sys, rdd.cli; rdd.cli.build_parser().format_help(); "
            "heavy = [m for m in ('torch', 'torchvision', 'matplotlib', 'diffusers') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def module_name(path) -> str:
    return ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")


def imported_modules(node: ast.AST, modules: set[str]) -> set[str]:
    """The rdd modules an `import` or `from ... import` names: `from rdd import x` imports rdd.x if that is a module."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "rdd"}
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "rdd":
        submodules = {f"{node.module}.{a.name}" for a in node.names} & modules
        return submodules or {node.module}
    return set()


def module_imports() -> dict[str, set[str]]:
    """Each rdd module -> every rdd module it imports, at its top level or inside a function."""
    paths = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            deps |= imported_modules(node, set(paths))
        # a package's own __init__ is not a cycle
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(module, path):
        if state.get(module) == "open":
            return path[path.index(module):] + [module]
        if state.get(module) == "done":
            return None
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            cycle = visit(dep, path + [module])
            if cycle:
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_the_graph_sees_imports_inside_functions():
    graph = module_imports()
    assert "rdd.losses.truncated_snr" in graph["rdd.training"] or "rdd.losses" in graph["rdd.training"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_between_modules_function_level_imports_included():
    cycle = find_cycle(module_imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
