"""The JIT build of the C++ extension (the build itself mocked): one build folder per set of sources,
flags and torch version, under TORCH_EXTENSIONS_DIR; "compiling" is logged only when a build will happen."""
import logging
import shutil
from pathlib import Path

import pytest
import torch.utils.cpp_extension

from tscd.ops import _extension


@pytest.fixture
def extensions_dir(tmp_path, monkeypatch):
    root = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    return root


@pytest.fixture
def fake_build(monkeypatch):
    """torch's ``load`` replaced by one that only writes the library it would link; returns its calls."""
    calls = []

    def load(name, sources, build_directory, **kwargs):
        calls.append((name, build_directory))
        (Path(build_directory) / f"{name}.so").write_bytes(b"")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", load)
    return calls


def copy_sources(tmp_path, name):
    target = tmp_path / name
    shutil.copytree(_extension.SOURCE_DIR, target)
    return target


def test_build_folder_is_keyed_by_the_sources(tmp_path, extensions_dir):
    same = copy_sources(tmp_path, "checkout_a")
    changed = copy_sources(tmp_path, "checkout_b")
    folder = _extension.build_directory(with_cuda=False, source_dir=same)
    assert folder.parent == extensions_dir and folder.name.startswith("tscd_") and len(folder.name) == len("tscd_") + 12
    # The same sources elsewhere (another checkout) share the build; an edited header does not.
    assert _extension.build_directory(with_cuda=False, source_dir=changed) == folder
    with open(changed / "common.h", "a") as f:
        f.write("\n// edited\n")
    assert _extension.build_directory(with_cuda=False, source_dir=changed) != folder
    # The CUDA build has other sources and flags.
    assert _extension.build_directory(with_cuda=True, source_dir=same) != folder


def test_build_folder_depends_on_the_torch_version(tmp_path, extensions_dir, monkeypatch):
    sources = copy_sources(tmp_path, "checkout")
    folder = _extension.build_directory(with_cuda=False, source_dir=sources)
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert _extension.build_directory(with_cuda=False, source_dir=sources) != folder


def test_compiling_is_logged_only_when_a_build_happens(extensions_dir, fake_build, monkeypatch, caplog):
    monkeypatch.setattr(_extension, "_cuda_toolkit", lambda: False)
    caplog.set_level(logging.DEBUG, logger=_extension.logger.name)
    _extension._jit_build()
    infos = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(infos) == 1 and "compiling the C++ extension" in infos[0], infos
    (name, folder), = fake_build
    assert name == "tscd_cpu" and str(extensions_dir) in folder

    caplog.clear()
    _extension._jit_build()  # the library of these sources exists: nothing to compile
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    assert any("C++ extension" in r.getMessage() for r in caplog.records)  # said at debug level
    assert len(fake_build) == 2 and fake_build[1][1] == folder
