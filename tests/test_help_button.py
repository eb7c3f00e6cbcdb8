"""The dock's Help button opens the guide's page for the step on screen, and that page exists in docs/."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("napari")

from napari_paser.gui import help as help_module  # noqa: E402
from napari_paser.gui.widgets import STEPS, PaserWidget  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_step_has_a_guide_page_in_docs():
    for title, *_ in STEPS:
        page = help_module.GUIDE_PAGES[title]
        assert (DOCS / (page.rstrip("/") + ".md")).is_file(), f"no docs page for the {title} step: {page}"


def test_help_opens_the_page_of_the_current_step(make_napari_viewer, monkeypatch):
    from qtpy.QtGui import QDesktopServices

    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toString()) or True)
    monkeypatch.setenv("PASER_DOCS_URL", "https://docs.example/paser/")
    widget = PaserWidget(make_napari_viewer())
    widget.show_step("Label")
    widget.help_button.click()
    widget.show_step("Volume")
    widget.help_button.click()
    assert opened == ["https://docs.example/paser/gui/label/", "https://docs.example/paser/gui/volume/"]


def test_an_unknown_step_falls_back_to_getting_started(monkeypatch, tmp_path):
    monkeypatch.delenv("PASER_DOCS_URL", raising=False)
    monkeypatch.setattr(help_module, "LOCAL_SITE", tmp_path / "no-site")
    assert help_module.help_url("nope") == f"{help_module.DOCS_URL}/getting-started/"


def test_a_locally_built_site_is_opened_when_no_url_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("PASER_DOCS_URL", raising=False)
    page = tmp_path / "site" / "gui" / "train" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html></html>")
    monkeypatch.setattr(help_module, "LOCAL_SITE", tmp_path / "site")
    assert help_module.help_url("Train") == page.as_uri()
    assert help_module.help_url("Label") == f"{help_module.DOCS_URL}/gui/label/"  # not built: the published page
