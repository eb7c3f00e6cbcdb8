"""PaSeR training, stages 2 and 3 of Algorithm 1: policy-gradient training of the policy, then joint
fine-tuning of f1..fm with the policy (optionally raising lambda until the policy drifts a set
total variation distance from where it started, appendix B3).

The segmentation models are frozen in stage 2, so every model's per-patch IoU on the RL split
is computed once (`learners.routing.router.build_patch_table`) and REINFORCE epochs only run the small
policy. Stage 3 fine-tunes f1..fm on the patches routed to them, rescoring them each epoch.

Stage 2 follows, by default, the exact gradient of the expected reward (`expected_step`): the
patch table holds every model's IoU on every patch, so the expectation over routings that
REINFORCE samples can be summed in closed form. Sampled REINFORCE, as in Algorithm 1, stays
available (`gradient="reinforce"`) and is what the TVD mode of stage 3 uses; on the real SOC
data it settled on one model for every patch where the expected gradient routes per patch.

Choices of the REINFORCE path beyond the letter of Algorithm 1, all switchable: credit is per
patch by default (each patch's log-probability is weighted by its own reward term rather than the image sum;
the reward is additive and patch actions are independent given the state, so the gradient's
expectation is the same with less variance, and it is what the authors' released code does),
and a leave-one-out mean-reward baseline is subtracted. With `rollouts` > 1 each state gets
several sampled routings per step and the baseline of a patch is the mean reward of the other
routings of that same patch (REINFORCE leave-one-out, Kool et al. 2019): a per-patch baseline
that removes the spread between easy and hard patches, which a batch-mean baseline leaves in
the gradient. `flips` trains on randomly mirrored states (and mirrored patch tables), so a
policy fitted on a dozen slices does not key on where in the field of view a patch lies. As
in Algorithm 1 the gradient uses the policy's own log-probability also for actions drawn by
the uniform exploration of Eq. 4 (see `reinforce_step`).
"""


from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from learners.routing import GRID
from learners.errors import ConfigError
from learners.generators import drain
from learners.grid import Grid, Patching, crop_halo
from learners.routing.policy import ALPHA_FINETUNE, ALPHA_RL, PolicyNet, linear_schedule, mix_uniform
from learners.routing.reward import (PatchTable, action_rewards, confusion_iou, patch_confusions, rewards,
                            total_variation)
from learners.training import class_weights
from learners.routing.router import (F0State, as_stack, build_patch_table, check_policy, make_grid, model_costs,
                             policy_probabilities, predict_patches)


# ----------------------------------------------------------------------------- REINFORCE

CREDITS = ("patch", "image")
GRADIENTS = ("expected", "reinforce")


@dataclass(frozen=True)
class RLConfig:
    """Stage 2 hyper-parameters (appendix B2: 200 epochs, batch 32, Adam 1e-4, alpha 0.7 -> 0.95)."""

    epochs: int = 200
    batch_size: int = 32
    lr: float = 1e-4
    lam: float = 0.5
    alpha: tuple[float, float] = ALPHA_RL
    baseline: bool = True
    credit: str = "patch"
    rollouts: int = 1  # sampled routings per state and step (> 1: per-patch leave-one-out baseline)
    flips: bool = False  # augment with random mirror images of the state and its patch table
    gradient: str = "expected"  # or "reinforce" (sampled, Algorithm 1); see `expected_step`
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.rollouts < 1:
            raise ConfigError("epochs, batch_size, rollouts and lr must be positive")
        if self.gradient not in GRADIENTS:
            raise ConfigError(f"gradient must be one of {GRADIENTS}, got {self.gradient!r}")
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lambda must lie in [0, 1], got {self.lam}")
        if self.credit not in CREDITS:
            raise ConfigError(f"credit must be one of {CREDITS}, got {self.credit!r}")


@dataclass
class StepStats:
    loss: float
    mean_reward: float  # mean image reward R of the sampled actions
    share: np.ndarray  # (K,) fraction of sampled actions per model


