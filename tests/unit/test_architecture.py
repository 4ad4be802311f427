"""The layering contracts in .importlinter hold (the pure core never does I/O)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is a test dependency: pip install -e '.[test]'"
    result = subprocess.run([exe, "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "broken" in result.stdout and " 0 broken" in result.stdout


def test_hack_scripts_import_each_other_without_cycles():
    """hack/ scripts may share helpers, but never import each other in a circle (demo.py and live.py once did)."""
    import ast

    hack = ROOT / "hack"
    scripts = {p.stem: p for p in hack.glob("*.py")}
    graph = {}
    for name, path in scripts.items():
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        graph[name] = names & scripts.keys()
    assert "demo_stack" in graph["live"] and "live" in graph["demo"]  # the graph is really read

    def cycle_from(start, node, seen):
        for nxt in graph[node]:
            if nxt == start:
                return [node, nxt]
            if nxt not in seen:
                seen.add(nxt)
                found = cycle_from(start, nxt, seen)
                if found:
                    return [node] + found
        return None

    cycles = [c for c in (cycle_from(n, n, {n}) for n in graph) if c]
    assert not cycles, f"import cycles in hack/: {cycles}"
