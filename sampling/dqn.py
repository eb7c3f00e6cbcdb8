"""RALIS (Casanova et al. 2020): the DQN region sampler in one place, read top to bottom.

- The environment: an active-learning game (`ALGame`: label regions, train briefly, measure mIoU on
  a reward split) observed through class-count-free region features (`sampling.dqn_features`:
  the state set's pooled features, each candidate's features and KL histograms, K pools of N
  candidates per step, the teacher's BALD scores).
- The agent (`DQNAgent`): the query network (`learners.query_network.QueryNetwork`), its target
  network, a replay buffer of transitions and the batch-mode double-DQN update, with a teacher's
  ranking imitated first and kept as a margin term.
- The loop (`play_episode`): one episode of the game, storing transitions and teacher-scored pools
  and learning as it goes. The whole training schedule (teacher episodes, imitation, DQN episodes,
  the choice among the learned and the teacher's policy) is `napari_paser.bench.al_sim.train_dqn`,
  on the simulated segmentation game.
- The sampler (`DQNSampler`): a trained agent (or its teacher) proposing regions in a session.

`DQNAgent` selects K regions per step, one per pool (Eq. 1), epsilon-greedily; it learns from
a replay buffer with the TD loss of Eq. 2 on decomposed sub-actions (each sharing the step's
reward) and the double-DQN target of Eq. 3: the next action chosen by the target network,
valued by the query network. Two faults of the published code are avoided by construction:
terminal transitions carry no next state and their target is the reward alone (no crash, no
bootstrap past the end), and rewards are differences against a measured starting mIoU (see
`play_episode`), never against an initial 0.

Imitation (learning from a teacher heuristic first, as DQfD's supervised margin term): every
candidate pool the agent sees can be stored as a `Demo` with the teacher's score of each
candidate (BALD, `teacher_scores`). `imitation_loss` is a pairwise hinge on Q so that Q ranks
the pool as the teacher does (Q_i - Q_j >= margin whenever the teacher prefers i to j);
`DQNAgent.imitate` pre-trains on it alone and `learn` adds it, weighted, to the TD loss, so
the double-DQN updates refine the teacher's ranking instead of replacing it.

`play_episode` runs the active-learning game for any `ALGame` (label the chosen regions,
train briefly, measure mIoU on a reward split). The reward is the mIoU gain over the
previous step, the first step measured against the mIoU the game reports at reset, never
against 0 (the published code's inflated first reward); the last step is terminal.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from learners.checkpoint import load_payload, restore, save_payload
from learners.errors import CheckpointError, InputError
from learners.modes import eval_mode
from learners.query_network import FORMAT, QueryNetConfig, QueryNetwork
from sampling.base import Sampler, SamplingError, Selection
from sampling.dqn_features import (  # noqa: F401 (the features are part of this module's interface)
    STATE_POOLS, ActionFeatures, FeatureSpec, choose_state_set, class_summary, draw_pools, infer_classes,
    kl_histogram, observe, pooled_entropy, random_state_set, region_class_fractions, region_features,
    teacher_scores,
)


@dataclass
class Transition:
    """One AL step: state, the K chosen actions' features, the reward, and what followed.

    A terminal transition (`done`) has no next state and no next pools.
    """

    state: np.ndarray  # (S, F)
    actions: np.ndarray  # (K, A)
    reward: float
    next_state: np.ndarray | None = None  # (S, F)
    next_pools: list[np.ndarray] | None = None  # K arrays (N_k, A), pool k serves sub-action k
    done: bool = False

    def __post_init__(self) -> None:
        if not self.done and (self.next_state is None or not self.next_pools):
            raise InputError("a non-terminal transition needs next_state and next_pools")
        if not self.done and len(self.next_pools) != len(self.actions):
            raise InputError(f"{len(self.actions)} sub-actions need as many next pools, got {len(self.next_pools)}")


class ReplayBuffer:
    """Fixed-size FIFO of transitions, sampled uniformly without replacement."""

    def __init__(self, capacity: int = 600) -> None:
        if capacity < 1:
            raise InputError("replay buffer capacity must be positive")
        self._items: deque[Transition] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._items)

    def push(self, transition: Transition) -> None:
        self._items.append(transition)

    def sample(self, n: int, rng: np.random.Generator) -> list[Transition]:
        idx = rng.choice(len(self._items), size=min(n, len(self._items)), replace=False)
        return [self._items[i] for i in idx]


@dataclass
class Demo:
    """One candidate pool with the teacher's score of each candidate (higher = the teacher prefers it)."""

    state: np.ndarray  # (S, F)
    actions: np.ndarray  # (N, A)
    teacher: np.ndarray  # (N,)


