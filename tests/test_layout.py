"""The shape of the code: no import cycles inside the orchestrator package (imports inside
functions count too: a lazy import is still a dependency)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "orchestrator"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The orchestrator modules that a file imports, resolved to module names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from . import x` names a module
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert "orchestrator.formats.model" in graph["orchestrator.formats.gguf_file"]
    assert "orchestrator.bench.pipeline" in graph["orchestrator.app"]  # imported inside a function


def test_no_import_cycles_in_the_orchestrator():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


# The layers, top first: a module may import only from its own layer or those below it
# (../shared/LAYOUT.md). Within bench/ the probe and pipeline stages may import each other; across
# layers, imports point down.
LAYERS = ["app", "fleet", "containers", "bench", "ports", "models", "reference", "results", "formats",
          "process", "errors", "files"]


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return LAYERS.index(top) if top in LAYERS else -1


def test_every_module_is_in_a_layer():
    stray = [m for m in import_graph() if m != "orchestrator" and _layer(m) < 0]
    assert not stray, f"modules outside the layers of tests/test_layout.py: {stray}"


def test_imports_point_down():
    up = sorted(f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
                if _layer(m) >= 0 and _layer(d) >= 0 and _layer(d) < _layer(m))
    assert not up, "imports that point up a layer:\n" + "\n".join(up)


def test_the_layer_check_catches_an_upward_import():
    assert _layer("orchestrator.results.html") > _layer("orchestrator.bench.peercheck")
    assert _layer("orchestrator.process") > _layer("orchestrator.containers.engine")
