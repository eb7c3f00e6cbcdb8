"""The records of a labeling session as session.json holds them: the class list, proposals, accepted
regions, learning-curve points and the whole `State`, with its JSON form; reading session.json (restored
from session.json.bak when damaged) and writing it, the commit point (`write_state`)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from learners.atomic import atomic_write_bytes
from napari_paser.errors import PaserInputError

FORMAT = "napari-paser/session"
VERSION = 1
STATE_FILE = "session.json"
BACKUP_FILE = "session.json.bak"

DEFAULT_CLASSES = ("pore", "binder", "active")
DEFAULT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf")


@dataclass(frozen=True)
class ClassSpec:
    """Class names and display colours (#rrggbb); class k is layer value k + 1."""

    names: tuple[str, ...] = DEFAULT_CLASSES
    colors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        if not 2 <= len(names) <= 254:
            raise PaserInputError(f"a session needs 2 to 254 classes, got {len(names)}: give at least two class names")
        if len(set(names)) != len(names) or not all(n.strip() for n in names):
            raise PaserInputError(f"class names must be unique and non-empty, got {list(names)}")
        colors = tuple(self.colors) or tuple(DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(len(names)))
        if len(colors) != len(names):
            raise PaserInputError(f"{len(colors)} colours given for {len(names)} classes: give one colour per class")
        for c in colors:
            if not (isinstance(c, str) and len(c) == 7 and c[0] == "#" and all(ch in "0123456789abcdefABCDEF" for ch in c[1:])):
                raise PaserInputError(f"colour {c!r} is not '#rrggbb'; write colours as hex strings like '#1f77b4'")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "colors", tuple(c.lower() for c in colors))

    @property
    def n_classes(self) -> int:
        return len(self.names)

    def layer_colors(self) -> dict[int | None, str]:
        """Colours keyed by Labels layer value (0 transparent), for napari's label colormap."""
        return {0: "transparent", None: "transparent", **{k + 1: c for k, c in enumerate(self.colors)}}


@dataclass
class Proposal:
    """A region the sampler proposes, ranked from 1 (best)."""

    rank: int
    region_id: int
    z: int
    y0: int
    x0: int
    h: int
    w: int
    score: float
    sampler: str


@dataclass
class AcceptedRegion:
    """A region whose labels the person accepted; `fractions` are shares of the region's pixels
    per class name plus "unlabeled" (unpainted pixels of a confirmed partial region)."""

    region_id: int
    z: int
    y0: int
    x0: int
    h: int
    w: int
    sampler: str  # the sampler that proposed it, or "manual" for labels outside proposals
    rank: int | None
    accepted_at: str  # ISO 8601 UTC
    fractions: dict[str, float]
    split: str = "train"  # "train" or "val" (held out for the learning curve)
    seq: int = 0  # its crop is regions/<region_id>-<seq>.npy (a new seq on every accept, so a re-accept never overwrites)
    # correction effort, when the region was accepted from the model's suggestion (None otherwise):
    changed_px: int | None = None  # pixels that differ from the suggestion
    strokes: int | None = None  # connected groups of changed pixels (about the strokes a person made)
    seconds: float | None = None  # from showing the suggestion to accepting (measured by the GUI)


@dataclass
class CurvePoint:
    """One point of the learning curve: validation mIoU after a retrain on n_labeled regions.

    val_miou and class_iou are the held-out scores of the weights in use after the retrain:
    the previous ones when the new weights scored worse (kept_previous).
    """

    n_labeled: int
    n_train: int
    n_val: int
    val_miou: float | None  # None when no region is held out yet
    model_version: int
    epochs: int
    time: str
    class_iou: dict[str, float] | None = None  # per-class IoU on the held-out regions (classes present)
    kept_previous: bool = False  # the retrained weights scored worse on the held-out regions: not installed
    n_train_pixels: int | None = None  # labeled training pixels (accepted regions and scribbles)


