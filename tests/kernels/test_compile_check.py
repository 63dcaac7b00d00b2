"""The GPU launch configurations of the Triton wrappers against their ``compile_variants()`` (what
``python -m tscd.kernels.compile_check`` compiles ahead of time), and one ahead-of-time compile for sm_90."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

from tscd.kernels import gaussian, varm
from tscd.kernels.variants import LAUNCH_OPTIONS

ROOT = Path(__file__).resolve().parents[2]
_POINTER_TYPES = {torch.float32: "*fp32", torch.int32: "*i32"}


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: records each launch's (signature, constexprs, options)
    and holds the kernel's compile variants, listed before the recorder replaces it."""

    def __init__(self, module, kernel):
        self.kernel = kernel
        self.variants = {_key(v.signature, v.constexprs, v.options) for v in module.compile_variants()
                         if v.kernel is kernel}
        self.launches = []

    def __getitem__(self, grid):
        def launch(*args, **config):
            names = self.kernel.arg_names
            signature = {n: _POINTER_TYPES[a.dtype] if isinstance(a, torch.Tensor) else
                         ("fp32" if isinstance(a, float) else "i32") for n, a in zip(names, args)}
            constexprs = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
            signature.update(dict.fromkeys(constexprs, "constexpr"))
            assert list(signature) == names, "every argument typed, in order"
            self.launches.append(_key(signature, constexprs, {k: config[k] for k in LAUNCH_OPTIONS}))
        return launch


def _key(*parts: dict) -> tuple:
    return tuple(json.dumps(part) for part in parts)


def _record(monkeypatch, module, *names) -> list[_Recorder]:
    """Replace the kernels ``names`` of ``module`` by recorders; the wrappers make the GPU's choices."""
    recorders = [_Recorder(module, getattr(module, name)) for name in names]
    for name, recorder in zip(names, recorders):
        monkeypatch.setattr(module, name, recorder)
    monkeypatch.setattr(module, "interpreted", lambda: False, raising=False)
    return recorders


def _assert_covered(recorder):
    launched = set(recorder.launches)
    assert launched and launched <= recorder.variants, sorted(launched - recorder.variants)[:3]


def test_gaussian_variants_cover_every_launch(monkeypatch):
    (recorder,) = _record(monkeypatch, gaussian, "_gaussian_product_kernel")
    for D in gaussian.FEATURE_DIMS:
        for K in gaussian.CHANNEL_COUNTS:
            gaussian.gaussian_product(torch.zeros(1, D, 3), torch.zeros(1, K, 3), math.inf, 0, 0)
    assert len(recorder.launches) == len(gaussian.FEATURE_DIMS) * len(gaussian.CHANNEL_COUNTS)
    _assert_covered(recorder)


def test_varm_variants_cover_every_launch(monkeypatch):
    affinity, chunked, propagate = _record(monkeypatch, varm, "_affinity_kernel", "_affinity_chunked_kernel",
                                           "_propagate_kernel")
    images = torch.zeros(1, 3, 2, 3)
    for L in [*range(1, varm.RESIDENT_DILATIONS + 8), 200]:
        dilations = torch.ones(L, dtype=torch.int32)
        for variation_weight in (0.0, 0.01):
            varm.varm_affinity(images, dilations, 4.0, variation_weight, torch.zeros(8 * L))
    dilations = torch.ones(6, dtype=torch.int32)
    for K in varm.CHANNEL_COUNTS:
        src = torch.zeros(1, K, 2, 3)
        varm.varm_propagate_(src, torch.zeros(1, 48, 2, 3), dilations, torch.empty_like(src))
    _assert_covered(affinity)
    _assert_covered(chunked)
    _assert_covered(propagate)


def test_varm_affinity_beyond_the_resident_dilations_uses_the_chunked_kernel():
    L = varm.RESIDENT_DILATIONS + 1
    kernel, config = varm._affinity_launch(L, True)
    assert kernel is varm._affinity_chunked_kernel and config["BLOCK_N"] == varm.CHUNK_NEIGHBOURS
    assert varm._affinity_launch(L + 100, True) == (kernel, config)


# The bilateral product of the dense CRF and energy loss: 21 classes, 5 features.
_AOT_SNIPPET = """
from tscd.kernels.compile_check import _compile_triton
from tscd.kernels import gaussian
from tscd.kernels.variants import compile_variant
label = compile_variant(gaussian._gaussian_product_kernel, {}, gaussian._launch_config(21, 5)).label
(row,) = _compile_triton("gaussian", [v.label for v in gaussian.compile_variants()].index(label), "sm_90")
print(row["spill_bytes"], row["tensor_core_instructions"])
"""


def test_gaussian_compiles_ahead_of_time_for_sm90_without_spills():
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip(f"no ptxas in the triton wheel ({ptxas}): ahead-of-time compile check skipped")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _AOT_SNIPPET], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    spill, tensor_core = map(int, done.stdout.split()[-2:])
    assert spill == 0 and tensor_core > 0
