"""Structure: the command line starts without the heavy libraries, and the modules import in one direction."""
import ast
import subprocess
import sys

from conftest import ROOT

SRC = ROOT / "src" / "rdd"


def test_help_builds_every_parser_without_torch():
    code = ("import sys, rdd.cli; rdd.cli.build_parser().format_help(); "
            "heavy = [m for m in ('torch', 'torchvision', 'matplotlib', 'diffusers') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def module_imports() -> dict[str, set[str]]:
    """Each rdd module -> the rdd modules it imports at its top level (function-level imports are lazy)."""
    graph = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rdd"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("rdd"))
        graph[name] = deps
    return graph


def test_no_import_cycle_between_modules():
    graph = module_imports()
    state: dict[str, str] = {}

    def visit(module, path):
        if state.get(module) == "open":
            raise AssertionError("import cycle: " + " -> ".join(path + [module]))
        if state.get(module) == "done":
            return
        state[module] = "open"
        for dep in graph.get(module, ()):
            if dep != module and not module.startswith(dep + "."):  # a package's own __init__ is not a cycle
                visit(dep, path + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])
