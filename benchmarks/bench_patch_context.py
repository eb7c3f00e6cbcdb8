"""Why the larger models lost in routing (issue 12, item 0): context at patch borders and starting weights.

Data: the SOC slices (`../shared/data/soc_pristine`) degraded with `lowres-shading`, central
`--crop` square, splits of `make_splits(50, seed 0)`: models train on the first `--train-slices`
slices of "pretrain" (every pixel labeled, the session's crop training `RETRAIN_CONFIG` for
`--steps` steps), and are scored on the 10 "test" slices.

Models: f0 = the shipped starting weights (tiny) fine-tuned; the larger model of `--role` (f1: medium,
f2: wide, the sizes that ship) from scratch and, when `napari_paser/weights/<role>-3class.pt` exists,
from the shipped starting weights. Each runs the shipped routed-inference path (`execute_routing`, every patch to f1) at patch
sizes 32 and 64 px with halos 0/8/16/32 px, beside its whole-slice prediction; the patch table
(`build_patch_table`, f0 as PaSeR computes it: MC mean) gives, per setting, the share of test
patches where the larger model beats f0 by more than 0.01 IoU, the oracle's mIoU (best model per
patch) and the GFLOPs the larger model spends per slice.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_patch_context.py [--role f1|f2] [--steps 300] [--crop 256]
        [--patches 32,64] [--halos 0,8,16,32] [--out benchmarks/results/patch-context-soc.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, SOC, require
from learners.atomic import atomic_write_text
from learners.generators import drain
from learners.grid import Patching
from learners.metrics import confusion_matrix, iou_from_confusion
from learners.modes import eval_mode
from learners.routing.router import RoutingCost, build_patch_table, execute_routing
from learners.training import iter_training
from learners.unet import UNet, preset_config
from napari_paser.data.dataset import make_splits, normalise, read_dataset, robust_range
from napari_paser.data.degrade import degrade, get_degradation
from napari_paser.session.training import RETRAIN_CONFIG
from napari_paser.weights import SHIPPED, has_starting_weights, starting_model



def load(crop: int, preset: str) -> tuple[np.ndarray, np.ndarray, dict]:
    ds = read_dataset(require(SOC))
    x = degrade(normalise(ds.images, *robust_range(ds.images)), get_degradation(preset), seed=0)
    h, w = x.shape[-2:]
    c = min(crop, h, w)
    ys, xs = slice((h - c) // 2, (h - c) // 2 + c), slice((w - c) // 2, (w - c) // 2 + c)
    return x[:, ys, xs].astype(np.float32), ds.labels[:, ys, xs], make_splits(len(x), seed=0)


def miou(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.nanmean(iou_from_confusion(confusion_matrix(pred, truth, 3))))


def trained(model: UNet, x: np.ndarray, y: np.ndarray, steps: int, seed: int) -> tuple[UNet, float]:
    cfg = replace(RETRAIN_CONFIG, epochs=1, steps_per_epoch=steps, keep=0.0, seed=seed)
    t = time.time()
    drain(iter_training(model, list(x), list(y), None, None, cfg))
    return model.eval(), round(time.time() - t, 1)


def score_larger(f0: UNet, f1: UNet, x: np.ndarray, y: np.ndarray, samples: int, role: str,
                 patches: list[int], halos: list[int]) -> dict:
    """The larger model `f1` (role `role`) whole-slice and patch by patch at every patch size and halo,
    against f0 per patch."""
    with torch.no_grad(), eval_mode(f1):
        whole = f1(torch.from_numpy(x)[:, None]).argmax(1).numpy()
    out = {"whole_slice_miou": miou(whole, y), "settings": []}
    for size in patches:
        for halo in halos:
            patching = Patching(size=(size, size), halo=halo)
            with torch.no_grad():
                res = execute_routing([f0, f1], x, np.ones((len(x), len(patching.grid(*x.shape[-2:]))), int),
                                      patching, samples=samples)
                table, _ = build_patch_table([f0, f1], x, y, patching, samples)
            iou = np.nan_to_num(table.iou[:, :, :2], nan=0.0)
            gain = iou[..., 1] - iou[..., 0]
            best = np.nan_to_num(table.iou, nan=-1.0).argmax(-1)  # the oracle: the better model per patch
            cost = RoutingCost.of([f0, f1], *x.shape[-2:], patching, samples)
            out["settings"].append({
                "patch": size, "halo": halo, f"{role}_routed_miou": miou(res.segmentation, y),
                f"{role}_beats_f0_share": round(float((gain > 0.01).mean()), 3),
                f"f0_beats_{role}_share": round(float((gain < -0.01).mean()), 3),
                "mean_patch_gain": round(float(gain.mean()), 4),
                "oracle_miou": table.miou(best),
                f"{role}_gflops_per_slice": round(cost.patch[1] * len(gain[0]) / 1e9, 3),
            })
            s = out["settings"][-1]
            print(f"  patch {size} halo {halo}: {role} {s[f'{role}_routed_miou']:.4f} beats f0 on "
                  f"{s[f'{role}_beats_f0_share']:.0%} (f0 wins {s[f'f0_beats_{role}_share']:.0%}), "
                  f"oracle {s['oracle_miou']:.4f}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=("f1", "f2"), default="f1", help="the larger model: f1 (medium) or f2 (wide)")
    p.add_argument("--patches", default="32,64", help="routing patch sizes in pixels, comma-separated")
    p.add_argument("--halos", default="0,8,16,32", help="halos of context in pixels, comma-separated")
    p.add_argument("--steps", type=int, default=300, help="crop-training steps of every model (session default 300)")
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--train-slices", type=int, default=12)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--preset", default="lowres-shading")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "patch-context-soc.json")
    args = p.parse_args()
    patches, halos = ([int(v) for v in text.split(",")] for text in (args.patches, args.halos))
    torch.set_num_threads(1)
    x, y, splits = load(args.crop, args.preset)
    tr, te = splits["pretrain"][:args.train_slices], splits["test"]
    size = SHIPPED[args.role]
    larger = preset_config(size, n_classes=3)
    f0, f0_s = trained(starting_model("f0", preset_config("tiny", n_classes=3)), x[tr], y[tr], args.steps, args.seed)
    with torch.no_grad(), eval_mode(f0):
        f0_one = miou(f0(torch.from_numpy(x[te])[:, None]).argmax(1).numpy(), y[te])
    print(f"f0 (shipped, {args.steps} steps, {f0_s} s): {f0_one:.4f} one pass", flush=True)
    result = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_before": list(os.getloadavg()), "torch_threads": 1},
              "dataset": str(SOC), "preset": args.preset, "crop": args.crop, "train_slices": tr, "test_slices": te,
              "steps": args.steps, "f0": {"miou_one_pass": f0_one, "train_s": f0_s}, args.role: {}, "size": size}
    starts = {"scratch": lambda: UNet(larger)}
    if has_starting_weights(args.role, larger):
        starts["shipped"] = lambda: starting_model(args.role, larger)
    for name, make in starts.items():
        torch.manual_seed(args.seed)
        model, secs = trained(make(), x[tr], y[tr], args.steps, args.seed)
        print(f"{args.role} {size} from {name} ({secs} s):", flush=True)
        result[args.role][name] = {"train_s": secs, **score_larger(f0, model, x[te], y[te], args.samples, args.role,
                                                                   patches, halos)}
    result["machine"]["load_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
