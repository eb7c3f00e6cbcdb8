"""The session's routing policy banks: ranked (f0 entropy thresholds per share of patches) and network
(PaSeR's policy per lambda), the choice of a bank's default member from the held-out regions, and
installing a bank as the session's policies in one commit."""

from __future__ import annotations

from collections.abc import Generator, Sequence

import numpy as np

from learners.errors import InputError
from learners.routing.bank import PolicyBank, check_lambdas, iter_bank_training
from learners.routing.policy import PolicyConfig
from learners.routing.ranked import entropy_sample, from_share, patch_score, tail_level
from learners.routing.router import model_costs
from learners.routing.training import PolicyEpoch, RLConfig
from napari_paser.errors import PaserInputError
from napari_paser.session.progress import Progress
from napari_paser.session.router.config import BANK_ROLE, POLICY, POOL_SLICES, RouterConfig, RouterParts, bank_role
from napari_paser.session.router.rewards import RegionRewards



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


def network_bank(parts: RouterParts, models, rewards: RegionRewards, lambdas, config: RouterConfig, should_stop
                 ) -> Generator[Progress, None, tuple[PolicyBank | None, dict]]:
    """PaSeR's policy network per lambda, trained by stage 2 on the training regions' reward table."""
    data = rewards.take("train").routing_data(model_costs(models))
    rl = RLConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                  gradient="expected")

    total = len(lambdas) * config.epochs
    policy = PolicyConfig(n_classes=parts.store.n_classes, n_models=len(models), width=config.width,
                          patch=rewards.patch, halo=rewards.halo)
    gen = iter_bank_training(data, lambdas, policy, rl, should_stop)  # every member drawn from rl.seed
    done = 0
    while True:
        try:
            epoch: PolicyEpoch = next(gen)
        except StopIteration as stop:
            return stop.value, {"epochs": config.epochs}
        done += 1
        yield Progress("policy", done, total, f"lambda {epoch.lam:.2f}: epoch {epoch.epoch + 1}/{config.epochs}")


def pool_slices(parts: RouterParts, n: int = POOL_SLICES) -> list[int]:
    """Up to `n` slices evenly spread through the session's volume (every slice when it has fewer)."""
    return parts.store.spread_slices(n)


def ranked_bank(parts: RouterParts, models, rewards: RegionRewards, shares, config: RouterConfig, should_stop
                ) -> Generator[Progress, None, tuple[PolicyBank | None, dict]]:
    """One ranked policy per share: the threshold is that share's quantile of the patch scores over
    `pool_slices` of the session (their maps, shared with the viewer, computed where missing); with a tail,
    a first pass over the same slices sets the entropy level of their `tail` most uncertain pixels."""
    zs = pool_slices(parts)
    level, steps = None, len(zs) * (2 if config.tail else 1)
    if config.tail:
        sample = []
        for i, z in enumerate(zs):
            if _stopped(should_stop):
                return None, {}
            sample.append(entropy_sample(parts.maps_cache.f0_state(z, config.samples).policy_input()))
            yield Progress("thresholds", i + 1, steps, f"f0 entropy of slice {z}")
        level = tail_level(np.concatenate(sample), config.tail)
    cfg = PolicyConfig(n_classes=parts.store.n_classes, n_models=len(models), patch=rewards.patch, halo=rewards.halo,
                       kind="ranked", level=level)
    scores = []
    for i, z in enumerate(zs):
        if _stopped(should_stop):
            return None, {}
        scores.append(patch_score(parts.maps_cache.f0_state(z, config.samples).policy_input(), cfg).numpy().ravel())
        yield Progress("thresholds", steps - len(zs) + i + 1, steps, f"f0 patch scores of slice {z}")
    values = np.concatenate(scores)
    bank = PolicyBank({share: from_share(cfg, values, share) for share in shares})
    thresholds = {f"{k:.3f}": float(p.thresholds[-1]) for k, p in bank.policies.items()}
    return bank, {"pool_slices": len(zs), "pool_patches": int(values.size), "thresholds": thresholds,
                  "tail": config.tail, "entropy_level": level}


def default_share(summary: dict, shares: Sequence[float]) -> tuple[float, str]:
    """The ranked bank's default member from the held-out table, and one line saying why: the share with the
    best held-out mIoU (the cheaper on a tie) when it beats f0 alone there, else the smallest share ("f0 is
    enough on this volume"); the middle share without held-out regions. No margin: a share that leads f0 by a
    hair on the held-out regions can lead on unseen slices too, and the share slider stays the person's."""
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


def install_bank(parts: RouterParts, bank: PolicyBank) -> None:
    """Make `bank` the session's routing policies in one commit: older bank members and a loaded policy.pt
    (trained for other models) are dropped."""
    new = {bank_role(lam): policy for lam, policy in bank.policies.items()}
    old = [r for r in parts.store.state.models if (r.startswith(BANK_ROLE) or r == POLICY) and r not in new]
    parts.model_set.install_models(new, source="train_router", drop=old)
    parts.model_set.bank.chosen = bank.chosen
