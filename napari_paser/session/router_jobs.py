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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from learners.atomic import atomic_write_text
from learners.checkpoint import save_checkpoint
from learners.errors import InputError
from learners.grid import Grid, Patching
from learners.routing.bank import PolicyBank, check_lambdas, iter_bank_training, save_bank
from learners.routing.policy import PolicyConfig, PolicyNet, save_policy
from learners.routing.ranked import TAIL, entropy_sample, from_share, patch_score, tail_level
from learners.routing.reward import PatchTable, patch_confusions
from learners.routing.router import (F0State, RoutingCost, f0_state, model_costs, policy_probabilities, predict_patches,
                                     table_summary)
from learners.routing.training import PolicyEpoch, RLConfig, RoutingData
from learners.training import IGNORE_INDEX, TrainConfig, iter_training, steps_per_epoch
from learners.unet import UNet
from napari_paser.data.labels_convention import layer_to_classes
from napari_paser.errors import PaserInputError
from napari_paser.session.jobs import (RETRAIN_CONFIG, Progress, RetrainResult, check_focus, step_progress,
                                      training_data)
from napari_paser.session.jobs import _refresh as refresh_after  # the maps and proposals after new weights
from napari_paser.session.store import load_crop

if TYPE_CHECKING:  # the job modules run on a Session; core imports them
    from napari_paser.session.core import Session

ROUTER_LAMBDAS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
"""The bank's cost weights, where the decisions live: Eq. 2 pays (1 - lambda) * (IoU gain) against
lambda * C(f_k), C the parameter share, so a larger model pays on a patch only while lambda <
gain / (gain + C). Per-patch gains on real slices are 0.5 to 5 IoU points and a 4.3M-parameter f2
next to a 17k f0 and a 1.1M f1 has C = 0.80: every member from 0.1 up routed f0 everywhere (on the SOC
benchmark the members 0.1, 0.3 and 1 were identical)."""
ROUTER_SHARES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
"""The ranked bank's shares of patches sent to the largest model (`learners.routing.ranked`). Its default
member is the held-out regions' best (`default_share`): 0 when f0 alone scores at least as well as every
share that routes there. A fixed 0.2 sent 19% of a held-out SOC slice to an f2 that its own table put 7
points below f0 (f0 0.955, the 20% share 0.903, f2 alone 0.886); where f2 pays, the 20% share scored +0.3,
-0.2 and +0.7 mIoU points against the best single model at 21-28% of f2's FLOPs on the SOC session benchmark
(BENCHMARKS.md)."""
ROUTED_RETRAIN = replace(RETRAIN_CONFIG, epochs=12)
"""Training of the routed larger models: 900 steps, three times f0's retrain (which runs after every batch of
regions, so f0 has had many). With f0's 300, f2 (4.3M parameters) scored 0.888 / 0.889 / 0.904 on the SOC
session benchmark's test slices (f0: 0.876 / 0.916 / 0.909); 600 more steps gave 0.905 / 0.920 / 0.905, and
trained this way at 16, 32 and 64 regions f2 reached 0.903 / 0.882 / 0.926 (BENCHMARKS.md): a better f2
alone, and a smaller margin for the 20% share over it."""
POLICIES = ("ranked", "network")
POOL_SLICES = 32  # slices of the session whose f0 entropy sets the ranked policies' thresholds
ROUTER_FILE = "router.json"
HALO = 1  # patches of f0 state on each side of a region in its policy window
CENTRE = (2 * HALO + 1) ** 2 // 2


