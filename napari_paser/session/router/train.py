"""The one entry point of the session's router training (`iter_train_router`, what `Session.train_router`
returns): retrain the routed model, make the bank (first with the current models, so routing works while
the larger model trains), and make a stale ranked bank again for a new f0 (`rethreshold`, run after every
finished refresh: the `Router` subscribes it to `MapsCache.after_refresh`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace

from learners.atomic import atomic_write_text
from learners.routing.ranked import TAIL
from napari_paser.errors import PaserInputError
from napari_paser.session.progress import Progress
from napari_paser.session.router.banks import (_stopped, check_bank_keys, default_share, held_out_choice,
                                               install_bank, network_bank, pool_slices, ranked_bank)
from napari_paser.session.router.config import (ROUTED_RETRAIN, ROUTER_FILE, RouterConfig, RouterParts,
                                                RouterResult, routed_larger)
from napari_paser.session.router.rewards import cross_fit_models, evaluate_regions, iter_region_rewards, router_models
from napari_paser.session.training import RetrainResult



def iter_train_router(parts: RouterParts, config: RouterConfig = RouterConfig(),
                      should_stop: Callable[[], bool] | None = None) -> Generator[Progress, None, RouterResult]:
    """Check now, then return the progress generator of `Session.train_router`."""
    roles = router_models(parts)
    keys = tuple(check_bank_keys(config.shares if config.policy == "ranked" else config.lambdas, config.policy))
    train = [r for r in parts.store.state.accepted if r.split == "train"]
    if not train:
        raise PaserInputError("no accepted training regions yet: label and accept regions first (the router "
                              "learns from them; every 5th accepted region is held out to score it)")
    return _train_router(parts, roles, keys, config, should_stop)


def rethreshold(parts: RouterParts, samples: int = 5, should_stop: Callable[[], bool] | None = None
                ) -> Generator[Progress, None, bool]:
    """Make a stale ranked bank again for the current f0, when that is nearly free: its thresholds read the
    previous f0's entropy, so its shares drift as f0 retrains (SOC session benchmark: thresholds made at 32
    regions sent 22%, 9% and 18% of the patches up instead of 20% under the f0 of 64), and when every slice
    they read has the current f0's maps (a full refresh leaves them so) the policies-only training costs the
    scoring of the accepted regions. The same shares, patch and halo; f2 is not retrained. True when redone."""
    bank = parts.model_set.bank
    if not len(bank) or bank.knob != "share" or not parts.model_set.bank_stale:
        return False
    if not any(r.split == "train" for r in parts.store.state.accepted):
        return False  # every training region was unaccepted since: the next train_router says what to do
    if not set(pool_slices(parts)) <= set(parts.maps_cache.fresh_slices()):
        return False  # the maps it would read are the previous f0's: computing them is a refresh's work
    try:
        roles = router_models(parts)
    except PaserInputError:  # the larger models were dropped since: nothing to route to
        return False
    halo = next(iter(bank.policies.values())).config.halo
    config = RouterConfig(shares=tuple(bank.lambdas), train_models=False, refresh=False, samples=samples, halo=halo,
                          tail=bank_tail(parts))
    result = yield from _train_router(parts, roles, config.shares, config, should_stop)
    return not result.cancelled


def bank_tail(parts: RouterParts) -> float:
    """The tail the session's ranked bank was made with: 0 when its policies score patches by mean entropy,
    else router.json's (`TAIL` when that file is unreadable)."""
    if next(iter(parts.model_set.bank.policies.values())).config.level is None:
        return 0.0
    try:
        return float(json.loads((parts.store.folder / ROUTER_FILE).read_text())["tail"])
    except (OSError, ValueError, TypeError, KeyError):
        return TAIL


def _cancelled(retrained) -> Generator[Progress, None, RouterResult]:
    yield Progress("cancelled", 0, 1, "router training cancelled; the previous bank is kept")
    return RouterResult(True, retrain=retrained)


def _train_router(parts: RouterParts, roles, keys, config, should_stop) -> Generator[Progress, None, RouterResult]:
    started = time.time()
    retrained, first = None, None
    model_config = config.model_config or ROUTED_RETRAIN
    if config.train_models and config.first_bank and config.policy == "ranked":  # routing first, f2 after
        first = yield from _bank_now(parts, roles, keys, replace(config, train_models=False, refresh=False),
                                     should_stop, started, [])
        if first is None:
            return (yield from _cancelled(None))
        yield Progress("ready", 1, 1, f"routing ready in {first.summary['seconds']:.0f} s: "
                                      f"{first.summary['verdict']}; {larger_name(roles)} retrains next")
    if config.train_models:
        gen = parts.model_set.retrain(model_config, roles=routed_larger(roles, config.policy), should_stop=should_stop,
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
        scorers = yield from cross_fit_models(parts, roles, config.cross_fit, model_config,
                                              should_stop)
        if scorers is None:
            return (yield from _cancelled(retrained))
    result = yield from _bank_now(parts, roles, keys, config, should_stop, started, scorers)
    if result is None:
        return (yield from _cancelled(retrained)) if first is None else first
    result.retrain = retrained
    if first is not None:
        result.summary["first_bank_seconds"] = first.summary["seconds"]
        atomic_write_text(parts.store.folder / ROUTER_FILE, json.dumps(result.summary, indent=2))
    if config.refresh:
        yield from parts.maps_cache.refresh(samples=config.samples, should_stop=should_stop)
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


def _bank_now(parts: RouterParts, roles, keys, config: RouterConfig, should_stop, started: float, scorers
              ) -> Generator[Progress, None, RouterResult | None]:
    """Score the accepted regions with the session's models (or `scorers`), make the bank, choose its default
    member from the held-out table, write router.json and install the bank; None when cancelled."""
    rewards = yield from iter_region_rewards(parts, roles, config.samples, config.halo_for(parts.store.pool.size),
                                             scorers, should_stop)
    if rewards is None:
        return None
    models = [parts.model_set.models[r] for r in roles]
    make = ranked_bank if config.policy == "ranked" else network_bank
    bank, info = yield from make(parts, models, rewards, keys, config, should_stop)
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
    summary["bank_version"] = parts.store.state.model_version + 1  # the version install_bank commits
    atomic_write_text(parts.store.folder / ROUTER_FILE, json.dumps(summary, indent=2))
    install_bank(parts, bank)
    yield Progress("save", 1, 1, f"saved {len(bank)} routing policies")
    return RouterResult(False, bank, summary)
