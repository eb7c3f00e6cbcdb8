"""The forest that assists f0 (`ForestAssist`): an ilastik-style random forest on 3D multiscale features of
the accepted regions, whose class probabilities join f0's wherever the person's own corrections say they
help.

Why: with few labels a forest on filter features (what a scientist would otherwise open in ilastik) and
the pretrained UNet make different mistakes; the mean of their probabilities is often better than either,
but not on every scan (on some the forest only costs). So the session measures it on the labels it
already has, at no extra labeling cost:

- each retrain first scores the regions accepted since the previous one with the two guesses the person
  could have been shown for them: f0 as it is before this retrain trains on them (the model the person
  corrected) and the forest the previous retrain fitted (on the same regions f0 had learnt from), so
  neither has seen the regions it is scored on and both had the same labels; the held-out ("val")
  regions are scored each time by the current f0 and forest (neither trains on them);
- each retrain's confusion matrices of "f0", "blend" (the mean of f0's and the forest's probabilities)
  and "forest" on its new regions are kept in session.json; the mode is whichever of f0 and the blend
  has the higher mIoU over them (the forest alone is scored and shown, never chosen: where it helps,
  the blend helped at least as much, and where it fails it fails by far) (`choose_mode`: each older batch weighs DECAY times the next,
  as f0 gains on the forest while labels grow) once MIN_REGIONS regions are scored (a tie keeps f0), so
  the first batch, which no earlier forest can score, is guessed by f0 alone;
- then the forest is refitted on every accepted training region.

Where the mode is not "f0" the region suggestions (when the session does not route) and `assisted`
(the session's best guess of any consecutive slices, for scripts and benchmarks) use it; f0's maps stay f0's own
(they are its uncertainty). The forest lives in memory (never pickled: a session folder holds no code) and
is refitted from the accepted regions when a reopened session first needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

import numpy as np
import torch

from learners.grid import halo_window
from learners.inference import predict_logits
from learners.metrics import confusion_matrix, iou_from_confusion
from learners.training import IGNORE_INDEX
from learners.uncertainty import receptive_halo
from napari_paser.data.dataset import normalise
from napari_paser.errors import PaserInputError
from napari_paser.session.models import ModelSet
from napari_paser.session.progress import Progress
from napari_paser.session.store import AcceptedRegion, State, Store

MODES = ("f0", "blend", "forest")  # what `assisted` can give; all three are scored
CHOICES = ("f0", "blend")  # what the assist chooses between: the forest alone lost to the blend on every dataset
MIN_REGIONS = 3  # regions scored before the assist may leave f0
DECAY = 0.5  # weight of a retrain's scores relative to the next one's
TREES = 50
MAX_PIXELS = 100_000  # training pixels per fit (a seeded subset beyond this), as ilastik caps large label sets
Z_HALO = 4  # slices on each side for the 3D features
XY_HALO = 32  # pixels on each side: the filters reach 4 x the largest sigma, so a window gets the whole slice's features
TILE = 256  # window side of a whole-slice prediction (bounds the 3D feature block's memory)
KEY = "forest"  # State.settings[KEY]: the assist's record


def _baselines():
    """The forest's module, imported when the assist first works (scikit-learn's ensemble and skimage's
    features take a second to import; a session that never retrains should not pay it on open)."""
    from napari_paser.data import baselines

    return baselines


def _key(rec: AcceptedRegion) -> str:
    return f"{rec.region_id}-{rec.seq}"


class ForestAssist:
    """The assisting forest of a session, on its store (image, accepted regions, session.json) and model set
    (f0)."""

    def __init__(self, store: Store, model_set: ModelSet) -> None:
        self.store, self.model_set = store, model_set
        self.forest = None  # fitted on the training regions named by self._fitted_on
        self._fitted_on: tuple[str, ...] | None = None
        self._scorer: tuple[tuple[str, ...], object] | None = None  # the last retrain's forest and its regions
        self._features: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # region key -> (features, class labels)

    # ------------------------------------------------------------------ the record

    @property
    def record(self) -> dict:
        """The assist's record in session.json: enabled, mode, version, confusions, scored regions, mIoUs."""
        return self.store.state.settings.get(KEY, {})

    @property
    def enabled(self) -> bool:
        return bool(self.record.get("enabled", True))

    @property
    def mode(self) -> str:
        """"f0" or "blend": what the session's guesses use ("f0" while disabled or unjudged)."""
        return str(self.record.get("mode", "f0")) if self.enabled else "f0"

    @property
    def version(self) -> int:
        """Bumped by every refit and every change of mode or of enabled: stored suggestions name it."""
        return int(self.record.get("version", 0))

    def set_enabled(self, enabled: bool) -> None:
        """Let the forest join f0's guesses where the scores say so (True, the default) or never (False)."""
        def mutate(s: State) -> None:
            rec = s.settings.setdefault(KEY, {})
            rec["enabled"] = bool(enabled)
            rec["version"] = int(rec.get("version", 0)) + 1

        self.store.commit(mutate)

    def summary(self) -> str:
        """One line for the dock: the mode and the scores behind it."""
        if not self.enabled:
            return "forest assist: off"
        rec = self.record
        n, miou = int(rec.get("regions", 0)), rec.get("miou") or {}
        if n < MIN_REGIONS or not miou:
            return f"forest assist: f0 alone until {MIN_REGIONS} regions are scored ({n} so far; scored at each retrain)"
        scores = ", ".join(f"{m} {miou[m]:.3f}" for m in MODES if miou.get(m) is not None)
        return f"forest assist: {self.mode} (mIoU on {n} regions before training on them, recent ones weigh more: {scores})"

    # ------------------------------------------------------------------ learning (a retrain's first step)

    def learn(self, samples: int, should_stop: Callable[[], bool] | None) -> Generator[Progress, None, None]:
        """Score the regions accepted since the last call, refit the forest on every accepted training region
        and commit the mode; a retrain runs it before it trains f0 (so f0 is still the model the person
        corrected). Does nothing while disabled or without f0."""
        f0 = self.model_set.models.get("f0")
        if not self.enabled or f0 is None:
            return
        rec = self.record
        accepted = list(self.store.state.accepted)
        train = [r for r in accepted if r.split != "val"]
        val = [r for r in accepted if r.split == "val"]
        keys = {_key(r): r for r in train}
        before = tuple(k for k in rec.get("fitted", []) if k in keys)  # what the last retrain's forest learnt
        scored = set(rec.get("scored", [])) | set(rec.get("fitted", []))
        new = [r for k, r in keys.items() if k not in scored]
        c = self.store.n_classes
        total, done = len(train) + len(val) + 2, 0
        for r in train + val:
            if should_stop is not None and should_stop():
                return
            self._region_features(r)
            done += 1
            yield Progress("forest", done, total, f"forest: features of {done} of {len(train) + len(val)} regions")
        batch = {m: np.zeros((c, c), np.int64) for m in MODES}
        scored_now = 0
        if new and before:
            scorer = self._scorer[1] if self._scorer is not None and self._scorer[0] == before else \
                self._fit([keys[k] for k in before])
            for r in new:
                if should_stop is not None and should_stop():
                    return
                self._add(batch, r, scorer, f0)
                scored_now += 1
        done += 1
        yield Progress("forest", done, total, f"forest: scored {scored_now} new regions")
        refit = bool(train) and (self.forest is None or self._fitted_on != tuple(keys))
        if refit:  # a retrain with no new regions (e.g. f2's for the router) keeps the fitted forest
            self.forest, self._fitted_on = self._fit(train), tuple(keys)
        if train:
            self._scorer = (self._fitted_on, self.forest)
        val_confusion = {m: np.zeros((c, c), np.int64) for m in MODES}
        if self.forest is not None:
            for r in val:
                self._add(val_confusion, r, self.forest, f0)
        batches = list(rec.get("batches", []))
        if scored_now:
            batches.append({"regions": scored_now, "confusion": {m: batch[m].tolist() for m in MODES}})
        n_val = len(val) if self.forest is not None else 0
        mode, miou = choose_mode(batches, val_confusion, n_val)
        n_total = sum(int(b["regions"]) for b in batches) + n_val

        def mutate(s: State) -> None:
            out = s.settings.setdefault(KEY, {})
            changed = refit or mode != out.get("mode", "f0")  # stored suggestions stay current otherwise
            out.update({"mode": mode, "version": int(out.get("version", 0)) + int(changed), "regions": n_total,
                        "batches": batches, "scored": sorted(scored | {_key(r) for r in new}), "fitted": list(keys),
                        "miou": miou})

        self.store.commit(mutate)
        yield Progress("forest", total, total, self.summary())

    def _add(self, confusion: dict[str, np.ndarray], rec: AcceptedRegion, forest, f0) -> None:
        """Add one region's confusions of f0, the forest and their mean to `confusion`."""
        feats, labels = self._region_features(rec)
        valid = labels != IGNORE_INDEX
        p_forest = _baselines().forest_probabilities(forest, feats, self.store.n_classes)
        p_f0 = self._f0_probabilities(f0, *self.store.region(rec.region_id).slices)
        for mode, p in (("f0", p_f0), ("blend", (p_f0 + p_forest) / 2), ("forest", p_forest)):
            confusion[mode] += confusion_matrix(p.argmax(0), labels, self.store.n_classes, valid)

    def _region_features(self, rec: AcceptedRegion) -> tuple[np.ndarray, np.ndarray]:
        """(features, class labels with IGNORE_INDEX where unpainted) of an accepted region, computed once."""
        key = _key(rec)
        if key not in self._features:
            crop = np.asarray(self.store.accepted_labels(rec.region_id)).astype(np.int16) - 1
            labels = np.where(crop >= 0, crop, IGNORE_INDEX).astype(np.uint8)
            self._features[key] = (self._window_features(self.store.image, *self.store.region(rec.region_id).slices),
                                   labels)
        return self._features[key]

    def _fit(self, records: Sequence[AcceptedRegion]):
        pairs = [self._region_features(r) for r in records]
        return _baselines().fit_pixel_forest([f for f, _ in pairs], [lab for _, lab in pairs], n_estimators=TREES,
                                             max_pixels=MAX_PIXELS, seed=0)

    # ------------------------------------------------------------------ guesses

    def _current_forest(self):
        """The forest on every accepted training region (refitted when they changed since its fit: an accept,
        an unaccept, a reopen), or None."""
        train = [r for r in self.store.state.accepted if r.split != "val"]
        keys = tuple(_key(r) for r in train)
        if not train:
            return None
        if self.forest is None or self._fitted_on != keys:
            self.forest, self._fitted_on = self._fit(train), keys
        return self.forest

    def window(self, z: int, ys: slice, xs: slice) -> np.ndarray | None:
        """(C, h, w) assisted class probabilities of a window of the session's image, or None when the mode is
        f0 (the caller keeps f0's own guess)."""
        mode = self.mode
        forest = None if mode == "f0" else self._current_forest()
        if forest is None:
            return None
        p_forest = _baselines().forest_probabilities(forest, self._window_features(self.store.image, z, ys, xs),
                                                     self.store.n_classes)
        if mode == "forest":
            return p_forest
        return (self._f0_probabilities(self.model_set.require_f0(), z, ys, xs) + p_forest) / 2

    def assisted(self, volume, lo: float | None = None, hi: float | None = None, mode: str | None = None) -> np.ndarray:
        """(N, C, H, W) float32 class probabilities of every slice of a (N, H, W) image ((C, H, W) of an (H, W)
        one; raw grey levels, normalised with the session's lo/hi unless given) in the current mode: f0's
        softmax, the forest's, or their mean (`mode` overrides the assist's own). The 3D features read
        neighbouring slices of `volume`, so give it consecutive slices."""
        if volume.ndim == 2:
            return self.assisted(np.asarray(volume)[None], lo, hi, mode)[0]
        lo = self.store.state.image["lo"] if lo is None else lo
        hi = self.store.state.image["hi"] if hi is None else hi
        f0, mode = self.model_set.require_f0(), mode or self.mode
        if mode not in MODES:
            raise PaserInputError(f"unknown forest assist mode {mode!r}: choose one of {', '.join(MODES)}")
        forest = None if mode == "f0" else self._current_forest()
        n, h, w = volume.shape
        out = np.zeros((n, self.store.n_classes, h, w), np.float32)
        for z in range(n):
            for y in range(0, h, TILE):
                for x in range(0, w, TILE):
                    ys, xs = slice(y, min(h, y + TILE)), slice(x, min(w, x + TILE))
                    p = None if mode == "forest" else _f0_window(f0, volume, z, ys, xs, lo, hi)
                    if forest is not None:
                        base = _baselines()
                        pf = base.forest_probabilities(forest, base.window_features(volume, z, ys, xs, lo, hi, Z_HALO,
                                                                                    XY_HALO), self.store.n_classes)
                        p = pf if p is None else (p + pf) / 2
                    out[z, :, ys, xs] = p
        return out

    def _window_features(self, volume, z: int, ys: slice, xs: slice) -> np.ndarray:
        lo, hi = self.store.state.image["lo"], self.store.state.image["hi"]
        return _baselines().window_features(volume, z, ys, xs, lo, hi, Z_HALO, XY_HALO)

    def _f0_probabilities(self, f0, z: int, ys: slice, xs: slice) -> np.ndarray:
        return _f0_window(f0, self.store.image, z, ys, xs, self.store.state.image["lo"], self.store.state.image["hi"])


