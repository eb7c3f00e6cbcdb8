"""The headless labeling session the widgets drive: state, store, background jobs, maps,
sampling and routing. `Session` is the entry point."""

from napari_paser.session.core import Session

__all__ = ["Session"]
