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
    assert "rdd.networks" in graph["rdd.training"]  # imported inside train_base_model only
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_between_modules_function_level_imports_included():
    cycle = find_cycle(module_imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The README's layout, top to bottom: a module imports only from its own row or the rows below it.
LAYERS = [["cli"], ["benchmark", "sweep", "demo", "report"], ["distill", "methods"], ["training", "rundir", "classifier", "dryrun"],
          ["metrics", "sampling"], ["model_io", "diffusers_io", "diffusers_pipeline"], ["losses"],
          ["networks", "classifier_nets", "diffusion", "baselines", "data", "distributed"],
          ["checkpoint", "files", "metrics_log", "tables", "layout"], ["registry", "config", "plugins", "fidelity", "strict_yaml", "limits", "errors"]]


def test_modules_import_only_downwards_as_the_readme_lays_them_out():
    row = {name: i for i, names in enumerate(LAYERS) for name in names}

    def row_of(module: str) -> int | None:
        parts = module.split(".")
        return row.get(parts[1]) if len(parts) > 1 else None  # the package's own __init__ sits outside the rows

    upward = [f"{m} -> {d}" for m, deps in module_imports().items() for d in deps
              if row_of(m) is not None and row_of(d) is not None and row_of(d) < row_of(m)]
    assert not upward, "imports against the layout: " + ", ".join(upward)
