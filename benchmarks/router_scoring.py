"""Scoring a session's router on the SOC test slices: the data, the rows and the oracles of the session
routing benchmark (`bench_session_routing.py`), shared with the benchmarks that re-score its sessions
(ranking, focus, model bands, the reference router).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
import torch

from common import BATTERY, SOC, require, timed
from learners.routing.reward import best_actions, best_at_share
from learners.routing.router import RoutingCost, build_patch_table, execute_routing, model_costs, route, table_summary
from napari_paser.data.dataset import normalise, robust_range
from napari_paser.data.degrade import degrade, get_degradation
from napari_paser.jobs.predict import WHOLE
from napari_paser.session.core import Session
from napari_paser.session.router import held_out_choice

CLASSES = ("pore", "YSZ", "nickel")


def load_soc(crop: int, pool_slices: int, n_test: int, preset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pool images raw-scaled uint16, pool labels, test images, test labels), degraded, centre-cropped."""
    images, labels = tifffile.imread(require(SOC) / "images.tif"), tifffile.imread(SOC / "labels.tif")
    x = degrade(normalise(images, *robust_range(images)), get_degradation(preset), seed=0)
    h, w = x.shape[-2:]
    c = min(crop, h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2
    x, labels = x[:, y0:y0 + c, x0:x0 + c], labels[:, y0:y0 + c, x0:x0 + c]
    raw = (x * 60000).astype(np.uint16)
    return raw[:pool_slices], labels[:pool_slices], raw[-n_test:], labels[-n_test:]


def row(result, labels, wall) -> dict:
    s = result.summary(labels, 3)
    return {"iou": s["iou"], "gflops_per_image": s["gflops_per_image"], "wall_s": round(wall, 2),
            "patch_share": s["patch_share"]}


def evaluate(session: Session, test_raw: np.ndarray, test_y: np.ndarray, samples: int, summary: dict,
             measured: tuple[dict, object] | None = None) -> tuple[dict, object]:
    """(every method on the test slices with the session's models and bank, the test patch table);
    `measured`: the single models' rows and the table already measured for these models (then only the
    bank is routed)."""
    lo, hi = session.state.image["lo"], session.state.image["hi"]
    x = normalise(test_raw, lo, hi)
    models = [session.models[r] for r in ("f0", "f1", "f2")]
    policy = session.pick_policy()[1]  # the default member: every member routes on the same patches
    patching = policy.config.patching
    ranked = session.bank.knob == "share"
    with torch.no_grad():
        if measured is None:
            table, _ = build_patch_table(models, x, test_y, patching, samples)
            methods = single_rows(models, x, test_y, table, patching, samples)
        else:
            methods, table = dict(measured[0]), measured[1]
        costs = model_costs(models)
        cost = RoutingCost.of(models, *x.shape[-2:], patching, samples)
        paser = {}
        for key, pol in sorted(session.bank.policies.items()):
            res, wall = timed(lambda: route(models, pol, x, samples=samples))
            oracle = best_actions(table.iou, costs, 0.0 if ranked else key).numpy()  # ranked: the accuracy bound
            paser[f"{key:.3f}"] = {**row(res, test_y, wall),
                                   "oracle": table_summary(table, oracle, cost.for_table(oracle, True))}
    methods["paser_by_lambda"] = paser
    if ranked:  # the product routes with the default member: held-out levels do not set the share
        key = f"{session.bank.default_lambda:.3f}"
        methods["paser"] = {**paser[key], "share": float(key), "chosen_by": "the bank's default member"}
        methods["oracle"] = {**paser[key]["oracle"], "lambda": 0.0}
        methods["oracle_at_share"] = share_oracle(table, methods["paser"]["patch_share"]["f2"], cost)
        return methods, table
    return pick_paser(methods, summary, session.bank.default_lambda), table


def share_oracle(table, share: float, cost: RoutingCost) -> dict:
    """The best routing with f2 on the same share of the test patches as PaSeR's (`best_at_share`): what a
    perfect ranking would reach at PaSeR's compute."""
    actions = best_at_share(table.iou, share)
    return {**table_summary(table, actions, cost.for_table(actions, True)), "share": round(float(share), 4)}


@contextmanager
def session_copy(folder: str | Path):
    """An open Session on a throw-away copy of a benchmark session folder (its lock left behind): experiments
    on a finished run's models that leave the run as it was."""
    with tempfile.TemporaryDirectory(prefix="bsr-copy-") as tmp:
        shutil.copytree(folder, Path(tmp) / "s", ignore=shutil.ignore_patterns("session.lock"))
        s = Session.open(Path(tmp) / "s")
        try:
            yield s
        finally:
            s.close()


def last_entries(results: dict) -> list[dict]:
    """Each run's last entry of a results file: the models its session folder holds now."""
    last = {}
    for entry in results["results"]:
        last[entry["session"]] = entry
    return list(last.values())


def single_rows(models, x: np.ndarray, test_y: np.ndarray, table, patching, samples: int) -> dict:
    """f0 one pass, f0 as PaSeR computes it (MC mean), f1 and f2 on every routing patch."""
    n, p = len(x), table.iou.shape[1]
    methods = {}
    res, wall = timed(lambda: execute_routing(models, x, np.zeros((n, 1)), WHOLE, samples=0))
    methods["f0"] = {**row(res, test_y, wall), "label": "f0 (one pass)"}
    res, wall = timed(lambda: execute_routing(models, x, np.zeros((n, 1)), WHOLE, samples=samples))
    methods["f0_mc"] = {**row(res, test_y, wall), "label": "f0 (MC mean, as PaSeR computes it)"}
    for k in (1, 2):
        res, wall = timed(lambda: execute_routing(models, x, np.full((n, p), k), patching, samples=samples))
        methods[f"f{k}"] = {**row(res, test_y, wall), "label": f"f{k} on every routing patch"}
    return methods


def pick_paser(methods: dict, summary: dict, default: float) -> dict:
    """The "paser" row: what the held-out regions recommend (`held_out_choice`: a bank member, or f0 alone,
    PaSeR's f0 = the MC mean), never the test split; the bank's default member without held-out regions."""
    choice = held_out_choice(summary) if summary.get("policies") else default
    best = f"{default if choice is None else choice:.3f}"
    if choice is None:
        methods["paser"] = {**methods["f0_mc"], "lambda": None, "chosen_by": "held-out accepted regions: f0 alone"}
    else:
        methods["paser"] = {**methods["paser_by_lambda"][best], "lambda": float(best),
                            "chosen_by": "held-out accepted regions"}
    methods["oracle"] = {**methods["paser_by_lambda"][best]["oracle"], "lambda": float(best)}
    return methods


def accept_round(session: Session, labels: np.ndarray, k: int, sampler: str, seed: int) -> float:
    """Propose k regions with `sampler` and accept them with the ground truth; seconds spent proposing."""
    t = time.time()
    props = session.propose(k, sampler, seed=seed)
    spent = time.time() - t
    for p in props:
        r = session.region(p.region_id)
        session.accept(p.region_id, labels[r.slices].astype(np.uint8) + 1)
    return spent


def load_battery(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float32, labels in the session's dark-to-bright class order) of battery set `name`."""
    root = require(BATTERY) / name
    x, y = tifffile.imread(root / "images.tif").astype(np.float32), tifffile.imread(root / "labels.tif")
    means = [float(x[y == c].mean()) for c in range(3)]
    order = np.argsort(means)  # darkest first
    remap = np.zeros(3, np.uint8)
    remap[order] = np.arange(3)
    return x, remap[y]
