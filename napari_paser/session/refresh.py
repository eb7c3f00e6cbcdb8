"""Which maps to refresh after new weights, in which order, and what a person is told about it.

After f0 retrains every slice's maps come from the previous f0 ("stale": `State.maps` names the
f0 version each slice's maps came from; new f1/f2 weights or policies leave them current).
Refreshing all of them took 107 s for 50 slices of 501x501, so the GUI refreshes first what the
person sees and what the next proposals read (the slice on screen, then the slices of the
proposals, pending ones first), and the rest when they are shown; the headless default still
refreshes every stale slice, in the same order. A cancel reports exactly which slices were
refreshed and how many keep the previous model's maps.

Work that reads the fresh maps runs after a finished refresh through hooks its owner registers
(`after_refresh`): the router's code registers the rethreshold of a stale ranked bank, so this
module never calls the router.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from napari_paser.errors import PaserInputError
from napari_paser.session.jobs import Progress

if TYPE_CHECKING:  # the job modules run on a Session; core imports them
    from napari_paser.session.core import Session

RefreshHook = Callable[["Session", int, "Callable[[], bool] | None"], Generator[Progress, None, bool]]
"""Work after a finished refresh: (session, samples, should_stop) -> progress, True when it redid something."""
_AFTER_REFRESH: list[RefreshHook] = []


def after_refresh(hook: RefreshHook) -> RefreshHook:
    """Run `hook` after every refresh that was not cancelled, in the order registered (once per hook)."""
    if hook not in _AFTER_REFRESH:
        _AFTER_REFRESH.append(hook)
    return hook


@dataclass
class RefreshReport:
    """What a refresh did: slices refreshed (in order), slices still stale, proposals redone."""

    refreshed: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)
    cancelled: bool = False
    proposals: str = ""  # "8 new proposals", "proposals not refreshed: ...", or ""
    volume: bool = True  # False for a 2D image (no slice numbers to report)
    rethresholded: bool = False  # a hook after the refresh (`after_refresh`: the router's `rethreshold`) made the
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


def stale_slices(session: Session) -> list[int]:
    """Slices whose maps come from an older f0: shown as they are until refreshed, skipped by samplers."""
    version = session.maps_version()
    return sorted(int(z) for z, v in session.state.maps.items() if v < version)


def refresh_order(session: Session, focus: int | None = None) -> tuple[list[int], list[int]]:
    """Stale slices as (now, later). now: the slice `focus` (on screen), then the slices of the proposals,
    pending ones first by rank (what the person visits next and what repeating the proposal reads);
    later: the other stale slices, nearest to `focus` first."""
    stale = set(stale_slices(session))
    proposals = sorted(session.state.proposals, key=lambda p: (session.is_accepted(p.region_id), p.rank))
    now: list[int] = []
    for z in ([int(focus)] if focus is not None else []) + [int(p.z) for p in proposals]:
        if z in stale and z not in now:
            now.append(z)
    centre = int(focus) if focus is not None else 0
    later = sorted(stale - set(now), key=lambda z: (abs(z - centre), z))
    return now, later


def refresh(session: Session, focus: int | None = None, everything: bool = True, samples: int = 5,
            should_stop: Callable[[], bool] | None = None) -> Generator[Progress, None, RefreshReport]:
    """Recompute stale maps in `refresh_order` (all of them, or with everything=False only the "now"
    part), then repeat the last proposal request on the fresh slices. Returns what was done."""
    now, later = refresh_order(session, focus)
    todo = now + later if everything else now
    done = 0
    if todo:
        done = yield from session.map_steps(session.require_f0(), todo, samples, None, should_stop)
    report = RefreshReport(refreshed=todo[:done], stale=stale_slices(session), cancelled=done < len(todo),
                           volume=len(session.shape) == 3)
    if not report.cancelled:
        for hook in _AFTER_REFRESH:
            redone = yield from hook(session, samples, should_stop)
            report.rethresholded = report.rethresholded or redone
    request = dict(session.state.proposal_request or {})
    if request and not report.cancelled and not (should_stop is not None and should_stop()):
        try:
            session.propose(**request)
        except PaserInputError as exc:  # e.g. fewer regions left than k: keep the old proposals
            report.proposals = f"proposals not refreshed: {exc}"
        else:
            report.proposals = f"{len(session.state.proposals)} new proposals"
        yield Progress("propose", 1, 1, report.proposals)
    return report
