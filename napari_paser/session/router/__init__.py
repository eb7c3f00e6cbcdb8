"""Train the session's own PaSeR router from its accepted regions, and export the session as a run.

Two kinds of bank (`RouterConfig.policy`):
- "ranked" (the default): per share of patches in `ROUTER_SHARES`, the rule "a patch whose f0 uncertainty
  score (its share of the session's `TAIL` most uncertain pixels; `tail=0`: its mean entropy) is among the
  top share of the session's patches goes to the largest model"
  (`learners.routing.ranked`: why labels do not set the share). Its thresholds come from f0's maps of
  `POOL_SLICES` slices of the session; nothing is trained on the reward table, which only scores
  the members on the held-out regions. Bank keys are shares (`PolicyBank.knob` == "share").
- "network": PaSeR's policy network per lambda, trained on the reward table (below).

An accepted region is a labeled routing patch (routing patches and labeling regions are one
grid of the session's region size), so the accepted regions give the PaSeR reward table
directly: every model's IoU on every accepted region, scored the way routed inference would
produce it (f0: the crop of its MC-dropout mean over the whole slice; f1..fm: one eval pass
on the region's patch with a halo of context (`RouterConfig.halo`, a quarter of the patch
side by default; reflect-padded at the slice border as `learners.grid.Grid.context_patches`
pads it); unpainted pixels of a confirmed partial region are ignored). Without the halo the
larger models see each patch cut from its neighbourhood and lose where they should win (a
1M-parameter UNet: 0.887 test mIoU on whole SOC slices, 0.827 on 32 px patches, 0.879 with a
16 px halo).

The policy reads f0's state, and at inference it sees a whole slice. For training, each region
brings a window of 3 x 3 patches of its slice's f0 state centred on it (the slice padded to
whole patches, then by one patch of reflection on every side), and only the centre patch earns
a reward (`RoutingData.mask`): the policy's receptive field (15 px) is far inside one patch of
context, so the centre's routing is the one whole-slice inference gives (up to the padding at
the slice border). Policies train with the exact expected gradient of stage 2
(`learners.routing.training`), one per lambda (`learners.routing.bank`), on the "train"
regions; the "val" regions report each policy's mIoU, GFLOPs per patch and patch shares beside
the largest model alone, as `paser policy` does (router.json in the session folder).

For the network, the reward table of the *training* regions is cross-fitted (`RouterConfig.cross_fit` folds,
`cross_fit_models`): each fold is scored by f0..fm trained from their starting points on every
label but that fold's, because the session's own models were just trained on those regions and
would all look right there (measured on SOC: every policy kept f0 on 96-100% of patches while f2
alone was 3.4 points better on the test slices). The held-out regions are scored by the
session's models (no model trained on them).

The routed larger models first retrain on the accepted regions through `Session.retrain` (their
current weights are the starting point: load a run's pretrained f1/f2 to start from them), for
`ROUTED_RETRAIN`'s steps: f2 for a ranked bank (the only larger model it routes to), f1..fm for the
network. A cancel during retraining keeps the previous weights; a cancel at any point keeps the
previous bank: the new bank replaces it in one commit only when every policy finished.

With f2 retraining (the default), the bank is first made with the current f2 and installed (`RouterConfig.
first_bank`: thresholds from f0's maps and the held-out table, seconds to a minute), so routing works while f2
trains (minutes; the progress says the time left from the measured pace); then it is made again with the new
f2 and its default share chosen again. A cancel during f2's retraining keeps that first bank.

A ranked bank's thresholds are f0's entropy quantiles, so they drift when f0 retrains; a refresh that
leaves the slices they read with the new f0's maps makes the bank again at once (`rethreshold`).

The names the GUI, the CLI and the benchmarks use are imported here; the code lives by job: `config`
(settings, constants and the result), `rewards` (the reward table and cross-fitting), `banks` (ranked and
network banks, the default member, installing), `train` (the training entry point and the rethreshold after a
new f0), `text` (router.json for a terminal), `export` (the session as a run folder), `router` (the `Router`,
the part of a session they make up).
"""

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
