"""The top-level ``kernels/`` and ``csrc/`` are shipped inside ``tscd`` and found at run time in every
install: a wheel and an sdist built from the checkout, and an editable install next to a stale
``tscd/kernels/`` left by an older checkout. Each install goes into a fresh venv that sees the
test environment's packages (torch, triton, ...) only after its own."""
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "tscd", "kernels", "csrc")

# Run inside the fresh venv from a neutral folder: where everything comes from, and an op on cpp
# and on triton (interpreter) against the torch reference.
_PROBE = """
import importlib.util, json, os, sys
import torch
import tscd, tscd.kernels
from tscd.kernels import extension
from tscd.ops import can_run, scd_loss
from tscd.config import builtin_config_dir
g = torch.Generator().manual_seed(0)
t1, t2 = (torch.randn(2, 5, 37, generator=g) for _ in range(2))
s1, s2 = (torch.randn(2, 7, 37, generator=g) for _ in range(2))
values = {b: scd_loss(t1, t2, s1, s2, backend=b).item() for b in ("torch", "cpp", "triton") if can_run(b, "cpu")}
spec = importlib.util.find_spec("kernels")
print(json.dumps(dict(tscd=tscd.__file__, kernels=tscd.kernels.__file__, csrc=str(extension.source_dir()),
                      configs=str(builtin_config_dir()), values=values,
                      bare_kernels=None if spec is None else spec.origin)))
"""


def _copy_project(target: Path) -> Path:
    target.mkdir()
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"))
        else:
            shutil.copy2(source, target / name)
    return target


def _venv(path: Path) -> Path:
    """A venv without pip whose site-packages come first, then the test environment's."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # every site folder of the test environment (a venv may itself reach another one through a .pth)
    folders = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (site / "test_environment.pth").write_text("\n".join(dict.fromkeys([sysconfig.get_paths()["purelib"], *folders]))
                                               + "\n")
    return python


def _pip(python: Path, *args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-build-isolation", "--no-index", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def _build(kind: str, project: Path, out: Path) -> Path:
    code = f"from setuptools import build_meta; print(build_meta.build_{kind}({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


def _probe(python: Path, cwd: Path) -> dict:
    import json

    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("PYTHONPATH", None)
    done = subprocess.run([python, "-W", "error::RuntimeWarning:tscd", "-c", _PROBE], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_ops_agree(values: dict) -> None:
    assert set(values) == {"torch", "cpp", "triton"}, values
    for backend in ("cpp", "triton"):
        assert values[backend] == pytest.approx(values["torch"], rel=1e-5), values


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel, sdist) built from a copy of the checkout's project files."""
    tmp = tmp_path_factory.mktemp("packaging")
    project = _copy_project(tmp / "project")
    return _build("wheel", project, tmp), _build("sdist", project, tmp)


def test_the_wheel_carries_the_top_level_folders_inside_tscd(built):
    wheel, _ = built
    names = zipfile.ZipFile(wheel).namelist()
    assert {"tscd/kernels/__init__.py", "tscd/kernels/extension.py", "tscd/kernels/scd.py", "tscd/_csrc/scd.cpp",
            "tscd/_csrc/scd_cuda.cu", "tscd/_csrc/common.h", "tscd/configs/synthetic.yaml"} <= set(names)
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"tscd"}  # no bare kernels/ or csrc/ package: those names are not ours


def test_the_sdist_builds_the_same_wheel(built, tmp_path):
    wheel, sdist = built
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"MANIFEST.in", "setup.py", "csrc/varm.cpp", "csrc/lattice.h", "kernels/varm.py",
            "tscd/configs/voc.yaml"} <= names
    (unpacked,) = tmp_path.glob("tscd-*")
    again = _build("wheel", unpacked, tmp_path / "out")
    assert sorted(zipfile.ZipFile(again).namelist()) == sorted(zipfile.ZipFile(wheel).namelist())


def test_an_installed_wheel_runs_the_ops_from_its_own_files(built, tmp_path):
    wheel, _ = built
    python = _venv(tmp_path / "venv")
    _pip(python, str(wheel), cwd=tmp_path)
    found = _probe(python, cwd=tmp_path)
    site = str(tmp_path / "venv")
    for key in ("tscd", "kernels", "csrc", "configs"):
        assert found[key].startswith(site), (key, found[key])
    assert found["bare_kernels"] is None or not found["bare_kernels"].startswith(site)
    _assert_ops_agree(found["values"])


def test_an_editable_install_ignores_stale_folders_inside_tscd(tmp_path):
    """An older checkout's tscd/kernels (an old module, its __pycache__) and tscd/csrc, and a library
    built from older sources, are not used: the mapped top-level folders are."""
    project = _copy_project(tmp_path / "checkout")
    stale = project / "tscd" / "kernels"
    (stale / "__pycache__").mkdir(parents=True)
    (stale / "__init__.py").write_text("raise RuntimeError('the stale tscd/kernels was imported')\n")
    (stale / "scd.py").write_text("raise RuntimeError('the stale tscd/kernels/scd.py was imported')\n")
    (project / "tscd" / "csrc").mkdir()
    (project / "tscd" / "csrc" / "scd.cpp").write_text("#error the stale tscd/csrc was compiled\n")
    (project / "tscd" / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"not a library")
    python = _venv(tmp_path / "venv")
    _pip(python, "-e", str(project), cwd=tmp_path)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    done = subprocess.run([python, "-c", _PROBE], cwd=tmp_path, env=dict(env, TRITON_INTERPRET="1"),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ignoring {stale}" in done.stderr
    import json

    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["kernels"] == str(project / "kernels" / "__init__.py")
    assert found["csrc"] == str(project / "csrc")
    _assert_ops_agree(found["values"])


def test_the_bare_name_kernels_is_never_this_folder(tmp_path):
    """Python started in the checkout's root puts it on sys.path: ``import kernels`` must then give
    the installed package of that name (transformers requires Hugging Face's), or fail saying why."""
    code = "import kernels, sys; print(kernels.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if done.returncode == 0:
        assert Path(done.stdout.strip()).parent != ROOT / "kernels", done.stdout
    else:
        assert "tscd's kernel folder" in done.stderr, done.stderr[-2000:]


def test_a_checkout_on_pythonpath_without_an_install_says_how_to_install(tmp_path):
    python = _venv(tmp_path / "venv")
    done = subprocess.run([python, "-c", "import tscd.ops"], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True)
    assert done.returncode == 1 and "pip install -e ." in done.stderr.splitlines()[-1], done.stderr[-2000:]
