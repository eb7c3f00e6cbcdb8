"""The model's guess of each proposed region (`Suggestions`): made when a region is proposed (f0's MC mean, the
routed prediction when the session routes, or f0 assisted by the forest where the forest assist's scores say
so: `session.forest`), stored as a crop so showing it costs a file read, and known
stale once the models or the routing bank change. A suggestion is never a label: it enters the labeled set
only when a person accepts it (`Labeling.accept(..., from_suggestion=True)`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from learners.grid import Patching, halo_window
from learners.routing.router import F0State, execute_routing, policy_probabilities
from learners.uncertainty import receptive_halo, uncertainty_maps
from napari_paser.data.dataset import normalise
from napari_paser.errors import PaserInputError
from napari_paser.memory import release_memory
from napari_paser.session.forest import ForestAssist
from napari_paser.session.maps import MapsCache
from napari_paser.session.models import ModelSet
from napari_paser.session.router.router import Router
from napari_paser.session.routing import ROUTE_BATCH, box_meets, patches_in_view, policy_models, route_slice
from napari_paser.session.store import SUGGESTIONS, State, Store, crop_path, load_crop, save_crop
from sampling.regions import Region


class Suggestions:
    """The stored suggestions of a session, on its store, model set, maps cache (f0's maps and the model version
    they are current for), router (a whole-slice policy's routing map) and forest assist."""

    def __init__(self, store: Store, model_set: ModelSet, maps_cache: MapsCache, router: Router,
                 forest: ForestAssist) -> None:
        self.store, self.model_set, self.maps_cache, self.router = store, model_set, maps_cache, router
        self.forest = forest

    def suggestion(self, region_id: int) -> np.ndarray:
        """The model's guess of a region, (h, w) in the layer convention (class k = k + 1): the one stored
        when it was proposed (what the person was shown), else the current guess (`guessed_patch`, stored).
        Never a label: it enters the labeled set only through `accept(..., from_suggestion=True)`."""
        region = self.store.region(region_id)
        stored = self.stored(region.id)
        if stored is not None:
            return stored
        if self.store.read_only or self.store.closed:
            return self.guessed_patch(region)[0]
        made = self.make([region.id])
        self.commit(lambda s: s.suggestions.update(made), made)
        return load_crop(self.store.folder, region.id, made[str(region.id)]["seq"], SUGGESTIONS)

    def stored(self, region_id: int) -> np.ndarray | None:
        """The suggestion stored for a region when it was proposed (a file read), or None when there is none: a
        caller that must not wait for a model (the GUI thread) asks for the guess elsewhere then."""
        info = self.store.state.suggestions.get(str(int(region_id)))
        if info is not None and crop_path(self.store.folder, int(region_id), info["seq"], SUGGESTIONS).is_file():
            return load_crop(self.store.folder, int(region_id), info["seq"], SUGGESTIONS)
        return None

    def suggestion_source(self, region_id: int) -> str:
        """Where the stored suggestion of a region came from, in words: "f0" (its MC mean), "f0 + forest" (the
        mean of their probabilities), "forest" or "routed (f2 on 3 of 4 patches of this region)"; "" when none
        is stored."""
        info = self.store.state.suggestions.get(str(int(region_id)))
        return "" if info is None else _source_text(info)

    def suggestions_current(self) -> bool:
        """Whether the stored suggestions come from the current models (a retrain, new models or a new routing
        bank make them stale)."""
        routed = self.routes_suggestions
        return all(self._suggestion_fresh(i, routed) for i in self.store.state.suggestions.values())

    @property
    def routes_suggestions(self) -> bool:
        """Whether suggestions are routed predictions: a routing policy and the models it routes between."""
        if not self.model_set.has_policy:
            return False
        try:
            policy_models(self.model_set.pick_policy(None)[1], self.model_set.models, "the routing policy")
        except PaserInputError:
            return False
        return True

    def _suggestion_fresh(self, info: dict, routed: bool) -> bool:
        """Whether a stored suggestion comes from the current models (`routed`: whether the session routes now)."""
        if int(info.get("model_version", -1)) < self.maps_cache.maps_version() or (info.get("source", "f0") == "routed") != routed:
            return False
        if routed:
            return int(info.get("route_version", -1)) >= self.store.state.model_version
        mode = self.forest.mode
        return info.get("assist", "f0") == mode and (mode == "f0" or int(info.get("assist_version", -1)) == self.forest.version)

    def guessed_patch(self, region: Region, samples: int = 5, routes: dict | None = None) -> tuple[np.ndarray, dict]:
        """The current best guess of a region in the layer convention and where it came from: the routed
        prediction (`routed_patch`, `routes` its memo) when the session routes, else f0 assisted by the forest
        where its mode says so (`ForestAssist.window`), else f0's MC mean (`predicted_patch`)."""
        if self.routes_suggestions:
            return self.routed_patch(region, samples, routes=routes)
        _, ys, xs = region.slices
        assisted = self.forest.window(region.z, ys, xs)
        if assisted is not None:
            info = {"source": "f0", "assist": self.forest.mode, "assist_version": self.forest.version}
            return assisted.argmax(0).astype(np.uint8) + 1, info
        return self.predicted_patch(region, samples), {"source": "f0"}

    def predicted_patch(self, region: Region, samples: int = 5) -> np.ndarray:
        """f0's MC-mean prediction of a region in the layer convention: read from the maps where its slice's
        maps are current, else computed on the region with f0's receptive field as context."""
        _, ys, xs = region.slices
        return np.asarray(self._f0_window(region.z, ys, xs, samples)[0]).astype(np.uint8) + 1

    def _f0_window(self, z: int, ys: slice, xs: slice, samples: int) -> tuple[np.ndarray, np.ndarray]:
        """f0's MC-mean prediction and entropy of the window (ys, xs) of slice z: from the maps where they are
        current, else computed on the window with f0's receptive field as context."""
        if z in set(self.maps_cache.fresh_slices()):
            ix = self.store.index(z, ys, xs)
            return np.asarray(self.store.maps["prediction"][ix]), np.asarray(self.store.maps["entropy"][ix], np.float32)
        model = self.model_set.require_f0()
        (wy, wx), inner = halo_window(self.store.shape[-2:], ys, xs, receptive_halo(model))
        raw = np.asarray(self.store.image[self.store.index(z, wy, wx)])
        maps = uncertainty_maps(model, normalise(raw, self.store.state.image["lo"], self.store.state.image["hi"]),
                                samples=samples, seed=z)
        return maps.prediction[inner], maps.entropy[inner].astype(np.float32)

    def routed_patch(self, region: Region, samples: int = 5, lam: float | None = None,
                     routes: dict | None = None) -> tuple[np.ndarray, dict]:
        """The routed prediction of a region (layer convention) and where it came from.

        Only the region and the context routing needs are computed: the routing patches that meet the
        region plus a ring of patches around them (the policy's view and the larger models' halo). f0's
        state of that window comes from the slice's maps where they are current; the policy routes the
        window's patches (it sees the window, not the whole slice), and only the patches meeting the region
        run their routed model. A policy on a
        rows x cols grid (its patches follow the slice's size) reads the whole slice: its routing map of the
        slice and the slice are kept in `routes` (a dict the caller keeps for a batch of regions, so several
        regions of one slice cost one policy pass and one read), and only the patches meeting the region run
        their routed model.
        """
        lam, policy = self.model_set.pick_policy(lam)
        models = policy_models(policy, self.model_set.models, "the routing policy")
        patching, (h, w) = policy.config.patching, self.store.shape[-2:]
        ry, rx = slice(region.y0, region.y0 + region.h), slice(region.x0, region.x0 + region.w)
        if patching.size is None:
            key = (region.z, samples, lam)
            mapped, image = (routes or {}).get(key) or (self.router.route(region.z, samples, lam, execute=False),
                                                        self.store.image_slice(region.z))
            if routes is not None:
                routes[key] = mapped, image  # the slice's routing map and image, read once for its regions
            meets = patches_in_view(mapped, (ry.start, rx.start, ry.stop, rx.stop))
            chosen = mapped.routing[meets].tolist()
            routed = route_slice(models, policy, image, region.z, samples,
                                 self.maps_cache.f0_state(region.z, samples, image), True, lam,
                                 actions=np.where(meets, mapped.routing, 0))  # the rest: f0's, known
            patch = routed.segmentation[ry, rx]
        else:
            ph, pw = patching.size
            ring_y, ring_x = max(1, -(-patching.halo // ph)), max(1, -(-patching.halo // pw))
            r0, r1 = max(0, region.y0 // ph - ring_y), min(-(-h // ph), (region.y0 + region.h - 1) // ph + 1 + ring_y)
            c0, c1 = max(0, region.x0 // pw - ring_x), min(-(-w // pw), (region.x0 + region.w - 1) // pw + 1 + ring_x)
            wy, wx = slice(r0 * ph, min(h, r1 * ph)), slice(c0 * pw, min(w, c1 * pw))
            prediction, entropy = self._f0_window(region.z, wy, wx, samples)
            state = F0State(torch.from_numpy(np.asarray(prediction, np.uint8))[None],
                            torch.from_numpy(np.asarray(entropy, np.float32))[None], self.store.n_classes, samples)
            actions = policy_probabilities(policy, state).argmax(-1)[0]
            cut = Patching(size=(ph, pw), halo=patching.halo)
            window = cut.grid(wy.stop - wy.start, wx.stop - wx.start)
            meets = torch.tensor([box_meets(b, slice(ry.start - wy.start, ry.stop - wy.start),
                                            slice(rx.start - wx.start, rx.stop - wx.start)) for b in window.boxes()])
            actions = torch.where(meets, actions, torch.zeros_like(actions))  # the ring only gives context
            chosen = actions[meets].tolist()
            image = normalise(np.asarray(self.store.image[self.store.index(region.z, wy, wx)]), self.store.state.image["lo"],
                              self.store.state.image["hi"])
            res = execute_routing(models, image[None], actions[None], cut, state, samples, region.z, ROUTE_BATCH,
                                  policy)
            patch = res.segmentation[0][ry.start - wy.start:ry.stop - wy.start, rx.start - wx.start:rx.stop - wx.start]
        counts = np.bincount(np.array(chosen, np.int64), minlength=len(models))
        info = {"source": "routed", "patches": {f"f{k}": int(n) for k, n in enumerate(counts) if n},
                "lam": None if lam is None else float(lam)}
        return np.asarray(patch).astype(np.uint8) + 1, info

    def make(self, region_ids: Sequence[int]) -> dict[str, dict]:
        """Save the model's guess of each region (kept when the stored one is from the current models); returns
        the `State.suggestions` entries to commit."""
        version, out, routed = self.maps_cache.maps_version(), {}, self.routes_suggestions
        seq = int(self.store.state.settings.get("next_suggestion_seq", 0))
        routes: dict = {}  # a whole-slice policy's routing map per slice, for the regions of that slice
        for rid in region_ids:
            info = self.store.state.suggestions.get(str(int(rid)))
            if (info is not None and self._suggestion_fresh(info, routed)
                    and crop_path(self.store.folder, int(rid), info["seq"], SUGGESTIONS).is_file()):
                out[str(int(rid))] = dict(info)
                continue
            patch, where = self.guessed_patch(self.store.pool.region(int(rid)), routes=routes)
            release_memory()  # a routing pass's buffers, before the next region's
            save_crop(self.store.folder, int(rid), seq, patch, SUGGESTIONS)
            out[str(int(rid))] = {"seq": seq, "model_version": version, **where}
            if where["source"] == "routed":
                out[str(int(rid))]["route_version"] = int(self.store.state.model_version)
            seq += 1
        return out

    def commit(self, mutate: Callable[[State], None], made: dict[str, dict]) -> None:
        """Commit `mutate` with the suggestion counter past the seqs of `made` (the entries `make`
        returned); then remove suggestion files nothing names any more."""
        seq = max((int(i["seq"]) + 1 for i in made.values()), default=0)

        def both(s: State) -> None:
            mutate(s)
            s.settings["next_suggestion_seq"] = max(int(s.settings.get("next_suggestion_seq", 0)), seq)

        self.store.commit(both)
        kept = {(int(r), int(i["seq"])) for r, i in self.store.state.suggestions.items()}
        folder = self.store.folder / SUGGESTIONS
        for path in folder.glob("*.npy") if folder.is_dir() else ():
            parts = path.stem.split("-")
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and (int(parts[0]), int(parts[1])) not in kept:
                path.unlink(missing_ok=True)


def _source_text(info: dict) -> str:
    """A stored suggestion's source in words (see `suggestion_source`)."""
    if info.get("source", "f0") != "routed":
        return {"blend": "f0 + forest", "forest": "forest"}.get(info.get("assist", "f0"), "f0")
    patches = info.get("patches") or {}
    total = sum(patches.values())
    larger = {m: n for m, n in patches.items() if m != "f0"}
    if not larger:
        return f"routed (f0 on all {total} patches of this region)" if total else "routed"
    parts = ", ".join(f"{m} on {n}" for m, n in sorted(larger.items()))
    return f"routed ({parts} of {total} patches of this region)"
