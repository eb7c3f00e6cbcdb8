"""`paser bench routing`: PaSeR against every baseline on a dataset's test split.

Pipeline, on one run folder from `paser train` (f0, f1, f2 pretrained on the pretrain split):
stage 2 trains the policy on the rl split (by default along the exact expected-reward
gradient; for the ablation, policies from the same initial weights trained by sampled REINFORCE
with and without the mean-reward baseline); stage 3 fine-tunes
copies of f1, f2 with the policy on the finetune split. The fine-tuned set {f0, f1', f2'} is
what every method is evaluated with, so rows differ only in how patches are routed; the
stage-2 policies (every ablation arm) are scored beside them, and the pretrained
models' test IoU is copied from the run's metrics.json, to show what stage 3 changed.
IDK-cascade thresholds are grid-searched on the val split (appendix B4); its IoU-matched
variant (Table 2) is the cheapest setting on the test table reaching PaSeR's test IoU.
PaSeR, the cascades and f0 alone are executed on the test images; methods that only run
models in eval mode are scored on the test `PatchTable` (identical segmentation, one pass of
the large model instead of several). FLOPs come from real forward passes per
patch (`RoutingCost`). Sweeps and the cascade's Pareto curve are scored on the tables too.

Noise (the paper's Table 3): copies of f1', f2' are fine-tuned briefly on clean + noisy
patches of the pretrain split; f0 and the policy are not retrained; every method runs on
the noisy test images with these models and is compared with its clean row.

Splits here are ~50x smaller than the paper's (436/422/422 images), so policy training uses
smaller batches and a larger learning rate than appendix B2 (`--batch-size`, `--rl-lr`),
otherwise the policy would take a handful of Adam steps in total.

The package, one module per job: `config` (options, method names, inputs), `stages` (stages 2 and 3),
`methods` (every method's row on the test split), `noise`, `curves` (the lambda sweeps and the
cascade's front) and `run` (the whole benchmark, its results file and table).
"""

from napari_paser.bench.routing.config import METHODS, SWEEP_LAMBDAS, RoutingBenchConfig, parse_noise
from napari_paser.bench.routing.methods import gflops_at_iou
from napari_paser.bench.routing.run import format_table, run_bench
from napari_paser.bench.routing.stages import epochs_to_converge

__all__ = ["METHODS", "SWEEP_LAMBDAS", "RoutingBenchConfig", "epochs_to_converge", "format_table", "gflops_at_iou",
           "parse_noise", "run_bench"]
