"""Simulated labeling: the active-learning loop with a person who labels proposed regions exactly.

The labels of a proposed region are revealed from the ground truth, so a labeled dataset can
replay the loop a real session runs: start from a small random seed set of regions; at each
step compute what the sampler reads with the current model (`sampling.registry.needs_of`:
f0's maps by `uncertainty_maps`, region embeddings, as a session computes them), build the
sampler from the same registry a session uses, propose k regions, add them, retrain
with a warm start for a fixed number of optimiser steps on the labeled regions only (their
slices, every other pixel `IGNORE_INDEX`, which the loss ignores), and score mIoU on a held-out
split. `SegmentationGame` is the same loop as a RALIS `ALGame` (reward = mIoU gain on a reward
split), so `train_dqn` can train the query agent on labeled data and save it; the DQN sampler
then loads that checkpoint.

The models are tiny (f0-sized) UNets so whole curves fit in minutes on a CPU.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sampling.dqn import DQNAgent, DQNConfig
from learners.metrics import confusion_matrix, iou_from_confusion
from learners.inference import predict_classes
from learners.training import IGNORE_INDEX, TrainConfig, evaluate_miou, train
from learners.uncertainty import uncertainty_maps
from learners.unet import UNetConfig, build_unet
from napari_paser.errors import PaserInputError
from napari_paser.session.effort import Effort, correction_effort
from sampling.base import Sampler
from sampling.dqn import FeatureSpec, choose_state_set, play_episode
from sampling.registry import MAPS, gather_needs, needs_of, region_embedder
from sampling.registry import make_sampler as registry_sampler
from sampling.regions import RegionPool



@dataclass(frozen=True)
class SimConfig:
    """Settings of the simulated loop (and of the DQN game, which saves them with the agent)."""

    region: int = 32  # region edge in pixels
    train_steps: int = 30  # optimiser steps per retraining (warm start)
    seed_steps: int = 60  # optimiser steps on the seed set
    batch_size: int = 4
    lr: float = 2e-3  # the seed set's training (from scratch)
    # every later (warm-start) retraining: a fresh Adam at the seed rate knocks the model off the
    # minimum it is in (measured on SOC: the mIoU curves jumped by +-0.1 between budgets, spread
    # over seeds up to 0.19; at lr / 4 they rise steadily, spread <= 0.04 from 8 regions on)
    warm_lr: float = 5e-4
    samples: int = 5  # MC-dropout passes
    base: int = 8  # f0: UNet width 8, depth 2
    depth: int = 2
    dropout: float = 0.2
    pool_size: int = 10  # DQN: candidates per pool (N)
    state_regions: int = 8  # DQN state set, drawn from the seed set

    def __post_init__(self) -> None:
        if min(self.region, self.train_steps, self.seed_steps, self.batch_size, self.samples, self.pool_size,
               self.state_regions) < 1 or self.lr <= 0 or self.warm_lr <= 0:
            raise PaserInputError("simulation sizes, steps, samples and lr must be positive")

    def unet(self, n_classes: int) -> UNetConfig:
        return UNetConfig(1, n_classes, self.base, self.depth, self.dropout)


@dataclass
class Split:
    """Images in [0, 1] (N, H, W) float32 and their full labels (N, H, W) uint8."""

    images: np.ndarray
    labels: np.ndarray


def load_splits(folder: str | Path, groups: Sequence[Sequence[str]], crop: int | None = None) -> tuple[list[Split], int]:
    """One `Split` per group of split names (e.g. [("pretrain", "finetune"), ("test",)]) and the
    number of classes. Normalised by the robust range of the whole stack; `crop` keeps the
    central crop x crop pixels of every slice (to size CPU runs)."""
    from napari_paser.data.dataset import normalise, read_dataset, robust_range

    ds = read_dataset(folder)
    lo, hi = robust_range(ds.images)
    out = []
    for names in groups:
        missing = [n for n in names if n not in ds.split]
        if missing:
            raise PaserInputError(f"{folder} has no split(s) {missing}; it has {sorted(ds.split)}")
        idx = sorted(i for n in names for i in ds.split[n])
        images, labels = normalise(ds.images[idx], lo, hi), ds.labels[idx]
        out.append(Split(*_crop(images, labels, crop)))
    return out, ds.n_classes


def _crop(images: np.ndarray, labels: np.ndarray, crop: int | None) -> tuple[np.ndarray, np.ndarray]:
    if crop is None:
        return images, labels
    h, w = images.shape[1:]
    if crop > min(h, w) or crop < 8:
        raise PaserInputError(f"--crop {crop} must lie in 8..{min(h, w)} for slices of {h}x{w}")
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    return images[:, y0 : y0 + crop, x0 : x0 + crop], labels[:, y0 : y0 + crop, x0 : x0 + crop]


def correct_region(suggested: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, Effort]:
    """A simulated person shown the model's guess of a region who fixes every wrong pixel: the labels they
    accept (the truth, layer convention: class k = k + 1) and the effort (pixels changed, and the
    connected groups of them: about the strokes a person makes)."""
    final = np.asarray(truth).astype(np.uint8) + 1
    return final, correction_effort(suggested, final)


def labeled_mask(pool: RegionPool) -> np.ndarray:
    """(Z, H, W) True on the pixels of the pool's labeled regions."""
    lab = pool.labeled_ids
    return np.stack([np.isin(pool.id_map(z), lab) for z in range(pool.shape[0])])


