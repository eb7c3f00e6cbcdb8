"""router.json as terminal text (`paser session train-router`): each bank member's held-out mIoU, cost
and patch shares, and what the held-out regions advise."""

from __future__ import annotations


def format_router(summary: dict) -> str:
    """A terminal table of router.json: each lambda's held-out mIoU, GFLOPs per patch and shares (as `paser policy`)."""
    from napari_paser.jobs.policy import format_bank

    head = (f"{summary['train_regions']} training regions, {summary['val_regions']} held out, "
            f"{summary['patch'][0]}x{summary['patch'][1]} px patches, models {', '.join(summary['models'])}")
    if not summary.get("policies"):
        return head + "\nno held-out regions to score the policies on: accept more regions (every 5th is held out)"
    largest = f"{summary['models'][-1]}_alone"
    table = {"policies": summary["policies"], "default_lambda": summary["default_lambda"], largest: summary[largest]}
    rows = format_bank(table, key=summary.get("knob", "lambda"), score="held mIoU", cost="GF/patch")
    alone = [f"{k[:2]:>7}{summary[k]['iou']:>10.3f}" for k in summary if k.endswith("_alone") and k != largest]
    if summary.get("knob") == "share":  # the middle models: not routed to, not retrained
        return "\n".join([head, rows, alone[0]] + _ranked_notes(summary))
    if "held_out_choice" not in summary:  # router.json of an older version
        return "\n".join([head, rows] + alone)
    choice = summary["held_out_choice"]
    advice = (f"held-out regions recommend lambda {choice:g}" if choice is not None else
              "f0 alone beats every policy on the held-out regions: route f0 alone (--model f0), or label more "
              "regions across the volume and train the router again")
    return "\n".join([head, rows] + alone + [advice])


def _ranked_notes(summary: dict) -> list[str]:
    """What a ranked bank does and why its default share is what it is (the held-out table's verdict; they lie
    near the labels: they guide, and the share control stays the person's)."""
    largest = summary["models"][-1]
    verdict = summary.get("verdict") or (f"routing sends the {summary['default_lambda']:.0%} most uncertain "
                                         f"patches to {largest}")
    return [verdict + f" (f0's entropy on {summary['pool_slices']} slices ranks the patches);",
            f"the held-out rows ({summary['val_regions']} regions near your labels) guide: label regions across the "
            "volume and compare"]
