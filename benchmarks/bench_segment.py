"""Benchmark `paser segment` on a synthetic 2048 x 2048 x N uint16 zarr volume.

Drives the shipped CLI (`python -m napari_paser.cli segment`) in subprocesses and measures:
throughput (megavoxels/s, wall time including cluster start) and peak RSS per process for
`--what maps`, `route` and `f2` with 1 and 2 local workers; a real multi-process cluster
(`dask scheduler` + two `dask worker` processes on 127.0.0.1, joined with --scheduler); kill -9
of the whole job halfway, then the rerun's time and its equality with an uninterrupted run;
kill -9 of one worker of the external cluster (the job must complete). It also times f0's
MC-dropout maps of a 512 x 512 slice (T = 5) on the reference and the fast path.

The run folder holds the model presets at their real sizes (f0 tiny, f1 medium, f2 large,
untrained: the benchmark measures cost, not accuracy) and a policy whose patch shares are
calibrated to the SOC routing run's PaSeR at lambda 0.1 (f0 .66 / f1 .34 / f2 0, BENCHMARKS.md),
so `route` costs what PaSeR costs there. Every run uses --threads 1 per worker (2 cores here).

    python benchmarks/bench_segment.py [--slices 4] [--out benchmarks/results/segment.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
SIZE = 2048
TILE = 512
SHARES = (0.66, 0.34, 0.0)  # SOC PaSeR at lambda 0.1


def make_volume(path: Path, n: int, seed: int = 0) -> None:
    """Smooth two-phase structure plus noise, uint16, chunks of one 512 x 512 tile (zarr v2)."""
    import zarr
    from scipy import ndimage

    arr = zarr.create_array(str(path), shape=(n, SIZE, SIZE), chunks=(1, TILE, TILE), dtype="uint16", zarr_format=2)
    rng = np.random.default_rng(seed)
    for z in range(n):
        low = ndimage.zoom(rng.random((SIZE // 16, SIZE // 16)), 16, order=1)
        img = (low > 0.5) * 30000 + 10000 + rng.normal(0, 3000, (SIZE, SIZE))
        arr[z] = np.clip(img, 0, 65535).astype(np.uint16)


def make_run(folder: Path, volume: Path) -> None:
    """Preset-sized f0/f1/f2 and a policy routing SHARES of the patches of the volume's first tiles."""
    from learners.checkpoint import save_checkpoint
    from learners.routing.policy import PolicyConfig, PolicyNet, policy_state, save_policy
    from learners.uncertainty import uncertainty_maps
    from learners.unet import build_unet
    from napari_paser.data.dataset import normalise
    from napari_paser.data.volumes import open_volume

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    models = [build_unet(p).eval() for p in ("tiny", "medium", "large")]
    for k, m in enumerate(models):
        save_checkpoint(folder / f"f{k}.pt", m)
    vol = open_volume(volume)
    lo, hi = vol.intensity_range()
    states = []
    for y0 in (0, TILE):
        tile = normalise(vol.read(slice(0, 1), slice(y0, y0 + TILE), slice(0, 4 * TILE))[0], lo, hi)
        for x0 in range(0, 4 * TILE, TILE):
            m = uncertainty_maps(models[0], tile[:, x0:x0 + TILE], samples=5)
            states.append(policy_state(torch.from_numpy(m.prediction)[None], torch.from_numpy(m.entropy)[None], 3))
    policy = PolicyNet(PolicyConfig(n_classes=3, n_models=3, grid=(4, 4)))
    with torch.no_grad():
        for name, prm in policy.named_parameters():
            if "norm" not in name:
                prm.normal_(0, 0.5)
        policy.head.bias.zero_()
        logits = policy.eval()(torch.cat(states)).reshape(-1, 3)
        gap = (logits[:, 0] - logits[:, 1]).numpy()
        policy.head.bias.copy_(torch.tensor([0.0, float(np.quantile(gap, SHARES[1])), -1e4]))
        shares = np.bincount(policy(torch.cat(states)).argmax(-1).ravel().numpy(), minlength=3) / gap.size
    save_policy(folder / "policy.pt", policy, {"lambda": 0.1, "calibrated_shares": shares.tolist()})


