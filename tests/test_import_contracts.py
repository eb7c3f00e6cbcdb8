"""The import contracts of `.importlinter` hold, checked by import-linter on this checkout.

Next to the AST rules of tests/test_layering.py: the layers (gui > session/jobs > data > sampling >
learners), no import cycle between sibling modules or packages, and no Qt or napari outside
`napari_paser/gui/`. Type-only and function-level imports count as dependencies.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.test_layering import GUI_LIBRARIES, PACKAGES

pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
RUN = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint(config: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on this checkout's packages (not an installed copy), without a cache."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", RUN, "--config", str(config), "--no-cache"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def read_config() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(CONFIG, encoding="utf-8")
    return parser


def test_import_contracts_are_kept():
    res = lint(CONFIG)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_contracts_cover_the_packages_and_gui_libraries_of_the_ast_rules():
    config = read_config()
    assert set(config["importlinter"]["root_packages"].split()) == set(PACKAGES)
    forbidden = set(config["importlinter:contract:no-gui-outside-gui"]["forbidden_modules"].split())
    installed = {name for name in GUI_LIBRARIES if find_spec(name) is not None}
    assert installed <= forbidden


def test_the_cycle_contract_is_not_vacuous(tmp_path):
    """Without its ignore list the cycle contract breaks on the session's known cycles: the checker sees
    type-only imports, and each ignored import still names a real one."""
    config = read_config()
    del config["importlinter:contract:acyclic"]["ignore_imports"]
    stripped = tmp_path / "contracts.ini"
    with stripped.open("w", encoding="utf-8") as f:
        config.write(f)
    res = lint(stripped)
    assert res.returncode != 0
    assert "No import cycles between sibling modules or packages BROKEN" in res.stdout
    assert "napari_paser.session" in res.stdout

