"""Every benchmark of this folder, and the quick ones run in turn (`make bench`).

`QUICK` runs unattended in minutes and writes its JSON under benchmarks/results/; `BY_HAND` names
every other benchmark script with what it needs (a display, a trained run, a results file to
re-score, or long trainings), so nothing here is run without saying so.

    .venv/bin/python benchmarks/run_all.py [--only foundation,soc_quick] [--list]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

QUICK: dict[str, list[str]] = {
    "foundation": ["bench_foundation.py"],
    "soc_quick": ["bench_train_quality.py"],
    "samplers": ["bench_samplers.py"],  # seconds; its --volume mode (GBs of maps) is run by hand
}
"""name -> the script and its arguments, for the benchmarks `make bench` runs."""

BY_HAND: dict[str, str] = {
    "battery_label_consistency.py": "a diagnostic: the battery labels between slices, their pixel detail, a leave-one-slice-out forest",
    "battery_threshold_ceiling.py": "a diagnostic: the best per-slice two-threshold rule on the battery nano-CT labels",
    "bench_al.py": "trains a DQN agent per dataset, then `paser bench al` with five samplers",
    "bench_battery_routing.py": "labeling rounds, router training and routing on the battery nano-CT (and SOC rows)",
    "bench_coldstart.py": "labeling loops through a real Session per preset, seed and budget (SOC)",
    "bench_effort.py": "labeling loops that paint or correct, per sampler, dataset and seed (SOC, soc_stack, battery)",
    "bench_experts.py": "the noisy-digits experts experiment, several trainings",
    "bench_live_routing.py": "needs --data and a trained --run",
    "bench_lr_agent.py": "trainings under every learning-rate schedule",
    "bench_model_bands.py": "re-scores session folders of bench_session_routing.py (--session)",
    "bench_patch_context.py": "trains f1/f2 at each patch context on the SOC slices",
    "bench_ranking.py": "re-scores session folders of bench_session_routing.py (--sessions)",
    "bench_reference_router.py": "re-scores a bench_session_routing.py results file (--results)",
    "bench_retrain_scheduler.py": "labeling loops through a real Session per schedule and seed (SOC)",
    "bench_router_focus.py": "re-scores a bench_session_routing.py results file (--results)",
    "bench_routing.py": "trains f0/f1/f2 and a policy bank per dataset, then `paser bench routing --sweep`",
    "bench_segment.py": "`paser segment` on a synthetic 2048 x 2048 zarr, interrupted and resumed",
    "bench_session_propose.py": "proposal timing through a real Session on the SOC volume",
    "bench_session_routing.py": "labeling rounds, router training and routing per sampler and budget (SOC)",
    "bench_session_tiles.py": "maps of a 2048 x 2048 slice, tiled against whole (GB of memory)",
    "bench_ui_actions_2048.py": "needs a display (runs itself under xvfb-run): the dock's actions on 32 x 2048 x 2048 (GBs)",
    "bench_ui_first_actions.py": "needs a display (xvfb-run) and two checkouts to compare",
    "bench_ui_latency.py": "needs a display (runs itself under xvfb-run)",
    "bench_zcontext.py": "trainings of f0 and f1 with and without the neighbouring slices as input channels (soc_stack)",
    "ui_train_router_check.py": "needs a display (xvfb-run): Train router with its defaults in a real window",
    "ui_correct.py": "needs a display (xvfb-run): the correcting workflow in a real window",
    "forest_assist_diagnostic.py": "a diagnostic: labeling loops with a forest's help (--out)",
    "noise_diagnostic.py": "a diagnostic: needs --data and a trained --run",
    "policy_robustness.py": "a diagnostic: needs --data and a trained --run",
    "routing_gain_diagnostic.py": "a diagnostic: needs --data and a trained --run",
}
"""script -> why `make bench` does not run it; run it as its docstring says."""


def listing() -> str:
    quick = [f"  {name}: {' '.join(cmd)}" for name, cmd in QUICK.items()]
    by_hand = [f"  {script}: {why}" for script, why in sorted(BY_HAND.items())]
    return "\n".join(["quick (make bench):", *quick, "by hand (see each script's docstring):", *by_hand])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(QUICK)}")
    parser.add_argument("--list", action="store_true", help="list every benchmark and exit")
    args = parser.parse_args()
    if args.list:
        print(listing())
        return 0
    names = args.only.split(",") if args.only else list(QUICK)
    unknown = set(names) - set(QUICK)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {', '.join(QUICK)}")
    for name in names:
        script, *rest = QUICK[name]
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *rest], check=True)
    print(f"ran {len(names)} quick benchmark(s); {len(BY_HAND)} more run by hand: `run_all.py --list` names them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
