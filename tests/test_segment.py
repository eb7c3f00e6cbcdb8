"""`paser segment`: blockwise equals whole-slice, resume, LocalCluster, bad input."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from segment_helpers import _f0_states, make_run, volume  # noqa: E402

from learners.checkpoint import load_checkpoint  # noqa: E402
from learners.grid import Grid  # noqa: E402
from learners.routing.router import predict_patches  # noqa: E402
from learners.uncertainty import uncertainty_maps  # noqa: E402
from napari_paser.cli import main  # noqa: E402
from napari_paser.data.dataset import normalise, robust_range  # noqa: E402
from napari_paser.data.volumes import open_volume  # noqa: E402
from napari_paser.jobs import segment as seg  # noqa: E402
from napari_paser.jobs.segment import block as seg_block  # noqa: E402

TILE = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment")
    v = volume((2, 96, 80))
    tifffile.imwrite(root / "v.tif", v, photometric="minisblack")
    return root, v, make_run(root / "run"), make_run(root / "run-nodrop", dropout=0.0)


def _read(out):
    g = zarr.open_group(str(out), mode="r")
    return {k: g[k]["0"][:] for k in g.group_keys() if not k.startswith(".")}, dict(g.attrs)


def _segment(run, image, out, what, **kw):
    kw.setdefault("workers", 0)
    return seg.segment_volume(run, image, out, what=what, tile=TILE, progress=False, **kw)


def _equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_maps_blockwise_equal_whole_slice_maps_without_dropout(setup, tmp_path):
    root, v, _, run = setup
    _segment(run, root / "v.tif", tmp_path / "o.zarr", "maps")
    out, attrs = _read(tmp_path / "o.zarr")
    f0 = load_checkpoint(run / "f0.pt").model
    x = normalise(v, *robust_range(v))
    for z in range(len(v)):
        whole = uncertainty_maps(f0, x[z], samples=2)
        np.testing.assert_array_equal(out["segmentation"][z], whole.prediction)
        np.testing.assert_allclose(out["entropy"][z], whole.entropy, atol=2e-5)
        np.testing.assert_allclose(out["bald"][z], whole.bald, atol=2e-5)
    assert not out["routing"].any()
    p = attrs["paser"]
    assert p["complete"] and p["what"] == "maps" and p["blocks"] == 2 * 3 * 3 and p["gflops"] > 0
    assert attrs.get("multiscales") is None and zarr.open_group(str(tmp_path / "o.zarr/entropy")).attrs["multiscales"]
    assert open_volume(tmp_path / "o.zarr/entropy").kind == "ome-zarr"  # NGFF image groups, readable back


def test_f2_and_route_blockwise_equal_the_patch_models(setup, tmp_path):
    root, v, run, _ = setup
    outs = {w: _read(_segment(run, root / "v.tif", tmp_path / f"{w}.zarr", w).out)[0] for w in ("maps", "route", "f2")}
    x = torch.from_numpy(normalise(v, *robust_range(v)))[:, None]
    grid = Grid(tuple(v.shape[1:]), (TILE // 4, TILE // 4))  # the policy's 4x4 grid on each 32 px tile
    f1 = load_checkpoint(run / "f1.pt").model
    f1_all = grid.paste(predict_patches(f1, grid.extract(x))[:, None])[:, 0].numpy()
    np.testing.assert_array_equal(outs["f2"]["routing"], 2)
    f2 = load_checkpoint(run / "f2.pt").model
    np.testing.assert_array_equal(outs["f2"]["segmentation"],
                                  grid.paste(predict_patches(f2, grid.extract(x))[:, None])[:, 0].numpy())
    routing = outs["route"]["routing"]
    assert len(np.unique(routing)) >= 2  # the test policy really routes
    for k, ref in enumerate((outs["maps"]["segmentation"], f1_all, outs["f2"]["segmentation"])):
        np.testing.assert_array_equal(outs["route"]["segmentation"][routing == k], ref[routing == k])
    np.testing.assert_array_equal(outs["route"]["entropy"], outs["maps"]["entropy"])  # same seeds per block


def test_resume_finishes_only_missing_blocks_and_equals_an_uninterrupted_run(setup, tmp_path, monkeypatch):
    root, _, run, _ = setup
    full = _segment(run, root / "v.tif", tmp_path / "full.zarr", "route")
    part = _segment(run, root / "v.tif", tmp_path / "part.zarr", "route", max_blocks=5)
    assert part.done_before == 0
    assert not _read(tmp_path / "part.zarr")[1]["paser"]["complete"]
    done = sorted((tmp_path / "part.zarr" / seg.JOB_DIR / seg.DONE_DIR).glob("*.json"))
    assert len(done) == 5
    calls = []
    real = seg_block._segment_block
    monkeypatch.setattr(seg_block, "_segment_block", lambda *a: calls.append(a[1].index) or real(*a))
    rest = _segment(run, root / "v.tif", tmp_path / "part.zarr", "route")
    assert rest.done_before == 5 and len(calls) == full.blocks - 5 and not set(calls) & set(range(5))
    a, attrs = _read(tmp_path / "part.zarr")
    _equal(a, _read(tmp_path / "full.zarr")[0])
    assert attrs["paser"]["complete"] and attrs["paser"]["gflops"] == pytest.approx(full.gflops)


def test_ctrl_c_leaves_a_resumable_state(setup, tmp_path, monkeypatch):
    root, _, run, _ = setup
    real = seg_block._segment_block
    count = []

    def interrupted(*a):
        count.append(1)
        if len(count) == 4:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(seg_block, "_segment_block", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _segment(run, root / "v.tif", tmp_path / "o.zarr", "maps")
    monkeypatch.setattr(seg_block, "_segment_block", real)
    assert _segment(run, root / "v.tif", tmp_path / "o.zarr", "maps").done_before == 3
    _segment(run, root / "v.tif", tmp_path / "ref.zarr", "maps")
    _equal(_read(tmp_path / "o.zarr")[0], _read(tmp_path / "ref.zarr")[0])


def test_local_cluster_run_equals_in_process_run(setup, tmp_path):
    root, _, run, _ = setup
    _segment(run, root / "v.tif", tmp_path / "here.zarr", "route", workers=0)
    _segment(run, root / "v.tif", tmp_path / "dask.zarr", "route", workers=1, processes=False, threads=1)
    _equal(_read(tmp_path / "here.zarr")[0], _read(tmp_path / "dask.zarr")[0])


def _cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _bad_inputs(root: Path, v: np.ndarray) -> dict:
    """{case: --image} of volumes `paser segment` must refuse."""
    import h5py

    ome4d = root / "ome4d.zarr"
    g = zarr.open_group(str(ome4d), mode="w", zarr_format=2)
    from napari_paser.data.volumes import ngff_attrs

    g.attrs.update(ngff_attrs("x", "tzyx"))
    g.create_array("0", shape=(2, *v.shape), dtype=v.dtype)
    rgb = root / "rgb.zarr"
    g = zarr.open_group(str(rgb), mode="w", zarr_format=2)
    g.attrs.update(ngff_attrs("x", "czyx"))
    g.create_array("0", shape=(3, *v.shape), dtype=v.dtype)
    folder = root / "odd"
    folder.mkdir(exist_ok=True)
    tifffile.imwrite(folder / "a.tif", v[0])
    tifffile.imwrite(folder / "b.tif", v[0, :50])
    with h5py.File(root / "scan.h5", "w") as f:
        f.create_dataset("data", data=v)
    return {"4D time series": str(ome4d), "3 channels": str(rgb), "differ in shape": str(folder),
            "no dataset /missing": f"{root / 'scan.h5'}:/missing"}


def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys):
    root, v, run, _ = setup
    base = ["segment", "--run", str(run), "--tile", str(TILE), "--workers", "0", "--quiet"]
    for match, image in _bad_inputs(tmp_path, v).items():
        code, err = _cli(base + ["--image", image, "--out", str(tmp_path / "o.zarr")], capsys)
        assert code == 2 and match in err and "\n" not in err, (match, err)
        assert not (tmp_path / "o.zarr").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    code, err = _cli(base + ["--image", str(root / "v.tif"), "--out", str(tmp_path / "other")], capsys)
    assert code == 2 and "is not a previous `paser segment` output" in err
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"
    assert _cli(base + ["--image", str(root / "v.tif"), "--out", str(tmp_path / "m.zarr"), "--what", "maps"],
                capsys)[0] == 0
    code, err = _cli(base + ["--image", str(root / "v.tif"), "--out", str(tmp_path / "m.zarr"), "--what", "f2"], capsys)
    assert code == 2 and "holds a different segmentation job (what 'maps' there, 'f2' now)" in err
    argv = ["segment", "--run", str(run), "--tile", str(TILE), "--scheduler", "tcp://127.0.0.1:9", "--quiet",
            "--image", str(root / "v.tif"), "--out", str(tmp_path / "s.zarr")]
    code, err = _cli(argv, capsys)
    assert code == 2 and "cannot reach the dask scheduler at tcp://127.0.0.1:9" in err and "\n" not in err
    code, err = _cli(base[:-3] + ["--tile", "30", "--image", str(root / "v.tif"), "--out", str(tmp_path / "t.zarr")],
                     capsys)
    assert code == 2 and "--tile 30" in err


def test_job_json_records_the_normalisation_and_a_resume_reuses_it(setup, tmp_path):
    root, v, run, _ = setup
    _segment(run, root / "v.tif", tmp_path / "o.zarr", "maps", max_blocks=1)
    job = json.loads((tmp_path / "o.zarr" / seg.JOB_DIR / seg.JOB_FILE).read_text())
    assert (job["lo"], job["hi"]) == robust_range(v)
    assert job["halo"] == seg.receptive_halo(load_checkpoint(run / "f0.pt").model) == 32


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_the_machine_lacks_is_one_line_and_exit_2(setup, tmp_path, capsys):
    root, _, run, _ = setup
    code, err = _cli(["segment", "--run", str(run), "--image", str(root / "v.tif"), "--out", str(tmp_path / "o.zarr"),
                      "--device", "cuda", "--workers", "0", "--quiet"], capsys)
    assert code == 2 and "no CUDA" in err and "\n" not in err
    assert not (tmp_path / "o.zarr").exists()


def test_a_session_style_policy_routes_its_own_patch_size_and_halo_blockwise(setup, tmp_path):
    """A session exports policies that route fixed 16 px patches with a halo: each 32 px tile is 2 x 2 of
    them, and f1/f2 see each patch with its context, as in `execute_routing` on the tile."""
    import shutil

    from learners.grid import Patching
    from learners.routing.policy import PolicyConfig, PolicyNet, save_policy
    from learners.routing.router import execute_routing

    root, v, run, _ = setup
    run2 = tmp_path / "run"
    shutil.copytree(run, run2)
    torch.manual_seed(1)
    policy = PolicyNet(PolicyConfig(n_classes=3, n_models=3, patch=(16, 16), halo=4, width=4))
    with torch.no_grad():
        for name, prm in policy.named_parameters():
            if "norm" not in name:
                prm.normal_(0, 1.0)
        policy.head.bias.zero_()  # centred logits on the test volume: every model gets patches
        policy.head.bias.copy_(-policy.eval()(_f0_states(run2, tile=TILE)).mean((0, 1)))
    save_policy(run2 / "policy.pt", policy, {"lambda": 0.3})
    assert seg.tile_grid(policy.config.patching, TILE) == (2, 2)
    out = _read(_segment(run2, root / "v.tif", tmp_path / "r.zarr", "route").out)[0]
    routing = out["routing"][0]
    cells = routing[:96 // 16 * 16, :80 // 16 * 16].reshape(6, 16, 5, 16)
    assert (cells == cells[:, :1, :, :1]).all()  # one model per 16 px patch of the volume's grid
    x = normalise(v, *robust_range(v))
    models = [load_checkpoint(run2 / f"{r}.pt").model for r in ("f0", "f1", "f2")]
    with torch.no_grad():  # the first tile, every patch to f1, with the policy's halo
        f1_tile = execute_routing(models, x[:1, :TILE, :TILE], np.ones((1, 4), int),
                                  Patching(size=(16, 16), halo=4), samples=1).segmentation[0]
    mine = routing[:TILE, :TILE] == 1
    assert mine.any() and len(np.unique(routing)) >= 2  # the random policy really routes, to f1 here too
    np.testing.assert_array_equal(out["segmentation"][0][:TILE, :TILE][mine], f1_tile[mine])
    with pytest.raises(Exception, match="multiple of 16"):
        seg.tile_grid(policy.config.patching, 24)


def test_a_rerun_of_a_finished_job_does_not_rewrite_its_pyramid(setup, tmp_path, monkeypatch):
    """The pyramid is written when the result is complete; running the same finished job again (nothing to do)
    leaves it, unless its levels are missing (a job stopped between its last block and its pyramid)."""
    from napari_paser.data import pyramid
    from napari_paser.jobs.segment import run as seg_run

    root, _, run, _ = setup
    calls = []
    real = seg_run.write_pyramids
    monkeypatch.setattr(seg_run, "write_pyramids", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    out = tmp_path / "o.zarr"
    _segment(run, root / "v.tif", out, "maps")
    assert len(calls) == 1
    assert _segment(run, root / "v.tif", out, "maps").done_before > 0 and len(calls) == 1
    assert all(pyramid.has_pyramid(out / name) for name in ("segmentation", "entropy", "bald"))
    monkeypatch.setattr(seg_run, "has_pyramid", lambda group: False)  # as if stopped before its pyramid
    _segment(run, root / "v.tif", out, "maps")
    assert len(calls) == 2
