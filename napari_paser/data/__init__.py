"""Data formats and generators: dataset folders, synthetic microstructures, degradation,
the labeled-set export and the napari labels convention."""
