"""mkdocs hook: pages generated from the code at build time, so they never disagree with it.

- `<!-- paser-cli-reference -->` (docs/cli.md) becomes one section per `paser` command (`paser
  segment`, `paser session train-router`, ...): its help line, usage and an options table, read from
  `napari_paser.cli.build_parser()`.
- `<!-- paser-shortcuts -->` (docs/gui/shortcuts.md) becomes the table of the plugin's keys, read
  from `SHORTCUTS` in napari_paser/gui/hub.py by parsing the file (no Qt needed to build the docs).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

MARKER = "<!-- paser-cli-reference -->"
SHORTCUTS_MARKER = "<!-- paser-shortcuts -->"
HUB = Path(__file__).resolve().parents[1] / "napari_paser" / "gui" / "hub.py"


def _subcommands(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(full command, help line, parser) of every leaf command under `parser`, depth first."""
    found = []
    for action in parser._actions:  # argparse keeps its actions here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                nested = _subcommands(sub, f"{prefix} {name}")
                found += nested or [(f"{prefix} {name}", helps.get(name, ""), sub)]
    return found


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| option | help | default |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            names += " {" + ", ".join(map(str, action.choices)) + "}"
        if action.required:
            names += " (required)"
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) or isinstance(action, argparse._StoreTrueAction) \
            else f"`{default}`"
        rows.append(f"| {names} | {_cell(action.help or '')} | {shown} |")
    return rows


def reference() -> str:
    """The markdown of every `paser` command."""
    from napari_paser.cli import build_parser

    parser = build_parser()
    out = []
    for command, help_line, sub in _subcommands(parser, "paser"):
        usage = sub.format_usage().strip().removeprefix("usage: ")
        out += [f"## `{command}`", "", _cell(help_line) + ".", "", "```text", usage, "```", "", *_options(sub), ""]
    return "\n".join(out)


def shortcuts() -> str:
    """The markdown table of `SHORTCUTS` (key, action, what it does) in gui/hub.py."""
    tree = ast.parse(HUB.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SHORTCUTS" for t in node.targets):
            rows = ast.literal_eval(node.value)
            keys = lambda k: "+".join(f"++{part.lower()}++" for part in k.split("-"))  # noqa: E731
            return "\n".join(["| key | does |", "|---|---|", *(f"| {keys(k)} | {_cell(what)} |" for k, _, what in rows)])
    raise RuntimeError(f"no SHORTCUTS in {HUB}: the shortcuts page cannot be built")


def on_page_markdown(markdown: str, page, **_) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, reference())
    if SHORTCUTS_MARKER in markdown:
        markdown = markdown.replace(SHORTCUTS_MARKER, shortcuts())
    return markdown