@dataclass
class State:
    """Everything session.json holds (plain JSON values)."""

    image: dict
    classes: ClassSpec
    pool: dict
    settings: dict
    accepted: list[AcceptedRegion] = field(default_factory=list)
    proposals: list[Proposal] = field(default_factory=list)
    proposal_request: dict | None = None  # {"k", "sampler", "seed"} of the last propose()
    models: dict[str, dict] = field(default_factory=dict)  # role -> {"file", "version", "source"}
    model_version: int = 0
    maps: dict[str, int] = field(default_factory=dict)  # str(z) -> model_version its maps came from
    curve: list[CurvePoint] = field(default_factory=list)
    lr_agents: dict[str, dict] = field(default_factory=dict)
    created: str = ""
    skipped: list[int] = field(default_factory=list)  # proposals skipped this round (cleared by propose)
    # region id -> {"seq", "model_version"} of the model's suggestion shown for it (suggestions/<id>-<seq>.npy)
    suggestions: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {"format": FORMAT, "version": VERSION, **asdict(self)}
        data["classes"] = {"names": list(self.classes.names), "colors": list(self.classes.colors)}
        data["modified"] = now_iso()
        return json.dumps(_clean(data), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, source: Path) -> State:
        """Parse session.json; a damaged file (not JSON, binary, keys missing) is a DamagedStateError."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DamagedStateError(f"{source} is not valid JSON ({exc}); restore it from a backup") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DamagedStateError(f"{source} is not a napari-paser session file (no '{FORMAT}' tag)")
        if data.get("version", 0) > VERSION:
            raise PaserInputError(f"{source} has session version {data['version']}; upgrade napari-paser to open it")
        try:
            for part, keys in (("image", ("shape", "dtype", "lo", "hi")), ("pool", ("shape", "size")),
                               ("settings", ("region_size",))):
                missing = [k for k in keys if k not in data[part]]
                if missing:
                    raise KeyError(f"{part}.{missing[0]}")
            return cls(
                image=data["image"], classes=ClassSpec(tuple(data["classes"]["names"]), tuple(data["classes"]["colors"])),
                pool=data["pool"], settings=data["settings"],
                accepted=[AcceptedRegion(**a) for a in data.get("accepted", [])],
                proposals=[Proposal(**p) for p in data.get("proposals", [])],
                proposal_request=data.get("proposal_request"), models=data.get("models", {}),
                model_version=int(data.get("model_version", 0)), maps=dict(data.get("maps", {})),
                curve=[CurvePoint(**c) for c in data.get("curve", [])], lr_agents=data.get("lr_agents", {}),
                created=data.get("created", ""), skipped=[int(r) for r in data.get("skipped", [])],
                suggestions={str(k): dict(v) for k, v in data.get("suggestions", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DamagedStateError(f"{source} is damaged or incomplete ({exc!r}); restore it from a backup") from None


class DamagedStateError(PaserInputError):
    """session.json cannot be read as a session (not JSON, binary bytes, keys missing)."""


def _clean(value):
    """NaN -> None so the file is strict JSON; numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_state(folder: Path) -> State:
    return load_state(folder, restore=False).state


@dataclass
class LoadedState:
    """A state as read from a folder: its digest (to notice another writer) and what was repaired."""

    state: State
    digest: str | None
    warnings: list[str] = field(default_factory=list)


def load_state(folder: Path, restore: bool) -> LoadedState:
    """Read session.json; a damaged one is replaced by the backup of the previous commit, with a warning.

    With `restore` the damaged file is moved aside (session.json.damaged-<time>) and the backup
    written in its place; without (read-only), the backup is only read.
    """
    path = folder / STATE_FILE
    if not path.is_file() and not (folder / BACKUP_FILE).is_file():
        raise PaserInputError(
            f"{folder} is not a labeling session (no {STATE_FILE}); create one with Session.create "
            "(or the Start session button)"
        )
    data = path.read_bytes() if path.is_file() else b""
    try:
        return LoadedState(State.from_json(data, path), digest(data))
    except DamagedStateError as exc:
        damage = str(exc).split(";")[0] if data else f"{path} is missing"
    backup = folder / BACKUP_FILE
    try:
        saved = backup.read_bytes()
        state = State.from_json(saved, backup)
    except (OSError, DamagedStateError):
        raise PaserInputError(f"{damage}, and there is no readable backup ({BACKUP_FILE}) to restore it from: "
                              "restore the session folder from your own backup") from None
    note = f"{damage}: restored the previous commit from {BACKUP_FILE} (the last change before the damage is lost)"
    if not restore:
        return LoadedState(state, None, [note + "; opened read-only, nothing was changed on disk"])
    if data:
        aside = folder / f"{STATE_FILE}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(path, aside)
        note += f"; the damaged file is kept as {aside.name}"
    atomic_write_bytes(path, saved)
    return LoadedState(state, digest(saved), [note])


def write_state(folder: Path, state: State) -> str:
    """The commit point: everything session.json names must already be on disk. The file it
    replaces becomes session.json.bak. Returns the digest of what was written."""
    data = state.to_json().encode("utf-8")
    keep_backup(folder)
    atomic_write_bytes(folder / STATE_FILE, data)
    return digest(data)


def keep_backup(folder: Path) -> None:
    """session.json -> session.json.bak, as a hard link (a copy where links are not supported)."""
    current = folder / STATE_FILE
    if not current.is_file():
        return
    tmp = folder / f".{BACKUP_FILE}.{secrets.token_hex(6)}.tmp"
    try:
        os.link(current, tmp)
    except OSError:
        shutil.copyfile(current, tmp)
    try:
        os.replace(tmp, folder / BACKUP_FILE)
    finally:
        tmp.unlink(missing_ok=True)


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def state_digest(folder: Path) -> str | None:
    """The digest of session.json as it is on disk now (None when it is missing)."""
    try:
        return digest((folder / STATE_FILE).read_bytes())
    except FileNotFoundError:
        return None