def _leave_one_out(r: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Baseline for each sample: the mean reward of the others (independent of its own action).

    dim=None pools every element; a dim pools only along it (the rollouts of one patch).
    """
    if dim is None:
        return _leave_one_out(r.reshape(-1), 0).reshape(r.shape)
    n = r.shape[dim]
    if n < 2:
        return torch.zeros_like(r)
    return (r.sum(dim, keepdim=True) - r) / (n - 1)


def reinforce_step(
    policy: PolicyNet,
    optimizer: torch.optim.Optimizer,
    states: torch.Tensor,
    ious: torch.Tensor,
    costs: torch.Tensor,
    lam: float,
    alpha: float,
    baseline: bool = True,
    credit: str = "patch",
    generator: torch.Generator | None = None,
    rollouts: int = 1,
) -> StepStats:
    """One policy-gradient update on a batch: sample actions from the Eq. 4 mixture, score, step.

    The gradient uses the policy's own log-probability of each action, also for actions the
    uniform exploration drew (Algorithm 1, line 27). That keeps a saturated policy movable:
    with the mixture's log-probability the gradient of a near-zero-probability action
    vanishes, and raising lambda after a lambda = 0 stage (the TVD mode) moved nothing.
    `rollouts` routings are drawn per state (one policy pass); with more than one, each
    sample's baseline is the mean reward of the other rollouts of the same patch (or image,
    with image credit), otherwise the mean of the rest of the batch.
    """
    policy.train()
    log_probs = policy(states).log_softmax(-1)  # (B, P, K)
    mixed = mix_uniform(log_probs.detach().exp(), alpha)
    k = mixed.shape[-1]
    drawn = torch.multinomial(mixed.reshape(-1, k), rollouts, replacement=rollouts > 1, generator=generator)
    actions = drawn.T.reshape((rollouts,) + mixed.shape[:-1])  # (R, B, P)
    logp = log_probs.expand(rollouts, *log_probs.shape).gather(-1, actions[..., None])[..., 0]
    r = rewards(actions, ious.expand(rollouts, *ious.shape), costs, lam)  # (R, B, P)
    dim = 0 if rollouts > 1 else None
    if credit == "patch":
        adv = r - (_leave_one_out(r, dim) if baseline else 0.0)
        loss = -(adv * logp).sum(-1).mean()
    else:
        ri = r.sum(-1)
        adv = ri - (_leave_one_out(ri, dim) if baseline else 0.0)
        loss = -(adv * logp.sum(-1)).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    share = np.bincount(actions.reshape(-1).numpy(), minlength=k) / actions.numel()
    return StepStats(float(loss.detach()), float(r.sum(-1).mean()), share)


def expected_step(
    policy: PolicyNet,
    optimizer: torch.optim.Optimizer,
    states: torch.Tensor,
    ious: torch.Tensor,
    costs: torch.Tensor,
    lam: float,
    mask: torch.Tensor | None = None,
) -> StepStats:
    """One update along the exact gradient of the expected reward E_{a ~ pi}[R] of a batch.

    `mask` (B, P) marks the patches whose IoUs are known (labeled); the others add no reward.

    REINFORCE estimates this gradient from sampled routings. In stages 2 and 3 the table holds
    every model's IoU on every patch, so the expectation sum_p sum_a pi(a | s)_p r_p(a) can be
    taken in closed form (the "all-action" or expected policy gradient): no sampling noise, no
    baseline needed, no explore/exploit mixing. It matters in practice: the sampled gradient of
    Algorithm 1, which weights the uniformly explored actions by the policy's own
    log-probability, is biased towards whichever model the policy already prefers, and on the
    SOC shading run it ended on one model for every patch where the expected gradient learns a
    per-patch routing.
    """
    policy.train()
    probs = policy(states).softmax(-1)  # (B, P, K)
    table = action_rewards(ious, costs, lam)
    if mask is not None:
        table = table * mask[..., None]
    expected = (probs * table).sum(-1).sum(-1)  # (B,) expected image reward
    loss = -expected.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    flat = probs.detach().reshape(-1, probs.shape[-1])
    share = (flat[mask.reshape(-1)] if mask is not None else flat).mean(0).numpy()
    return StepStats(float(loss.detach()), float(expected.detach().mean()), share)


def random_flip(states: torch.Tensor, ious: torch.Tensor, grid: tuple[int, int],
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror a batch left-right and/or up-down (a coin each), its (B, P, K) patch table with it.

    Patches are numbered row-major on the grid, so mirroring the image mirrors the table's
    (rows, cols) view the same way.
    """
    rows, cols = grid
    table = ious.reshape(ious.shape[0], rows, cols, ious.shape[-1])
    for image_dim, table_dim in ((-1, 2), (-2, 1)):
        if torch.rand((), generator=generator) < 0.5:
            states, table = states.flip(image_dim), table.flip(table_dim)
    return states, table.reshape(ious.shape)


