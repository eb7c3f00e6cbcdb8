"""The session's models: loading runs and policies, new models from the starting weights, installing a
model version, retraining (`ModelSet`); the model roles of routing policies (`POLICY`, `BANK_ROLE`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

import torch
from torch import nn

from learners.checkpoint import load_checkpoint, save_checkpoint
from learners.routing.bank import PolicyBank, load_bank
from learners.routing.policy import PolicyNet, load_policy, save_policy
from learners.training import TrainConfig
from learners.unet import PRESETS, UNet, UNetConfig, preset_config
from napari_paser.errors import PaserInputError
from napari_paser.session.progress import Progress
from napari_paser.session.routing import policy_models
from napari_paser.session.store import MODELS, State, Store
from napari_paser.session.training import (RETRAIN_CONFIG, RetrainResult, TrainingData, check_focus, retrain_steps,
                                           training_data)

MODEL_ROLES = ("f0", "f1", "f2")
POLICY_FILE = "policy.pt"
MODEL_SIZES = tuple(PRESETS)  # tiny, medium, wide, large
POLICY = "policy"  # the session's model role of a loaded policy.pt
BANK_ROLE = "policy@"  # + lambda: the policy bank's members, e.g. "policy@0.300"

RetrainedHook = Callable[[int, "Callable[[], bool] | None"], Generator[Progress, None, object]]
"""Work after a retrain installed new weights: (samples, should_stop) -> progress."""


def bank_role(lam: float) -> str:
    """The session's model role of the bank's policy for `lam`."""
    return f"{BANK_ROLE}{lam:.3f}"


NO_POLICY = ("no routing policy yet: press 'Train router' in the Train step (`paser session train-router "
             "--session DIR` on the command line), or load a run folder holding policy.pt or policies/")


def router_info(folder: Path, version: int | None) -> dict:
    """router.json when it describes the bank installed as model version `version`, else {} (missing,
    unreadable or another bank's)."""
    try:
        info = json.loads((Path(folder) / "router.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) and version is not None and info.get("bank_version") == version else {}


def router_default(folder: Path, version: int | None) -> float | None:
    """The default member router.json chose for the bank installed as model version `version` (None without one)."""
    try:
        return float(router_info(folder, version)["default_lambda"])
    except (KeyError, TypeError, ValueError):
        return None


class ModelSet:
    """The session's models by role (f0, f1, f2), its routing policy (policy.pt) and policy bank: loading a
    run, new models, installing a model version, retraining with its guard.

    A retrain first runs the `before_retrain` subscribers (the forest assist scores the new regions while f0
    is still the model the person corrected, and refits); after a retrain that installed new weights it runs
    the `on_retrained` subscribers (the maps' refresh subscribes), so retraining never calls back into a
    session.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.models: dict[str, UNet] = {}
        self.policy: PolicyNet | None = None
        self.bank = PolicyBank()  # policies by lambda, for the live cost control
        self.on_retrained: list[RetrainedHook] = []
        self.before_retrain: list[RetrainedHook] = []  # learners of the same labels, run before the models train
        for role, info in store.state.models.items():
            path = store.folder / info["file"]
            self._hold(role, load_policy(path).policy if role.startswith(POLICY) else load_checkpoint(path).model)

    @property
    def has_models(self) -> bool:
        return "f0" in self.models

    def load_models(self, run: str | Path, roles: Sequence[str] = MODEL_ROLES) -> list[str]:
        """Load f0 (required) and whichever of f1, f2 exist from a `paser train` run folder."""
        run = Path(run)
        if not (run / "f0.pt").is_file():
            raise PaserInputError(
                f"{run} holds no f0.pt: choose a run folder written by `paser train` (f0.pt, f1.pt, f2.pt), "
                "or start from scratch (new_models)"
            )
        loaded = {}
        for role in roles:
            if (run / f"{role}.pt").is_file():
                loaded[role] = self._checked(load_checkpoint(run / f"{role}.pt").model, str(run / f"{role}.pt"))
        if (run / POLICY_FILE).is_file():  # optional: routing needs it
            policy = load_policy(run / POLICY_FILE).policy
            policy_models(policy, loaded, str(run / POLICY_FILE))
            loaded[POLICY] = policy
        for lam, policy in load_bank(run).policies.items():  # optional: the live lambda control
            policy_models(policy, loaded, f"{run}/policies (lambda {lam})")
            loaded[bank_role(lam)] = policy
        dropped = [r for r in self.store.state.models if r not in loaded]  # a run replaces the whole set
        self.install_models(loaded, source=str(run.resolve()), drop=dropped)
        return list(loaded)

    def load_policy(self, path: str | Path) -> None:
        """Load a trained routing policy (f_RL) for the routing overlay; it must fit the loaded models."""
        policy = load_policy(path).policy
        policy_models(policy, self.models, str(path))
        self.install_models({POLICY: policy}, source=str(Path(path).resolve()))

    @property
    def has_policy(self) -> bool:
        return self.policy is not None or len(self.bank) > 0

    @property
    def bank_stale(self) -> bool:
        """The policy bank was made with an older f0 than the current one: its thresholds (ranked) or its
        training (network) read that f0's entropy, so its shares of patches have drifted."""
        made = [info["version"] for role, info in self.store.state.models.items() if role.startswith(BANK_ROLE)]
        f0 = self.store.state.models.get("f0")
        return bool(made) and f0 is not None and f0["version"] > min(made)

    @property
    def router_verdict(self) -> str:
        """What the held-out regions said about the session's routing bank (router.json's one line, e.g. "f0 is
        enough on this volume: f0 0.955 vs 20% share 0.903 ..."), "" without a bank made by train_router."""
        versions = [info["version"] for role, info in self.store.state.models.items() if role.startswith(BANK_ROLE)]
        return str(router_info(self.store.folder, max(versions)).get("verdict", "")) if versions else ""

    @property
    def policy_lambdas(self) -> list[float]:
        """The cost weights of the policy bank (empty without one: then lambda is fixed)."""
        return self.bank.lambdas

    def pick_policy(self, lam: float | None = None) -> tuple[float | None, PolicyNet]:
        """The bank's policy nearest to `lam` (None: policy.pt, else the bank's middle one)."""
        chosen = self.bank.pick(lam, None if self.policy is None else (None, self.policy))
        if chosen is not None:
            return chosen
        raise PaserInputError(NO_POLICY)

    def new_models(self, roles: dict[str, str | UNetConfig] | None = None, seed: int = 0,
                   start: str = "shipped") -> list[str]:
        """New models from size presets ("tiny", "medium", "wide", "large") or configs, e.g. {"f0": "tiny"}.

        start="shipped" (default): roles whose size has starting weights in the package (f0 tiny,
        f1 medium, f2 wide, see napari_paser.weights) begin from them (another class count: their
        body, a fresh head), the others (f2 large) from a seeded random init; start="scratch":
        every role from a random init.
        """
        from napari_paser.weights import shipped_start

        if start not in ("shipped", "scratch"):
            raise PaserInputError(f"start must be 'shipped' or 'scratch', got {start!r}")
        roles = roles or {"f0": "tiny"}
        built, sources = {}, {}
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for role, spec in roles.items():
                if role not in MODEL_ROLES:
                    raise PaserInputError(f"unknown model role {role!r}; use {', '.join(MODEL_ROLES)}")
                if isinstance(spec, str) and spec not in MODEL_SIZES:
                    raise PaserInputError(f"unknown model size {spec!r}; choose one of {', '.join(MODEL_SIZES)}")
                cfg = preset_config(spec, n_classes=self.store.n_classes) if isinstance(spec, str) else spec
                model = shipped_start(role, cfg, seed) if start == "shipped" else None
                source = "scratch" if model is None else "shipped"
                model = UNet(cfg).eval() if model is None else model
                built[role], sources[role] = self._checked(model, f"the new {role} model"), source
        for source in ("shipped", "scratch"):
            group = {r: m for r, m in built.items() if sources[r] == source}
            if group:
                self.install_models(group, source=source)
        return list(built)

    def _checked(self, model: UNet, what: str) -> UNet:
        cfg = model.config
        if cfg.n_classes != self.store.n_classes:
            raise PaserInputError(
                f"{what} was trained for {cfg.n_classes} classes but this session has {self.store.n_classes} "
                f"({', '.join(self.store.classes.names)}): load a run trained on {self.store.n_classes} classes, or start from scratch"
            )
        if cfg.in_channels != 1:
            raise PaserInputError(f"{what} takes {cfg.in_channels} input channels; sessions hold greyscale images (1)")
        return model

    def install_models(self, models: dict[str, nn.Module], source: str,
                       mutate_more: Callable[[State], None] | None = None, drop: Sequence[str] = ()) -> None:
        """Save `models` as the next model version (and forget roles in `drop`), commit, then remove old files."""
        with self.store.lock:  # one model version at a time, whatever thread installs it
            version = self.store.state.model_version + 1
            files = {}
            for role, model in models.items():
                files[role] = f"{MODELS}/{role}-{version:04d}.pt"
                meta = {"class_names": list(self.store.classes.names), "role": role, "source": source, "session_version": version}
                (save_policy if role.startswith(POLICY) else save_checkpoint)(self.store.folder / files[role], model, meta)

            def mutate(s: State) -> None:
                s.model_version = version
                for role in models:
                    s.models[role] = {"file": files[role], "version": version, "source": source}
                for role in drop:
                    s.models.pop(role, None)
                if mutate_more:
                    mutate_more(s)

            old = [self.store.folder / info["file"] for role, info in self.store.state.models.items() if role in models or role in drop]
            self.store.commit(mutate)
            for role in drop:
                self._hold(role, None)
            for role, model in models.items():
                self._hold(role, model)
            for path in old:
                path.unlink(missing_ok=True)

    def _hold(self, role: str, model: nn.Module | None) -> None:
        """Keep `model` in its role's place (None forgets the role): models, policy or the bank."""
        if role == POLICY:
            self.policy = model
        elif role.startswith(BANK_ROLE):
            lam = float(role[len(BANK_ROLE):])
            if model is None:
                self.bank.policies.pop(lam, None)
            else:
                self.bank.policies[lam] = model
                self.bank.chosen = router_default(self.store.folder, self.store.state.models.get(role, {}).get("version"))
        elif model is None:
            self.models.pop(role, None)
        else:
            self.models[role] = model

    def require_f0(self) -> UNet:
        """f0, or a PaserInputError saying how to get one."""
        if "f0" not in self.models:
            raise PaserInputError(
                "no models yet: load a run folder (f0.pt from `paser train`) or start from scratch, then try again"
            )
        return self.models["f0"]

    # ------------------------------------------------------------------ training

    def training_data(self) -> TrainingData:
        """Every painted pixel outside held-out regions (train) and the accepted "val" regions (see session.training)."""
        return training_data(self.store)

    def retrain(self, config: TrainConfig | None = None, roles: Sequence[str] = ("f0",),
                should_stop: Callable[[], bool] | None = None, refresh: bool = True,
                samples: int = 5, keep_if_worse: bool = True, focus: float = 0.0) -> Generator[Progress, None, RetrainResult]:
        """Retrain `roles` on the labels (a snapshot taken now), as a progress generator.

        Labels are every painted pixel (accepted regions, partial regions, strokes in any slice);
        accepted "val" regions are held out. Models train on copies (RETRAIN_CONFIG: a fixed
        number of steps on class-balanced augmented crops); then, with held-out regions, each
        role's new weights replace the old ones only if they score at least as well there
        (keep_if_worse); the RetrainResult's message says which were kept and why. Every
        finished retrain adds a learning-curve point; a cancel (via should_stop or closing the
        generator) changes nothing. Then, with `refresh` and new weights, the `on_retrained` subscribers run
        (in a session: the maps cache recomputes the stale maps and the last proposal request is repeated
        after it). `focus` > 0 draws the
        training crops where f0 is unsure (`session.training.uncertainty_focus`): for the routed models.
        """
        cfg = config or RETRAIN_CONFIG
        missing = [r for r in roles if r not in self.models]
        if missing:
            raise PaserInputError(f"no model {', '.join(missing)} yet: load a run folder or start new models first")
        data = self.training_data()
        if not data.images:
            raise PaserInputError("no training labels yet: paint some pixels in any slice, or label and accept at "
                                  "least one region first")
        check_focus(focus)
        return self._retrain(retrain_steps(self, cfg, list(roles), data, should_stop, refresh, samples, keep_if_worse,
                                           focus), samples, should_stop)

    def _retrain(self, steps: Generator[Progress, None, RetrainResult], samples: int,
                 should_stop: Callable[[], bool] | None) -> Generator[Progress, None, RetrainResult]:
        """The `before_retrain` subscribers, then the retrain's own steps."""
        for hook in self.before_retrain:
            yield from hook(samples, should_stop)
        return (yield from steps)

    def retrained(self, samples: int, should_stop: Callable[[], bool] | None) -> Generator[Progress, None, None]:
        """Run the `on_retrained` subscribers after a retrain installed new weights, in the order subscribed."""
        for hook in self.on_retrained:
            yield from hook(samples, should_stop)
