"""The import contracts of `.importlinter` hold, checked by import-linter on this checkout.

Next to the AST rules of tests/test_layering.py: the layers (gui > session/jobs > data > sampling >
learners), no import cycle between sibling modules or packages, and no Qt or napari outside
`napari_paser/gui/`. Type-only and function-level imports count as dependencies.
"""

from __future__ import annotations

import configparser
import os
import shutil
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


def lint(config: Path, root: Path = ROOT) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages under `root` (this checkout's, not an installed copy), without a cache."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", RUN, "--config", str(config), "--no-cache"],
                          capture_output=True, text=True, cwd=root, env=env, timeout=300)


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


def test_no_import_is_ignored():
    """Every contract holds on every import: no `ignore_imports` hides a known cycle or upward import."""
    config = read_config()
    assert [name for name in config.sections() if "ignore_imports" in config[name]] == []


def test_the_cycle_contract_is_not_vacuous(tmp_path):
    """A cycle planted in a copy of the packages breaks the cycle contract, and one hidden behind a
    type-only import does too: the checker reads this configuration and sees `TYPE_CHECKING` imports."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc", "__pycache__"),
                        dirs_exist_ok=True, copy_function=_copy_sources)
    planted = tmp_path / "napari_paser" / "session" / "store.py"
    planted.write_text(planted.read_text(encoding="utf-8") + "\n\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                       "    from napari_paser.session.core import Session  # planted: core imports store\n",
                       encoding="utf-8")
    res = lint(CONFIG, root=tmp_path)
    assert res.returncode != 0
    assert "No import cycles between sibling modules or packages BROKEN" in res.stdout
    assert "napari_paser.session" in res.stdout and ".store -> .core" in res.stdout


def _copy_sources(src: str, dst: str) -> None:
    """Python sources only (what import-linter reads), so the copy stays small."""
    if src.endswith(".py"):
        shutil.copy2(src, dst)

