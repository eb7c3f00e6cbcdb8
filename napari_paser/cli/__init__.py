"""The `paser` command line tool.

    paser data synth   --out DIR --n N --size S --seed K      synthetic dataset folder
    paser data degrade --data DIR --out DIR --preset lowres    low-resolution copy of a dataset
    paser data info    --data DIR                              shape, classes, splits
    paser train        --data DIR --out RUN [--preset quick|paper] [--shipped] [--epochs N] [--seed K] [--overwrite]
    paser predict      --run RUN --image STACK.tif --out DIR     f0 segmentation + entropy/BALD maps
    paser segment      --run RUN --image VOLUME --out OUT.zarr [--what maps|route|f2] [--workers N | --scheduler ADDR]
    paser route        --run RUN --image STACK.tif --out DIR [--lambda L | --model f0|f1|f2]   PaSeR (or one model alone)
    paser session train-router --session DIR [--shares 0.1,0.2] [--policy network --lambdas 0,0.01] [--no-retrain]   router
    paser session export-run   --session DIR --out RUN [--overwrite]   the session's models and policies as a run
    paser session relink       --session DIR --image PATH      a session reading its image in place: the image moved
    paser models       [--size 224x256] [--json]               parameters and GFLOPs per preset
    paser weights      --out napari_paser/weights [--role f0|f1|f2] [--steps N]  rebuild the shipped starting weights
    paser bench routing --data DIR --run RUN --out results.json [--lambda L] [--sweep]   PaSeR vs baselines
    paser bench al     --data DIR --samplers random,entropy,... --budgets 8,16,32 --seeds 3 --out results.json [--dqn AGENT.pt]
    paser al train-dqn --data DIR | --synthetic N --out AGENT.pt [--episodes E]   train the RALIS query agent (imitation + DQN)
    paser demo         [--out demo_out]                        the headless pipeline end to end
    paser demo --gui   [--out demo_out] [--close]              napari walkthrough, a screenshot per step (Xvfb without a display)

User errors print one line saying what is wrong and how to fix it (exit code 2), never a
traceback.

The package, by job: `parser` (`build_parser`), `entry` (`main`: running a command, the one-line user
errors and exit status 2), and the commands by concern with their options: `data`, `training`
(train, weights, policy, models), `inference` (predict, route, segment), `session`, `bench` (bench
routing, bench al, al train-dqn) and `demo`.
"""

from __future__ import annotations

from napari_paser.cli.entry import main
from napari_paser.cli.parser import build_parser

__all__ = ["build_parser", "main"]