def imitation_loss(q: torch.Tensor, teacher: torch.Tensor, margin: float) -> torch.Tensor:
    """Pairwise hinge: mean over pairs the teacher orders (t_i > t_j) of relu(margin - (q_i - q_j)).

    q, teacher: (N,) for one pool. Zero exactly when Q orders every such pair as the teacher
    does, at least `margin` apart; ties of the teacher impose nothing.
    """
    better = teacher[:, None] > teacher[None, :]
    if not bool(better.any()):
        return q.sum() * 0.0
    gaps = q[:, None] - q[None, :]
    return torch.relu(margin - gaps)[better].mean()


@dataclass(frozen=True)
class DQNConfig:
    """Learning settings. The paper (appendix B) uses SGD with momentum and weight decay 1e-3,
    batches of 16; Adam without weight decay learned the tests' toy problems more reliably."""

    gamma: float = 0.99
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 16
    buffer_size: int = 600
    target_sync: int = 10  # learning steps between copies of the query network into the target
    optimizer: str = "adam"  # "adam" | "sgd" (with momentum, the paper)
    imitation_weight: float = 1.0  # weight of the teacher-ranking hinge in each TD step (0: pure DQN)
    margin: float = 0.1  # Q gap (reward units) the hinge asks between teacher-ordered candidates
    demo_size: int = 2000  # teacher-scored pools kept

    def __post_init__(self) -> None:
        if not 0 <= self.gamma <= 1 or self.lr <= 0 or self.batch_size < 2 or self.target_sync < 1:
            raise InputError("DQN needs gamma in [0, 1], lr > 0, batch_size >= 2 and target_sync >= 1")
        if self.optimizer not in ("sgd", "adam"):
            raise InputError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


