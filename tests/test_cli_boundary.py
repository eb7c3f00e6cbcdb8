"""The CLI's error boundary: every user error is one line on stderr and exit status 2, never a traceback."""

import errno

import numpy as np
import pytest

from learners.errors import InputError
from napari_paser.cli import main
from napari_paser.cli_args import check_memory, float_range, int_range
from napari_paser.errors import os_error_line
from napari_paser.errors import PaserInputError


def _user_error(argv, capsys) -> str:
    """Run argv; it must exit 2 (returned or via argparse) with a message and no traceback."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse: usage + "argument --x: ..." on stderr
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.strip()
    return err


@pytest.mark.parametrize("argv, message", [
    (["predict", "--run", "r", "--image", "i.tif", "--out", "o", "--samples", "0"], "--samples: 0 is out of range"),
    (["predict", "--run", "r", "--image", "i.tif", "--out", "o", "--tile", "-5"], "--tile: -5 is out of range"),
    (["predict", "--run", "r", "--image", "i.tif", "--out", "o", "--tile", "0"], "--tile: 0 is out of range"),
    (["models", "--n-classes", "1"], "--n-classes: 1 is out of range"),
    (["data", "synth", "--out", "o", "--n", "0"], "--n: 0 is out of range"),
    (["data", "synth", "--out", "o", "--seed", "-1"], "--seed: -1 is out of range"),
    (["data", "synth", "--out", "o", "--fractions", "0.5,-0.5"], "out of range"),
    (["data", "degrade", "--data", "d", "--out", "o", "--sp", "2"], "--sp: 2 is out of range"),
    (["train", "--data", "d", "--out", "o", "--epochs", "0"], "--epochs: 0 is out of range"),
    (["policy", "--data", "d", "--run", "r", "--lambdas", "0,1.5"], "1.5 is out of range"),
    (["policy", "--data", "d", "--run", "r", "--lr", "0"], "--lr: 0 is out of range"),
    (["route", "--run", "r", "--image", "i", "--out", "o", "--lambda", "nan"], "--lambda/--share: nan is out of range"),
    (["bench", "al", "--data", "d", "--out", "o", "--budgets", "8,0"], "0 is out of range"),
    (["bench", "al", "--data", "d", "--out", "o", "--region", "4"], "--region: 4 is out of range"),
    (["bench", "routing", "--data", "d", "--run", "r", "--out", "o", "--threads", "0"], "--threads: 0"),
    (["al", "train-dqn", "--data", "d", "--out", "o", "--k", "0"], "--k: 0 is out of range"),
])
def test_numeric_options_are_range_checked_where_parsed(argv, message, capsys):
    assert message in _user_error(argv, capsys)


@pytest.mark.parametrize("argv", [
    ["data", "synth", "--out", "OUT", "--n", "1000000000"],
    ["data", "synth", "--out", "OUT", "--size", "100000"],
    ["models", "--size", "100000"],
])
def test_absurd_sizes_are_refused_before_allocating(argv, tmp_path, capsys, monkeypatch):
    import napari_paser.data.synth as synth

    def never(*args, **kw):
        raise AssertionError("allocated before the size check")

    monkeypatch.setattr(synth, "write_synthetic", never)
    monkeypatch.setattr("napari_paser.cli.training.preset_costs", never)
    err = _user_error([str(tmp_path / "o") if a == "OUT" else a for a in argv], capsys)
    assert "memory" in err and ("--n" in err or "--size" in err) and len(err.strip().splitlines()) == 1


def _synth(out) -> list[str]:
    return ["data", "synth", "--out", str(out), "--n", "2", "--size", "16"]


def test_os_errors_on_paths_are_one_line(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    err = _user_error(_synth(afile / "under"), capsys)  # a path under a file
    assert str(afile) in err and "not a folder" in err and len(err.strip().splitlines()) == 1
    assert "already exists" in _user_error(_synth(afile), capsys)  # an existing file as output folder
    assert "/proc/paser" in _user_error(_synth("/proc/paser/out"), capsys)

    import napari_paser.data.synth as synth

    def read_only(folder, *args, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(folder))

    monkeypatch.setattr(synth, "write_synthetic", read_only)
    err = _user_error(_synth(tmp_path / "ro"), capsys)
    assert "Read-only file system" in err and "writable" in err


def test_memory_error_is_a_user_error(capsys, monkeypatch):
    import napari_paser.data.synth as synth

    def oom(*args, **kw):
        raise MemoryError

    monkeypatch.setattr(synth, "write_synthetic", oom)
    assert "not enough memory" in _user_error(_synth("/tmp/never-written"), capsys)


def test_argument_types_and_memory_check():
    assert int_range(1)("3") == 3 and float_range(0, 1)("0.5") == 0.5
    with pytest.raises(Exception, match="not a whole number"):
        int_range(1)("2.5")
    with pytest.raises(Exception, match="> 0"):
        float_range(0, lo_open=True)("0")
    check_memory(100, "a job", "lower it", limit=1000)
    with pytest.raises(PaserInputError, match="lower it"):
        check_memory(600, "a job", "lower it", limit=1000)
    line = os_error_line(PermissionError(errno.EACCES, "Permission denied", "/x/y"))
    assert line.startswith("/x/y: Permission denied") and "folder you own" in line


def test_binary_session_json_is_a_library_error(tmp_path):
    from napari_paser.session import Session

    session = Session.create(tmp_path / "s", np.arange(32 * 32, dtype=np.uint16).reshape(32, 32))
    (session.folder / "session.json").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match="binary"):  # what the CLI and the GUI's `guarded` catch
        Session.open(session.folder)
