"""Never lose work, and a way back: the session lock, read-only views, unaccept / skip / edits,
the session.json backup, array checks, temp-file cleaning and file permissions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from learners.unet import UNetConfig
from napari_paser.errors import PaserInputError
from napari_paser.session import lock
from napari_paser.session.core import Session, SessionWarning
from napari_paser.session.lock import LOCK_FILE, SessionLockedError
from napari_paser.session.store import create_array

TINY = UNetConfig(base=4, depth=2)


def image(z: int = 2, size: int = 64) -> np.ndarray:
    return (np.random.default_rng(0).random((z, size, size)) * 1000).astype(np.uint16)


def full(session: Session, region_id: int, value: int = 1) -> np.ndarray:
    r = session.region(region_id)
    return np.full((r.h, r.w), value, np.uint8)


@pytest.fixture
def session(tmp_path):
    s = Session.create(tmp_path / "s", image(), region_size=32)
    yield s
    s.close()


def _lock_json(folder) -> dict:
    return json.loads((folder / LOCK_FILE).read_text())


# ----------------------------------------------------------------------------- the lock

HOLDER = """
import sys
from napari_paser.session.core import Session
s = Session.open(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()  # until the test closes our stdin
s.accept(0, __import__("numpy").full((32, 32), 2, "uint8"))
print("accepted", flush=True)
"""


def test_a_second_process_is_refused_and_can_view_read_only(session):
    session.accept(1, full(session, 1))
    session.close()
    assert not (session.folder / LOCK_FILE).exists()  # close released the folder
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(session.folder)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "holding"
        with pytest.raises(SessionLockedError, match=f"process {child.pid} on host {lock.this_host()}") as exc:
            Session.open(session.folder)
        assert "read_only=True" in str(exc.value) and "\n" not in str(exc.value)
        assert exc.value.holder.pid == child.pid
        view = Session.open(session.folder, read_only=True)
        assert [a.region_id for a in view.accepted] == [1]
        with pytest.raises(PaserInputError, match=f"read-only .*held by process {child.pid}"):
            view.accept(2, full(view, 2))
        child.stdin.close()  # the child accepts region 0 and exits
        assert child.stdout.readline().strip() == "accepted"
        assert child.wait(60) == 0
    finally:
        child.kill()
        child.wait()
    assert not (session.folder / LOCK_FILE).exists()  # released at the child's exit
    with Session.open(session.folder) as again:  # free again: both processes' accepts are there
        assert sorted(a.region_id for a in again.accepted) == [0, 1]
        assert _lock_json(session.folder)["pid"] == os.getpid()
    assert not (session.folder / LOCK_FILE).exists()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_stale_lock_of_a_dead_process_is_taken_over(session):
    session.accept(0, full(session, 0))
    session.close()
    pid = _dead_pid()
    (session.folder / LOCK_FILE).write_text(json.dumps({"host": lock.this_host(), "pid": pid, "time": "earlier"}))
    again = Session.open(session.folder)
    assert _lock_json(session.folder) == {**_lock_json(session.folder), "pid": os.getpid(), "host": lock.this_host()}
    again.accept(1, full(again, 1))  # and it writes
    again.close()
    assert not (session.folder / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_refused_with_advice(session):
    session.close()
    (session.folder / LOCK_FILE).write_text(json.dumps({"host": "elsewhere.example", "pid": 4242, "time": "t"}))
    with pytest.raises(SessionLockedError, match="process 4242 on host elsewhere.example.*delete .*session.lock"):
        Session.open(session.folder)
    assert _lock_json(session.folder)["host"] == "elsewhere.example"  # left as it was
    Session.open(session.folder, read_only=True)  # viewing needs no lock


def test_one_process_shares_its_hold_and_releases_it_with_the_last_session(session):
    other = Session.open(session.folder)  # same process: shared, counted hold
    assert _lock_json(session.folder)["pid"] == os.getpid()
    session.close()
    assert (session.folder / LOCK_FILE).exists()
    with pytest.raises(PaserInputError, match="closed"):
        session.accept(0, full(session, 0))
    other.close()
    assert not (session.folder / LOCK_FILE).exists()
    dropped = Session.open(session.folder)
    del dropped  # garbage collected: released too
    import gc

    gc.collect()
    assert not (session.folder / LOCK_FILE).exists()


def test_two_session_objects_never_overwrite_each_other(session):
    other = Session.open(session.folder)
    session.accept(0, full(session, 0))
    with pytest.raises(PaserInputError, match="changed by another Session object"):
        other.accept(1, full(other, 1))
    with Session.open(session.folder) as fresh:
        assert [a.region_id for a in fresh.accepted] == [0]  # the first accept survived
        fresh.accept(1, full(fresh, 1))
    other.close()


def test_read_only_refuses_every_change(session):
    session.new_models({"f0": TINY})
    session.accept(0, full(session, 0))
    session.propose(2, "random")
    session.close()
    view = Session.open(session.folder, read_only=True)
    assert not (session.folder / LOCK_FILE).exists()  # no lock taken
    pending = view.pending_proposals[0].region_id
    attempts = {
        "accept": lambda: view.accept(1, full(view, 1)), "unaccept": lambda: view.unaccept(0),
        "skip": lambda: view.skip(pending), "propose": lambda: view.propose(2, "random"),
        "compute maps": lambda: view.compute_maps(0), "new models": lambda: view.new_models(),
        "accept edits": lambda: view.accept_edits(), "retrain": lambda: view.retrain(),
        "accept painted": lambda: view.accept_painted(),
    }
    before = (session.folder / "session.json").read_bytes()
    for action, attempt in attempts.items():
        with pytest.raises(PaserInputError, match=f"read-only: cannot {action}"):
            attempt()
    with pytest.raises(ValueError):  # the canvas itself is read-only
        view.labels[0, 0, 0] = 3
    assert (session.folder / "session.json").read_bytes() == before
    assert view.edited_regions() == [] and len(view.training_data().images) == 1  # reading works


# ----------------------------------------------------------------------------- a way back


def test_unaccept_skip_and_reaccept_survive_reopening(tmp_path):
    s = Session.create(tmp_path / "s", image(), region_size=32, val_every=2)
    props = s.propose(4, "random", seed=1)
    a, b, c, d = (p.region_id for p in props)
    s.accept(a, full(s, a, 1))
    s.accept(b, full(s, b, 2))
    assert [r.split for r in s.accepted] == ["train", "val"]
    crop_b = s.folder / "regions" / f"{b}-{s._record(b).seq}.npy"
    s.unaccept(b)
    assert not crop_b.exists() and not s.is_accepted(b) and b in s.pool.candidates()
    assert s.labels[s.index(*s.region(b).slices)].max() == 2  # the labels stay painted
    assert s.training_data().n_val_regions == 0  # training no longer uses it
    s.skip(c)
    assert [p.region_id for p in s.pending_proposals] == [b, d]
    assert s.next_proposal(after_rank=2).region_id == d
    with pytest.raises(PaserInputError, match="skipped already"):
        s.skip(c)
    with pytest.raises(PaserInputError, match="unaccept it instead"):
        s.skip(a)
    with pytest.raises(PaserInputError, match="not accepted"):
        s.unaccept(c)
    s.close()

    s = Session.open(tmp_path / "s")
    assert [r.region_id for r in s.accepted] == [a] and s.skipped == [c]
    assert [p.region_id for p in s.pending_proposals] == [b, d]
    s.accept_painted()  # b is painted outside the accepted set: accepted again, back in val
    assert s._record(b).split == "val" and s.accepted_labels(b).max() == 2
    s.propose(3, "random", seed=2)  # a new round: nothing skipped
    assert s.skipped == [] and len(s.pending_proposals) == 3
    s.close()
    s = Session.open(tmp_path / "s")
    assert sorted(r.region_id for r in s.accepted) == sorted([a, b]) and s.skipped == []
    s.close()


def test_edits_inside_accepted_regions_are_noticed_and_accepted(session, tmp_path):
    session.accept(0, full(session, 0, 1))
    session.accept(1, full(session, 1, 2))
    session.accept(2, full(session, 2, 3))
    assert session.edited_regions() == []
    r0 = session.region(0)
    session.labels[r0.z, r0.y0:r0.y0 + 4, r0.x0:r0.x0 + 4] = 3  # painted over after accepting
    r2 = session.region(2)
    session.labels[session.index(*r2.slices)] = 0  # erased entirely
    assert session.edited_regions() == [0, 2]
    with pytest.raises(PaserInputError, match=r"region\(s\) 0, 2 were painted over.*accept the edits"):
        session.export(tmp_path / "out", full_volume=True)
    kept = session.export(tmp_path / "kept", edits="keep")
    assert json.loads((kept / "manifest.json").read_text())["meta"]["edited_since_accept"] == [0, 2]
    seq1 = session._record(1).seq
    saved = session.accept_edits()
    assert [r.region_id for r in saved] == [0] and session.edited_regions() == []
    assert (session.accepted_labels(0)[:4, :4] == 3).all() and (session.accepted_labels(0)[4:, 4:] == 1).all()
    assert not session.is_accepted(2) and session._record(1).seq == seq1  # erased: taken back; untouched: kept
    y = np.concatenate([lab.ravel() for lab in session.training_data().labels])
    assert sorted(np.unique(y[y != 255]).tolist()) == [0, 1, 2]  # training sees the edit (class 2 = layer 3)
    session.export(tmp_path / "out", full_volume=True)  # agrees now
    session.labels[r0.z, r0.y0 + 20, r0.x0 + 20] = 2  # an edit no accept has seen
    session.close()
    view = Session.open(session.folder, read_only=True)  # a fresh object reads the saved crops
    assert view.accepted_labels(0)[0, 0] == 3 and view.edited_regions() == [0]


def test_export_can_accept_pending_edits(session, tmp_path):
    session.accept(0, full(session, 0, 1))
    session.labels[0, 0, 0] = 2
    session.export(tmp_path / "out", edits="accept")
    assert session.edited_regions() == [] and session.accepted_labels(0)[0, 0] == 2
    with pytest.raises(PaserInputError, match="unknown edits choice"):
        session.export(tmp_path / "out", edits="maybe")


# ----------------------------------------------------------------------------- damage and repair


def test_damaged_session_json_is_restored_from_the_backup(session):
    session.accept(0, full(session, 0))
    session.accept(1, full(session, 1))
    assert (session.folder / "session.json.bak").is_file()
    session.close()
    (session.folder / "session.json").write_bytes(b"\x00\x9f\xff binary garbage \x00")
    with pytest.warns(SessionWarning, match="opened read-only, nothing was changed"):
        view = Session.open(session.folder, read_only=True)  # read-only: restores in memory only
    assert [a.region_id for a in view.accepted] == [0] and "read-only" in view.warnings[0]
    assert (session.folder / "session.json").read_bytes().startswith(b"\x00")
    with pytest.warns(SessionWarning, match="not valid JSON.*restored the previous commit from session.json.bak"):
        again = Session.open(session.folder)
    assert [a.region_id for a in again.accepted] == [0]  # the commit before the damage
    assert json.loads((session.folder / "session.json").read_text())["format"] == "napari-paser/session"
    assert list(session.folder.glob("session.json.damaged-*"))  # kept for inspection
    again.accept(2, full(again, 2))  # work goes on
    again.close()


def test_missing_keys_are_damage_too_and_replaced_crops_are_found(session):
    session.accept(0, full(session, 0, 1))
    session.accept(0, full(session, 0, 2))  # re-accept: the backup names the crop this replaced
    session.close()
    data = json.loads((session.folder / "session.json").read_text())
    del data["settings"]["region_size"]
    (session.folder / "session.json").write_text(json.dumps(data))
    with pytest.warns(SessionWarning) as caught:
        again = Session.open(session.folder)
    text = " ".join(str(w.message) for w in caught)
    assert "settings.region_size" in text and "newest saved labels" in text
    assert again.accepted_labels(0).max() == 2  # the newest labels, not a missing file
    again.close()


def test_damage_without_a_backup_says_so(tmp_path):
    s = Session.create(tmp_path / "s", image())
    s.close()
    (s.folder / "session.json").write_text("{not json")
    with pytest.raises(PaserInputError, match="no readable backup"):
        Session.open(s.folder)


def test_an_array_that_does_not_match_session_json_is_named(session):
    session.close()
    create_array(session.folder / "labels.zarr", (2, 64, 48), np.uint8)
    with pytest.raises(PaserInputError) as exc:
        Session.open(session.folder)
    msg = str(exc.value)
    assert "labels.zarr has shape (2, 64, 48)" in msg and "records shape (2, 64, 64)" in msg and "\n" not in msg
    assert not (session.folder / LOCK_FILE).exists()  # a failed open releases the folder
    create_array(session.folder / "labels.zarr", (2, 64, 64), np.float32)
    with pytest.raises(PaserInputError, match="dtype float32 .* dtype uint8"):
        Session.open(session.folder)


def test_temp_files_left_by_a_kill_are_cleaned(session):
    session.accept(0, full(session, 0))
    session.close()
    leftovers = [session.folder / ".session.json.0123456789ab.tmp", session.folder / "regions" / ".0-0.npy.k3j_x9a2.tmp",
                 session.folder / "labels.zarr" / "c" / ("0." + "ab" * 16 + ".partial")]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    keep = session.folder / "notes.tmp"  # not a temporary file of ours
    keep.write_text("mine")
    Session.open(session.folder).close()
    assert not any(p.exists() for p in leftovers) and keep.exists()


def test_files_are_written_with_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        s = Session.create(tmp_path / "s", image(), region_size=32)
        s.new_models({"f0": TINY})
        s.accept(0, full(s, 0))
        s.accept(1, full(s, 1))
        files = [s.folder / "session.json", s.folder / "session.json.bak", s.folder / LOCK_FILE,
                 *(s.folder / "regions").iterdir(), *(s.folder / "models").iterdir()]
        s.close()
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files if p.exists()}
    assert len(modes) >= 5 and set(modes.values()) == {"0o644"}, modes


def test_concurrent_commits_of_two_objects_never_drop_a_success(session):
    import threading

    other = Session.open(session.folder)
    done, lock_ = [], threading.Lock()

    def work(s: Session, ids) -> None:
        for rid in ids:
            try:
                s.accept(rid, full(s, rid))
            except PaserInputError:
                continue
            with lock_:
                done.append(rid)

    threads = [threading.Thread(target=work, args=(session, [0, 2, 4, 6])),
               threading.Thread(target=work, args=(other, [1, 3, 5, 7]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    other.close()
    session.close()
    with Session.open(session.folder, read_only=True) as view:
        assert sorted(a.region_id for a in view.accepted) == sorted(done) and done  # every reported accept is saved


def test_opening_a_folder_that_is_no_session_writes_nothing(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(PaserInputError, match="not a labeling session"):
        Session.open(tmp_path / "plain")
    assert list((tmp_path / "plain").iterdir()) == []



def test_a_folder_that_cannot_be_written_opens_read_only_only(session, monkeypatch):
    session.close()
    real = os.open

    def no_lock_file(path, *args, **kwargs):  # what a read-only mount answers
        if os.fspath(path).endswith(LOCK_FILE):
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_lock_file)
    with pytest.raises(lock.FolderNotWritableError, match="Permission denied.*not writable here; open it read-only"):
        Session.open(session.folder)
    assert Session.open(session.folder, read_only=True).read_only
