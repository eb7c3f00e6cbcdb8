"""The routing benchmark end to end (`run_bench`): stages, tables, methods, noise and sweeps, then
the results JSON (and plot) and the table `paser bench routing` prints.
"""

from __future__ import annotations

from dataclasses import asdict
import json
import math
from pathlib import Path
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from learners.atomic import atomic_write_text
from learners.routing import GRID
from learners.routing.cascade import pareto_front
from learners.routing.router import RoutingCost, model_costs
from napari_paser.bench.routing.config import RoutingBenchConfig, load_inputs, METHOD_LABELS, METHODS, ROLES
from napari_paser.bench.routing.curves import cascade_cost_along_sweep, cascade_points, plot_curves, sweep_curves
from napari_paser.bench.routing.methods import compare, fit_routers, make_tables, run_methods, stage2_rows
from napari_paser.bench.routing.noise import noise_block
from napari_paser.bench.routing.stages import STAGE2_ARMS, StageBar, history_summary, train_stages


def total_ticks(cfg: RoutingBenchConfig) -> int:
    n = (1 + len(STAGE2_ARMS)) * cfg.epochs_rl + 4 + 5 + 6  # stage 2 arms, stages/tables/search, methods, noise
    return n + (len(cfg.sweep_lambdas) * cfg.epochs_rl if cfg.sweep else 0)


def run_bench(cfg: RoutingBenchConfig) -> dict:
    """The whole benchmark; writes cfg.out (JSON, and a PNG beside it with --sweep); returns the results."""
    cfg.check()
    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    inp = load_inputs(cfg)
    x, y = inp.splits["test"]
    with tqdm(total=total_ticks(cfg), disable=not cfg.progress, dynamic_ncols=True) as bar:
        prog = StageBar(bar)
        tr = train_stages(inp, cfg, prog)
        prog.tick("test tables")
        test = make_tables(tr.models, x, y, cfg)
        routers, idk = fit_routers(tr, inp, test, cfg, prog)
        methods = run_methods(tr.models, routers, x, y, test, cfg, inp.n_classes, prog.tick)
        s2 = stage2_rows(tr, test, cfg)
        cost = RoutingCost.of(tr.models, *x.shape[-2:], GRID, cfg.samples)
        comparison = compare(methods, pareto_front(cascade_points(test.cascade, cost, cfg)))
        noise = noise_block(tr.models, routers, inp, methods, cfg, prog.tick)
        curves = sweep_curves(tr.models, inp, tr.rl_data, test, cfg, bar) if cfg.sweep else None
    results = {
        "dataset": inp.dataset, "command": cfg.command(), "run": str(cfg.run),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "machine": machine(),
        "provenance": provenance(cfg),
        "normalisation": inp.normalisation,
        "split_sizes": {k: len(v[0]) for k, v in inp.splits.items()},
        "image_size": list(x.shape[-2:]),
        "params": {r: int(sum(p.numel() for p in m.parameters())) for r, m in zip(ROLES, tr.models)},
        "cost_shares": dict(zip(ROLES, map(float, model_costs(tr.models)))),
        "methods": methods,
        "method_labels": METHOD_LABELS,
        "comparison": comparison,
        "stage2": {"paser": {"gradient": cfg.gradient, **history_summary(tr.history), "test": s2["paser"]},
                   **{name: {**history_summary(hist), "test": s2[name]} for name, (_, hist) in tr.arms.items()}},
        "stage3": {"epochs": len(tr.finetune.history), "patches_trained": tr.finetune.patches_trained,
                   "final_greedy_reward": tr.finetune.history[-1].greedy_reward if tr.finetune.history else None},
        "pretrained_test_iou": pretrained_models(cfg),
        "idk_search": idk,
        "noise": noise,
        "seconds": round(time.time() - started, 1),
    }
    return write_results(results, curves, cfg, methods)


def write_results(results: dict, curves: dict | None, cfg: RoutingBenchConfig, methods: dict) -> dict:
    """The JSON (NaN as null), and with curves the PNG beside it."""
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if curves is not None:
        results["curves"] = curves
        results["comparison"]["along_sweep"] = cascade_cost_along_sweep(curves)
        png = out.with_suffix(".png")
        plot_curves(curves, methods, png, f"{Path(results['dataset']).name}: test mIoU vs GFLOPs (lambda={cfg.lam})")
        results["plot"] = str(png)
    atomic_write_text(out, json.dumps(_clean(results), indent=2))
    return results


def provenance(cfg: RoutingBenchConfig) -> dict:
    """How the data and the models were made, from the files `paser data degrade` and `paser train` leave."""
    out = {}
    for key, path in (("degradation", Path(cfg.data) / "degradation.json"), ("train", Path(cfg.run) / "run.json")):
        try:
            out[key] = json.loads(path.read_text())
        except (OSError, ValueError):
            out[key] = None
    return out


def machine() -> dict:
    """Where the numbers were measured: platform, cores, Python and torch, recorded with every result."""
    import os
    import platform

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def pretrained_models(cfg: RoutingBenchConfig) -> dict:
    """Test mIoU of the models before stage 3, as `paser train` measured them (metrics.json)."""
    try:
        metrics = json.loads((Path(cfg.run) / "metrics.json").read_text())
        return {r: metrics["models"][r]["iou"] for r in ROLES}
    except (OSError, ValueError, KeyError):
        return {}


def _clean(obj):
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def format_table(results: dict) -> str:
    """The printed results table: one row per method, noise columns beside it."""
    noise = results["noise"]["methods"]
    head = (f"{'method':<23}{'mIoU':>7}{'GFLOPs':>9}{'IoU/GF':>8}{'f0':>6}{'f1':>6}{'f2':>6}"
            f"{'reward':>8}{'noisy':>7}{'drop':>7}{'up c/n':>12}")
    rows = [head]
    for name in METHODS:
        m, z = results["methods"][name], noise[name]
        s = m["patch_share"]
        rows.append(f"{name:<23}{m['iou']:>7.3f}{m['gflops_per_image']:>9.3f}{m['iou_per_gflop']:>8.3f}"
                    f"{s['f0']:>6.2f}{s['f1']:>6.2f}{s['f2']:>6.2f}{m['reward']:>8.3f}{z['iou']:>7.3f}"
                    f"{z['iou_drop']:>7.3f}{z['share_upward_clean']:>6.2f}/{z['share_upward']:.2f}")
    rows.append("; ".join(f"{k}: {v}" for k, v in METHOD_LABELS.items()))
    c = results["comparison"]
    need = c["cascade_gflops_at_paser_iou_over_paser"]
    rows.append(f"PaSeR/f2: IoU {c['paser_iou_over_f2']:.1%}, GFLOPs {c['paser_gflops_over_f2']:.1%}; cascade at "
                f"PaSeR's IoU: {'unreachable' if need is None else f'{need:.2f}x'} PaSeR's GFLOPs; "
                f"oracle - PaSeR: IoU {c['oracle_minus_paser_iou']:+.3f}, reward {c['oracle_minus_paser_reward']:+.3f}")
    for name, arm in results["stage2"].items():
        label = f"{name} ({arm['gradient']})" if "gradient" in arm else name
        rows.append(f"stage 2 {label}: greedy rl R "
                    f"{arm['final_greedy_reward']:.3f}, converged at epoch {arm['epochs_to_converge']}; test mIoU "
                    f"{arm['test']['iou']:.3f}, reward {arm['test']['reward']:.3f}, shares "
                    + "/".join(f"{v:.2f}" for v in arm["test"]["patch_share"].values()))
    return "\n".join(rows)
