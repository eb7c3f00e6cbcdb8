"""The session router's public names in one module, for the GUI, the CLI and the benchmarks: the code lives
by job in `napari_paser.session.router` (`config`: settings, constants and the result; `rewards`: the
reward table and cross-fitting; `banks`: ranked and network banks, the default member, installing;
`train`: the training entry point and the rethreshold after a new f0; `text`: router.json for a terminal;
`export`: the session as a run folder; `router`: the `Router`, the part of a session they make up)."""

from __future__ import annotations

from napari_paser.session.router.banks import (check_bank_keys, default_share, held_out_choice, install_bank,
                                               network_bank, pool_slices, ranked_bank)
from napari_paser.session.router.config import (BANK_ROLE, POLICIES, POLICY, POOL_SLICES, ROUTED_RETRAIN,
                                                ROUTER_FILE, ROUTER_LAMBDAS, ROUTER_SHARES, RouterConfig,
                                                RouterResult, bank_role, routed_larger)
from napari_paser.session.router.export import export_run
from napari_paser.session.router.rewards import (CENTRE, HALO, RegionRewards, cross_fit_models, evaluate_regions,
                                                 region_labels, region_rewards, router_models)
from napari_paser.session.router.router import Router
from napari_paser.session.router.text import format_router
from napari_paser.session.router.train import bank_tail, iter_train_router, larger_name, rethreshold, with_eta

__all__ = [
    "BANK_ROLE", "CENTRE", "HALO", "POLICIES", "POLICY", "POOL_SLICES", "ROUTED_RETRAIN", "ROUTER_FILE",
    "ROUTER_LAMBDAS", "ROUTER_SHARES", "RegionRewards", "RouterConfig", "RouterResult", "bank_role", "bank_tail",
    "check_bank_keys", "cross_fit_models", "default_share", "evaluate_regions", "export_run", "format_router",
    "held_out_choice", "install_bank", "iter_train_router", "larger_name", "network_bank", "pool_slices",
    "ranked_bank", "region_labels", "region_rewards", "rethreshold", "routed_larger", "Router", "router_models",
    "with_eta",
]
