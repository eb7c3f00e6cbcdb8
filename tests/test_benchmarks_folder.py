"""The benchmarks folder is research beside the product, not a second hidden library: scripts find the data
through `benchmarks/common.py`, share helpers through plain helper modules (never by importing another
benchmark script or editing `sys.path`), hold no machine's absolute paths, and `run_all.py` names every
script it does not run."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
MACHINE_ROOTS = tuple({str(ROOT.parent) + "/", str(Path.home()) + "/"})
"""Where this checkout and the user's home lie on this machine: a path under them is this machine's, not the repo's."""


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _is_script(path: Path) -> bool:
    return "__main__" in {n.value for n in ast.walk(_tree(path)) if isinstance(n, ast.Constant)}


SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "run_all.py" and _is_script(p))
HELPERS = sorted(p.stem for p in BENCH.glob("*.py") if not _is_script(p))


def test_run_all_names_every_benchmark_once():
    sys.path.insert(0, str(BENCH))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCH))
    quick = [cmd[0] for cmd in run_all.QUICK.values()]
    assert sorted(quick + list(run_all.BY_HAND)) == SCRIPTS


def test_no_path_edits_machine_paths_or_script_imports():
    """Benchmarks: no sys.path edits, no imports of another script; benchmarks and tests: no absolute machine paths."""
    bad = []
    for path in sorted(BENCH.glob("*.py")) + sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(_tree(path)):
            if path.parent == BENCH and isinstance(node, ast.Attribute) and node.attr == "path" \
                    and getattr(node.value, "id", "") == "sys":
                bad.append(f"{path.name}:{node.lineno} edits or reads sys.path")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(MACHINE_ROOTS):
                bad.append(f"{path.name}:{node.lineno} absolute machine path {node.value!r}")
            if path.parent == BENCH and isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad += [f"{path.name}:{node.lineno} imports the script {n}" for n in names if f"{n}.py" in SCRIPTS]
    assert not bad, "\n".join(bad)


def test_helper_modules_import_as_scripts_see_them():
    """`python benchmarks/X.py` puts benchmarks/ on sys.path: the helpers import plainly from there."""
    code = "import " + ", ".join(HELPERS)
    res = subprocess.run([sys.executable, "-c", code], cwd=BENCH, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": f"{BENCH}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert set(HELPERS) >= {"common", "gui_probe", "labeling_loop", "router_scoring"}
