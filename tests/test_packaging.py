"""The wheel is the product: built from the source, it holds the shipped weights and the DQN agent,
installs into a fresh virtual environment with no source tree in reach, and runs there:
`paser --help`, `paser segment` on a small volume, napari's plugin discovery (`npe2 list`).

To keep CI fast the fresh environment reuses the third-party packages already installed here (torch,
napari ...) through a .pth file pointing at a folder of links to them, leaving out this project's
own install (its editable finder and metadata); the wheel itself goes in with `pip --no-deps`. The
build runs without isolation (`python -m build --no-isolation`) on a copy of the source, so the
checkout gets no build/ or .egg-info.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PARTS = ("napari_paser", "learners", "sampling", "__editable__", "napari-paser", "napari_paser-")
SKIP_ANYWHERE = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
SKIP_AT_ROOT = {".venv", ".git", "demo_out", "site", "build", "dist", "runs", "data", "benchmarks"}  # outputs, not source


def _skip(folder: str, names: list[str]) -> set[str]:
    return set(SKIP_ANYWHERE(folder, names)) | (SKIP_AT_ROOT & set(names) if Path(folder) == ROOT else set())

pytest.importorskip("build")


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src") / "napari-paser"
    shutil.copytree(ROOT, src, ignore=_skip, symlinks=True)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, src], cwd=src)
    (path,) = out.glob("napari_paser-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed, seeing this environment's third-party packages only."""
    base = tmp_path_factory.mktemp("venv")
    env_dir = base / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=base)
    python = env_dir / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base).stdout.strip())
    deps = base / "deps"
    deps.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        if not entry.name.startswith(PROJECT_PARTS) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    (site / "third-party.pth").write_text(f"{deps}\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", wheel], cwd=base, env=_clean_env(env_dir))
    return env_dir


def _clean_env(env_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def test_the_wheel_holds_weights_agent_manifest_and_metadata(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith("napari_paser/weights/") and n.endswith(".pt")], "no shipped weights"
    assert [n for n in names if n.startswith("sampling/agents/") and n.endswith(".pt")], "no DQN agent"
    assert "napari_paser/napari.yaml" in names
    packages = {str(p.parent.relative_to(ROOT)) for pkg in ("napari_paser", "learners", "sampling")
                for p in (ROOT / pkg).rglob("__init__.py")}
    missing = sorted(pkg for pkg in packages if f"{pkg}/__init__.py" not in names)
    assert not missing, f"subpackages missing from the wheel: {missing}"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(meta_name).decode())
    init = (ROOT / "napari_paser" / "__init__.py").read_text()
    assert f'__version__ = "{meta["Version"]}"' in init, "the version comes from napari_paser.__version__"
    assert meta["License"] or meta["License-Expression"]
    assert any(u.startswith("Documentation") for u in meta.get_all("Project-URL"))
    requires = meta.get_all("Requires-Dist")
    gui = [r for r in requires if "extra == \"gui\"" in r]
    assert any(r.startswith("napari") for r in gui) and not any(r.lower().startswith(("napari", "pyqt", "qtpy"))
                                                                for r in requires if "extra ==" not in r)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["Name"] == project["name"]


def test_the_installed_wheel_runs_without_the_source_tree(venv, tmp_path):
    env, python = _clean_env(venv), venv / "bin" / "python"
    where = _run([python, "-c", "import napari_paser, learners, sampling; "
                  "print(napari_paser.__file__); print(learners.__file__); print(sampling.__file__)"],
                 cwd=tmp_path, env=env).stdout.split()
    for path in where:
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"imported {path}, not from the installed wheel"

    assert "segment" in _run([venv / "bin" / "paser", "--help"], cwd=tmp_path, env=env).stdout

    # A first segmentation of a small volume, from the starting weights the wheel ships.
    _run([python, "-c",
          "import numpy as np, tifffile\n"
          "from napari_paser.session import Session\n"
          "rng = np.random.default_rng(0)\n"
          "tifffile.imwrite('scan.tif', (rng.random((2, 64, 64)) * 4000).astype(np.uint16))\n"
          "s = Session.create('session', 'scan.tif'); s.new_models(); s.export_run('run'); s.close()\n"
          "from sampling.registry import make_sampler\n"
          "make_sampler('dqn')  # the shipped agent loads from the wheel\n"],
         cwd=tmp_path, env=env)
    res = _run([venv / "bin" / "paser", "segment", "--run", "run", "--image", "scan.tif", "--out", "seg.zarr",
                "--what", "maps", "--workers", "0", "--tile", "64", "--quiet"], cwd=tmp_path, env=env)
    assert "segmented 2 blocks" in res.stdout, res.stdout
    check = _run([python, "-c", "import json, zarr, numpy as np\n"
                  "seg = np.asarray(zarr.open_group('seg.zarr', mode='r')['segmentation/0'])\n"
                  "print(json.dumps([list(seg.shape), int(seg.max())]))"], cwd=tmp_path, env=env)
    shape, top = json.loads(check.stdout.strip().splitlines()[-1])
    assert shape == [2, 64, 64] and 0 <= top < 3


def test_napari_discovers_the_installed_plugin(venv, tmp_path):
    pytest.importorskip("npe2")
    res = _run([venv / "bin" / "python", "-m", "npe2", "list", "--fields", "name,version", "--format", "json"],
               cwd=tmp_path, env=_clean_env(venv))
    plugins = {p["name"]: p for p in json.loads(res.stdout)}
    assert "napari-paser" in plugins, sorted(plugins)
