"""Region grids and region samplers for active learning (numpy, networkx, scikit-learn).

May import `learners`; never imports Qt or napari.
"""
