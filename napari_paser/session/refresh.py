"""Which maps to refresh after new weights, in which order, and what a person is told about it.

After f0 retrains every slice's maps come from the previous f0 ("stale": `State.maps` names the
f0 version each slice's maps came from; new f1/f2 weights or policies leave them current).
Refreshing all of them took 107 s for 50 slices of 501x501, so the GUI refreshes first what the
person sees and what the next proposals read (the slice on screen, then the slices of the
proposals, pending ones first), and the rest when they are shown; the headless default still
refreshes every stale slice, in the same order. A cancel reports exactly which slices were
refreshed and how many keep the previous model's maps.

The refresh itself is `MapsCache.refresh` (`session.maps`); work that reads the fresh maps runs after
a finished refresh through the hooks its owner subscribes there (`MapsCache.after_refresh`: the router's
rethreshold of a stale ranked bank, the labeled set's repeat of the last proposal request). This module
holds what a refresh reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RefreshReport:
    """What a refresh did: slices refreshed (in order), slices still stale, proposals redone."""

    refreshed: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)
    cancelled: bool = False
    proposals: str = ""  # "8 new proposals", "proposals not refreshed: ...", or ""
    volume: bool = True  # False for a 2D image (no slice numbers to report)
    rethresholded: bool = False  # work after the refresh (the router's `rethreshold`) made the
    # ranked routing bank again for the new f0

    def message(self) -> str:
        """One line for a notification, e.g. "maps refreshed for slices 3, 7; 48 slices keep the previous
        model's maps and refresh when shown"."""
        if not self.volume:
            maps = "maps refreshed" if self.refreshed else "maps not refreshed: they are the previous model's"
        elif self.refreshed:
            maps = f"maps refreshed for {_slices(self.refreshed)}"
        else:
            maps = "no maps refreshed"
        parts = [("cancelled: " if self.cancelled else "") + maps]
        if self.volume and self.stale:
            n = len(self.stale)
            verbs = ("slices", "keep", "refresh") if n != 1 else ("slice", "keeps", "refreshes")
            parts.append(f"{n} {verbs[0]} {verbs[1]} the previous model's maps and {verbs[2]} when shown")
        if self.rethresholded:
            parts.append("routing shares set again for the new f0")
        if self.proposals:
            parts.append(self.proposals)
        return "; ".join(parts)


def _slices(zs: list[int]) -> str:
    """"slice 3" or "slices 3, 7, 10-14" (runs of consecutive slices shortened)."""
    if len(zs) == 1:
        return f"slice {zs[0]}"
    ordered, runs = sorted(set(zs)), []
    for z in ordered:
        if runs and z == runs[-1][1] + 1:
            runs[-1][1] = z
        else:
            runs.append([z, z])
    text = ", ".join(str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}-{b}" for a, b in runs)
    return f"slices {text}"