class Monitor:
    """Peak RSS of every process in a tree (and of extra pids), sampled every 0.2 s."""

    def __init__(self, pids: list[int]) -> None:
        self.roots, self.peak, self._stop = pids, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.roots:
                try:
                    procs = [psutil.Process(pid)]
                    procs += procs[0].children(recursive=True)
                except psutil.Error:
                    continue
                for p in procs:
                    try:
                        rss = p.memory_info().rss
                        name = " ".join(p.cmdline()[1:4])[:80]
                    except psutil.Error:
                        continue
                    key = f"{p.pid} {name}"
                    self.peak[key] = max(self.peak.get(key, 0), rss)
            time.sleep(0.2)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {k: round(v / 2**20) for k, v in self.peak.items()}


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def segment_cmd(run: Path, image: Path, out: Path, what: str, *where: str) -> list[str]:
    return [sys.executable, "-m", "napari_paser.cli", "segment", "--run", str(run), "--image", str(image),
            "--out", str(out), "--what", what, "--tile", str(TILE), "--threads", "1", "--quiet", *where]


def done_blocks(out: Path) -> int:
    d = out / ".paser" / "done"
    return len(list(d.glob("*.json"))) if d.is_dir() else 0


def run_job(cmd: list[str], out: Path, kill_at: int | None = None, extra_pids=(), on_blocks=None) -> dict:
    """Run one CLI job; kill -9 its whole process group once `kill_at` blocks are done."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    mon = Monitor([proc.pid, *extra_pids])
    killed = False
    while proc.poll() is None:
        time.sleep(0.3)
        n = done_blocks(out)
        if on_blocks is not None:
            on_blocks(n)
        if kill_at is not None and n >= kill_at:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
    proc.wait()
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 1), "returncode": proc.returncode, "killed": killed,
            "blocks_done": done_blocks(out), "peak_rss_mb": mon.stop(),
            "output": (proc.stdout.read() if proc.stdout else "")[-400:]}


def steady_rate(out: Path) -> dict:
    """Blocks per second between the first and the last block marker: throughput without the
    cluster's start-up (worker processes importing torch and loading the models)."""
    times = sorted(p.stat().st_mtime for p in (out / ".paser" / "done").glob("*.json"))
    if len(times) < 3:
        return {}
    rate = (len(times) - 1) / (times[-1] - times[0])
    return {"steady_blocks_per_s": round(rate, 4), "steady_megavoxels_per_s": round(rate * TILE * TILE / 1e6, 3),
}


def read_out(out: Path) -> dict:
    import zarr

    g = zarr.open_group(str(out), mode="r")
    return {k: g[k]["0"][:] for k in ("segmentation", "entropy", "bald", "routing") if k in g}


def compare(a: Path, b: Path) -> dict:
    x, y = read_out(a), read_out(b)
    res = {}
    for k in x:
        if x[k].dtype.kind == "f":
            res[k] = {"max_abs_diff": float(np.nanmax(np.abs(x[k] - y[k]))), "equal": bool(np.array_equal(x[k], y[k]))}
        else:
            res[k] = {"equal": bool(np.array_equal(x[k], y[k]))}
    return res


def worker_rss(peaks: dict) -> float:
    """Largest RSS among worker processes (spawned children or `dask worker`), MB."""
    vals = [v for k, v in peaks.items() if "multiprocessing" in k or "worker" in k or "spawn" in k]
    return max(vals) if vals else max(peaks.values())


