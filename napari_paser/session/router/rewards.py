"""The PaSeR reward table of the session's accepted regions: every model's confusion on every region, each
region's window of f0 state, cross-fitted models that never saw the regions they score, and the bank's
routing of the held-out regions (see `napari_paser.session.router`)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from learners.generators import drain
from learners.grid import Grid, Patching
from learners.routing.bank import PolicyBank
from learners.routing.reward import PatchTable, patch_confusions
from learners.routing.router import F0State, RoutingCost, f0_state, policy_probabilities, predict_patches, table_summary
from learners.routing.training import RoutingData
from learners.training import IGNORE_INDEX, TrainConfig, iter_training, steps_per_epoch
from learners.unet import UNet
from napari_paser.data.labels_convention import layer_to_classes
from napari_paser.errors import PaserInputError
from napari_paser.session.progress import Progress, step_progress
from napari_paser.session.router.config import RouterParts
from napari_paser.session.store import load_crop
from napari_paser.session.training import training_data


HALO = 1  # patches of f0 state on each side of a region in its policy window
CENTRE = (2 * HALO + 1) ** 2 // 2


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


def router_models(parts: RouterParts) -> list[str]:
    """The roles routed between: f0 and the larger models the session holds, in order."""
    roles = [r for r in ("f0", "f1", "f2") if r in parts.model_set.models]
    if "f0" not in roles or len(roles) < 2:
        raise PaserInputError("training a router needs f0 and a larger model: tick f1 and f2 and press 'New models' "
                              "in the Session step (new_models({'f1': 'medium', 'f2': 'wide'})), or load a run folder "
                              "with f0.pt, f1.pt, f2.pt")
    return roles


def region_labels(parts: RouterParts, rec) -> np.ndarray:
    """Class indices of an accepted region's crop, IGNORE_INDEX where unpainted."""
    classes, mask = layer_to_classes(load_crop(parts.store.folder, rec.region_id, rec.seq), n_classes=parts.store.n_classes)
    return np.where(mask, classes, IGNORE_INDEX).astype(np.uint8)


def _pad(a: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Reflect padding, edge replication where the array is too small to reflect (as `Grid.extract`)."""
    if not any(p for pair in pad for p in pair):
        return a
    small = any(p >= s for pair, s in zip(pad, a.shape) for p in pair)
    return np.pad(a, pad, mode="edge" if small else "reflect")


def region_rewards(parts: RouterParts, roles: Sequence[str], samples: int = 5,
                   progress: Callable[[int, int], None] | None = None, halo: int = 0,
                   scorers: Sequence[tuple[list, set[int]]] = ()) -> RegionRewards:
    """Every model's confusion on every accepted region, and each region's policy window (see the module doc);
    `progress(done, total)` after each slice. `iter_region_rewards` is the same as a cancellable job."""
    return drain(iter_region_rewards(parts, roles, samples, halo, scorers),
                 None if progress is None else lambda event: progress(event.done, event.total))


def iter_region_rewards(parts: RouterParts, roles: Sequence[str], samples: int = 5, halo: int = 0,
                        scorers: Sequence[tuple[list, set[int]]] = (), should_stop: Callable[[], bool] | None = None
                        ) -> Generator[Progress, None, RegionRewards | None]:
    """`region_rewards` slice by slice: a Progress after each slice of accepted regions, None when `should_stop`
    says so between slices.

    `scorers`: (models f0..fm, region ids) pairs whose models score those regions instead of the
    session's (cross-fitting, `cross_fit_models`); the policy windows always show the session's f0."""
    models = [parts.model_set.models[r] for r in roles]
    ph, pw = parts.store.pool.size
    by_slice: dict[int, list] = {}
    for rec in parts.store.state.accepted:
        by_slice.setdefault(rec.z, []).append(rec)
    ids, splits, confs, preds, ents = [], [], [], [], []
    for i, (z, recs) in enumerate(sorted(by_slice.items())):
        image = parts.store.image_slice(z)
        state = parts.maps_cache.f0_state(z, samples, image)
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
            labels = region_labels(parts, rec)[None]
            one = Grid((box.h, box.w), (box.h, box.w))
            confs.append(np.stack([patch_confusions(p[None], labels, one, parts.store.n_classes)[0]
                                   for p in scored[rec.region_id]], axis=1))  # (1, K, C, C)
            r, c = box.y0 // ph, box.x0 // pw
            win = (slice(r * ph, (r + 2 * HALO + 1) * ph), slice(c * pw, (c + 2 * HALO + 1) * pw))
            preds.append(pred_pad[win])
            ents.append(ent_pad[win])
            ids.append(rec.region_id)
            splits.append(rec.split)
        yield Progress("score", i + 1, len(by_slice), f"scoring the accepted regions: slice {i + 1} of {len(by_slice)}",
                       z=z)
        if should_stop is not None and should_stop():
            return None
    windows = F0State(torch.from_numpy(np.stack(preds).astype(np.uint8)), torch.from_numpy(np.stack(ents)),
                      parts.store.n_classes, samples)
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


def cross_fit_models(parts: RouterParts, roles: Sequence[str], folds: int, config: TrainConfig,
                     should_stop: Callable[[], bool] | None) -> Generator[Progress, None, list | None]:
    """Models that never saw the regions they score: the accepted train regions cut into `folds`, and per
    fold each role trained from its starting point (`new_models`' choice: shipped weights or a seeded
    init) on every label but that fold's. Their scores make the router's reward table: scored by models
    trained on them, every model looks right on every training region and the policy learns nothing
    about where a larger model generalises better. None when cancelled or with too few regions."""
    from napari_paser.weights import shipped_start

    train = [r.region_id for r in parts.store.state.accepted if r.split == "train"]
    k = min(folds, len(train))
    if k < 2:
        return []
    held = [set(train[i::k]) for i in range(k)]
    if config.crop is None:
        config = replace(config, crop=max(parts.store.pool.size))
    data = [training_data(parts.store, hold_out=part) for part in held]
    total = sum(steps_per_epoch(len(d.images), config) * config.epochs for d in data) * len(roles)
    done, result = 0, []
    for f, (part, d) in enumerate(zip(held, data)):
        fold_models = []
        for role in roles:
            cfg = parts.model_set.models[role].config
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
