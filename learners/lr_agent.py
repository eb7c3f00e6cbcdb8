"""Tabular Q-learning learning-rate scheduler (RLLRAgent, `papers/rl-lr-agent.md`).

Once per epoch the agent reads the validation score (mIoU or Dice) and the loss, sorts the
recent trend into one of six states, and picks maintain / x0.5 / x1.2 for the learning rate
(clamped to [min_lr, max_lr]) epsilon-greedily from its Q-table. An action is judged when the
agent next decides (after `cooldown` epochs if it changed the rate), so a decision spans a
variable number of epochs (a semi-MDP step) and its reward (section 3.4)
    r = 10 * (score gain) + 5 * (loss drop) + bonus if a new best score was reached
        - penalty if the action left the rate at a bound
is measured over the epochs the action was in force. Q-learning update (section 3.5):
    Q(s, a) += alpha * (r + gamma * max_a' Q(s', a') - Q(s, a)).
The Q-table and exploration rate round-trip through a plain dict (JSON) so that successive
retrainings of a session keep what the agent learned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from learners.errors import InputError

STATES = ("improving", "worsening", "plateau", "oscillating", "mixed", "insufficient_data")
ACTIONS = ("maintain", "decrease", "increase")
FACTORS = {"maintain": 1.0, "decrease": 0.5, "increase": 1.2}


@dataclass(frozen=True)
class LRAgentConfig:
    """Agent parameters; defaults from the paper's section 4.1 where it gives them."""

    base_lr: float = 1e-4
    min_lr: float = 1e-6
    max_lr: float = 1e-2
    patience: int = 3  # epochs of history before the first decision
    cooldown: int = 5  # epochs without decisions after the rate changed
    learning_rate: float = 0.1  # Q-learning alpha
    discount_factor: float = 0.9  # gamma
    exploration_rate: float = 0.2  # initial epsilon
    exploration_decay: float = 0.95
    min_exploration_rate: float = 0.01
    window: int = 5  # epochs the trend is read from
    min_history: int = 3  # fewer epochs: insufficient_data
    score_tol: float = 1e-3  # score changes below this count as flat
    loss_tol: float = 1e-3  # relative loss changes below this count as flat
    score_weight: float = 10.0
    loss_weight: float = 5.0
    best_bonus: float = 1.0
    extreme_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.min_lr <= self.base_lr <= self.max_lr:
            raise InputError(
                f"the LR agent needs 0 < min_lr <= base_lr <= max_lr, got {self.min_lr}, {self.base_lr}, {self.max_lr}"
            )
        if self.patience < 0 or self.cooldown < 0 or self.window < 2 or self.min_history < 2:
            raise InputError("patience and cooldown must be >= 0, window and min_history >= 2")
        if not (0 < self.learning_rate <= 1 and 0 <= self.discount_factor <= 1):
            raise InputError("the agent's learning_rate must lie in (0, 1] and discount_factor in [0, 1]")


def _signs(diffs: np.ndarray, tol: float) -> np.ndarray:
    """+1 / -1 for changes beyond tol, 0 for flat (and for NaN)."""
    d = np.nan_to_num(diffs, nan=0.0)
    return np.where(d > tol, 1, np.where(d < -tol, -1, 0))


def _sign_changes(signs: np.ndarray) -> int:
    nz = signs[signs != 0]
    return int(np.count_nonzero(nz[1:] != nz[:-1]))


def trend_state(scores, losses, window: int = 5, min_history: int = 3, score_tol: float = 1e-3,
                loss_tol: float = 1e-3) -> str:
    """The training-trend state of the last `window` epochs (section 3.2).

    Per step: score sign (+1 up, -1 down, 0 within score_tol) and loss sign (+1 when the loss
    fell by more than loss_tol relative to the previous loss). Then, first match wins:
    plateau (all flat), improving (no step worse in either), worsening (no step better in
    either), oscillating (the score or loss direction flips at least twice), else mixed.
    """
    s = np.asarray(scores, dtype=np.float64)[-window:]
    l = np.asarray(losses, dtype=np.float64)[-window:]
    if len(s) < min_history:
        return "insufficient_data"
    ss = _signs(np.diff(s), score_tol)
    prev = np.maximum(np.abs(l[:-1]), 1e-12)
    ls = _signs((l[:-1] - l[1:]) / prev, loss_tol)
    if not ss.any() and not ls.any():
        return "plateau"
    if (ss >= 0).all() and (ls >= 0).all():
        return "improving"
    if (ss <= 0).all() and (ls <= 0).all():
        return "worsening"
    if max(_sign_changes(ss), _sign_changes(ls)) >= 2:
        return "oscillating"
    return "mixed"


def reward(score_change: float, loss_change: float, new_best: bool, at_bound: bool,
           config: LRAgentConfig = LRAgentConfig()) -> float:
    """Section 3.4: weighted score gain and loss drop, a bonus for a new best, a penalty at a bound."""
    r = config.score_weight * score_change + config.loss_weight * loss_change
    return r + config.best_bonus * bool(new_best) - config.extreme_penalty * bool(at_bound)