@dataclass(frozen=True)
class RouterConfig:
    """What `train_router` does: the kind of policies and their bank (shares or lambdas), stage 2 settings
    of the network, whether f1..fm retrain first."""

    policy: str = "ranked"  # "ranked": f0 entropy thresholds per share (`learners.routing.ranked`); "network":
    # PaSeR's policy network per lambda, trained on the cross-fitted reward table
    shares: tuple[float, ...] = ROUTER_SHARES
    tail: float = TAIL  # ranked: a patch's score is its share of the session's `tail` most uncertain pixels (0: its
    # mean entropy; `learners.routing.ranked`)
    lambdas: tuple[float, ...] = ROUTER_LAMBDAS
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3  # 3e-3 (`paser policy`'s default) stuck on f2 everywhere in tests/test_router_session.py
    width: int = 16
    samples: int = 5
    halo: int | None = None  # context pixels around each patch for f1..fm; None: a quarter of the patch side
    cross_fit: int = 2  # folds of models that never saw the regions they score (0 or 1, or train_models=False: the
    # session's own models score them)
    train_models: bool = True
    model_config: TrainConfig | None = None  # None: ROUTED_RETRAIN
    first_bank: bool = True  # with train_models (ranked): make and install a bank with the current models first
    # (seconds), so routing works while the larger model retrains; the bank is made again when it lands
    focus: float = 0.0  # > 0: the routed models train where f0 is unsure (`session.jobs.uncertainty_focus`); 2 on
    # the SOC sessions: f2 alone 0 to 2.4 points worse, routing at 20% no better (BENCHMARKS.md)
    refresh: bool = True  # repeat the last proposal request (the routing sampler reads f1/f2); maps are f0's: current
    seed: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise PaserInputError(f"unknown router policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.samples < 1 or self.width < 1:
            raise PaserInputError("router training needs positive epochs, batch size, learning rate, width and samples")
        if not 0.0 <= self.tail < 1.0:
            raise PaserInputError(f"the tail share of pixels must lie in [0, 1) (0: mean entropy), got {self.tail}")
        check_focus(self.focus)
        if self.halo is not None and self.halo < 0:
            raise PaserInputError(f"the routing halo must be >= 0 pixels, got {self.halo}")

    def halo_for(self, patch: tuple[int, int]) -> int:
        return max(patch) // 4 if self.halo is None else int(self.halo)


@dataclass
class RegionRewards:
    """The PaSeR reward table of a set of accepted regions, and the policy's view of each."""

    region_ids: list[int]
    splits: list[str]
    table: PatchTable  # (N, 1, K, C, C): model k on region n
    windows: F0State  # (N, 3 ph, 3 pw) f0 state around each region (centre patch = the region)
    patch: tuple[int, int]
    halo: int = 0  # context f1..fm saw around each region

    def take(self, split: str) -> RegionRewards:
        keep = [i for i, s in enumerate(self.splits) if s == split]
        return RegionRewards([self.region_ids[i] for i in keep], [split] * len(keep),
                             PatchTable(self.table.confusion[keep]),
                             F0State(self.windows.prediction[keep], self.windows.entropy[keep],
                                     self.windows.n_classes, self.windows.samples), self.patch, self.halo)

    def routing_data(self, costs: np.ndarray) -> RoutingData:
        """Stage 2's input: each window's reward row holds the region's IoUs at its centre patch only."""
        n, k = len(self.region_ids), self.table.n_models
        ious = np.zeros((n, (2 * HALO + 1) ** 2, k), np.float32)
        ious[:, CENTRE] = np.nan_to_num(self.table.iou[:, 0])
        mask = np.zeros(ious.shape[:2], bool)
        mask[:, CENTRE] = True
        return RoutingData(self.windows, torch.from_numpy(ious), torch.as_tensor(costs, dtype=torch.float32),
                           torch.from_numpy(mask))


@dataclass
class RouterResult:
    cancelled: bool
    bank: PolicyBank = field(default_factory=PolicyBank)
    summary: dict = field(default_factory=dict)
    retrain: RetrainResult | None = None
    retrain_cancelled: bool = False  # the larger model's retraining was cancelled after the first bank was made


def routed_larger(roles: Sequence[str], policy: str) -> list[str]:
    """The larger models a bank of `policy` routes to, so the ones `train_router` retrains: a ranked bank
    sends patches only to the largest (`learners.routing.ranked.from_share`), the network to any."""
    larger = [r for r in roles if r != "f0"]
    return larger[-1:] if policy == "ranked" else larger


def router_models(session: Session) -> list[str]:
    """The roles routed between: f0 and the larger models the session holds, in order."""
    roles = [r for r in ("f0", "f1", "f2") if r in session.models]
    if "f0" not in roles or len(roles) < 2:
        raise PaserInputError("training a router needs f0 and a larger model: tick f1 and f2 and press 'New models' "
                              "in the Session step (new_models({'f1': 'medium', 'f2': 'wide'})), or load a run folder "
                              "with f0.pt, f1.pt, f2.pt")
    return roles


def region_labels(session: Session, rec) -> np.ndarray:
    """Class indices of an accepted region's crop, IGNORE_INDEX where unpainted."""
    classes, mask = layer_to_classes(load_crop(session.folder, rec.region_id, rec.seq), n_classes=session.n_classes)
    return np.where(mask, classes, IGNORE_INDEX).astype(np.uint8)


def _pad(a: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Reflect padding, edge replication where the array is too small to reflect (as `Grid.extract`)."""
    if not any(p for pair in pad for p in pair):
        return a
    small = any(p >= s for pair, s in zip(pad, a.shape) for p in pair)
    return np.pad(a, pad, mode="edge" if small else "reflect")


def region_rewards(session: Session, roles: Sequence[str], samples: int = 5,
                   progress: Callable[[int, int], None] | None = None, halo: int = 0,
                   scorers: Sequence[tuple[list, set[int]]] = ()) -> RegionRewards:
    """Every model's confusion on every accepted region, and each region's policy window (see the module doc).

    `scorers`: (models f0..fm, region ids) pairs whose models score those regions instead of the
    session's (cross-fitting, `cross_fit_models`); the policy windows always show the session's f0."""
    models = [session.models[r] for r in roles]
    ph, pw = session.pool.size
    by_slice: dict[int, list] = {}
    for rec in session.state.accepted:
        by_slice.setdefault(rec.z, []).append(rec)
    ids, splits, confs, preds, ents = [], [], [], [], []
    for i, (z, recs) in enumerate(sorted(by_slice.items())):
        image = session.image_slice(z)
        state = session.f0_state(z, samples, image)
        grid = Grid(image.shape, (ph, pw), halo)
        full_h, full_w = grid.padded_shape()
        edge = ((0, full_h - image.shape[0]), (0, full_w - image.shape[1]))
        around = ((HALO * ph, HALO * ph), (HALO * pw, HALO * pw))  # the policy window's context patches
        pred_pad = _pad(_pad(state.prediction[0].numpy(), edge), around)
        ent_pad = _pad(_pad(state.entropy[0].numpy(), edge), around)
        patches = grid.context_patches(torch.from_numpy(image)[None, None])  # once per slice, for every scorer
        scored = _score_regions(recs, image, patches, grid, state, models, scorers, samples, z)
        for rec in recs:
            box = grid.box((rec.y0 // ph) * grid.cols + rec.x0 // pw)
            labels = region_labels(session, rec)[None]
            one = Grid((box.h, box.w), (box.h, box.w))
            confs.append(np.stack([patch_confusions(p[None], labels, one, session.n_classes)[0]
                                   for p in scored[rec.region_id]], axis=1))  # (1, K, C, C)
            r, c = box.y0 // ph, box.x0 // pw
            win = (slice(r * ph, (r + 2 * HALO + 1) * ph), slice(c * pw, (c + 2 * HALO + 1) * pw))
            preds.append(pred_pad[win])
            ents.append(ent_pad[win])
            ids.append(rec.region_id)
            splits.append(rec.split)
        if progress is not None:
            progress(i + 1, len(by_slice))
    windows = F0State(torch.from_numpy(np.stack(preds).astype(np.uint8)), torch.from_numpy(np.stack(ents)),
                      session.n_classes, samples)
    return RegionRewards(ids, splits, PatchTable(np.stack(confs)), windows, (ph, pw), halo)


def _score_regions(recs, image: np.ndarray, patches: torch.Tensor, grid: Grid, state: F0State, models: list,
                   scorers, samples: int, z: int) -> dict[int, list[np.ndarray]]:
    """{region id: [f0's prediction, f1's, ...] on the region}, each region by its scorer's models."""
    groups = [(m, ids) for m, ids in scorers] + [(models, None)]
    out: dict[int, list[np.ndarray]] = {}
    for group_models, group_ids in groups:
        mine = [r for r in recs if r.region_id not in out and (group_ids is None or r.region_id in group_ids)]
        if not mine:
            continue
        if group_models[0] is models[0]:
            f0_pred = state.prediction[0].numpy()
        else:  # a fold's f0 as PaSeR runs f0: the MC mean over the whole slice
            f0_pred = f0_state(group_models[0], torch.from_numpy(image)[None], samples, seed=z).prediction[0].numpy()
        cells = [(r.y0 // grid.cell[0]) * grid.cols + r.x0 // grid.cell[1] for r in mine]
        outputs = [predict_patches(m, patches[cells], halo=grid.halo).numpy() for m in group_models[1:]]
        for j, rec in enumerate(mine):
            box = grid.box(cells[j])
            out[rec.region_id] = [f0_pred[box.slices]] + [o[j][:box.h, :box.w] for o in outputs]
    return out


def cross_fit_models(session: Session, roles: Sequence[str], folds: int, config: TrainConfig,
                     should_stop: Callable[[], bool] | None) -> Generator[Progress, None, list | None]:
    """Models that never saw the regions they score: the accepted train regions cut into `folds`, and per
    fold each role trained from its starting point (`new_models`' choice: shipped weights or a seeded
    init) on every label but that fold's. Their scores make the router's reward table: scored by models
    trained on them, every model looks right on every training region and the policy learns nothing
    about where a larger model generalises better. None when cancelled or with too few regions."""
    from napari_paser.weights import shipped_start

    train = [r.region_id for r in session.state.accepted if r.split == "train"]
    k = min(folds, len(train))
    if k < 2:
        return []
    parts = [set(train[i::k]) for i in range(k)]
    if config.crop is None:
        config = replace(config, crop=max(session.pool.size))
    data = [training_data(session, hold_out=part) for part in parts]
    total = sum(steps_per_epoch(len(d.images), config) * config.epochs for d in data) * len(roles)
    done, result = 0, []
    for f, (part, d) in enumerate(zip(parts, data)):
        fold_models = []
        for role in roles:
            cfg = session.models[role].config
            with torch.random.fork_rng():
                torch.manual_seed(config.seed + f)
                model = shipped_start(role, cfg, config.seed)
                model = UNet(cfg) if model is None else model
            gen = iter_training(model, d.images, d.labels, None, None, config, should_stop=should_stop)
            trained, done = yield from step_progress(gen, "cross-fit", done, total,
                                                     lambda _e, role=role: f"fold {f + 1}/{k}: {role}")
            if trained.cancelled:
                return None
            fold_models.append(model.eval())
        result.append((fold_models, part))
    return result


def evaluate_regions(bank: PolicyBank, models, rewards: RegionRewards, samples: int) -> dict:
    """Each policy's routing of held-out regions: mIoU (pixels pooled), GFLOPs per patch, patch shares,
    beside the largest model on every region (the `paser policy` bank.json shape)."""
    ph, pw = rewards.patch
    patching = Patching(size=(ph, pw), halo=rewards.halo)
    rows = {}
    for lam, policy in sorted(bank.policies.items()):
        actions = policy_probabilities(policy, rewards.windows).argmax(-1)[:, CENTRE:CENTRE + 1].numpy()
        cost = RoutingCost.of(models, ph, pw, patching, samples, policy)
        rows[f"{lam:.3f}"] = table_summary(rewards.table, actions, cost.for_table(actions, True, True))
    cost = RoutingCost.of(models, ph, pw, patching, samples)
    summary = {"policies": rows}
    for k in range(len(models)):
        alone = np.full((len(rewards.region_ids), 1), k)
        summary[f"f{k}_alone"] = table_summary(rewards.table, alone, cost.for_table(alone, k == 0))
    return summary


def iter_train_router(session: Session, config: RouterConfig = RouterConfig(),
                      should_stop: Callable[[], bool] | None = None) -> Generator[Progress, None, RouterResult]:
    """Check now, then return the progress generator of `Session.train_router`."""
    roles = router_models(session)
    keys = tuple(check_bank_keys(config.shares if config.policy == "ranked" else config.lambdas, config.policy))
    train = [r for r in session.state.accepted if r.split == "train"]
    if not train:
        raise PaserInputError("no accepted training regions yet: label and accept regions first (the router "
                              "learns from them; every 5th accepted region is held out to score it)")
    return _train_router(session, roles, keys, config, should_stop)


def rethreshold(session: Session, samples: int = 5, should_stop: Callable[[], bool] | None = None
                ) -> Generator[Progress, None, bool]:
    """Make a stale ranked bank again for the current f0, when that is nearly free: its thresholds read the
    previous f0's entropy, so its shares drift as f0 retrains (SOC session benchmark: thresholds made at 32
    regions sent 22%, 9% and 18% of the patches up instead of 20% under the f0 of 64), and when every slice
    they read has the current f0's maps (a full refresh leaves them so) the policies-only training costs the
    scoring of the accepted regions. The same shares, patch and halo; f2 is not retrained. True when redone."""
    bank = session.bank
    if not len(bank) or bank.knob != "share" or not session.bank_stale:
        return False
    if not any(r.split == "train" for r in session.state.accepted):
        return False  # every training region was unaccepted since: the next train_router says what to do
    if not set(pool_slices(session)) <= set(session.fresh_slices()):
        return False  # the maps it would read are the previous f0's: computing them is a refresh's work
    try:
        roles = router_models(session)
    except PaserInputError:  # the larger models were dropped since: nothing to route to
        return False
    halo = next(iter(bank.policies.values())).config.halo
    config = RouterConfig(shares=tuple(bank.lambdas), train_models=False, refresh=False, samples=samples, halo=halo,
                          tail=bank_tail(session))
    result = yield from _train_router(session, roles, config.shares, config, should_stop)
    return not result.cancelled


def bank_tail(session: Session) -> float:
    """The tail the session's ranked bank was made with: 0 when its policies score patches by mean entropy,
    else router.json's (`TAIL` when that file is unreadable)."""
    if next(iter(session.bank.policies.values())).config.level is None:
        return 0.0
    try:
        return float(json.loads((session.folder / ROUTER_FILE).read_text())["tail"])
    except (OSError, ValueError, TypeError, KeyError):
        return TAIL


def check_bank_keys(keys: Sequence[float], policy: str = "network") -> list[float]:
    """Sorted distinct lambdas (network) or shares (ranked) in [0, 1]; else one line naming the fault."""
    try:
        return check_lambdas(keys)
    except InputError as exc:
        if policy == "ranked":
            raise PaserInputError(f"shares of patches must lie in [0, 1], e.g. 0,0.1,0.2,0.3; got {list(keys)}") from None
        raise PaserInputError(str(exc)) from None


def _stopped(should_stop) -> bool:
    return should_stop is not None and should_stop()


def _cancelled(retrained) -> Generator[Progress, None, RouterResult]:
    yield Progress("cancelled", 0, 1, "router training cancelled; the previous bank is kept")
    return RouterResult(True, retrain=retrained)


def _train_router(session: Session, roles, keys, config, should_stop) -> Generator[Progress, None, RouterResult]:
    started = time.time()
    retrained, first = None, None
    model_config = config.model_config or ROUTED_RETRAIN
    if config.train_models and config.first_bank and config.policy == "ranked":  # routing first, f2 after
        first = yield from _bank_now(session, roles, keys, replace(config, train_models=False, refresh=False),
                                     should_stop, started, [])
        if first is None:
            return (yield from _cancelled(None))
        yield Progress("ready", 1, 1, f"routing ready in {first.summary['seconds']:.0f} s: "
                                      f"{first.summary['verdict']}; {larger_name(roles)} retrains next")
    if config.train_models:
        gen = session.retrain(model_config, roles=routed_larger(roles, config.policy), should_stop=should_stop,
                              refresh=False, samples=config.samples, focus=config.focus)
        retrained = yield from with_eta(gen, "routing is ready: Cancel keeps it" if first is not None else "")
        if retrained.cancelled:
            if first is None:
                return RouterResult(True, retrain=retrained)
            first.retrain, first.retrain_cancelled = retrained, True
            yield Progress("done", 1, 1, f"{larger_name(roles)} retraining cancelled: routing keeps the bank made "
                                         f"with the current {larger_name(roles)}")
            return first
    if _stopped(should_stop):
        return (yield from _cancelled(retrained)) if first is None else first
    scorers = []
    if config.policy == "network" and config.cross_fit > 1 and config.train_models:  # models kept as loaded were
        # not fitted to these regions
        scorers = yield from cross_fit_models(session, roles, config.cross_fit, model_config,
                                              should_stop)
        if scorers is None:
            return (yield from _cancelled(retrained))
    result = yield from _bank_now(session, roles, keys, config, should_stop, started, scorers)
    if result is None:
        return (yield from _cancelled(retrained)) if first is None else first
    result.retrain = retrained
    if first is not None:
        result.summary["first_bank_seconds"] = first.summary["seconds"]
        atomic_write_text(session.folder / ROUTER_FILE, json.dumps(result.summary, indent=2))
    if config.refresh:
        yield from refresh_after(session, config.samples, should_stop)
    yield Progress("done", 1, 1, f"router trained: {result.summary['verdict']}")
    return result


def larger_name(roles: Sequence[str]) -> str:
    return roles[-1]


def with_eta(gen: Generator[Progress, None, RetrainResult], note: str = "") -> Generator[Progress, None, RetrainResult]:
    """A retrain's progress with the time left, from the measured pace of its steps so far."""
    t0 = time.monotonic()
    first_done = None
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if event.stage == "train" and event.total:
            if first_done is None:
                first_done, t0 = event.done, time.monotonic()  # the pace after the first step (start-up excluded)
            elif event.done > first_done:
                pace = (time.monotonic() - t0) / (event.done - first_done)
                left = pace * (event.total - event.done)
                event = replace(event, message=f"{event.message}: step {event.done}/{event.total}, "
                                               f"about {_duration(left)} left" + (f" ({note})" if note else ""))
        yield event


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _bank_now(session: Session, roles, keys, config: RouterConfig, should_stop, started: float, scorers
              ) -> Generator[Progress, None, RouterResult | None]:
    """Score the accepted regions with the session's models (or `scorers`), make the bank, choose its default
    member from the held-out table, write router.json and install the bank; None when cancelled."""
    events: list[Progress] = []
    rewards = region_rewards(session, roles, config.samples,
                             lambda done, total: events.append(Progress("score", done, total, "scoring regions")),
                             config.halo_for(session.pool.size), scorers)
    yield from events
    models = [session.models[r] for r in roles]
    make = ranked_bank if config.policy == "ranked" else network_bank
    bank, info = yield from make(session, models, rewards, keys, config, should_stop)
    if config.policy == "network":
        info["cross_fit_folds"] = len(scorers)
    if bank is None or len(bank) < len(keys) or _stopped(should_stop):
        return None
    held = rewards.take("val")
    summary = {"policy": config.policy, "knob": bank.knob, "train_regions": len(rewards.take("train").region_ids),
               "val_regions": len(held.region_ids), "patch": list(rewards.patch), "halo": rewards.halo,
               "models": roles, "lambdas": bank.lambdas, **info, "samples": config.samples,
               "retrained": list(routed_larger(roles, config.policy)) if config.train_models else []}
    if held.region_ids:
        summary.update(evaluate_regions(bank, models, held, config.samples))
        if config.policy == "network":  # a ranked bank's share is not chosen by labels (`learners.routing.ranked`)
            summary["held_out_choice"] = held_out_choice(summary)
    if bank.knob == "share":
        bank.chosen, summary["verdict"] = default_share(summary, bank.lambdas)
    else:
        summary["verdict"] = f"{len(bank)} policies at lambda {', '.join(f'{v:g}' for v in bank.lambdas)}"
    summary["default_lambda"] = bank.default_lambda
    summary["seconds"] = round(time.time() - started, 1)
    summary["bank_version"] = session.state.model_version + 1  # the version install_bank commits
    atomic_write_text(session.folder / ROUTER_FILE, json.dumps(summary, indent=2))
    install_bank(session, bank)
    yield Progress("save", 1, 1, f"saved {len(bank)} routing policies")
    return RouterResult(False, bank, summary)


def default_share(summary: dict, shares: Sequence[float]) -> tuple[float, str]:
    """The ranked bank's default member from the held-out table, and one line saying why: the share with the
    best held-out mIoU (the cheaper on a tie) when it beats f0 alone there, else the smallest share ("f0 is
    enough on this volume"); the middle share without held-out regions. No margin: on SOC lowres-varying (16
    regions) the 10% share led f0 by 0.001 on 3 held-out regions and was also 0.1 point above the 0 share on
    the test slices (BENCHMARKS.md)."""
    shares = sorted(shares)
    rows = summary.get("policies") or {}
    largest = summary["models"][-1]
    if not rows or "f0_alone" not in summary:
        middle = shares[len(shares) // 2]
        return middle, (f"no held-out regions to measure on yet: routing sends the {middle:.0%} most uncertain "
                        f"patches to {largest} (accept more regions: every 5th is held out)")
    f0 = round(summary["f0_alone"]["iou"], 4)
    big = summary.get(f"{largest}_alone", {}).get("iou")
    routed = {float(k): r for k, r in rows.items() if float(k) > 0 and r["patch_share"].get("f0", 1.0) < 1.0}
    n = summary["val_regions"]
    if not routed or all(round(r["iou"], 4) <= f0 for r in routed.values()):
        low = shares[0]
        best = max(routed, key=lambda k: (round(routed[k]["iou"], 4), -k)) if routed else None
        vs = f" vs {best:.0%} share {routed[best]['iou']:.3f}" if best is not None else ""
        alone = f", {largest} alone {big:.3f}" if big is not None else ""
        return low, (f"f0 is enough on this volume: f0 {f0:.3f}{vs}{alone} on the {n} held-out regions; routing "
                     f"sends {low:.0%} of the patches to {largest} (the share slider sends more)")
    best = max(routed, key=lambda k: (round(routed[k]["iou"], 4), -k))
    return best, (f"routing sends the {best:.0%} most uncertain patches to {largest}: {routed[best]['iou']:.3f} vs "
                  f"f0 {f0:.3f} on the {n} held-out regions")


def network_bank(session: Session, models, rewards: RegionRewards, lambdas, config: RouterConfig, should_stop
                 ) -> Generator[Progress, None, tuple[PolicyBank | None, dict]]:
    """PaSeR's policy network per lambda, trained by stage 2 on the training regions' reward table."""
    data = rewards.take("train").routing_data(model_costs(models))
    rl = RLConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                  gradient="expected")

    def make_policy() -> PolicyNet:
        torch.manual_seed(config.seed)
        return PolicyNet(PolicyConfig(n_classes=session.n_classes, n_models=len(models), width=config.width,
                                      patch=rewards.patch, halo=rewards.halo))

    total = len(lambdas) * config.epochs
    gen = iter_bank_training(data, lambdas, make_policy, rl, should_stop)
    done = 0
    while True:
        try:
            epoch: PolicyEpoch = next(gen)
        except StopIteration as stop:
            return stop.value, {"epochs": config.epochs}
        done += 1
        yield Progress("policy", done, total, f"lambda {epoch.lam:.2f}: epoch {epoch.epoch + 1}/{config.epochs}")


def pool_slices(session: Session, n: int = POOL_SLICES) -> list[int]:
    """Up to `n` slices evenly spread through the session's volume (every slice when it has fewer)."""
    return sorted({int(z) for z in np.linspace(0, session.n_slices - 1, min(n, session.n_slices)).round()})


def ranked_bank(session: Session, models, rewards: RegionRewards, shares, config: RouterConfig, should_stop
                ) -> Generator[Progress, None, tuple[PolicyBank | None, dict]]:
    """One ranked policy per share: the threshold is that share's quantile of the patch scores over
    `pool_slices` of the session (their maps, shared with the viewer, computed where missing); with a tail,
    a first pass over the same slices sets the entropy level of their `tail` most uncertain pixels."""
    zs = pool_slices(session)
    level, steps = None, len(zs) * (2 if config.tail else 1)
    if config.tail:
        sample = []
        for i, z in enumerate(zs):
            if _stopped(should_stop):
                return None, {}
            sample.append(entropy_sample(session.f0_state(z, config.samples).policy_input()))
            yield Progress("thresholds", i + 1, steps, f"f0 entropy of slice {z}")
        level = tail_level(np.concatenate(sample), config.tail)
    cfg = PolicyConfig(n_classes=session.n_classes, n_models=len(models), patch=rewards.patch, halo=rewards.halo,
                       kind="ranked", level=level)
    scores = []
    for i, z in enumerate(zs):
        if _stopped(should_stop):
            return None, {}
        scores.append(patch_score(session.f0_state(z, config.samples).policy_input(), cfg).numpy().ravel())
        yield Progress("thresholds", steps - len(zs) + i + 1, steps, f"f0 patch scores of slice {z}")
    values = np.concatenate(scores)
    bank = PolicyBank({share: from_share(cfg, values, share) for share in shares})
    thresholds = {f"{k:.3f}": float(p.thresholds[-1]) for k, p in bank.policies.items()}
    return bank, {"pool_slices": len(zs), "pool_patches": int(values.size), "thresholds": thresholds,
                  "tail": config.tail, "entropy_level": level}


def held_out_choice(summary: dict) -> float | None:
    """What the held-out regions recommend: the bank member with the best held-out mIoU (the cheaper on
    a tie), or None when f0 alone scores higher than every member (then route f0 alone: a policy
    that looks right on the cross-fitted table can lose on regions no model saw; on SOC slices every
    member sent every patch to f1, 3 points below f0 on the held-out regions and 1.8 on the test
    slices). None too without held-out regions (nothing to recommend from)."""
    held = summary.get("policies") or {}
    if not held:
        return None
    lam = max(held, key=lambda k: (round(held[k]["iou"], 4), -held[k]["gflops_per_image"]))
    f0 = summary.get("f0_alone")
    return None if f0 is not None and round(f0["iou"], 4) > round(held[lam]["iou"], 4) else float(lam)


def format_router(summary: dict) -> str:
    """A terminal table of router.json: each lambda's held-out mIoU, GFLOPs per patch and shares (as `paser policy`)."""
    from napari_paser.jobs.policy import format_bank

    head = (f"{summary['train_regions']} training regions, {summary['val_regions']} held out, "
            f"{summary['patch'][0]}x{summary['patch'][1]} px patches, models {', '.join(summary['models'])}")
    if not summary.get("policies"):
        return head + "\nno held-out regions to score the policies on: accept more regions (every 5th is held out)"
    largest = f"{summary['models'][-1]}_alone"
    table = {"policies": summary["policies"], "default_lambda": summary["default_lambda"], largest: summary[largest]}
    rows = format_bank(table, key=summary.get("knob", "lambda"), score="held mIoU", cost="GF/patch")
    alone = [f"{k[:2]:>7}{summary[k]['iou']:>10.3f}" for k in summary if k.endswith("_alone") and k != largest]
    if summary.get("knob") == "share":  # the middle models: not routed to, not retrained
        return "\n".join([head, rows, alone[0]] + _ranked_notes(summary))
    if "held_out_choice" not in summary:  # router.json of an older version
        return "\n".join([head, rows] + alone)
    choice = summary["held_out_choice"]
    advice = (f"held-out regions recommend lambda {choice:g}" if choice is not None else
              "f0 alone beats every policy on the held-out regions: route f0 alone (--model f0), or label more "
              "regions across the volume and train the router again")
    return "\n".join([head, rows] + alone + [advice])


def _ranked_notes(summary: dict) -> list[str]:
    """What a ranked bank does and why its default share is what it is (the held-out table's verdict; they lie
    near the labels: they guide, and the share control stays the person's)."""
    largest = summary["models"][-1]
    verdict = summary.get("verdict") or (f"routing sends the {summary['default_lambda']:.0%} most uncertain "
                                         f"patches to {largest}")
    return [verdict + f" (f0's entropy on {summary['pool_slices']} slices ranks the patches);",
            f"the held-out rows ({summary['val_regions']} regions near your labels) guide: label regions across the "
            "volume and compare"]


def install_bank(session: Session, bank: PolicyBank) -> None:
    """Make `bank` the session's routing policies in one commit: older bank members and a loaded policy.pt
    (trained for other models) are dropped."""
    from napari_paser.session.models import BANK_ROLE, POLICY, bank_role

    new = {bank_role(lam): policy for lam, policy in bank.policies.items()}
    old = [r for r in session.state.models if (r.startswith(BANK_ROLE) or r == POLICY) and r not in new]
    session.install_models(new, source="train_router", drop=old)
    session.bank.chosen = bank.chosen


def export_run(session: Session, out: str | Path, overwrite: bool = False) -> Path:
    """Write the session's models and policies as a run folder `paser route` and `paser segment` take:
    f0.pt, f1.pt, f2.pt, policies/lambda-<L>.pt, policy.pt (the bank's default member, the one routing
    without a lambda uses; else the loaded policy) and run.json (where it came from)."""
    out = Path(out)
    if "f0" not in session.models:
        raise PaserInputError("the session has no models to export: load or train them first")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PaserInputError(f"{out} is not empty: choose a new folder, or pass overwrite=True (--overwrite)")
    meta = {"class_names": list(session.classes.names), "source": f"session {session.folder.resolve()}",
            "session_version": session.state.model_version}
    roles = [r for r in ("f0", "f1", "f2") if r in session.models]
    for role in roles:
        save_checkpoint(out / f"{role}.pt", session.models[role], {**meta, "role": role})
    policy, lam = session.policy, None
    if len(session.bank):
        save_bank(out, session.bank, meta)
        lam, policy = session.bank.nearest(session.bank.default_lambda)
    if policy is not None:
        save_policy(out / "policy.pt", policy, {**meta, "lambda": lam})
    router = session.folder / ROUTER_FILE
    info = {**meta, "models": roles, "lambdas": session.bank.lambdas, "policy_lambda": lam,
            "router": json.loads(router.read_text()) if router.is_file() else None}
    atomic_write_text(out / "run.json", json.dumps(info, indent=2))
    return out