def training_set(pool: RegionPool, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The slices holding a labeled region, labels IGNORE_INDEX outside the labeled regions."""
    mask = labeled_mask(pool)
    keep = mask.any((1, 2))
    partial = np.where(mask, labels, IGNORE_INDEX).astype(np.uint8)
    return images[keep], partial[keep]


def labeled_class_counts(pool: RegionPool, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Labeled pixels of each class."""
    return np.bincount(labels[labeled_mask(pool)].astype(np.int64), minlength=n_classes)[:n_classes]


def mc_maps(model: torch.nn.Module, images: np.ndarray, samples: int, seed: int) -> dict:
    """f0's maps of every slice, (Z, H, W) each: `uncertainty_maps` with seed `seed + z`, as a session
    computes them slice by slice."""
    maps = [uncertainty_maps(model, image, samples=samples, seed=seed + z) for z, image in enumerate(images)]
    return {name: np.stack([getattr(m, name) for m in maps]) for name in MAPS}


class Learner:
    """A tiny UNet, the region pool of the images it may be taught on, and the labeled set."""

    def __init__(self, data: Split, n_classes: int, config: SimConfig, seed: int = 0) -> None:
        self.data, self.n_classes, self.config, self.seed = data, n_classes, config, seed
        self.pool = RegionPool(data.images.shape, config.region)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model = build_unet(config.unet(n_classes))
        self.fits = 0
        self.state_ids: np.ndarray | None = None

    def clone(self) -> Learner:
        """An independent copy (model, labeled set) sharing the read-only data."""
        other = copy.copy(self)
        other.model = copy.deepcopy(self.model)
        other.pool = RegionPool.from_dict(self.pool.to_dict())
        return other

    def fit(self, steps: int) -> None:
        """Warm-start training for exactly `steps` optimiser steps on the labeled regions.

        The labeled slices are repeated (whole shuffled passes, then a random part of one) to
        steps * batch_size samples so one epoch is the whole run: no early stopping, no
        restored 'best' epoch, the same cost at every budget.
        """
        x, y = training_set(self.pool, self.data.images, self.data.labels)
        if not len(x):
            raise PaserInputError("nothing is labeled yet; label at least one region before training")
        rng = np.random.default_rng([self.seed, self.fits])
        n = steps * self.config.batch_size
        tile = np.concatenate([rng.permutation(len(x)) for _ in range(-(-n // len(x)))])[:n]
        lr = self.config.lr if self.fits == 0 else self.config.warm_lr
        cfg = TrainConfig(epochs=1, batch_size=self.config.batch_size, lr=lr, patience=2,
                          seed=self.seed * 10_007 + self.fits)
        train(self.model, x[tile], y[tile], config=cfg, progress=False)
        self.fits += 1

    def miou(self, split: Split) -> float:
        return evaluate_miou(self.model, split.images, split.labels, self.n_classes)

    def class_iou(self, split: Split) -> np.ndarray:
        """(C,) IoU of each class on the split (NaN for a class neither predicted nor present);
        its nanmean is `miou`."""
        pred = predict_classes(self.model, split.images)
        return iou_from_confusion(confusion_matrix(pred, split.labels, self.n_classes))

    def needs(self, want: frozenset[str]) -> dict:
        """The inputs a sampler reads (`sampling.registry.needs_of`), for the current model; only
        those in `want` are computed. Labels are the ground truth: the DQN reads them only inside
        labeled regions, where a person would have painted them."""
        return gather_needs(
            want, self.pool,
            maps=lambda: mc_maps(self.model, self.data.images, self.config.samples, self.seed * 7919 + self.fits),
            embeddings=lambda: region_embedder(self.model, self.pool, self.data.images.__getitem__),
            labels=lambda: self.data.labels, state_ids=lambda: self.state_ids,
        )


def start(data: Split, n_classes: int, config: SimConfig, n_seed: int, seed: int = 0) -> Learner:
    """A learner trained on a random seed set of `n_seed` regions; its state set (for the DQN)
    is the class-representative part of that seed set, so it costs no extra labels."""
    learner = Learner(data, n_classes, config, seed)
    if not 1 <= n_seed < len(learner.pool):
        raise PaserInputError(f"the seed set ({n_seed} regions) must lie in 1..{len(learner.pool) - 1}")
    rng = np.random.default_rng([seed, 0])
    seed_ids = rng.choice(len(learner.pool), n_seed, replace=False)
    learner.pool.mark_labeled(seed_ids)
    size = min(config.state_regions, n_seed)
    learner.state_ids = choose_state_set(learner.pool, data.labels, n_classes, size, rng, ids=np.sort(seed_ids))
    learner.fit(config.seed_steps)
    return learner


SHIPPED = "dqn:shipped"
"""The bench's name for the DQN sampler with the agent the package ships (plain "dqn" uses --dqn)."""


def sim_sampler(name: str, config: SimConfig, agent_path: str | Path | None = None) -> Sampler:
    """A sampler from the registry (`sampling.registry`, as a session builds it). "dqn" loads
    `agent_path` (saved by `train_dqn`), or the shipped agent without one; "dqn:shipped" always
    the shipped agent. The agents' features do not depend on region size or class count."""
    if name == SHIPPED:
        return registry_sampler("dqn", pool_size=config.pool_size)
    return registry_sampler(name, context={"dqn_checkpoint": agent_path, "pool_size": config.pool_size})


@dataclass
class Trace:
    """One simulated labeling run: a value per budget (the first budget is the seed set)."""

    budgets: list[int]
    miou: list[float]
    class_counts: list[list[int]]  # labeled pixels per class at each budget
    class_iou: list[list[float]] = field(default_factory=list)  # test IoU per class at each budget (NaN: absent)
    chosen: list[list[int]] = field(default_factory=list)  # region ids added at each step
    propose_seconds: list[float] = field(default_factory=list)  # needs + select, per step
    train_seconds: list[float] = field(default_factory=list)


def simulate(learner: Learner, sampler: Sampler, name: str, test: Split, budgets: Sequence[int],
             rng: np.random.Generator, progress=None) -> Trace:
    """Label up to each budget in turn (one proposal step per budget), scoring mIoU on `test`.

    `learner` must already hold the seed set (budgets[0] regions); it is changed in place.
    """
    pool = learner.pool
    if len(pool.labeled_ids) != budgets[0]:
        raise PaserInputError(f"the learner holds {len(pool.labeled_ids)} labeled regions, the first budget is {budgets[0]}")
    counts = lambda: labeled_class_counts(pool, learner.data.labels, learner.n_classes).tolist()  # noqa: E731
    sampler.check_classes(learner.n_classes)
    ious = [learner.class_iou(test)]
    trace = Trace([budgets[0]], [float(np.nanmean(ious[0]))], [counts()], [np.round(ious[0], 4).tolist()])
    for budget in budgets[1:]:
        t0 = time.perf_counter()
        needs = learner.needs(needs_of(sampler))
        sel = sampler.select(pool.candidates(), budget - len(pool.labeled_ids), rng, **needs)
        t1 = time.perf_counter()
        pool.mark_labeled(sel.ids)
        learner.fit(learner.config.train_steps)
        trace.train_seconds.append(time.perf_counter() - t1)
        trace.propose_seconds.append(t1 - t0)
        trace.chosen.append(sel.ids.tolist())
        trace.budgets.append(budget)
        ious = learner.class_iou(test)
        trace.miou.append(float(np.nanmean(ious)))
        trace.class_iou.append(np.round(ious, 4).tolist())
        trace.class_counts.append(counts())
        if progress is not None:
            progress.update(1)
            progress.set_postfix(sampler=name, budget=budget, mIoU=f"{trace.miou[-1]:.3f}", refresh=False)
    return trace


def check_budgets(budgets: Sequence[int], pool_size: int) -> list[int]:
    """Strictly increasing budgets within 1..pool_size - 1 (the first one is the seed set)."""
    b = [int(v) for v in budgets]
    if len(b) < 2 or b[0] < 1 or any(y <= x for x, y in zip(b, b[1:])) or b[-1] >= pool_size:
        raise PaserInputError(
            f"budgets {b}: need at least two strictly increasing region counts, the first (the seed set) "
            f">= 1 and the last below the pool's {pool_size} regions"
        )
    return b


# --------------------------------------------------------------------------- the DQN game


class SegmentationGame:
    """RALIS's active-learning game on labeled data (`sampling.dqn.ALGame`).

    Every episode restarts from the same seed-trained model and seed set (RALIS's theta_0);
    `label` retrains it for `train_steps` steps and returns the reward-split mIoU in percent
    points (Q-targets of order 1 learn better than of order 0.01). The first reward is
    measured against the reset mIoU, cached because the model is evaluated deterministically.
    """

    def __init__(self, data: Split, reward: Split, n_classes: int, config: SimConfig, n_seed: int, seed: int = 0) -> None:
        self.reward_split = reward
        self._start = start(data, n_classes, config, n_seed, seed)
        self._start_miou = 100 * self._start.miou(reward)
        self.learner = self._start.clone()

    def reset(self, rng: np.random.Generator) -> float:
        self.learner = self._start.clone()
        return self._start_miou

    def needs(self) -> dict:
        return {**self.learner.needs(needs_of("dqn")), "n_classes": self.learner.n_classes}

    def label(self, ids: np.ndarray) -> float:
        self.learner.pool.mark_labeled(ids)
        self.learner.fit(self.learner.config.train_steps)
        return 100 * self.learner.miou(self.reward_split)


@dataclass(frozen=True)
class DQNTrainConfig:
    """Training of the query agent: `teacher_episodes` played by the teacher (BALD's best of each
    pool, epsilon 0.3 exploration), `imitation_steps` of pre-training on the teacher's rankings
    of every pool seen, then `episodes` of epsilon-greedy double DQN with the imitation term,
    then `eval_episodes` greedy episodes of the imitation-only, the DQN and the teacher policy
    on the reward split (same game seeds): the better learned policy is saved, and the teacher
    itself (policy "teacher") if neither beats it, so the shipped policy is never worse than
    its teacher on the reward split's measure."""

    episodes: int = 10
    steps: int = 5
    k: int = 8
    n_seed: int = 8
    eps_start: float = 0.5
    eps_end: float = 0.05
    updates_per_episode: int = 16  # extra replay updates after each episode (play_episode does one per step)
    grid: int = 4
    bins: int = 8
    width: int = 64
    seed: int = 0
    teacher_episodes: int = 4
    imitation_steps: int = 200
    imitation_weight: float = 1.0
    eval_episodes: int = 4


def epsilon(episode: int, cfg: DQNTrainConfig) -> float:
    """Linear decay from eps_start to eps_end over the first half of the episodes, then flat."""
    half = max(1, cfg.episodes // 2)
    return cfg.eps_end + (cfg.eps_start - cfg.eps_end) * max(0.0, 1 - episode / half)


def evaluate_policy(agent: DQNAgent, game: SegmentationGame, spec: FeatureSpec, cfg: DQNTrainConfig, sim: SimConfig,
                    policy: str) -> list[float]:
    """Total mIoU gain (points) of greedy episodes, game seeds 10_000 + e: every policy sees the same pools."""
    return [round(sum(play_episode(agent, game, spec, cfg.steps, cfg.k, np.random.default_rng(10_000 + e), 0.0,
                                   sim.pool_size, learn=False, policy=policy, record=False)), 4)
            for e in range(cfg.eval_episodes)]


def train_dqn(data: Split, reward: Split, n_classes: int, out: str | Path, sim: SimConfig = SimConfig(),
              cfg: DQNTrainConfig = DQNTrainConfig(), meta: dict | None = None, progress: bool = True) -> dict:
    """Imitate the teacher, improve with double DQN, keep the best of {imitation, DQN, teacher} on the
    reward split, and save the agent to `out`.

    Returns the saved meta: feature spec, simulation settings, rewards per episode, the
    evaluation gains of each policy, the chosen policy and the wall time of each phase.
    """
    from tqdm.auto import tqdm

    if cfg.steps * cfg.k + cfg.n_seed >= data.images.shape[0] * math.ceil(data.images.shape[1] / sim.region) * math.ceil(
        data.images.shape[2] / sim.region
    ):
        raise PaserInputError("the training split has too few regions for n_seed + steps * k; lower them")
    t0 = time.perf_counter()
    game = SegmentationGame(data, reward, n_classes, sim, cfg.n_seed, cfg.seed)
    spec = FeatureSpec(cfg.grid, cfg.bins, state_regions=sim.state_regions)
    agent = DQNAgent(spec.net_config(cfg.width), DQNConfig(imitation_weight=cfg.imitation_weight), seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    history, seconds = [], {}
    total = cfg.teacher_episodes + cfg.episodes + 3 * cfg.eval_episodes
    bar = tqdm(total=total, desc="train-dqn", unit="episode", disable=not progress, dynamic_ncols=True)
    for _ in range(cfg.teacher_episodes):  # demonstrations (and transitions) from the teacher
        rewards = play_episode(agent, game, spec, cfg.steps, cfg.k, rng, 0.3, sim.pool_size, learn=False,
                               policy="teacher")
        history.append([round(r, 4) for r in rewards])
        bar.update(1)
    seconds["teacher_episodes"] = round(time.perf_counter() - t0, 1)
    t1 = time.perf_counter()
    if cfg.imitation_steps and agent.demos:
        agent.imitate(cfg.imitation_steps, rng)
    imitation = agent.net.state_dict()
    imitation = {k: v.clone() for k, v in imitation.items()}
    seconds["imitation"] = round(time.perf_counter() - t1, 1)
    t1 = time.perf_counter()
    for e in range(cfg.episodes):
        rewards = play_episode(agent, game, spec, cfg.steps, cfg.k, rng, epsilon(e, cfg), sim.pool_size)
        for _ in range(cfg.updates_per_episode):
            agent.learn(rng)
        history.append([round(r, 4) for r in rewards])
        bar.update(1)
        bar.set_postfix(eps=f"{epsilon(e, cfg):.2f}", gain=f"{sum(rewards):.2f}")
    seconds["dqn_episodes"] = round(time.perf_counter() - t1, 1)
    t1 = time.perf_counter()
    dqn = {k: v.clone() for k, v in agent.net.state_dict().items()}
    gains = {"dqn": evaluate_policy(agent, game, spec, cfg, sim, "agent")}
    bar.update(cfg.eval_episodes)
    agent.net.load_state_dict(imitation)
    gains["imitation"] = evaluate_policy(agent, game, spec, cfg, sim, "agent")
    bar.update(cfg.eval_episodes)
    gains["teacher"] = evaluate_policy(agent, game, spec, cfg, sim, "teacher")
    bar.update(cfg.eval_episodes)
    bar.close()
    mean = {name: float(np.mean(g)) if g else 0.0 for name, g in gains.items()}
    chosen = "dqn" if mean["dqn"] >= mean["imitation"] else "imitation"
    if mean[chosen] < mean["teacher"]:
        chosen = "teacher"
    agent.net.load_state_dict(dqn if chosen == "dqn" else imitation)
    seconds["evaluation"] = round(time.perf_counter() - t1, 1)
    seconds["total"] = round(time.perf_counter() - t0, 1)
    info = {"features": spec.to_dict(), "sim": asdict(sim), "train": asdict(cfg), "reward_unit": "mIoU percent points",
            "start_miou": round(game._start_miou, 4), "episode_rewards": history, "eval_gains": gains,
            "chosen": chosen, "policy": "teacher" if chosen == "teacher" else "agent", "seconds": seconds,
            "n_classes_trained": n_classes, **(meta or {})}
    agent.save(out, meta=info)
    return info
