"""The docs pages generated from the code (scripts/mkdocs_cli_reference.py, a mkdocs hook) cover it all:
every `paser` command and option in the CLI reference, every plugin key on the shortcuts page."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _hook():
    spec = importlib.util.spec_from_file_location("mkdocs_cli_reference", ROOT / "scripts" / "mkdocs_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_lists_every_command_and_option():
    from napari_paser.cli import build_parser

    hook = _hook()
    page = hook.on_page_markdown(f"# CLI\n\n{hook.MARKER}\n", page=None)
    assert hook.MARKER not in page
    commands = hook._subcommands(build_parser(), "paser")
    assert {"paser segment", "paser session train-router", "paser data synth", "paser al train-dqn"} <= {c for c, _, _ in commands}
    for command, _, parser in commands:
        assert f"## `{command}`" in page
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                for option in action.option_strings:
                    assert f"`{option}`" in page, f"{command} {option} missing from the CLI reference"


def test_the_shortcuts_page_lists_every_key_of_the_plugin():
    import ast

    hook = _hook()
    page = hook.on_page_markdown(f"{hook.SHORTCUTS_MARKER}\n", page=None)
    tree = ast.parse((ROOT / "napari_paser" / "gui" / "hub.py").read_text())
    shortcuts = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                     and any(getattr(t, "id", None) == "SHORTCUTS" for t in n.targets))
    assert len(shortcuts) >= 4
    for key, _, what in shortcuts:
        assert what.split("(")[0].strip() in page
        assert all(f"++{part.lower()}++" in page for part in key.split("-"))
