"""Import rules, read from the source (ast): no import circle, and the core never reaches into the lab.

Every import counts: at module level, inside functions, and under ``TYPE_CHECKING``, because a
circle a reader has to follow is a circle even when Python happens to resolve it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import guardrail

PACKAGE = Path(guardrail.__file__).resolve().parent
#: What a guarded call needs; none of it may depend on the robustness lab.
CORE = ("guard", "schema", "validation", "retry", "feedback", "voting", "calibration")
#: The robustness lab: suites run under noise, their metrics and reports.
LAB = ("metrics", "robustness", "report")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``module -> the guardrail modules it imports`` (``from guardrail import voting`` is an edge
    to ``guardrail.voting``, ``from guardrail import __version__`` one to ``guardrail``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle, as the modules around it, or ``[]``."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for nxt in sorted(graph[module]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if not state.get(nxt) and (found := visit(nxt)):
                return found
        state[module] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if not state.get(start) and (found := visit(start)):
            return found
    return []


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_graph_is_read_from_real_imports() -> None:
    graph = import_graph()
    assert "guardrail.errors" in graph["guardrail.result"]
    assert "guardrail.voting" in graph["guardrail.guard"]  # from guardrail import ..., voting
    assert "guardrail.backends.local" in graph["guardrail.backends"]  # imported inside a function
    assert "guardrail.report.svg" in graph["guardrail.report.html"]  # from guardrail.report import svg


def test_there_is_no_import_circle() -> None:
    cycle = _cycle(import_graph())
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_errors_do_not_import_results() -> None:
    graph = import_graph()
    assert "guardrail.result" not in _reachable(graph, "guardrail.errors")


def test_the_core_does_not_reach_into_metrics_robustness_or_reports() -> None:
    graph = import_graph()
    for core in CORE:
        reached = _reachable(graph, f"guardrail.{core}")
        lab = sorted(m for m in reached if m.removeprefix("guardrail.").split(".")[0] in LAB)
        assert not lab, f"guardrail.{core} reaches {lab}"


#: The backends hold one concern per module (issue 15): a module past this has grown a second one.
BACKEND_MODULE_LINES = 400


def test_no_backend_module_grows_past_400_lines() -> None:
    long = {str(path.relative_to(PACKAGE.parent)): n for path in (PACKAGE / "backends").rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > BACKEND_MODULE_LINES}
    assert not long, f"split these by concern (lines): {long}"
