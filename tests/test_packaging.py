"""``pip install .`` works: sdist -> wheel -> installed copy that runs the demo from a folder outside the repository.

Everything is built offline (``--no-build-isolation --no-index``) from a copy of the working tree, so the repository
itself is not written to; the demo runs in ``python -I`` with only the installed copy (not the repository) on
sys.path, so it must find its configs and prompts inside the wheel.
"""
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from utils import paths

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"app", "media", "pipeline", "utils", "wan", "methods"}
NOT_COPIED = {".git", ".venv", "venv", "build", "dist", "wan_models", "checkpoints", "output", "longlive_models"}
RESOURCES = sorted(p.relative_to(REPO_ROOT).as_posix() for pattern in
                   ("configs/**/*.yaml", "configs/**/*.json", "prompts/*.txt", "prompts/examples_txt/*.txt")
                   for p in REPO_ROOT.glob(pattern))

DRIVER = """
import json, sys
site, out, report = sys.argv[1:4]
sys.path.insert(0, site)
from app.cli import main
rc = main(["--demo", "--output_folder", out, "--num_output_frames", "3"])
from utils import paths
mods = {n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.split(".")[0] in %r}
with open(report, "w") as fh:
    json.dump({"modules": mods, "configs": str(paths.CONFIGS_DIR), "prompts": str(paths.PROMPTS_DIR)}, fh)
sys.exit(rc)
""" % sorted(PACKAGES)


def run(cmd, cwd, **kw):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=300, **kw)
    shown = " ".join(map(str, cmd))[:200]
    assert r.returncode == 0, f"{shown} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def ignore(folder: str, names: list[str]) -> set[str]:
    """copytree filter: VCS, environments, build outputs, downloaded models and caches."""
    top = Path(folder).resolve() == REPO_ROOT
    return {n for n in names if (top and n in NOT_COPIED) or n in {"__pycache__", ".pytest_cache"}
            or n.endswith(".egg-info")}


def offline_wheel_builder() -> str | None:
    """Why this environment cannot build a wheel without the network (None: it can); imports nothing."""
    try:
        version = Version(importlib.metadata.version("setuptools"))
    except importlib.metadata.PackageNotFoundError:
        return "setuptools is not installed"
    if version < Version("64"):
        return f"setuptools {version} < 64 (pyproject.toml's build requirement)"
    # setuptools >= 70.1 has bdist_wheel built in; older ones need the wheel package
    if version < Version("70.1") and importlib.util.find_spec("wheel") is None:
        return f"setuptools {version} has no bdist_wheel and the wheel package is not installed"
    return None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel, site) built and installed from a copy of the working tree."""
    missing = offline_wheel_builder()
    if missing:
        pytest.skip(f"cannot build the wheel offline: {missing}; pip install 'setuptools>=70.1' to run this test")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(REPO_ROOT, src, ignore=ignore, symlinks=True)
    run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", tmp / "sdist"], cwd=src)
    (sdist,) = (tmp / "sdist").glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (tmp / "unpacked").iterdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "wheel", unpacked],
        cwd=tmp)
    (wheel,) = (tmp / "wheel").glob("*.whl")
    run([*pip, "install", "-q", "--no-deps", "--no-index", "--target", tmp / "site", wheel], cwd=tmp)
    return sdist, wheel, tmp / "site"


def test_checkout_resources_are_the_repository_folders():
    """In a checkout (and an editable install) the configs and prompts are read where git keeps them."""
    assert not paths.INSTALLED
    assert paths.CONFIGS_DIR == REPO_ROOT / "configs" and paths.PROMPTS_DIR == REPO_ROOT / "prompts"
    assert (paths.CONFIGS_DIR / "wan_vae_config.json").is_file() and (paths.PROMPTS_DIR / "demo.txt").is_file()


def test_sdist_has_what_setup_py_and_the_wheel_need(built):
    sdist, _, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    expected = {"requirements.txt", "README.md", "setup.py", "pyproject.toml", "MANIFEST.in", "inference.py",
                "DS_inference.sh", "DS_PC_inference.sh", "app/cli.py", *RESOURCES}
    assert not expected - names


def test_wheel_layout(built):
    """Only the project's packages at the top level: no ``inference`` module, no ``configs``/``prompts`` folders."""
    _, wheel, _ = built
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        metadata = zf.read(f"{info}/METADATA").decode()
    top = {n.split("/")[0] for n in names} - {info}
    assert top <= PACKAGES, top - PACKAGES
    assert "inference.py" not in names and not any(n.startswith(("configs/", "prompts/")) for n in names)
    assert not {f"utils/_resources/{r}" for r in RESOURCES} - names
    assert "deep-forcing = app.cli:main" in entry_points
    requires = [Requirement(ln.split(":", 1)[1].strip()) for ln in metadata.splitlines()
                if ln.startswith("Requires-Dist:")]
    runtime = {r.name.lower(): r for r in requires if r.marker is None}
    assert not [str(r) for r in runtime.values() if any(s.operator == "==" for s in r.specifier)]
    # the CI pins of requirements.txt satisfy the install ranges
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            pin = Requirement(line)
            version = next(iter(pin.specifier)).version
            if pin.name.lower() in runtime:
                assert runtime[pin.name.lower()].specifier.contains(version), (pin, runtime[pin.name.lower()])


def test_installed_wheel_runs_the_demo_outside_the_repository(built, tmp_path):
    _, _, site = built
    cwd, out, report = tmp_path / "elsewhere", tmp_path / "out", tmp_path / "report.json"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run([sys.executable, "-I", "-c", DRIVER, site, out, report], cwd=cwd, env=env)
    assert list(out.glob("*.mp4")) and list(out.glob("*.json"))
    seen = json.loads(report.read_text())
    outside = {n: f for n, f in seen["modules"].items() if f is not None and not Path(f).is_relative_to(site)}
    assert "app.cli" in seen["modules"] and not outside, outside
    assert Path(seen["configs"]) == site / "utils" / "_resources" / "configs"
    assert Path(seen["prompts"]) == site / "utils" / "_resources" / "prompts"
    # the console script pip wrote
    r = run([site / "bin" / "deep-forcing", "--help"], cwd=cwd, env={**env, "PYTHONPATH": str(site)})
    assert "--demo" in r.stdout