def q_update(q: dict, state: str, action: str, r: float, next_state: str, alpha: float, gamma: float) -> float:
    """One Q-learning step in place; returns the new Q(state, action)."""
    old = q[state][action]
    q[state][action] = old + alpha * (r + gamma * max(q[next_state].values()) - old)
    return q[state][action]


def initial_q_table(rng: np.random.Generator) -> dict:
    """Small random values that break ties (section 4.2)."""
    return {s: {a: float(rng.uniform(0, 0.1)) for a in ACTIONS} for s in STATES}


@dataclass
class _Pending:
    state: str
    action: str
    score: float
    loss: float
    best: float


class LRAgent:
    """The scheduler: call `step(score, loss)` after each epoch, use the rate it returns."""

    def __init__(self, config: LRAgentConfig = LRAgentConfig(), seed: int = 0, q_table: dict | None = None) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.q_table = _checked_q(q_table) if q_table is not None else initial_q_table(self.rng)
        self.exploration_rate = config.exploration_rate
        self.begin_run(config.base_lr)

    def begin_run(self, lr: float) -> None:
        """Forget the metric history (not the Q-table) and start a training run at `lr`."""
        self.lr = float(min(max(lr, self.config.min_lr), self.config.max_lr))
        self.scores: list[float] = []
        self.losses: list[float] = []
        self.best = -math.inf
        self.decisions: list[dict] = []
        self._pending: _Pending | None = None
        self._wait = 0

    def state(self) -> str:
        c = self.config
        return trend_state(self.scores, self.losses, c.window, c.min_history, c.score_tol, c.loss_tol)

    def select_action(self, state: str) -> str:
        """Epsilon-greedy; among equal best Q-values a random one."""
        if self.rng.random() < self.exploration_rate:
            return ACTIONS[self.rng.integers(len(ACTIONS))]
        q = self.q_table[state]
        best = max(q.values())
        return self.rng.choice([a for a in ACTIONS if q[a] == best]).item()

    def step(self, score: float, loss: float) -> float:
        """Record one epoch's validation score and loss; return the learning rate for the next epoch."""
        best_before = self.best
        self.scores.append(float(score))
        self.losses.append(float(loss))
        if not math.isnan(score):
            self.best = max(self.best, float(score))
        if self._wait > 0:
            self._wait -= 1
            return self.lr
        if len(self.scores) < max(self.config.patience, 1):
            return self.lr
        state = self.state()
        self._learn(state, new_best=self.best > (self._pending.best if self._pending else best_before))
        action = self.select_action(state)
        self._act(state, action)
        return self.lr

    def finish(self) -> None:
        """End of a run: judge the last pending action against the final state (truncation, so it bootstraps)."""
        if self._pending is not None:
            self._learn(self.state(), new_best=self.best > self._pending.best)
            self._pending = None

    def _learn(self, state: str, new_best: bool) -> None:
        p = self._pending
        if p is None:
            return
        c = self.config
        at_bound = p.action != "maintain" and (self.lr <= c.min_lr or self.lr >= c.max_lr)
        r = reward(self.scores[-1] - p.score, p.loss - self.losses[-1], new_best, at_bound, c)
        q_update(self.q_table, p.state, p.action, r, state, c.learning_rate, c.discount_factor)
        self.decisions[-1]["reward"] = r

    def _act(self, state: str, action: str) -> None:
        c = self.config
        new_lr = float(min(max(self.lr * FACTORS[action], c.min_lr), c.max_lr))
        if new_lr != self.lr:
            self._wait = c.cooldown
        self.lr = new_lr
        self._pending = _Pending(state, action, self.scores[-1], self.losses[-1], self.best)
        self.decisions.append({"epoch": len(self.scores) - 1, "state": state, "action": action, "lr": new_lr})
        self.exploration_rate = max(c.min_exploration_rate, self.exploration_rate * c.exploration_decay)

    def to_dict(self) -> dict:
        """JSON-able: config, Q-table, exploration rate and this run's decisions."""
        return {
            "config": asdict(self.config),
            "q_table": {s: dict(a) for s, a in self.q_table.items()},
            "exploration_rate": self.exploration_rate,
            "decisions": list(self.decisions),
        }

    @classmethod
    def from_dict(cls, data: dict, seed: int = 0, **config_overrides) -> LRAgent:
        """An agent that continues from `to_dict()` output (history reset, Q-table and epsilon kept)."""
        known = {f.name for f in fields(LRAgentConfig)}
        config = LRAgentConfig(**{**{k: v for k, v in data.get("config", {}).items() if k in known}, **config_overrides})
        agent = cls(config, seed=seed, q_table=data["q_table"])
        agent.exploration_rate = float(data.get("exploration_rate", config.exploration_rate))
        return agent


def _checked_q(q: dict) -> dict:
    missing = [(s, a) for s in STATES for a in ACTIONS if a not in q.get(s, {})]
    if missing:
        raise InputError(f"the LR agent's Q-table lacks entries {missing[:3]}...; save it with LRAgent.to_dict()")
    return {s: {a: float(q[s][a]) for a in ACTIONS} for s in STATES}