@dataclass
class PolicyEpoch:
    """One epoch of policy training: schedule values, sampled reward, greedy (argmax) outcome."""

    epoch: int
    alpha: float
    lam: float
    mean_reward: float  # of the sampled (explore/exploit) actions
    greedy_reward: float  # mean image R of the argmax actions on the whole split
    share: np.ndarray  # (K,) argmax patch share per model
    tvd: float | None = None  # from the reference policy (fine-tuning)


@dataclass
class RoutingData:
    """A split prepared for policy training: f0's state and the per-patch IoU of every model."""

    state: F0State
    ious: torch.Tensor  # (N, P, K) float32
    costs: torch.Tensor  # (K,)
    mask: torch.Tensor | None = None  # (N, P) bool: patches with labels (None: all); the rest earn nothing

    @classmethod
    def from_table(cls, state: F0State, table: PatchTable, costs: np.ndarray,
                   mask: np.ndarray | None = None) -> RoutingData:
        return cls(state, torch.as_tensor(np.nan_to_num(table.iou), dtype=torch.float32),
                   torch.as_tensor(costs, dtype=torch.float32),
                   None if mask is None else torch.as_tensor(np.asarray(mask), dtype=torch.bool))

    def masked(self, r: torch.Tensor) -> torch.Tensor:
        """Per-patch rewards (..., N, P) with unlabeled patches zeroed."""
        return r if self.mask is None else r * self.mask


def prepare_routing_data(models: Sequence[nn.Module], images: np.ndarray, labels: np.ndarray,
                         grid: Patching | tuple[int, int] = GRID, samples: int = 5, seed: int = 0) -> RoutingData:
    """Run every (frozen) model once over a split (patches of `grid`: a count, or a `Patching` with
    its halo): what stage 2 trains on."""
    table, state = build_patch_table(models, images, labels, grid, samples, seed)
    return RoutingData.from_table(state, table, model_costs(models))


def greedy_outcome(policy: PolicyNet, data: RoutingData, lam: float) -> tuple[float, np.ndarray, torch.Tensor]:
    """Mean image reward and patch shares of the policy's argmax actions; also its distribution."""
    probs = policy_probabilities(policy, data.state)
    a = probs.argmax(-1)
    r = data.masked(rewards(a, data.ious, data.costs, lam)).sum(-1).mean()
    chosen = a if data.mask is None else a[data.mask]
    share = np.bincount(chosen.reshape(-1).numpy(), minlength=probs.shape[-1]) / max(chosen.numel(), 1)
    return float(r), share, probs


