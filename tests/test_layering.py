"""The package's layering rules, read from the source (AST) and checked by importing headless.

- `learners` imports neither `sampling` nor `napari_paser`; `sampling` never imports `napari_paser`;
- only `napari_paser/gui/` imports Qt, napari, magicgui, superqt or vispy;
- no private napari API (`napari._...` modules, `._qt...` attributes) in the package;
- importing the headless parts (session, jobs, data, bench, cli, learners, sampling) loads no GUI module;
- the base install (`pip install napari-paser`) declares no GUI dependency: napari, Qt, magicgui and
  npe2 come with the `gui` extra.

Imports inside functions count too (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("learners", "sampling", "napari_paser")
GUI_DIR = "napari_paser/gui/"
GUI_LIBRARIES = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy"}
FORBIDDEN = {"learners": {"sampling", "napari_paser"}, "sampling": {"napari_paser"}}

# (file, rule) pairs tolerated for now. Each must name a real violation (a fixed file fails the
# test below, so the entry is removed with the fix).
ALLOWED: set[tuple[str, str]] = set()  # (file, rule) pairs tolerated for now: none


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, nested ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _private_napari(tree: ast.AST) -> list[tuple[int, str]]:
    bad = [(line, name) for line, name in _imports(tree)
           if name.split(".")[0] == "napari" and any(part.startswith("_") for part in name.split(".")[1:])]
    bad += [(node.lineno, f".{node.attr}") for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_qt")]
    return bad


def violations() -> list[tuple[str, str, str]]:
    """(file, rule, detail) of every broken rule in the package source."""
    out = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), rel)
        top = rel.split("/")[0]
        for line, name in _imports(tree):
            root = name.split(".")[0]
            if root in FORBIDDEN.get(top, ()):
                out.append((rel, "upward import", f"line {line}: {name}"))
            if root in GUI_LIBRARIES and not rel.startswith(GUI_DIR):
                out.append((rel, "GUI import outside gui/", f"line {line}: {name}"))
        out += [(rel, "private napari", f"line {line}: {name}") for line, name in _private_napari(tree)]
    return out


def test_layering_rules_hold():
    broken = sorted({f"{f} ({rule}) {detail}" for f, rule, detail in violations() if (f, rule) not in ALLOWED})
    assert not broken, "layering rules broken:\n" + "\n".join(broken)


def test_allow_list_names_real_violations():
    found = {(f, rule) for f, rule, _ in violations()}
    stale = ALLOWED - found
    assert not stale, f"fixed, so remove from ALLOWED: {sorted(stale)}"


def test_the_checker_sees_lazy_and_private_imports():
    tree = ast.parse("def f(viewer):\n    import sampling.taudis\n    from napari._qt import x\n    viewer.window._qt_window\n")
    assert (2, "sampling.taudis") in _imports(tree)
    assert {d for _, d in _private_napari(tree)} >= {"napari._qt", "._qt_window"}


HEADLESS = [
    "learners", "sampling", "napari_paser.jobs", "napari_paser.jobs.segment", "napari_paser.data.volumes",
    "learners.routing.router", "learners.routing.bank", "learners.routing.cascade", "sampling.registry",
    "sampling.taudis", "sampling.dqn", "napari_paser", "napari_paser.cli", "napari_paser.session",
    "napari_paser.session.core", "napari_paser.jobs.train", "napari_paser.jobs.policy", "napari_paser.jobs.predict",
    "napari_paser.jobs.demo", "napari_paser.data.dataset", "napari_paser.data.export", "napari_paser.bench.al",
    "napari_paser.bench.al_sim", "napari_paser.bench.routing",
]


def test_headless_imports_load_no_gui_module():
    """In the spirit of micro-sam's headless test: the library and the CLI run with no display."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {HEADLESS!r}:\n"
        "    importlib.import_module(name)\n"
        f"gui = {sorted(GUI_LIBRARIES | {'npe2'})!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in gui)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # no display, no Qt platform
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("module", ["napari_paser.gui.hub"])
def test_the_gui_folder_is_where_qt_lives(module):
    """The rule is not vacuous: the GUI does import Qt (so a scan that found nothing would be broken)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    roots = {name.split(".")[0] for _, name in _imports(ast.parse(path.read_text()))}
    assert roots & GUI_LIBRARIES


def _requirement_name(req: str) -> str:
    import re

    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_the_base_install_declares_no_gui_dependency():
    """A cluster worker running `paser segment` installs the base set: no napari, Qt or magicgui there;
    the `gui` extra has them, with a Qt 6 binding (napari's PyQt5 support is deprecated)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gui = {name.lower() for name in GUI_LIBRARIES} | {"npe2", "pyqt5-qt5", "pyqt6-qt6"}
    base = {_requirement_name(r) for r in project["dependencies"]}
    assert not base & gui, f"GUI packages in the base dependencies: {sorted(base & gui)}"
    extra = {_requirement_name(r) for r in project["optional-dependencies"]["gui"]}
    assert {"napari", "magicgui", "qtpy", "npe2"} <= extra
    assert extra & {"pyqt6", "pyside6"} and not extra & {"pyqt5", "pyside2"}, extra