def _f0_window(f0, volume, z: int, ys: slice, xs: slice, lo: float, hi: float) -> np.ndarray:
    """(C, h, w) f0's softmax of a window of slice z of a (Z, H, W) or (H, W) array, with its receptive field's
    context read around it (so a window's guess equals the whole slice's there)."""
    (wy, wx), (iy, ix) = halo_window(volume.shape[-2:], ys, xs, receptive_halo(f0))
    raw = np.asarray(volume[wy, wx] if volume.ndim == 2 else volume[z, wy, wx])
    probs = torch.softmax(predict_logits(f0, normalise(raw, lo, hi)), 1)[0].numpy()
    return probs[:, iy, ix]


def choose_mode(batches: Sequence[dict], val_confusion: dict[str, np.ndarray] | None = None, n_val: int = 0,
                decay: float = DECAY) -> tuple[str, dict[str, float | None]]:
    """The mode the scores favour (one of CHOICES) and each mode's mIoU over them: the retrains' batch
    confusions (oldest first; each older one weighs `decay` times the next) plus the held-out regions'
    (`n_val` of them, weight 1); "f0" until MIN_REGIONS regions are scored, or unless the blend scores above
    f0."""
    pooled = {m: np.zeros_like(np.asarray(val_confusion[m], np.float64)) if val_confusion else None for m in MODES}
    for age, b in enumerate(reversed(batches)):
        for m in MODES:
            add = np.asarray(b["confusion"][m], np.float64) * decay ** age
            pooled[m] = add if pooled[m] is None else pooled[m] + add
    if val_confusion:
        pooled = {m: pooled[m] + np.asarray(val_confusion[m], np.float64) for m in MODES}
    miou = {m: None if pooled[m] is None else _miou(pooled[m]) for m in MODES}
    n = sum(int(b["regions"]) for b in batches) + n_val
    if n < MIN_REGIONS or miou["f0"] is None:
        return "f0", miou
    blend = miou["blend"]
    return ("blend" if blend is not None and blend > miou["f0"] else "f0"), miou


def _miou(confusion: np.ndarray) -> float | None:
    """Mean IoU over the classes present in a confusion matrix (None when it is empty)."""
    if confusion.sum() == 0:
        return None
    iou = iou_from_confusion(confusion)
    present = confusion.sum(1) > 0
    return float(np.nanmean(iou[present])) if present.any() else None
