"""PaSeR: the routing policy, rewards, routed inference, stage 2/3 training, the policy bank and
the cascade baselines."""

GRID = (4, 4)
"""The routing patch grid (rows, cols) of the PaSeR paper: the default of every routing function,
of the policy's config and of the patch-wise training of f1..fm."""
