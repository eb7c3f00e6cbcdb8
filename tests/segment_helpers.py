"""A tiny run folder (f0, f1, f2, a policy that routes to every model) for the volume tests."""

from pathlib import Path

import numpy as np
import torch

from learners.checkpoint import save_checkpoint
from learners.routing.policy import PolicyConfig, PolicyNet, save_policy
from learners.unet import UNet, UNetConfig


def make_run(folder: Path, dropout: float = 0.2, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for role, base, depth, p in (("f0", 4, 2, dropout), ("f1", 4, 1, 0.0), ("f2", 8, 2, 0.0)):
        save_checkpoint(folder / f"{role}.pt", UNet(UNetConfig(n_classes=3, base=base, depth=depth, dropout=p)).eval())
    policy = PolicyNet(PolicyConfig(n_classes=3, n_models=3, grid=(4, 4), width=4))
    with torch.no_grad():
        for name, prm in policy.named_parameters():  # an untrained policy is uniform (f0 everywhere);
            if "norm" not in name:  # random convolutions route patches to every model
                prm.normal_(0, 1.0)
        policy.head.bias.zero_()
        states = _f0_states(folder, tile=32)
        policy.head.bias.copy_(-policy.eval()(states).mean((0, 1)))  # centred logits: every model gets patches
    save_policy(folder / "policy.pt", policy, {"lambda": 0.3})
    return folder


def volume(shape=(3, 96, 80), seed=0) -> np.ndarray:
    """uint16 blobs with noise: structure for the models and a range for the normalisation."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.random(shape), (0, 4, 4))
    v = (v - v.min()) / np.ptp(v) * 40000 + rng.normal(0, 800, shape) + 5000
    return np.clip(v, 0, 65535).astype(np.uint16)


def _f0_states(run: Path, tile: int) -> torch.Tensor:
    """Policy inputs of f0 on the 32 px tiles of `volume()`: what the test policy will see."""
    from learners.checkpoint import load_checkpoint
    from learners.routing.policy import policy_state
    from learners.uncertainty import uncertainty_maps
    from napari_paser.data.dataset import normalise, robust_range

    v = volume((2, 96, 80))
    x = normalise(v, *robust_range(v))
    f0 = load_checkpoint(run / "f0.pt").model
    preds, ents = [], []
    for z in range(len(x)):
        m = uncertainty_maps(f0, x[z], samples=2)
        for y0 in range(0, 96 - tile + 1, tile):
            for x0 in range(0, 80 - tile + 1, tile):
                preds.append(m.prediction[y0:y0 + tile, x0:x0 + tile])
                ents.append(m.entropy[y0:y0 + tile, x0:x0 + tile])
    return policy_state(torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(ents)), 3)