class DQNAgent:
    """Query network, target network, replay buffer and the double-DQN update."""

    def __init__(self, net_config: QueryNetConfig, config: DQNConfig = DQNConfig(), seed: int = 0) -> None:
        with torch.random.fork_rng():  # reproducible weights, global RNG untouched
            torch.manual_seed(seed)
            self.net = QueryNetwork(net_config)
        self.target = copy.deepcopy(self.net).eval()
        self.config = config
        self.buffer = ReplayBuffer(config.buffer_size)
        self.demos: deque[Demo] = deque(maxlen=config.demo_size)
        if config.optimizer == "adam":
            self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        else:
            self.opt = torch.optim.SGD(self.net.parameters(), lr=config.lr, momentum=config.momentum,
                                       weight_decay=config.weight_decay)
        self.updates = 0
        self.meta: dict = {}

    @torch.no_grad()
    def q_values(self, state: np.ndarray, actions: np.ndarray, net: nn.Module | None = None) -> np.ndarray:
        """Q of each row of `actions` (N, A) in `state` (S, F), networks in eval mode."""
        net = net if net is not None else self.net
        a = _t(actions)
        with eval_mode(net):
            q = net(_t(state)[None].expand(len(a), -1, -1), a)
        return q.numpy()

    def act(self, state: np.ndarray, pools: list[np.ndarray], epsilon: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One index per pool (Eq. 1: argmax of Q, or a uniform pick with probability epsilon) and its Q."""
        picks, qs = [], []
        for pool, q in zip(pools, self._pool_q(state, pools)):
            i = int(rng.integers(len(pool))) if rng.random() < epsilon else int(np.argmax(q))
            picks.append(i)
            qs.append(float(q[i]))
        return np.asarray(picks, dtype=np.int64), np.asarray(qs)

    def _pool_q(self, state: np.ndarray, pools: list[np.ndarray], net: nn.Module | None = None) -> list[np.ndarray]:
        """Q-values of every pool's candidates, in one forward pass."""
        q = self.q_values(state, np.concatenate(pools), net)
        return np.split(q, np.cumsum([len(p) for p in pools])[:-1])

    @torch.no_grad()
    def _scores(self, net: nn.Module, states: list[np.ndarray], actions: list[np.ndarray]) -> np.ndarray:
        """Q of each action row paired with its state, all pairs in one eval-mode forward pass."""
        s = torch.cat([_t(st)[None].expand(len(a), -1, -1) for st, a in zip(states, actions)])
        with eval_mode(net):
            return net(s, torch.cat([_t(a) for a in actions])).numpy().astype(np.float64)

    def targets(self, batch: list[Transition]) -> np.ndarray:
        """TD targets y^k of every sub-action of every transition, flattened (sum of K,).

        y^k = r + gamma * Q(s', argmax_{a in pool k of s'} Q_target(s', a); query net)  (Eq. 3),
        and y^k = r for a terminal transition.
        """
        ys = [np.full(len(t.actions), t.reward, dtype=np.float64) for t in batch]
        live = [i for i, t in enumerate(batch) if not t.done]
        if not live:
            return np.concatenate(ys)
        pools = [p for i in live for p in batch[i].next_pools]
        states = [batch[i].next_state for i in live for _ in batch[i].next_pools]
        q_target = np.split(self._scores(self.target, states, pools), np.cumsum([len(p) for p in pools])[:-1])
        best = [p[int(np.argmax(q))][None] for p, q in zip(pools, q_target)]
        values = iter(self._scores(self.net, states, best))
        for i in live:
            ys[i] = ys[i] + self.config.gamma * np.array([next(values) for _ in batch[i].next_pools])
        return np.concatenate(ys)

    def _demo_loss(self, rng: np.random.Generator) -> torch.Tensor:
        """Mean imitation hinge over a batch of stored pools, all scored in one forward pass."""
        idx = rng.choice(len(self.demos), size=min(self.config.batch_size, len(self.demos)), replace=False)
        demos = [self.demos[i] for i in idx]
        states = torch.cat([_t(d.state)[None].expand(len(d.actions), -1, -1) for d in demos])
        q = self.net(states, torch.cat([_t(d.actions) for d in demos]))
        parts = torch.split(q, [len(d.actions) for d in demos])
        return torch.stack([imitation_loss(p, _t(d.teacher), self.config.margin) for p, d in zip(parts, demos)]).mean()

    def imitate(self, steps: int, rng: np.random.Generator) -> list[float]:
        """`steps` gradient steps on the imitation loss alone (pre-training); returns the losses."""
        if not self.demos:
            raise InputError("no teacher-scored pools to imitate; play episodes that record demos first")
        losses = []
        for _ in range(steps):
            self.net.train()
            loss = self._demo_loss(rng)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            losses.append(float(loss.detach()))
        self.target.load_state_dict(self.net.state_dict())
        return losses

    def learn(self, rng: np.random.Generator) -> float | None:
        """One gradient step on a sampled batch (None while the buffer holds too few transitions):
        the TD loss (Eq. 2) plus `imitation_weight` times the imitation hinge when demos exist."""
        if len(self.buffer) < self.config.batch_size:
            return None
        batch = self.buffer.sample(self.config.batch_size, rng)
        y = _t(self.targets(batch))
        states = torch.cat([_t(t.state)[None].expand(len(t.actions), -1, -1) for t in batch])
        actions = torch.cat([_t(t.actions) for t in batch])
        self.net.train()
        loss = torch.mean((self.net(states, actions) - y) ** 2)  # Eq. 2
        if self.demos and self.config.imitation_weight > 0:
            loss = loss + self.config.imitation_weight * self._demo_loss(rng)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.updates += 1
        if self.updates % self.config.target_sync == 0:
            self.target.load_state_dict(self.net.state_dict())
        return float(loss.detach())

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """Write the query network (weights and configs, no pickled code) atomically."""
        return save_payload(path, FORMAT, self.net, asdict(self.config), meta, net_config=asdict(self.net.config))

    @classmethod
    def load(cls, path: str | Path) -> DQNAgent:
        """An agent whose query and target networks hold the saved weights."""
        what = "query-network checkpoint"
        payload = load_payload(path, FORMAT, what, "train the agent with `paser al train-dqn`")
        try:
            agent = cls(QueryNetConfig(**payload["net_config"]), DQNConfig(**payload["config"]))
        except (KeyError, TypeError, InputError) as exc:
            raise CheckpointError(f"{what} {path} is inconsistent ({exc}); train the agent again") from None
        restore(agent.net, payload, path, what)
        agent.target.load_state_dict(payload["state_dict"])
        agent.meta = payload.get("meta", {})
        return agent


POLICIES = ("agent", "teacher")


class DQNSampler(Sampler):
    """Runs a trained RALIS agent: k disjoint pools of `pool_size` random candidates, the region of
    highest Q in each (Eq. 1, no exploration). Needs what `observe` lists; keep the state set's
    regions out of the candidates (RALIS holds D_S apart from the pool).

    `policy="teacher"` picks the teacher's (BALD's) best region of each pool instead: what
    `train_dqn` ships when its learned policy did not beat the teacher on the reward split.
    """

    name = "dqn"

    def __init__(self, agent: DQNAgent, spec: FeatureSpec, pool_size: int = 10, policy: str = "agent") -> None:
        if not spec.matches(agent.net.config):
            raise SamplingError(
                "the agent's network does not match these feature sizes; use the FeatureSpec it was trained with "
                "(saved in its checkpoint meta)"
            )
        if pool_size < 1:
            raise SamplingError(f"pool_size must be positive, got {pool_size}")
        if policy not in POLICIES:
            raise SamplingError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.agent, self.spec, self.pool_size, self.policy = agent, spec, pool_size, policy
        self.n_classes: int | None = None

    def check_classes(self, n_classes: int) -> None:
        """Any class count works (the features do not depend on it); remember it for the features."""
        if n_classes < 2:
            raise SamplingError(f"the DQN sampler needs at least 2 classes, got {n_classes}")
        self.n_classes = n_classes

    def _select(self, candidates, k, rng, **needs) -> Selection:
        needs = {"n_classes": self.n_classes, **needs}
        pools = draw_pools(candidates, k, self.pool_size, rng)
        if self.policy == "teacher":
            scores = [teacher_scores(needs, p) for p in pools]
            picks, q = np.array([int(np.argmax(s)) for s in scores]), np.array([s.max() for s in scores])
        else:
            state, actions = observe(self.spec, needs, rng)
            picks, q = self.agent.act(state, [actions(p) for p in pools], 0.0, rng)
        order = np.argsort(-q, kind="stable")  # best first, like every sampler
        return Selection(np.array([p[i] for p, i in zip(pools, picks)])[order], q[order])


class ALGame(Protocol):
    """One active-learning episode on labeled data (the segmentation model it trains is its own)."""

    def reset(self, rng: np.random.Generator) -> float:
        """Start an episode; return the mIoU on the reward split before any region is added."""

    def needs(self) -> dict:
        """What `observe` reads, for the current model and labeled set."""

    def label(self, ids: np.ndarray) -> float:
        """Add the regions to the labeled set, train briefly, return the reward-split mIoU."""


def _step_inputs(spec: FeatureSpec, game: ALGame, k: int, pool_size: int, rng: np.random.Generator):
    """State, candidate pools (region ids), their action features and the teacher's scores, for
    the game's current model."""
    needs = game.needs()
    state, actions = observe(spec, needs, rng)
    ids = draw_pools(needs["pool"].candidates(), k, pool_size, rng)
    return state, ids, [actions(p) for p in ids], [teacher_scores(needs, p) for p in ids]


def play_episode(agent: DQNAgent, game: ALGame, spec: FeatureSpec, steps: int, k: int, rng: np.random.Generator,
                 epsilon: float = 0.1, pool_size: int = 10, learn: bool = True, policy: str = "agent",
                 record: bool = True) -> list[float]:
    """Play `steps` AL steps of k regions, storing transitions (and learning); returns the rewards.

    `policy`: "agent" (epsilon-greedy on Q) or "teacher" (the teacher's best of each pool, with
    probability epsilon a uniform pick). Every pool seen is stored as a teacher-scored `Demo`
    (`record`), so imitation has data from any policy; `record=False` with `learn=False`
    evaluates a policy without touching the agent.
    """
    if policy not in POLICIES:
        raise SamplingError(f"policy must be one of {POLICIES}, got {policy!r}")
    miou = game.reset(rng)  # the baseline of the first reward
    state, ids, pools, teach = _step_inputs(spec, game, k, pool_size, rng)
    rewards = []
    for step in range(steps):
        if record:
            agent.demos.extend(Demo(state, a, t) for a, t in zip(pools, teach))
        if policy == "teacher":
            picks = np.array([int(rng.integers(len(t))) if rng.random() < epsilon else int(np.argmax(t)) for t in teach])
        else:
            picks, _ = agent.act(state, pools, epsilon, rng)
        new_miou = game.label(np.array([p[i] for p, i in zip(ids, picks)]))
        reward, miou = new_miou - miou, new_miou
        rewards.append(reward)
        taken = np.stack([pool[i] for pool, i in zip(pools, picks)])
        if step == steps - 1:
            transition = Transition(state, taken, reward, done=True)
        else:
            next_state, ids, pools, teach = _step_inputs(spec, game, k, pool_size, rng)
            transition = Transition(state, taken, reward, next_state, pools)
            state = next_state
        if record:
            agent.buffer.push(transition)
        if learn:
            agent.learn(rng)
    return rewards
