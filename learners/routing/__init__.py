"""PaSeR: the routing policy, rewards, routed inference, stage 2/3 training, the policy bank and
the cascade baselines."""

from learners.grid import GRID  # noqa: F401 (the routing patch grid, re-exported)
