"""Torch models and their training: UNets, MC-dropout uncertainty, FLOP counting, metrics,
checkpoints. Never imports Qt, napari, `sampling` or `napari_paser`."""
