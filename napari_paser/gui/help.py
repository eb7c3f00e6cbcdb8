"""The dock's Help button: open the user guide's page for the step on screen in the browser.

The guide is the docs site built from `docs/` (`make docs`); each step of the dock has its page
under `gui/`. `PASER_DOCS_URL` points the button at another copy of the site (a local
`mkdocs serve`, a mirror); without it, a checkout where `make docs` built the site opens that copy,
so the button works offline and before the site is published.
"""

from __future__ import annotations

import os
from pathlib import Path

DOCS_URL = "https://napari-paser.readthedocs.io/en/latest"
"""Where the published user guide lives (the project's `Documentation` URL in pyproject.toml)."""
GUIDE_PAGES = {"Session": "gui/session/", "Maps": "gui/maps/", "Label": "gui/label/", "Train": "gui/train/",
               "Export": "gui/export/", "Volume": "gui/volume/"}
"""The guide page of each step of the dock (the tab titles of `widgets.STEPS`)."""
LOCAL_SITE = Path(__file__).resolve().parents[2] / "site"
"""Where `make docs` builds the site in a checkout (absent in an installed wheel)."""


def help_url(step: str) -> str:
    """The guide's page for `step` (a dock tab title); the guide's first page for any other name."""
    page = GUIDE_PAGES.get(step, "getting-started/")
    base = os.environ.get("PASER_DOCS_URL")
    if base is None and (LOCAL_SITE / page / "index.html").is_file():
        return (LOCAL_SITE / page / "index.html").as_uri()
    return f"{(base or DOCS_URL).rstrip('/')}/{page}"


def open_help(step: str) -> str:
    """Open `help_url(step)` in the desktop's browser (Qt's QDesktopServices); the URL opened."""
    from qtpy.QtCore import QUrl
    from qtpy.QtGui import QDesktopServices

    url = help_url(step)
    QDesktopServices.openUrl(QUrl(url))
    return url
