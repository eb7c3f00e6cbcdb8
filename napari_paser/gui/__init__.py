"""The napari plugin: widgets, reader/writer, sample data, the demo walkthrough.

The only part of the project that imports Qt or napari; everything here is a thin layer over
the headless `napari_paser.session.Session`."""
