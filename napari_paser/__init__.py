"""napari-paser: parsimonious segmentation (PaSeR) and active learning for low-resolution
microtomography, as a napari plugin, a Python library and the `paser` command line tool.

Submodules are imported lazily by their users so that `import napari_paser` stays cheap (the
CLI and napari's plugin discovery both import it).
"""

__version__ = "0.1.0"