def _policy_epoch(policy, opt, data, lam, alpha, cfg, gen, after_step=None) -> tuple[float, bool]:
    """One pass of REINFORCE steps over `data` in shuffled batches; returns (mean reward, stopped)."""
    order = torch.randperm(len(data.state), generator=gen)
    total, n, stopped = 0.0, 0, False
    for i in range(0, len(order), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        states, ious = data.state.policy_input(idx), data.ious[idx]
        mask = None if data.mask is None else data.mask[idx]
        if mask is not None and (cfg.flips or cfg.gradient != "expected"):
            raise ConfigError("partly labeled routing data (a mask) trains with the expected gradient and no flips")
        if cfg.flips:
            g = policy.config.patching.grid(*states.shape[-2:])
            states, ious = random_flip(states, ious, (g.rows, g.cols), gen)
        if cfg.gradient == "expected":
            stats = expected_step(policy, opt, states, ious, data.costs, lam, mask)
        else:
            stats = reinforce_step(policy, opt, states, ious, data.costs, lam, alpha, cfg.baseline, cfg.credit,
                                   gen, cfg.rollouts)
        total, n = total + stats.mean_reward * len(idx), n + len(idx)
        if after_step is not None and after_step():
            stopped = True
            break
    return total / max(n, 1), stopped


def iter_policy_training(
    policy: PolicyNet, data: RoutingData, config: RLConfig = RLConfig(),
    should_stop: Callable[[], bool] | None = None,
) -> Generator[PolicyEpoch, None, list[PolicyEpoch]]:
    """Stage 2: REINFORCE on a prepared split; yields each epoch, returns the history."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(policy.parameters(), lr=config.lr)
    history: list[PolicyEpoch] = []
    for epoch in range(config.epochs):
        if should_stop is not None and should_stop():
            break
        alpha = linear_schedule(*config.alpha, epoch, config.epochs)
        mean_r, _ = _policy_epoch(policy, opt, data, config.lam, alpha, config, gen)
        greedy, share, _ = greedy_outcome(policy, data, config.lam)
        history.append(PolicyEpoch(epoch, alpha, config.lam, mean_r, greedy, share))
        yield history[-1]
    policy.eval()
    return history


def train_policy(policy: PolicyNet, data: RoutingData, config: RLConfig = RLConfig()) -> list[PolicyEpoch]:
    """`iter_policy_training` run to the end."""
    return drain(iter_policy_training(policy, data, config))


# ----------------------------------------------------------------------------- stage 3


@dataclass(frozen=True)
class FinetuneConfig:
    """Stage 3: f1..fm on their routed patches, jointly with the policy (alpha 0.95 -> 1.0).

    With `lam_end` lambda moves linearly from `lam` to `lam_end` over the epochs; with
    `tvd_threshold` fine-tuning stops as soon as the policy's TVD from the policy it started
    from reaches the threshold (see `tvd_finetune_config`).
    """

    epochs: int = 200
    batch_size: int = 32  # images per policy step
    patch_batch_size: int = 32  # patches per segmentation-model step
    lr: float = 1e-4  # policy
    model_lr: float = 1e-4
    lam: float = 0.5
    lam_end: float | None = None
    tvd_threshold: float | None = None
    alpha: tuple[float, float] = ALPHA_FINETUNE
    baseline: bool = True
    credit: str = "patch"
    rollouts: int = 1
    flips: bool = False
    gradient: str = "reinforce"  # the TVD mode needs the sampled gradient (see `reinforce_step`)
    train_models: bool = True
    class_weighted: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.epochs < 1 or self.batch_size < 1 or self.patch_batch_size < 1 or self.rollouts < 1
                or self.lr <= 0 or self.model_lr <= 0):
            raise ConfigError("epochs, batch sizes, rollouts and learning rates must be positive")
        for lam in (self.lam, self.lam if self.lam_end is None else self.lam_end):
            if not 0.0 <= lam <= 1.0:
                raise ConfigError(f"lambda must lie in [0, 1], got {lam}")
        if self.tvd_threshold is not None and not 0.0 < self.tvd_threshold <= 1.0:
            raise ConfigError(f"the TVD threshold must lie in (0, 1], got {self.tvd_threshold}")
        if self.credit not in CREDITS:
            raise ConfigError(f"credit must be one of {CREDITS}, got {self.credit!r}")
        if self.gradient not in GRADIENTS:
            raise ConfigError(f"gradient must be one of {GRADIENTS}, got {self.gradient!r}")

    def lam_at(self, epoch: int) -> float:
        return self.lam if self.lam_end is None else linear_schedule(self.lam, self.lam_end, epoch, self.epochs)


def tvd_finetune_config(threshold: float, epochs: int = 200, lam_end: float = 1.0, **kwargs) -> FinetuneConfig:
    """Appendix B3: start from a lambda = 0 policy, raise lambda linearly until TVD >= threshold."""
    return FinetuneConfig(epochs=epochs, lam=0.0, lam_end=lam_end, tvd_threshold=threshold, **kwargs)


@dataclass
class FinetuneResult:
    history: list[PolicyEpoch] = field(default_factory=list)
    reached_threshold: bool = False
    tvd: float = 0.0  # final TVD from the starting policy
    lam: float = math.nan  # lambda in force when fine-tuning ended
    patches_trained: dict[str, int] = field(default_factory=dict)  # routed patches seen per model


class _PatchSet:
    """The fine-tuning split cut into patches once: inputs and labels for f1..fm."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, grid: Grid) -> None:
        x = as_stack(images)
        self.grid = grid
        self.x = grid.context_patches(x)  # f_k trains and is scored with the context it routes with
        self.y = grid.extract(torch.as_tensor(np.asarray(labels), dtype=torch.float32)[:, None])[:, 0].round().long()
        self.labels = np.asarray(labels)

    def rescore(self, model: nn.Module, n_classes: int) -> np.ndarray:
        """(N, P) patch IoUs of `model` (padding excluded)."""
        pred = self.grid.paste(predict_patches(model, self.x, halo=self.grid.halo)[:, None])[:, 0].numpy()
        return confusion_iou(patch_confusions(pred, self.labels, self.grid, n_classes))


def _fit_patches(model, opt, x, y, weight, batch_size, gen, halo: int = 0) -> None:
    """One pass of cross-entropy steps of `model` over the given patches (loss on the cells, not their halo)."""
    model.train()
    order = torch.randperm(len(x), generator=gen)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        loss = F.cross_entropy(crop_halo(model(x[idx]), halo), y[idx], weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def iter_finetune(
    models: Sequence[nn.Module], policy: PolicyNet, images: np.ndarray, labels: np.ndarray,
    config: FinetuneConfig = FinetuneConfig(), samples: int = 5, seed: int = 0,
    data: RoutingData | None = None, should_stop: Callable[[], bool] | None = None,
) -> Generator[PolicyEpoch, None, FinetuneResult]:
    """Stage 3 on the fine-tuning split; updates f1..fm and the policy in place (f0 stays fixed).

    Each epoch: sample routing actions from the alpha-mixed policy, train each f_k (k >= 1)
    for one pass over the patches routed to it, rescore it on every patch, then one REINFORCE
    epoch of the policy against the new scores. A `data` passed in (from
    `prepare_routing_data` on these images) saves the first scoring and is rescored in place.
    """
    grid = check_policy(models, policy, None)
    g = make_grid(np.shape(images), grid)
    if data is None:
        data = prepare_routing_data(models, images, labels, grid, samples, seed)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(policy.parameters(), lr=config.lr)
    n_classes = data.state.n_classes
    patch_set = _PatchSet(images, labels, g) if config.train_models else None
    model_opts = {k: torch.optim.Adam(models[k].parameters(), lr=config.model_lr) for k in range(1, len(models))}
    weight = None
    if config.train_models and config.class_weighted:
        weight = class_weights(np.asarray(labels).astype(np.int64), n_classes)
    reference = policy_probabilities(policy, data.state)
    result = FinetuneResult(patches_trained={f"f{k}": 0 for k in range(1, len(models))})

    def tvd_now() -> float:
        return total_variation(policy_probabilities(policy, data.state), reference)

    for epoch in range(config.epochs):
        if should_stop is not None and should_stop():
            break
        alpha, lam = linear_schedule(*config.alpha, epoch, config.epochs), config.lam_at(epoch)
        result.lam = lam
        if patch_set is not None:
            _finetune_models(models, policy, data, patch_set, model_opts, weight, alpha, config, gen, result)
        check = None
        if config.tvd_threshold is not None:
            check = lambda: tvd_now() >= config.tvd_threshold  # noqa: E731
        mean_r, stopped = _policy_epoch(policy, opt, data, lam, alpha, config, gen, check)
        greedy, share, probs = greedy_outcome(policy, data, lam)
        result.tvd = total_variation(probs, reference)
        result.history.append(PolicyEpoch(epoch, alpha, lam, mean_r, greedy, share, result.tvd))
        yield result.history[-1]
        if stopped:
            result.reached_threshold = True
            break
    policy.eval()
    return result


def _finetune_models(models, policy, data, patch_set, model_opts, weight, alpha, config, gen, result) -> None:
    """Train f1..fm on the patches the (alpha-mixed) policy routes to them, then rescore them."""
    probs = mix_uniform(policy_probabilities(policy, data.state), alpha)
    actions = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=gen)[:, 0]
    for k in range(1, len(models)):
        idx = (actions == k).nonzero()[:, 0]
        if len(idx):
            _fit_patches(models[k], model_opts[k], patch_set.x[idx], patch_set.y[idx], weight,
                         config.patch_batch_size, gen, patch_set.grid.halo)
            result.patches_trained[f"f{k}"] += len(idx)
            scores = patch_set.rescore(models[k], data.state.n_classes)
            data.ious[:, :, k] = torch.as_tensor(np.nan_to_num(scores), dtype=torch.float32)


def finetune(models: Sequence[nn.Module], policy: PolicyNet, images: np.ndarray, labels: np.ndarray,
             config: FinetuneConfig = FinetuneConfig(), samples: int = 5, seed: int = 0,
             data: RoutingData | None = None) -> FinetuneResult:
    """`iter_finetune` run to the end."""
    return drain(iter_finetune(models, policy, images, labels, config, samples, seed, data))
