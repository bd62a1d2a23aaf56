"""The repository's conventions, checked: r1lab's modules import each other in one direction (no cycle,
lazy imports included), and no source file grows past 450 lines."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_graph() -> dict[str, set[str]]:
    """r1lab module -> the r1lab modules it imports anywhere in the file (`from . import x` of a
    submodule counts as importing x, not the package)."""
    mods = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs or ([base] if base in mods else [])
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name in mods]
            else:
                continue
            graph[name].update(t for t in targets if t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles():
    graph = module_graph()
    assert "r1lab.train.loop" in graph and "r1lab.engine.request" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert "r1lab.engine.engine" not in graph["r1lab.engine.request"]


def test_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_source_files_stay_under_450_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long


def test_one_training_loop_and_one_rollout():
    """GRPO and SFT run loop.train; no other module loops over train.max_steps or samples with the engine."""
    loops = [p for p in (SRC / "r1lab").rglob("*.py") if "< cfg.max_steps" in p.read_text()]
    assert [p.name for p in loops] == ["loop.py"]
    samplers = sorted(str(p.relative_to(SRC)) for folder in ("train", "eval") for p in (SRC / "r1lab" / folder).rglob("*.py")
                      if ".generate(" in p.read_text())
    assert samplers == [], samplers  # they sample through r1lab.rollout