def f0_speed(repeats: int = 7) -> dict:
    from learners import uncertainty as U
    from learners.unet import build_unet

    torch.set_num_threads(2)
    torch.manual_seed(0)
    m = build_unet("tiny").eval()
    img = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    x = torch.from_numpy(img)[None, None]

    def ref():
        with torch.no_grad(), torch.random.fork_rng(), U.mc_dropout(m):
            torch.manual_seed(0)
            p = U._reference_mc_probabilities(m, x, 5, 16)[:, 0]
            return p.mean(0), U.predictive_entropy(p), U.bald(p)

    def timed(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    t_ref, t_fast = timed(ref), timed(lambda: U.uncertainty_maps(m, img, samples=5))
    fast = U.uncertainty_maps(m, img, samples=5)
    mean, ent, _ = ref()
    return {"reference_s": round(t_ref, 3), "fast_s": round(t_fast, 3), "speedup": round(t_ref / t_fast, 2),
            "max_abs_diff_mean": float(np.abs(fast.mean_probs - mean.numpy()).max()),
            "max_abs_diff_entropy": float(np.abs(fast.entropy - ent.numpy()).max()), "threads": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(workdir: Path) -> tuple[str, subprocess.Popen, list[subprocess.Popen]]:
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).with_name("dask"))
    sched = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                             env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    time.sleep(4)
    workers = [subprocess.Popen([dask, "worker", addr, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                 "--host", "127.0.0.1", "--memory-limit", "4GB"],
                                env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
               for _ in range(2)]
    time.sleep(8)
    return addr, sched, workers


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=4, help="N of the 2048 x 2048 x N volume (default 4)")
    parser.add_argument("--f2-slices", type=int, default=1, help="slices the f2 baseline runs on (default 1)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/paser-bench-segment"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "segment.json")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: configs,cluster,kill,f2")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    res: dict = {"command": "python benchmarks/bench_segment.py " + " ".join(sys.argv[1:]),
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
                 "cpus": os.cpu_count(), "load_before": os.getloadavg(), "volume": [args.slices, SIZE, SIZE],
                 "tile": TILE, "threads_per_worker": 1, "runs": {}}

    def save():
        res["load_after"] = os.getloadavg()
        args.out.write_text(json.dumps(res, indent=2))

    print("f0 speed ...", flush=True)
    res["f0_maps_512_T5"] = f0_speed()
    print(res["f0_maps_512_T5"], flush=True)
    vol, vol_f2 = work / "vol.zarr", work / "vol_f2.zarr"
    make_volume(vol, args.slices)
    make_volume(vol_f2, args.f2_slices)
    run = work / "run"
    make_run(run, vol)
    res["calibrated_shares"] = json.loads(json.dumps(torch.load(run / "policy.pt", weights_only=True)["meta"]))
    voxels = args.slices * SIZE * SIZE
    name_to_out = {f"{w}-{n}w": f"{w}-{n}.zarr" for w in ("maps", "route") for n in (1, 2)}
    name_to_out.update({"route-2w-f2vol": "route-f2vol.zarr", "f2-2w-f2vol": "f2-f2vol.zarr",
                        "maps-cluster-2w": "maps-cluster.zarr", "maps-cluster-kill-one-worker": "kill-worker.zarr"})

    def record(name: str, r: dict, nvox: int) -> None:
        r["megavoxels_per_s"] = round(nvox / 1e6 / r["wall_s"], 3)
        r.update(steady_rate(work / name_to_out.get(name, "")) if name in name_to_out else {})
        r["worker_peak_rss_mb"] = worker_rss(r["peak_rss_mb"])
        res["runs"][name] = r
        print(name, {k: r[k] for k in ("wall_s", "megavoxels_per_s", "worker_peak_rss_mb", "blocks_done", "returncode")},
              flush=True)
        save()

    if "configs" not in skip:
        for what in ("maps", "route"):
            for n in (1, 2):
                out = work / f"{what}-{n}.zarr"
                record(f"{what}-{n}w", run_job(segment_cmd(run, vol, out, what, "--workers", str(n)), out), voxels)
    if "f2" not in skip:
        for what in ("route", "f2"):
            out = work / f"{what}-f2vol.zarr"
            record(f"{what}-2w-f2vol", run_job(segment_cmd(run, vol_f2, out, what, "--workers", "2"), out),
                   args.f2_slices * SIZE * SIZE)
    if "cluster" not in skip:
        addr, sched, workers = start_cluster(work)
        try:
            out = work / "maps-cluster.zarr"
            record("maps-cluster-2w", run_job(segment_cmd(run, vol, out, "maps", "--scheduler", addr), out,
                                              extra_pids=[w.pid for w in workers]), voxels)
            res["runs"]["maps-cluster-2w"]["equal_to_local_2w"] = compare(out, work / "maps-2.zarr") \
                if (work / "maps-2.zarr").exists() else None
            out = work / "kill-worker.zarr"
            victim = workers[0]
            total = args.slices * (SIZE // TILE) ** 2

            def kill_worker(n):
                if n >= total // 4 and victim.poll() is None:
                    victim.kill()
                    res["worker_killed_at_blocks"] = n
            r = run_job(segment_cmd(run, vol, out, "maps", "--scheduler", addr), out, extra_pids=[workers[1].pid],
                        on_blocks=kill_worker)
            r["completed"] = r["returncode"] == 0 and r["blocks_done"] == total
            r["equal_to_local_2w"] = compare(out, work / "maps-2.zarr") if (work / "maps-2.zarr").exists() else None
            record("maps-cluster-kill-one-worker", r, voxels)
        finally:
            stop(sched, *workers)
    if "kill" not in skip:
        out = work / "killed.zarr"
        total = args.slices * (SIZE // TILE) ** 2
        first = run_job(segment_cmd(run, vol, out, "maps", "--workers", "2"), out, kill_at=total // 2)
        second = run_job(segment_cmd(run, vol, out, "maps", "--workers", "2"), out)
        res["runs"]["kill-whole-job"] = {"first": first, "rerun": second, "blocks_before_rerun": first["blocks_done"],
                                         "rerun_wall_s": second["wall_s"],
                                         "equal_to_uninterrupted": compare(out, work / "maps-2.zarr")
                                         if (work / "maps-2.zarr").exists() else None}
        print("kill-whole-job", first["blocks_done"], second["wall_s"], res["runs"]["kill-whole-job"]["equal_to_uninterrupted"],
              flush=True)
        save()
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
