"""Dataset folders: reading with clear errors, writing atomically, slice splits, normalisation.

A dataset is a folder with `images.tif` and `labels.tif` (multi-page TIFF, same (N, H, W)
shape, one class index per label pixel), optionally `classes.json` (list of class names) and
`split.json` ({split name: [slice indices]}). The shared `soc_pristine` data set (`../shared/data/` beside
the repository) is one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile

from learners.atomic import atomic_path, atomic_write_text
from napari_paser.errors import PaserInputError

IMAGES_FILE, LABELS_FILE = "images.tif", "labels.tif"
CLASSES_FILE, SPLIT_FILE = "classes.json", "split.json"
# The PaSeR paper's D_PT (pretrain models), D_RL (train the router), D_FT (fine-tune jointly),
# plus validation (thresholds, early stopping) and a held-out test set.
SPLIT_NAMES: tuple[str, ...] = ("pretrain", "rl", "finetune", "val", "test")
MIN_SLICES_FOR_SPLIT = 5
_SUBSAMPLE = 16_000_000  # robust_range estimates on about this many elements at most


@dataclass
class Dataset:
    """Image stack (raw dtype) with full-resolution labels, class names and slice splits.

    `split` is {} when the stack has fewer than 5 slices and no split.json (too few to split).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    root: Path | None = None
    split: dict[str, list[int]] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def take(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of the slices in split `name`."""
        if name not in self.split:
            raise PaserInputError(
                f"Dataset {self.root or '(in memory)'} has no split {name!r} (it has "
                f"{sorted(self.split) or 'none'}); make one with make_splits (needs >= "
                f"{MIN_SLICES_FOR_SPLIT} slices) or add it to {SPLIT_FILE}."
            )
        idx = self.split[name]
        return self.images[idx], self.labels[idx]


# ----------------------------------------------------------------------------- validation


def validate_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int | None = None,
    source: str = "arrays",
    *,
    images_name: str | None = None,
    labels_name: str | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Check an image/label pair and return (images (N,H,W), labels uint8 (N,H,W), n_classes).

    A 2D pair becomes one slice. `n_classes` None means max label + 1 (at least 2). Messages
    name `images_name` / `labels_name` (default: derived from `source`) and say how to fix it.
    """
    iname = images_name or f"images ({source})"
    lname = labels_name or f"labels ({source})"
    images = _as_stack(np.asarray(images), iname)
    labels = _as_stack(np.asarray(labels), lname)
    if images.shape != labels.shape:
        raise PaserInputError(
            f"{iname} has shape {images.shape} but {lname} has shape {labels.shape}: labels "
            "need one class per image pixel; crop or resample one to the other's shape."
        )
    _check_finite(images, iname)
    labels, n_classes = _check_labels(labels, n_classes, lname)
    return images, labels, n_classes


def _as_stack(arr: np.ndarray, name: str) -> np.ndarray:
    """(H, W) -> (1, H, W); reject RGB and other dimensionalities."""
    if arr.ndim == 4 and arr.shape[-1] in (3, 4):
        raise PaserInputError(
            f"{name} looks like an RGB(A) stack, shape {arr.shape}: convert it to greyscale "
            "(one value per pixel), e.g. with skimage.color.rgb2gray."
        )
    if arr.ndim not in (2, 3):
        raise PaserInputError(
            f"{name} has {arr.ndim} dimensions, shape {arr.shape}: need a 2D slice (H, W) or "
            "a stack of slices (N, H, W); split channels or time points first."
        )
    if arr.size == 0:
        raise PaserInputError(f"{name} is empty, shape {arr.shape}: it holds no pixels.")
    if arr.dtype.kind not in "biuf":
        raise PaserInputError(f"{name} has dtype {arr.dtype}: need real numbers (int or float).")
    return arr[None] if arr.ndim == 2 else arr


def _check_finite(images: np.ndarray, name: str) -> None:
    if images.dtype.kind != "f":
        return
    bad = ~np.isfinite(images).all(axis=(1, 2))
    if bad.any():
        raise PaserInputError(
            f"{name} holds NaN or inf values in slice(s) {_few(np.flatnonzero(bad))}: replace "
            "them (e.g. np.nan_to_num) or drop those slices."
        )


def _check_labels(labels: np.ndarray, n_classes: int | None, name: str) -> tuple[np.ndarray, int]:
    """Integer class indices 0..n_classes-1, returned as uint8."""
    if labels.dtype.kind not in "biu":
        raise PaserInputError(
            f"{name} has dtype {labels.dtype}: labels must be integer class indices 0..C-1; "
            "round and cast them (e.g. labels.astype(np.uint8)) or export them as integers."
        )
    lo, hi = int(labels.min()), int(labels.max())
    limit = n_classes if n_classes is not None else 256
    if n_classes is not None and not 2 <= n_classes <= 256:
        raise PaserInputError(f"n_classes={n_classes} for {name}: need between 2 and 256 classes.")
    if lo < 0 or hi >= limit:
        values = np.unique(labels[(labels < 0) | (labels >= limit)])
        slices = np.flatnonzero(((labels < 0) | (labels >= limit)).any(axis=(1, 2)))
        raise PaserInputError(
            f"{name} holds values {_few(values)} outside 0..{limit - 1} (slice(s) {_few(slices)}): "
            f"labels are class indices 0..C-1 with C={limit}; remap them, or give the right "
            f"number of classes (n_classes / {CLASSES_FILE})."
        )
    return labels.astype(np.uint8, copy=False), n_classes if n_classes is not None else max(hi + 1, 2)


def _few(values: Sequence[int] | np.ndarray, n: int = 8) -> str:
    """At most `n` values for a message, then a count of the rest."""
    vals = [int(v) for v in np.asarray(values).ravel()]
    text = ", ".join(map(str, vals[:n]))
    return text + (f", ... ({len(vals) - n} more)" if len(vals) > n else "")


# ----------------------------------------------------------------------------- reading


def read_dataset(folder: str | Path, n_classes: int | None = None) -> Dataset:
    """Read and validate a dataset folder; every problem is a PaserInputError saying the fix.

    n_classes: from the argument, else classes.json, else max label + 1. A split.json is used
    (and validated) when present, otherwise splits come from `make_splits` with seed 0.
    """
    root = Path(folder)
    _check_folder(root)
    images = _read_tiff(root / IMAGES_FILE)
    labels = _read_tiff(root / LABELS_FILE)
    names = _read_classes(root / CLASSES_FILE, n_classes)
    n = n_classes if n_classes is not None else (len(names) if names else None)
    images, labels, n = validate_arrays(
        images, labels, n, str(root),
        images_name=str(root / IMAGES_FILE), labels_name=str(root / LABELS_FILE),
    )
    names = names or default_class_names(n)
    split_path = root / SPLIT_FILE
    if split_path.exists():
        split = load_split(split_path, len(images))
    elif len(images) >= MIN_SLICES_FOR_SPLIT:
        split = make_splits(len(images))
    else:
        split = {}
    return Dataset(images, labels, tuple(names), root, split)


def default_class_names(n_classes: int) -> tuple[str, ...]:
    return tuple(f"class {k}" for k in range(n_classes))


def _check_folder(root: Path) -> None:
    if not root.exists():
        raise PaserInputError(
            f"Dataset folder {root} does not exist: check the path, or create it with "
            f"write_dataset (it needs {IMAGES_FILE} and {LABELS_FILE})."
        )
    if not root.is_dir():
        raise PaserInputError(
            f"{root} is a file, not a dataset folder: give the folder that holds "
            f"{IMAGES_FILE} and {LABELS_FILE}."
        )
    present = sorted(p.name for p in root.iterdir())
    for name in (IMAGES_FILE, LABELS_FILE):
        if name not in present:
            what = "is empty" if not present else f"has no {name} (it has: {_names(present)})"
            kind = "greyscale image" if name == IMAGES_FILE else "label"
            raise PaserInputError(
                f"Dataset folder {root} {what}: put the {kind} stack there as a multi-page TIFF "
                f"named {root / name}."
            )


def _names(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _read_tiff(path: Path) -> np.ndarray:
    """All pages as one array; RGB(A) is refused here, where the photometric tag is known."""
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series
            rgb = any(s.keyframe.photometric == tifffile.PHOTOMETRIC.RGB for s in series)
            if len(series) > 1 and len({s.shape for s in series}) == 1:
                arr = np.stack([s.asarray() for s in series])
            else:
                arr = series[0].asarray()
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as exc:
        raise PaserInputError(
            f"{path} is not a readable TIFF file ({type(exc).__name__}: {exc}): re-save it as a "
            "(multi-page) TIFF, e.g. with tifffile.imwrite or Fiji."
        ) from None
    if rgb or (arr.ndim == 4 and arr.shape[-1] in (3, 4)):
        raise PaserInputError(
            f"{path} is an RGB(A) image, shape {arr.shape}: convert it to greyscale (one value "
            "per pixel, e.g. skimage.color.rgb2gray or Fiji Image > Type > 16-bit)."
        )
    return arr


def read_image(path: str | Path) -> np.ndarray:
    """A greyscale TIFF slice or stack as (N, H, W), checked like a dataset's images.tif."""
    path = Path(path)
    if not path.is_file():
        raise PaserInputError(f"Image file {path} does not exist: check the path (a TIFF slice or stack).")
    arr = _as_stack(_read_tiff(path), str(path))
    _check_finite(arr, str(path))
    return arr


def _read_classes(path: Path, n_classes: int | None) -> tuple[str, ...] | None:
    if not path.exists():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PaserInputError(
            f"{path} is not valid JSON ({exc}): write a list of class names."
        ) from None
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(s, str) for s in names):
        raise PaserInputError(
            f"{path} must hold a JSON list of at least 2 class names, e.g. [\"pore\", \"binder\", "
            f"\"active\"]; it holds {names!r:.80}."
        )
    if n_classes is not None and n_classes != len(names):
        raise PaserInputError(
            f"{path} lists {len(names)} classes but n_classes={n_classes} was given: make them "
            "agree (edit the file or drop the argument)."
        )
    return tuple(names)


# ----------------------------------------------------------------------------- writing


def write_dataset(
    folder: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    split: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """Validate and write a dataset folder atomically (file by file); returns the folder.

    Images keep their dtype (zlib-compressed TIFF), labels are uint8. Without `split`, splits
    are made with `make_splits` (seed 0) when there are at least 5 slices.
    """
    root = Path(folder)
    n = len(class_names) if class_names is not None else None
    images, labels, n = validate_arrays(images, labels, n, str(root))
    names = tuple(class_names) if class_names is not None else default_class_names(n)
    if split is None and len(images) >= MIN_SLICES_FOR_SPLIT:
        split = make_splits(len(images))
    root.mkdir(parents=True, exist_ok=True)
    _write_tiff(root / IMAGES_FILE, images)
    _write_tiff(root / LABELS_FILE, labels)
    atomic_write_text(root / CLASSES_FILE, json.dumps(list(names)) + "\n")
    if split is not None:
        save_split(root / SPLIT_FILE, split, len(images))
    elif (root / SPLIT_FILE).exists():
        (root / SPLIT_FILE).unlink()  # a stale split of an earlier, larger stack
    return root


def _write_tiff(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, compression="zlib", photometric="minisblack")


# ----------------------------------------------------------------------------- splits


def make_splits(
    n_slices: int,
    seed: int = 0,
    val: float = 0.1,
    test: float = 0.2,
    mode: Literal["blocks", "interleaved"] = "blocks",
) -> dict[str, list[int]]:
    """Split slice indices into SPLIT_NAMES, by slice and never by pixel, fixed by `seed`.

    Sizes: test and val get round(fraction * n) slices (at least 1 each), the rest is cut into
    three near-equal parts (pretrain, rl, finetune; earlier parts get the remainder).
    mode "blocks" (default): each split is one contiguous z range and the seed shuffles the
    order of the ranges. Adjacent tomography slices are strongly correlated, so interleaving
    would let test slices be near-copies of training slices; blocks leak only at the edges.
    mode "interleaved": slices shuffled by the seed, for stacks of independent slices.
    """
    sizes = _split_sizes(n_slices, val, test)
    rng = np.random.default_rng(seed)
    if mode == "interleaved":
        order = rng.permutation(n_slices)
        bounds = np.cumsum([0, *sizes.values()])
        parts = zip(sizes, bounds[:-1], bounds[1:])
        return {k: sorted(int(i) for i in order[a:b]) for k, a, b in parts}
    if mode != "blocks":
        raise PaserInputError(f"split mode {mode!r}: use 'blocks' or 'interleaved'.")
    names = [SPLIT_NAMES[i] for i in rng.permutation(len(SPLIT_NAMES))]
    out, start = {}, 0
    for name in names:
        out[name] = list(range(start, start + sizes[name]))
        start += sizes[name]
    return {k: out[k] for k in SPLIT_NAMES}


def _split_sizes(n_slices: int, val: float, test: float) -> dict[str, int]:
    if n_slices < MIN_SLICES_FOR_SPLIT:
        raise PaserInputError(
            f"Cannot split {n_slices} slice(s): splits are by slice and need at least "
            f"{MIN_SLICES_FOR_SPLIT} ({', '.join(SPLIT_NAMES)}, one slice each); add slices "
            f"or give an explicit {SPLIT_FILE}."
        )
    if not (0 <= val < 1 and 0 <= test < 1):
        raise PaserInputError(f"val={val}, test={test}: fractions must lie in [0, 1).")
    n_test = max(1, round(test * n_slices))
    n_val = max(1, round(val * n_slices))
    rest = n_slices - n_test - n_val
    if rest < 3:
        raise PaserInputError(
            f"val={val} and test={test} leave {rest} of {n_slices} slices for pretrain/rl/finetune;"
            " lower them so at least 3 remain."
        )
    parts = [rest // 3 + (1 if i < rest % 3 else 0) for i in range(3)]
    return dict(zip(SPLIT_NAMES, [*parts, n_val, n_test]))


def check_split(
    split: Mapping[str, Sequence[int]], n_slices: int, source: str = "split"
) -> dict[str, list[int]]:
    """Known names, integer indices in range, no slice in two splits; returns sorted lists."""
    unknown = set(split) - set(SPLIT_NAMES)
    if unknown:
        raise PaserInputError(
            f"{source}: unknown split name(s) {sorted(unknown)}; valid: {', '.join(SPLIT_NAMES)}."
        )
    out: dict[str, list[int]] = {}
    seen: dict[int, str] = {}
    for name, indices in split.items():
        if isinstance(indices, (str, bytes)) or not all(_is_int(i) for i in indices):
            raise PaserInputError(f"{source}: split {name!r} must be a list of integer slice indices.")
        bad = [int(i) for i in indices if not 0 <= int(i) < n_slices]
        if bad:
            raise PaserInputError(
                f"{source}: split {name!r} has slice indices {_few(bad)} outside 0..{n_slices - 1}: "
                "the stack has fewer slices; fix the indices or regenerate the split."
            )
        for i in map(int, indices):
            if i in seen:
                raise PaserInputError(
                    f"{source}: slice {i} is in both {seen[i]!r} and {name!r}; splits must be disjoint."
                )
            seen[i] = name
        out[name] = sorted(int(i) for i in indices)
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def save_split(path: str | Path, split: Mapping[str, Sequence[int]], n_slices: int) -> None:
    """Validate and write `split` as JSON atomically."""
    clean = check_split(split, n_slices, str(path))
    atomic_write_text(path, json.dumps(clean, indent=1) + "\n")


def load_split(path: str | Path, n_slices: int) -> dict[str, list[int]]:
    """Read and validate a split.json written by `save_split` (or by hand)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PaserInputError(
            f"{path} is not valid JSON ({exc}): write {{\"test\": [0, 1], ...}} or delete it to "
            "get default splits."
        ) from None
    if not isinstance(data, dict):
        raise PaserInputError(f"{path} must hold a JSON object {{split name: [slice indices]}}.")
    return check_split(data, n_slices, str(path))


# ----------------------------------------------------------------------------- normalisation


def robust_range(images: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """(lo, hi) percentiles over the whole volume, robust to hot pixels and outliers.

    Above 16M elements it estimates on evenly spaced slices (and a fixed random subsample of
    those), so it is fast, deterministic, and reads only part of a dask/zarr array; a chunked
    (dask/zarr) volume is sampled by whole storage chunks spread over the volume instead, so a
    100 GB scan is read for about 16M voxels whatever its chunk layout.
    """
    sample = _subsample(images)
    lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise PaserInputError("the image holds NaN (not-a-number) or infinite values: replace them (e.g. with 0, "
                              "np.nan_to_num) or re-export the image without them")
    if hi <= lo:
        raise PaserInputError(
            f"constant image: its {low} and {high} percentiles are both {lo}, so there is no contrast to "
            "segment; check that the right file was loaded"
        )
    return lo, hi


def _subsample(images: np.ndarray) -> np.ndarray:
    size = int(np.prod(images.shape))
    if size <= _SUBSAMPLE:
        return np.asarray(images).ravel()
    if len(images.shape) == 3 and getattr(images, "chunks", None) is not None:
        return _chunk_sample(images)
    if len(images.shape) >= 3:
        per_slice = size // images.shape[0]
        k = max(1, min(images.shape[0], _SUBSAMPLE // max(per_slice, 1)))
        picks = np.unique(np.linspace(0, images.shape[0] - 1, k).round().astype(int))
        images = np.stack([np.asarray(images[int(i)]) for i in picks])  # works for zarr/dask too
    flat = np.asarray(images).ravel()
    if flat.size > _SUBSAMPLE:
        flat = flat[np.random.default_rng(0).integers(0, flat.size, _SUBSAMPLE)]
    return flat


def _chunk_sample(images) -> np.ndarray:
    """About _SUBSAMPLE voxels of a chunked (Z, Y, X) array: whole chunks at fixed random grid
    positions (each cropped to its centre when one chunk alone exceeds the budget)."""
    chunks = images.chunks
    edge = [c[0] if isinstance(c, tuple) else int(c) for c in chunks]  # dask: per-axis tuples; zarr: ints
    counts = [-(-int(s) // e) for s, e in zip(images.shape, edge)]
    per = int(np.prod(edge))
    crop = [e for e in edge]
    while int(np.prod(crop)) > _SUBSAMPLE:  # a huge chunk: read its centre only
        i = int(np.argmax(crop))
        crop[i] = max(1, crop[i] // 2)
    n = max(1, min(int(np.prod(counts)), _SUBSAMPLE // max(int(np.prod(crop)), 1)))
    picks = np.random.default_rng(0).choice(int(np.prod(counts)), n, replace=False) if per else []
    parts = []
    for flat in np.sort(picks):
        idx = np.unravel_index(int(flat), counts)
        box = []
        for i, e, c, s in zip(idx, edge, crop, images.shape):
            lo = i * e + max(0, (min(e, int(s) - i * e) - c) // 2)
            box.append(slice(lo, min(lo + c, int(s))))
        block = images[tuple(box)]
        block = block.compute(scheduler="synchronous") if hasattr(block, "compute") else block
        parts.append(np.asarray(block).ravel())
    return np.concatenate(parts)


def normalise(images: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] to [0, 1] as float32, clipping outside; the contract before any model."""
    if not hi > lo:
        raise PaserInputError(f"normalise: hi={hi} must be greater than lo={lo}.")
    out = (np.asarray(images, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def to_uint16(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats as 16-bit grey levels, the format of reconstructed tomography slices on disk."""
    return np.round(np.clip(images, 0.0, 1.0) * 65535).astype(np.uint16)


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """16 hex chars of sha256 over shapes, dtypes and bytes: names the training data in a checkpoint."""
    h = hashlib.sha256()
    for arr in (np.asarray(images), np.asarray(labels)):
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.shape}|{arr.dtype.str}|".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:16]
