"""The session's models and routing policies as a run folder `paser route` and `paser segment` take."""

from __future__ import annotations

import json
from pathlib import Path

from learners.atomic import atomic_write_text
from learners.checkpoint import save_checkpoint
from learners.routing.bank import save_bank
from learners.routing.policy import save_policy
from napari_paser.errors import PaserInputError
from napari_paser.session.router.config import ROUTER_FILE, RouterParts



def export_run(parts: RouterParts, out: str | Path, overwrite: bool = False) -> Path:
    """Write the session's models and policies as a run folder `paser route` and `paser segment` take:
    f0.pt, f1.pt, f2.pt, policies/lambda-<L>.pt, policy.pt (the bank's default member, the one routing
    without a lambda uses; else the loaded policy) and run.json (where it came from)."""
    out = Path(out)
    if "f0" not in parts.model_set.models:
        raise PaserInputError("the session has no models to export: load or train them first")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PaserInputError(f"{out} is not empty: choose a new folder, or pass overwrite=True (--overwrite)")
    meta = {"class_names": list(parts.store.classes.names), "source": f"session {parts.store.folder.resolve()}",
            "session_version": parts.store.state.model_version}
    roles = [r for r in ("f0", "f1", "f2") if r in parts.model_set.models]
    for role in roles:
        save_checkpoint(out / f"{role}.pt", parts.model_set.models[role], {**meta, "role": role})
    policy, lam = parts.model_set.policy, None
    if len(parts.model_set.bank):
        save_bank(out, parts.model_set.bank, meta)
        lam, policy = parts.model_set.bank.nearest(parts.model_set.bank.default_lambda)
    if policy is not None:
        save_policy(out / "policy.pt", policy, {**meta, "lambda": lam})
    router = parts.store.folder / ROUTER_FILE
    info = {**meta, "models": roles, "lambdas": parts.model_set.bank.lambdas, "policy_lambda": lam,
            "router": json.loads(router.read_text()) if router.is_file() else None}
    atomic_write_text(out / "run.json", json.dumps(info, indent=2))
    return out
