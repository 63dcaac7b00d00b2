"""The native build (torch's compile step mocked): one build folder per set of sources, flags and
torch version, made from a copy of the sources so that checkouts share it without rebuilding;
"compiling" logged only when a build will happen; an ahead-of-time library used only when it was
built from the installed sources."""
import logging
import shutil
from pathlib import Path

import pytest
import torch.utils.cpp_extension

from tscd.kernels import extension


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
        calls.append(dict(name=name, sources=sources, build_directory=build_directory, **kwargs))
        (Path(build_directory) / f"{name}.so").write_bytes(b"")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", load)
    monkeypatch.setattr(extension, "_cuda_toolkit", lambda: False)
    return calls


def copy_sources(tmp_path, name):
    target = tmp_path / name
    shutil.copytree(extension.source_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_sources_are_the_installed_csrc():
    folder = extension.source_dir()
    names = {p.name for p in extension.source_files(folder)}
    assert {"common.h", "scd.cpp", "scd_cuda.cu", "lattice.cpp"} <= names
    assert all(p.suffix == ".cpp" for p in extension.compiled_sources(folder, with_cuda=False))
    assert {p.suffix for p in extension.compiled_sources(folder, with_cuda=True)} == {".cpp", ".cu"}


def test_build_folder_is_keyed_by_the_sources(tmp_path, extensions_dir):
    same = copy_sources(tmp_path, "checkout_a")
    changed = copy_sources(tmp_path, "checkout_b")
    folder = extension.build_directory(with_cuda=False, folder=same)
    assert folder.parent == extensions_dir and folder.name.startswith("tscd_") and len(folder.name) == len("tscd_") + 12
    # The same sources elsewhere (another checkout) share the build; an edited header does not.
    assert extension.build_directory(with_cuda=False, folder=changed) == folder
    with open(changed / "common.h", "a") as f:
        f.write("\n// edited\n")
    assert extension.build_directory(with_cuda=False, folder=changed) != folder
    # The CUDA build has other sources and flags.
    assert extension.build_directory(with_cuda=True, folder=same) != folder


def test_build_folder_depends_on_the_torch_version(tmp_path, extensions_dir, monkeypatch):
    sources = copy_sources(tmp_path, "checkout")
    folder = extension.build_directory(with_cuda=False, folder=sources)
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert extension.build_directory(with_cuda=False, folder=sources) != folder


def test_checkouts_share_one_build_compiled_from_its_own_copy(tmp_path, extensions_dir, fake_build):
    """Two checkouts of the same sources: the second one's first use finds the first one's library,
    and the compiler only ever saw the copy inside the build folder (torch's build file records
    absolute paths: building from a checkout made every switch of checkout rebuild everything)."""
    first, second = copy_sources(tmp_path, "checkout_a"), copy_sources(tmp_path, "checkout_b")
    extension.jit_build(first)
    extension.jit_build(second)
    (one, two) = fake_build
    directory = Path(one["build_directory"])
    assert two["build_directory"] == one["build_directory"] and two["sources"] == one["sources"]
    copy = directory / "src"
    assert all(Path(s).parent == copy for s in one["sources"]) and one["extra_include_paths"] == [str(copy)]
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in extension.source_files(first))
    assert [p.name for p in directory.iterdir() if p.name.startswith("src.")] == []  # no staging left


def test_compiling_is_logged_only_when_a_build_happens(tmp_path, extensions_dir, fake_build, caplog):
    sources = copy_sources(tmp_path, "checkout")
    caplog.set_level(logging.DEBUG, logger=extension.logger.name)
    extension.jit_build(sources)
    infos = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(infos) == 1 and "compiling the C++ extension" in infos[0], infos
    assert fake_build[0]["name"] == "tscd_cpu" and str(extensions_dir) in fake_build[0]["build_directory"]

    caplog.clear()
    extension.jit_build(sources)  # the library of these sources exists: nothing to compile
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    assert any("C++ extension" in r.getMessage() for r in caplog.records)  # said at debug level


def test_a_prebuilt_library_is_used_only_for_its_own_sources(tmp_path):
    sources, package = copy_sources(tmp_path, "checkout"), tmp_path / "package"
    package.mkdir()
    assert extension.prebuilt_library(sources, package) is None
    own = package / f"{extension.PREBUILT_PREFIX}{extension.digest(sources, with_cuda=False)}.cpython-311.so"
    own.write_bytes(b"")
    assert extension.prebuilt_library(sources, package) == own
    with open(sources / "scd.cpp", "a") as f:
        f.write("\n// edited after the build\n")
    assert extension.prebuilt_library(sources, package) is None


def test_setup_builds_the_same_sources_with_the_same_flags(tmp_path):
    sources = copy_sources(tmp_path, "checkout")
    ext = extension.setuptools_extension(sources, with_cuda=False)
    assert ext.name == f"tscd.{extension.PREBUILT_PREFIX}{extension.digest(sources, with_cuda=False)}"
    assert sorted(ext.sources) == sorted(str(p) for p in extension.compiled_sources(sources, with_cuda=False))
    assert all(flag in ext.extra_compile_args["cxx"] for flag in extension.CXX_FLAGS)
