"""The session's models: loading runs and policies, new models from the starting weights,
installing a model version, routing a slice, retraining and training its own router."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from learners.checkpoint import load_checkpoint, save_checkpoint
from learners.routing.bank import load_bank
from learners.routing.policy import PolicyNet, load_policy, save_policy
from learners.routing.router import F0State
from learners.training import TrainConfig
from learners.unet import PRESETS, UNet, UNetConfig, preset_config
from napari_paser.errors import PaserInputError
from napari_paser.session.jobs import (
    RETRAIN_CONFIG,
    Progress,
    RetrainResult,
    TrainingData,
    check_focus,
    retrain_steps,
    training_data,
)
from napari_paser.session.router.config import BANK_ROLE, POLICY, RouterConfig, bank_role  # noqa: F401 (re-exported)
from napari_paser.session.router.export import export_run
from napari_paser.session.router.train import iter_train_router  # also registers the rethreshold after a refresh
from napari_paser.session.routing import SliceRouting, policy_models, route_slice
from napari_paser.session.store import MODELS, State

if TYPE_CHECKING:
    from napari_paser.session.router.config import RouterResult

MODEL_ROLES = ("f0", "f1", "f2")
POLICY_FILE = "policy.pt"
MODEL_SIZES = tuple(PRESETS)  # tiny, medium, wide, large



NO_POLICY = ("no routing policy yet: press 'Train router' in the Train step (`paser session train-router "
             "--session DIR` on the command line), or load a run folder holding policy.pt or policies/")


def router_info(folder: Path, version: int | None) -> dict:
    """router.json when it describes the bank installed as model version `version`, else {} (missing,
    unreadable or another bank's)."""
    import json

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


class ModelsMixin:
    """Models, policies, routing and (re)training of a `Session` (its state, folder and locks)."""

    # ------------------------------------------------------------------ models

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
        dropped = [r for r in self.state.models if r not in loaded]  # a run replaces the whole set
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
        made = [info["version"] for role, info in self.state.models.items() if role.startswith(BANK_ROLE)]
        f0 = self.state.models.get("f0")
        return bool(made) and f0 is not None and f0["version"] > min(made)

    @property
    def router_verdict(self) -> str:
        """What the held-out regions said about the session's routing bank (router.json's one line, e.g. "f0 is
        enough on this volume: f0 0.955 vs 20% share 0.903 ..."), "" without a bank made by train_router."""
        versions = [info["version"] for role, info in self.state.models.items() if role.startswith(BANK_ROLE)]
        return str(router_info(self.folder, max(versions)).get("verdict", "")) if versions else ""

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

    def route(self, z: int = 0, samples: int = 5, lam: float | None = None, execute: bool = True) -> SliceRouting:
        """PaSeR routing of slice z: model per patch, routed segmentation, GFLOPs vs the largest model.

        `lam` picks the bank's policy nearest to it. f0's state of the slice is cached, so routing
        the same slice again with another lambda and `execute=False` (map and cost only, no routed
        model runs) takes milliseconds: what the live control does.
        """
        lam, policy = self.pick_policy(lam)
        (z,) = self._slices_arg(z)
        models = policy_models(policy, self.models, "the routing policy")
        if not execute and self.has_state(z, samples):  # the policy reads f0's state alone: no image read
            image = np.empty(self.shape[-2:], np.float32)
        else:
            image = self.image_slice(z)
        return route_slice(models, policy, image, z, samples, self.f0_state(z, samples, image), execute, lam)

    def has_state(self, z: int, samples: int = 5) -> bool:
        """Whether f0's state of slice z is known for the current f0 (routing it again is then instant)."""
        return self._state_key(z, samples) in self._states or int(z) in self.fresh_slices()

    def f0_state(self, z: int, samples: int = 5, image: np.ndarray | None = None) -> F0State:
        """f0's state of slice z (prediction and entropy) for routing: the slice's stored maps when
        they come from the current f0 (whatever `samples` they were computed with), else computed
        now with `uncertainty_maps` and stored as the slice's maps, so maps, routing and proposals
        share one f0 pass per slice and model version. Cached in memory for the current weights."""
        key = self._state_key(z, samples)
        with self._lock:
            if key in self._states:
                return self._states[key]
        f0 = self.require_f0()
        if int(z) in self.fresh_slices():  # the two maps the policy reads (not BALD)
            prediction, entropy = (np.asarray(self.maps[name][self.index(z)]) for name in ("prediction", "entropy"))
        else:
            m, _ = self.slice_maps_now(f0, z, samples, self.maps_version(), image=image)
            prediction, entropy = m.prediction, m.entropy
        state = F0State(torch.from_numpy(np.asarray(prediction, np.uint8))[None],
                        torch.from_numpy(np.asarray(entropy, np.float32))[None], self.n_classes, samples)
        with self._lock:
            self._states = {k: v for k, v in self._states.items() if k[2] == key[2]}  # drop older weights'
            while len(self._states) >= 8:
                self._states.pop(next(iter(self._states)))
            self._states[key] = state
        return state

    def _state_key(self, z: int, samples: int) -> tuple:
        return (int(z), int(samples), self.state.models.get("f0", {}).get("version"))

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
                cfg = preset_config(spec, n_classes=self.n_classes) if isinstance(spec, str) else spec
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
        if cfg.n_classes != self.n_classes:
            raise PaserInputError(
                f"{what} was trained for {cfg.n_classes} classes but this session has {self.n_classes} "
                f"({', '.join(self.classes.names)}): load a run trained on {self.n_classes} classes, or start from scratch"
            )
        if cfg.in_channels != 1:
            raise PaserInputError(f"{what} takes {cfg.in_channels} input channels; sessions hold greyscale images (1)")
        return model

    def install_models(self, models: dict[str, nn.Module], source: str,
                       mutate_more: Callable[[State], None] | None = None, drop: Sequence[str] = ()) -> None:
        """Save `models` as the next model version (and forget roles in `drop`), commit, then remove old files."""
        with self._lock:  # one model version at a time, whatever thread installs it
            version = self.state.model_version + 1
            files = {}
            for role, model in models.items():
                files[role] = f"{MODELS}/{role}-{version:04d}.pt"
                meta = {"class_names": list(self.classes.names), "role": role, "source": source, "session_version": version}
                (save_policy if role.startswith(POLICY) else save_checkpoint)(self.folder / files[role], model, meta)

            def mutate(s: State) -> None:
                s.model_version = version
                for role in models:
                    s.models[role] = {"file": files[role], "version": version, "source": source}
                for role in drop:
                    s.models.pop(role, None)
                if mutate_more:
                    mutate_more(s)

            old = [self.folder / info["file"] for role, info in self.state.models.items() if role in models or role in drop]
            self.commit(mutate)
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
                self.bank.chosen = router_default(self.folder, self.state.models.get(role, {}).get("version"))
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
        """Every painted pixel outside held-out regions (train) and the accepted "val" regions (see session.jobs)."""
        return training_data(self)

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
        generator) changes nothing. Then, with `refresh` and new weights, maps of the slices that
        had maps are recomputed and the last proposal request is repeated. `focus` > 0 draws the
        training crops where f0 is unsure (`session.jobs.uncertainty_focus`): for the routed models.
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
        return retrain_steps(self, cfg, list(roles), data, should_stop, refresh, samples, keep_if_worse, focus)

    def train_router(self, lambdas: Sequence[float] | None = None, should_stop: Callable[[], bool] | None = None,
                     **options) -> Generator[Progress, None, RouterResult]:
        """Retrain f2 (network: f1, f2) on the accepted regions, then make the routing policy bank, as a progress
        generator; see `session.router`. The bank is one uncertainty-ranked policy per share of
        patches (`shares=`), or with `lambdas` (or policy="network") one policy network per lambda. A
        cancel keeps the previous bank. `options` are `RouterConfig` fields (policy, shares, epochs,
        train_models, model_config, samples, ...)."""
        if lambdas is not None:
            options["lambdas"] = tuple(lambdas)
            options.setdefault("policy", "network")
        if "shares" in options:
            options["shares"] = tuple(options["shares"])
        return iter_train_router(self, RouterConfig(**options), should_stop)

    def export_run(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the session's f0/f1/f2 and policies as a run folder for `paser route` / `paser segment`."""
        return export_run(self, out, overwrite)
