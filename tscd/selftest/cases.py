"""The benchmark cases of tscd, defined once: every op × backend × size × mode that ``bench/``
(pytest-benchmark) and the self-test's benchmark half (:mod:`.benchmarks`) time.

A :class:`BenchCase` is one row of a benchmark table: ``op`` at ``size`` in ``mode`` on ``backend``.
Its :class:`Op` makes the inputs (seeded, the same every run), the timed call and the outputs the
check compares; :func:`check` compares those with the torch reference before anything is timed:
an exact backend under the rule of :mod:`.tolerance`, an approximate one (the permutohedral
lattice, pydensecrf) by its scale and shape or, for the dense CRF, by the argmax agreement of its
result. Where the reference would not fit in memory, another exact backend (or, for the dense CRF,
the other approximation) stands in; where nothing can, the check says so in its verdict.
:func:`skip_reason` says why a case cannot be timed here (a backend that cannot run, Triton on the
CPU, where it is only its interpreter, a torch reference beyond the memory limit, an O(N²) exact
sum too slow for the CPU).

Modes: ``fwd`` (forward without gradient), ``bwd`` (the backward of a forward made outside the
timing) and ``full`` (forward + backward) for the differentiable ops; the op's own variant where
it has no gradient or more than one: ``varm``/``par`` (VARM and PAR refinement), ``family``/``true``
(the gradient of tscd.compat's DenseEnergyLoss), ``single``/``msf``/``msf+crf`` (the evaluation
protocol).

Sizes carry tags: ``quick`` (small sizes, seconds each: what a plain ``pytest bench/`` and
``python -m tscd.selftest`` on the CPU run), ``full`` (the sizes of the CPU tables) and ``cuda``
(the GPU sizes); :func:`select` picks the cases of a tier on a device.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import ops
from ..constants import CRF_PRESETS, DEFAULT_CRF_PRESET
from ..ops import backends
from ..ops.gaussian import bilateral_features
from ..ops.varm import DEFAULT_DILATIONS
from . import released
from .tolerance import error_and_bound

TIERS = ("quick", "full")
#: The limit of the torch reference's memory by default: 8 GiB on the CPU, this share of a GPU's.
CPU_REFERENCE_LIMIT_BYTES = 8 * 2**30
CUDA_REFERENCE_LIMIT_SHARE = 0.7
#: The largest image (pixels) an exact O(N²) CRF or product is timed at on the CPU: larger ones
#: take minutes per call there (they are timed on CUDA).
CPU_EXACT_MAX_PIXELS = 120 * 160
#: The smallest argmax agreement an approximate dense CRF must reach with the exact one (the
#: unaries alone agree with it on about 3/4 of the pixels of these inputs).
CRF_MIN_AGREEMENT = 0.95


def size_tag(tier: str, device_type: str) -> str:
    """The size tag a tier runs on a device: ``quick``, or ``full`` (CPU) / ``cuda`` (GPU)."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
    if tier == "quick":
        return "quick"
    return "cuda" if device_type == "cuda" else "full"


def reference_limit_bytes(device: str | torch.device) -> int:
    """The default memory limit of the torch reference on ``device`` (see the module's constants)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(CUDA_REFERENCE_LIMIT_SHARE * torch.cuda.get_device_properties(device).total_memory)
    return CPU_REFERENCE_LIMIT_BYTES


# ---- inputs --------------------------------------------------------------------------------


def photographs(h: int, w: int, names=("astronaut",)) -> torch.Tensor:
    """scikit-image's photographs ``names`` resized to (h, w): (len(names), 3, h, w) float32 in 0–255."""
    from skimage import data

    imgs = [torch.from_numpy(np.ascontiguousarray(getattr(data, n)()[..., :3])).permute(2, 0, 1)[None].float()
            for n in names]
    return torch.cat([F.interpolate(i, size=(h, w), mode="bilinear", align_corners=False).round() for i in imgs])


def coarse_probs(batch: int, classes: int, h: int, w: int, noise: float) -> torch.Tensor:
    """Class probabilities (batch, classes, h, w) like a segmenter's: random logits at 1/8 of the
    size upsampled bilinearly, plus ``noise`` per pixel; seeded (the same every call)."""
    g = torch.Generator().manual_seed(0)
    logits = F.interpolate(torch.randn(batch, classes, max(1, h // 8), max(1, w // 8), generator=g) * 3, size=(h, w),
                           mode="bilinear", align_corners=False)
    return torch.softmax(logits + noise * torch.randn(batch, classes, h, w, generator=g), dim=1)


def _cast(tensors, dtype: torch.dtype, device) -> tuple:
    """The tensors on ``device``, the floating-point ones in ``dtype``."""
    return tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in tensors)


def _cycled(make: Callable[[int], Callable[[], object]], variants: int) -> Callable[[], object]:
    """A call that runs ``make(i)()`` for i = 0, 1, …, variants − 1, 0, …: each call sees other inputs,
    as each image of a training or an evaluation does (the lattice keeps the last 16 it built, and
    timing one input over and over would time that cache)."""
    calls = [make(i) for i in range(variants)]
    count = itertools.count()
    return lambda: calls[next(count) % variants]()


def gaussian_sum_flops(pairs: int, features: int, channels: int) -> int:
    """The floating-point operations of an exact Gaussian-kernel sum over ``pairs`` pixel pairs:
    per pair, the squared distance of ``features`` features (a difference, a product and a sum each)
    and a multiply-add for each of ``channels`` channels."""
    return pairs * (3 * features + 2 * channels)


# ---- cases ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Size:
    """One size of an op: its label in the tables, the tags of the tiers it belongs to and the
    op's own parameter (a pixel count, a side, (h, w), a configuration name)."""

    label: str
    tags: frozenset[str]
    value: object


def _size(label: str, tags: str, value) -> Size:
    return Size(label, frozenset(tags.split()), value)


@dataclasses.dataclass
class Workload:
    """What one case times, built on its device.

    ``run(*setup())`` is the timed call (``setup`` None: ``run()``); ``setup`` prepares each call
    outside the timing (the forward of a ``bwd`` case); ``outputs()`` computes, on the same inputs,
    the named tensors :func:`check` compares; ``items``: the images one call processes.
    """

    run: Callable[..., object]
    outputs: Callable[[], dict]
    setup: Callable[[], tuple] | None = None
    items: int = 1


class Op:
    """One benchmarked op: its backends, modes and sizes, its inputs, calls and check.

    Subclasses define :meth:`make_inputs` (float32 CPU tensors from the size) and :meth:`call`
    (the timed callable and its setup) and :meth:`outputs` (what the check compares), or
    override :meth:`workload` whole.
    """

    name: str
    backends: tuple[str, ...]
    modes: tuple[str, ...] = ("fwd",)
    sizes: tuple[Size, ...]
    headline: str | None = None  # the size label of the README's headline table
    reference: str | None = "torch"  # the backend the others are compared with and measured against
    anchor: str | None = None  # the outside implementation tscd is measured against, where there is one
    released_module: str | None = None  # the module of the released code behind the ``released`` backend
    released_is_dense = True  # the released code builds the reference's dense tensors (reference_bytes)
    terms_per_pixel = 0  # each output sums this many terms per pixel (0: one term, see error_and_bound)
    allowance = 0.0  # an absolute error the op makes on purpose (error_and_bound)
    ratio_range = (0.0, math.inf)  # the scale an approximate backend may have against the exact result
    max_shape_error = 0.0  # its RMS error after that scale, relative to the exact result
    limit_exact_on_cpu = False  # time the exact backend on the CPU only up to CPU_EXACT_MAX_PIXELS
    uses_photographs = False  # its inputs are scikit-image's photographs

    # -- what the subclasses define

    def make_inputs(self, size: Size) -> tuple:
        raise NotImplementedError

    def call(self, size: Size, mode: str, backend: str, inputs: tuple):
        """(run, setup) of :class:`Workload` for these inputs."""
        raise NotImplementedError

    def outputs(self, size: Size, mode: str, backend: str, inputs: tuple) -> dict:
        raise NotImplementedError

    def reference_bytes(self, size: Size) -> int:
        """Memory of the torch reference at ``size`` in float32 (0: it has none that could not fit)."""
        return 0

    def pixels(self, size: Size) -> int:
        """The pixel count N of ``size`` (its sums run over N terms)."""
        return 0

    def work(self, size: Size, mode: str, backend: str) -> dict[str, float]:
        """The work one call must do at least, by the op's model (docs/benchmarks.md, "Roofline"):
        ``{"flops": …}`` for the compute-bound exact sums, ``{"bytes": …}`` for the memory-bound
        ones; empty where no model applies (approximations, whole pipelines, a backward alone)."""
        return {}

    # -- shared behaviour

    def combinations(self, size: Size) -> Iterator[tuple[str, str]]:
        """The (mode, backend) pairs timed at ``size``, backends innermost (the reference first)."""
        return itertools.product(self.modes, self.backends)

    def is_exact(self, backend: str) -> bool:
        return backend == "released" or backends.is_exact(backend)

    def why_unusable(self, backend: str, device_type: str) -> str | None:
        """None when ``backend`` can run on ``device_type`` here, else why not."""
        if backend == "released":
            return released.why_missing(self.released_module)
        return backends.why_unusable(backend, device_type)

    def too_slow(self, size: Size, backend: str, device_type: str) -> str | None:
        """Why ``backend`` is not timed at ``size`` on ``device_type`` although it could run (None: it
        is): with :attr:`limit_exact_on_cpu`, the exact backend above :data:`CPU_EXACT_MAX_PIXELS`
        on the CPU, where its O(N²) calls (many products per call) take minutes."""
        if (self.limit_exact_on_cpu and device_type == "cpu" and backend in ("cpp", "exact")
                and self.pixels(size) > CPU_EXACT_MAX_PIXELS):
            return (f"the exact O(N²) sum on the CPU above {CPU_EXACT_MAX_PIXELS} pixels takes minutes per call "
                    "(timed on CUDA)")
        return None

    def inputs(self, size: Size, dtype: torch.dtype, device) -> tuple:
        return _cast(self.make_inputs(size), dtype, device)

    @contextlib.contextmanager
    def workload(self, size: Size, mode: str, backend: str, device) -> Iterator[Workload]:
        inputs = self.inputs(size, torch.float32, device)
        run, setup = self.call(size, mode, backend, inputs)
        yield Workload(run, lambda: self.outputs(size, mode, backend, inputs), setup)

    def output_kind(self, mode: str) -> str:
        """The modes whose outputs are the same share one kind (and one cached reference)."""
        return mode

    def compare_approximate(self, out: dict, exact: dict) -> str:
        """Check an approximate backend's outputs against exact ones: scale within
        :attr:`ratio_range`, shape error within :attr:`max_shape_error`; returns the verdict."""
        parts = []
        for name, value in out.items():
            ratio, shape = scaled_shape_error(value, exact[name])
            lo, hi = self.ratio_range
            assert lo <= ratio <= hi, f"{name}: scale {ratio:.3f} against the exact result, outside [{lo}, {hi}]"
            assert shape <= self.max_shape_error, (f"{name}: RMS shape error {shape:.3f} after the scale, above "
                                                   f"{self.max_shape_error}")
            parts.append(f"{name} scale {ratio:.3f}" + (f", shape error {shape:.3f}" if value.numel() > 1 else ""))
        return "; ".join(parts)

    def check(self, case: BenchCase, out: dict, device, limit: int) -> str:
        """Compare the backend's ``out`` with the reference (or what stands in for it); raise
        ``AssertionError`` on a mismatch; return the verdict."""
        for name, value in out.items():
            assert torch.isfinite(value).all(), f"{name}: not finite"
        reference_outputs(case, case.backend, torch.float32, device, out)  # kept for the group's later backends
        reference_bytes = self.reference_bytes(case.size)
        exact = self.is_exact(case.backend)
        if reference_bytes <= limit:
            ref32 = reference_outputs(case, self.reference, torch.float32, device)
            ref64 = (reference_outputs(case, self.reference, torch.float64, device) if 2 * reference_bytes <= limit
                     else ref32)
            basis = f"the {self.reference} reference"
        else:
            stand_in = self._stand_in(case, torch.device(device).type)
            if stand_in is None:
                return (f"unchecked: the {self.reference} reference would need {reference_bytes / 2**30:.1f} GiB and "
                        "no other backend here can stand in")
            ref32 = ref64 = reference_outputs(case, stand_in, torch.float32, device)
            exact = exact and self.is_exact(stand_in)
            basis = f"{stand_in} (the {self.reference} reference would need {reference_bytes / 2**30:.1f} GiB)"
        if not exact:
            return f"against {basis}: {self.compare_approximate(out, ref64)}"
        worst = ""
        terms = max(1, self.terms_per_pixel * self.pixels(case.size))
        for name, value in out.items():
            error, bound = error_and_bound(value, ref32[name], ref64[name], torch.float32, allowance=self.allowance,
                                           terms=terms)
            assert error <= bound, f"{name}: error {error:.3e} against {basis} exceeds {bound:.3e}"
            worst += f"{'; ' if worst else ''}{name} {error:.1e} ≤ {bound:.1e}"
        return f"against {basis}: {worst}"

    def _stand_in(self, case: BenchCase, device_type: str) -> str | None:
        """The backend compared with where the reference cannot run: another exact one that is timed
        here at this size, else (for an approximate backend) another approximation."""
        exact = [b for b in self.backends if b not in (case.backend, self.reference) and self.is_exact(b)]
        approximate = [] if self.is_exact(case.backend) else [
            b for b in self.backends if b != case.backend and not self.is_exact(b)]
        return next((b for b in exact + approximate if _why_not_timed(self, case.size, b, device_type) is None),
                    None)


def _exact_unusable(device_type: str) -> str | None:
    """Why no fused exact backend (cpp, triton) runs on ``device_type`` (None: one does)."""
    if any(backends.why_unusable(b, device_type) is None for b in ("cpp", "triton")):
        return None
    return "no fused exact backend runs here (the O(N²) torch reference would stand in)"


def _why_not_timed(op: Op, size: Size, backend: str, device_type: str) -> str | None:
    """Why ``backend`` is not timed at ``size`` on ``device_type``, whatever the reference's memory."""
    if backend == "triton" and device_type == "cpu":
        return "triton on the CPU runs only in its interpreter, which is not a timing"
    if op.uses_photographs and importlib.util.find_spec("skimage") is None:
        return "scikit-image, whose photographs are its inputs, is not installed (pip install scikit-image)"
    reason = op.why_unusable(backend, device_type)
    if reason is not None:
        return f"{backend} cannot run on {device_type}: {reason}"
    return op.too_slow(size, backend, device_type)


def scaled_shape_error(approx: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """(s, e): the least-squares scale s of ``approx`` against ``exact`` and the RMS error of
    ``approx / s`` relative to ``exact`` (0 for scalars)."""
    a, e = approx.detach().double().flatten(), exact.detach().double().flatten().to(approx.device)
    ratio = ((a * e).sum() / (e * e).sum()).item()
    return ratio, ((a / ratio - e).norm() / e.norm()).item()


class DifferentiableOp(Op):
    """An op with a scalar loss and gradients: modes fwd, bwd, full; the outputs the check compares
    are the loss and (bwd, full) the gradients of the inputs at :attr:`grad_inputs`."""

    modes = ("fwd", "bwd", "full")
    grad_inputs: tuple[int, ...]
    grad_names: tuple[str, ...]

    def loss(self, backend: str, inputs: tuple) -> torch.Tensor:
        raise NotImplementedError

    def gradient_scale(self, size: Size) -> float:
        """What the gradients are multiplied by before the check (to bring them to O(1), where the
        floor of the rule means the same as for the loss)."""
        return 1.0

    def _with_leaves(self, inputs: tuple) -> tuple:
        return tuple(x.detach().requires_grad_() if i in self.grad_inputs else x for i, x in enumerate(inputs))

    def call(self, size, mode, backend, inputs):
        if mode == "fwd":
            def forward():
                with torch.no_grad():
                    return self.loss(backend, inputs)

            return forward, None
        if mode == "full":
            def forward_backward():
                args = self._with_leaves(inputs)
                self.loss(backend, args).backward()
                return [args[i].grad for i in self.grad_inputs]

            return forward_backward, None

        def forward():
            args = self._with_leaves(inputs)
            return self.loss(backend, args), [args[i] for i in self.grad_inputs]

        def backward(loss, leaves):
            return torch.autograd.grad(loss, leaves, retain_graph=True)  # retained: do_bench repeats it

        return backward, forward

    def output_kind(self, mode):
        return "fwd" if mode == "fwd" else "full"

    def outputs(self, size, mode, backend, inputs):
        if mode == "fwd":
            with torch.no_grad():
                return {"loss": self.loss(backend, inputs)}
        args = self._with_leaves(inputs)
        loss = self.loss(backend, args)
        grads = torch.autograd.grad(loss, [args[i] for i in self.grad_inputs])
        scale = self.gradient_scale(size)
        return {"loss": loss.detach(), **{f"grad {n}": g * scale for n, g in zip(self.grad_names, grads)}}


class ScdLoss(DifferentiableOp):
    """The self-correspondence distillation loss (method §6): B=2, C=20, K=21, N₁ = N₂ = N random
    maps; N = 1600 is the 40×40 sampling of training, 16384 the dense SCD of a 128×128 map."""

    name = "scd_loss"
    backends = ("torch", "triton", "cpp", "released")
    anchor, released_module = "released", "corrloss"
    B, C, K = 2, 20, 21
    sizes = (_size("N=1024", "quick", 1024), _size("N=1600", "full cuda", 1600), _size("N=4096", "full cuda", 4096),
             _size("N=9216", "full", 9216), _size("N=16384", "full cuda", 16384))
    headline = "N=4096"
    grad_inputs, grad_names = (2, 3), ("s1·B·N", "s2·B·N")
    terms_per_pixel = 1

    def make_inputs(self, size):
        g = torch.Generator().manual_seed(0)
        t1, t2 = (torch.randn(self.B, self.C, size.value, generator=g) for _ in range(2))
        s1, s2 = (torch.randn(self.B, self.K, size.value, generator=g) for _ in range(2))
        return t1, t2, s1, s2

    def loss(self, backend, inputs):
        if backend == "released":
            side = math.isqrt(inputs[0].shape[-1])
            maps = [x.reshape(*x.shape[:2], side, side) for x in inputs]
            return released.module("corrloss").ContrastiveCorrelationLoss().helper(*maps)[0].mean()
        return ops.scd_loss(*inputs, backend=backend)

    def gradient_scale(self, size):
        return self.B * size.value

    def pixels(self, size):
        return size.value

    def reference_bytes(self, size):
        return 5 * self.B * size.value**2 * 4  # about five (B, N, N) float32 temporaries

    def work(self, size, mode, backend):
        # the two correspondences over every pair, and (full) the two gradient sums Σ_j w ŝ′_j, Σ_i w ŝ_i
        pairs = self.B * size.value**2
        flops = {"fwd": 2 * pairs * (self.C + self.K), "full": 2 * pairs * (self.C + 3 * self.K)}
        return {"flops": flops[mode]} if mode in flops and self.is_exact(backend) else {}


class VarmRefine(Op):
    """VARM and PAR refinement (method §4): B=2, K=21, 10 iterations, 48 neighbours, random images
    with masks given at the image size; 256² is the ×0.5 size of a 512 crop, 160² of a 320 crop."""

    name = "varm_refine"
    backends = ("torch", "triton", "cpp", "released")
    anchor, released_module = "released", "VARM"
    modes = ("varm", "par")
    B, K = 2, 21
    dilations, iterations = DEFAULT_DILATIONS, 10  # 8 neighbours per dilation
    sizes = (_size("2x21x32x32", "quick", 32), _size("2x21x64x64", "full", 64), _size("2x21x160x160", "full", 160),
             _size("2x21x256x256", "full cuda", 256))
    headline = "2x21x256x256"

    def make_inputs(self, size):
        g = torch.Generator().manual_seed(0)
        side = size.value
        images = torch.rand(self.B, 3, side, side, generator=g)
        masks = torch.rand(self.B, self.K, side, side, generator=g).softmax(1)
        return images, masks

    def combinations(self, size):
        return ((mode, b) for mode, b in super().combinations(size) if not (b == "released" and mode == "par"))

    def _refine(self, inputs, mode, backend):
        if backend == "released":
            refiner = released.module("VARM").VARM(list(self.dilations), self.iterations).to(inputs[0].device)
            with torch.no_grad():
                return refiner(*inputs)
        return ops.varm_refine(*inputs, dilations=self.dilations, num_iter=self.iterations, mode=mode, backend=backend)

    def call(self, size, mode, backend, inputs):
        return lambda: self._refine(inputs, mode, backend), None

    def outputs(self, size, mode, backend, inputs):
        return {"masks": self._refine(inputs, mode, backend)}

    def reference_bytes(self, size):
        # the (B, C, 48, H, W) gathers: two of the masks (K channels), about five of the images
        return (2 * self.K + 15) * 48 * self.B * size.value**2 * 4

    def work(self, size, mode, backend):
        # the affinity reads the image and writes the weights once; each iteration reads the masks
        # and the weights and writes the masks
        pixels, neighbours = self.B * size.value**2, 8 * len(self.dilations)
        return {"bytes": 4 * pixels * (3 + neighbours + self.iterations * (2 * self.K + neighbours))}


class DenseEnergyLoss(DifferentiableOp):
    """The exact dense energy loss (method §8): B=2, K=21, random images and probabilities,
    σ_rgb 15, σ_xy 50; 64², 128², 160² are the ×0.5 loss sizes of 128, 256, 320 crops."""

    name = "dense_energy_loss"
    backends = ("torch", "triton", "cpp", "lattice")
    B, K = 2, 21
    sizes = (_size("2x21x32x32", "quick", 32), _size("2x21x64x64", "full", 64), _size("2x21x128x128", "full", 128),
             _size("2x21x160x160", "full", 160), _size("2x21x256x256", "cuda", 256))
    headline = "2x21x64x64"
    grad_inputs, grad_names = (1,), ("probs",)
    terms_per_pixel = 1
    # the lattice's scale on these noise images, below its scale on photographs (method §8; docs/ops.md)
    ratio_range, max_shape_error = (0.3, 0.7), 0.2

    def make_inputs(self, size):
        g = torch.Generator().manual_seed(0)
        side = size.value
        images = torch.randint(0, 256, (self.B, 3, side, side), generator=g).float()
        probs = torch.softmax(torch.randn(self.B, self.K, side, side, generator=g), dim=1)
        roi = torch.rand(self.B, side, side, generator=g) > 0.1
        ignore = torch.rand(self.B, side, side, generator=g) < 0.2
        return images, probs, roi, ignore

    def loss(self, backend, inputs):
        return ops.dense_energy_loss(*inputs, sigma_rgb=15.0, sigma_xy=50.0, backend=backend)

    def pixels(self, size):
        return size.value**2

    def reference_bytes(self, size):
        return 8 * self.B * self.pixels(size) ** 2 * 4  # about eight (B, N, N) float32 temporaries

    def work(self, size, mode, backend):
        if mode == "bwd" or not self.is_exact(backend):
            return {}
        return {"flops": gaussian_sum_flops(self.B * self.pixels(size) ** 2, 5, self.K * (2 if mode == "full" else 1))}


class GaussianProduct(Op):
    """The Gaussian-kernel product W·S alone: two photographs (astronaut, chelsea) with the bilateral
    features of the dense energy loss at σ_xy 80, σ_rgb 13, S: K=21 coarse class probabilities.
    The features move by a few 1e-4 σ on every call, so the lattice is rebuilt each time, as in training."""

    name = "gaussian_product"
    backends = ("torch", "triton", "cpp", "lattice")
    B, K = 2, 21
    sizes = (_size("2x21x32x32", "quick", 32), _size("2x21x64x64", "full", 64),
             _size("2x21x128x128", "full", 128), _size("2x21x256x256", "full cuda", 256))
    headline = "2x21x64x64"
    terms_per_pixel = 1
    ratio_range, max_shape_error = (0.5, 0.65), 0.13  # the lattice on photographs (tests/ops/test_lattice.py)
    uses_photographs = True

    def make_inputs(self, size):
        side = size.value
        feats = bilateral_features(photographs(side, side, ("astronaut", "chelsea")), 80.0, 13.0)
        return feats, coarse_probs(self.B, self.K, side, side, 0.0).reshape(self.B, self.K, side * side)

    def call(self, size, mode, backend, inputs):
        feats, s = inputs
        shifts = itertools.count()
        return lambda: ops.gaussian_product(feats + (next(shifts) % 1000) * 1e-4, s, backend=backend), None

    def outputs(self, size, mode, backend, inputs):
        return {"W·S": ops.gaussian_product(*inputs, backend=backend)}

    def pixels(self, size):
        return size.value**2

    def reference_bytes(self, size):
        return 8 * self.B * self.pixels(size) ** 2 * 4  # the (B, 5, N, N) differences, their sum, W

    def work(self, size, mode, backend):
        if not self.is_exact(backend):
            return {}
        return {"flops": gaussian_sum_flops(self.B * self.pixels(size) ** 2, 5, self.K)}


class DenseCrf(Op):
    """Dense CRF inference (method §10): one photograph (astronaut), K=21 coarse noisy unaries, AFA's
    settings (10 mean-field iterations). Every call sees new colours (the photograph shifted by
    0.01·i, i cycling over 20 values), as each image of an evaluation does."""

    name = "dense_crf"
    backends = ("torch", "triton", "cpp", "lattice", "pydensecrf")
    anchor = "pydensecrf"
    K = 21
    preset = CRF_PRESETS[DEFAULT_CRF_PRESET]
    sizes = (_size("21x24x32", "quick", (24, 32)), _size("21x32x32", "full", (32, 32)),
             _size("21x60x80", "full", (60, 80)), _size("21x120x160", "full", (120, 160)),
             _size("21x375x500", "full cuda", (375, 500)))
    headline = "21x60x80"
    terms_per_pixel = 1
    allowance = 5e-5  # the exact backends' smoothness window leaves out weights below 4e-6
    limit_exact_on_cpu = True
    uses_photographs = True

    def make_inputs(self, size):
        h, w = size.value
        return photographs(h, w), coarse_probs(1, self.K, h, w, 0.5)

    def _crf(self, images, probs, backend):
        p = self.preset
        return ops.dense_crf(images, probs, num_iter=p.num_iter, smooth=p.smooth, appearance=p.appearance,
                             backend=backend)

    def call(self, size, mode, backend, inputs):
        images, probs = inputs
        return _cycled(lambda i: lambda: self._crf(images * (1 - 1e-4 * i), probs, backend), 20), None

    def outputs(self, size, mode, backend, inputs):
        return {"Q": self._crf(*inputs, backend)}

    def pixels(self, size):
        h, w = size.value
        return h * w

    def reference_bytes(self, size):
        return 7 * self.pixels(size) ** 2 * 4  # both N×N kernels and their temporaries

    def work(self, size, mode, backend):
        # every iteration sums the smoothness (2 features) and the appearance kernel (5 features)
        if not self.is_exact(backend):
            return {}
        pairs = self.pixels(size) ** 2
        per_iteration = gaussian_sum_flops(pairs, 2, self.K) + gaussian_sum_flops(pairs, 5, self.K)
        return {"flops": self.preset.num_iter * per_iteration}

    def compare_approximate(self, out, exact):
        agreement = (out["Q"].argmax(1) == exact["Q"].to(out["Q"].device).argmax(1)).double().mean().item()
        assert agreement >= CRF_MIN_AGREEMENT, f"argmax agreement {agreement:.4f} below {CRF_MIN_AGREEMENT}"
        return f"argmax agreement {agreement:.4f}"


class _CompatOp(Op):
    """tscd.compat's drop-ins: ``exact`` (the exact sum × ``LATTICE_SCALE``, tscd.compat's switch)
    against the ``lattice`` (its CPU default); the reference is the torch sum × ``LATTICE_SCALE``,
    checked, not timed."""

    backends = ("exact", "lattice")
    B, K = 2, 21
    # the lattice against the exact sum × LATTICE_SCALE on photographs: the spread of its scale (method §8)
    ratio_range, max_shape_error = (0.85, 1.15), 0.15
    terms_per_pixel = 1
    limit_exact_on_cpu = True
    released_is_dense = False  # the family's module is a lattice, O(N)
    uses_photographs = True

    def is_exact(self, backend):
        return backend in ("exact", "torch")

    def why_unusable(self, backend, device_type):
        return _exact_unusable(device_type) if backend == "exact" else super().why_unusable(backend, device_type)

    def photo_batch(self, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, side, side) in 0–255 (the astronaut and its mirror image) and smooth class
        logits (B, K, side, side)."""
        img = photographs(side, side)
        g = torch.Generator().manual_seed(0)
        logits = F.interpolate(torch.randn(self.B, self.K, max(1, side // 16), max(1, side // 16), generator=g) * 3,
                               size=(side, side), mode="bilinear", align_corners=False)
        return torch.cat((img, img.flip(-1))), logits

    def reference_bytes(self, size):
        return 8 * self.B * self.pixels(size) ** 2 * 4  # the torch W·S at the summed size


class CompatFilter(_CompatOp):
    """``tscd.compat.bilateralfilter.bilateralfilter_batch`` (W·S forward, numpy arrays): B=2, K=21,
    σ_rgb 15, σ_xy 50, on the photograph; every call sees new colours (0.01·i, 20 values)."""

    name = "compat_filter"
    backends = ("exact", "lattice", "released")
    anchor, released_module = "released", "bilateralfilter"
    sizes = (_size("2x21x32x32", "quick", 32), _size("2x21x64x64", "full", 64), _size("2x21x128x128", "full", 128),
             _size("2x21x256x256", "full", 256))
    headline = None

    def why_unusable(self, backend, device_type):
        if device_type != "cpu":
            return "the bilateralfilter module takes numpy arrays: CPU only"
        return super().why_unusable(backend, device_type)

    def pixels(self, size):
        return size.value**2

    def make_inputs(self, size):
        images, logits = self.photo_batch(size.value)
        return images, logits.softmax(1)

    def _filter(self, images: np.ndarray, values: np.ndarray, side: int, backend: str) -> np.ndarray:
        from ..compat import bilateralfilter

        out = np.zeros_like(values)
        args = (images, values, out, self.B, self.K, side, side, 15.0, 50.0)
        if backend == "released":
            released.module("bilateralfilter").bilateralfilter_batch(*args)
            return out
        previous = bilateralfilter.use_exact_sum(backend == "exact")
        try:
            bilateralfilter.bilateralfilter_batch(*args)
        finally:
            bilateralfilter.use_exact_sum(previous)
        return out

    def call(self, size, mode, backend, inputs):
        images, probs = inputs
        values = probs.numpy().reshape(-1).copy()
        arrays = [(images + 0.01 * i).numpy().reshape(-1).copy() for i in range(20)]
        return _cycled(lambda i: lambda: self._filter(arrays[i], values, size.value, backend), 20), None

    def outputs(self, size, mode, backend, inputs):
        from ..compat import LATTICE_SCALE

        images, probs = inputs
        if backend == "torch":
            feats = bilateral_features(images, 50.0, 15.0).to(images.dtype)
            return {"W·S": ops.gaussian_product(feats, probs.reshape(self.B, self.K, -1), backend="torch")
                    .reshape(probs.shape) * LATTICE_SCALE}
        out = self._filter(images.numpy().reshape(-1).copy(), probs.numpy().reshape(-1).copy(), size.value, backend)
        return {"W·S": torch.from_numpy(out).reshape(probs.shape)}


class CompatDenseEnergy(_CompatOp):
    """``tscd.compat.DenseEnergyLoss(1e-7, 15, 100, 0.5)`` forward + backward at the family's crops
    (the loss at ×0.5: ToCo's 448 crop sums 224², TSCD's 512 crop 256²), B=2, K=21, the photograph
    and its mirror image, with the family's gradient and the true one; new colours every call."""

    name = "compat_dense_energy"
    modes = ("family", "true")
    sizes = (_size("64->32x32", "quick", 64), _size("128->64x64", "full", 128), _size("448->224x224", "full cuda", 448),
             _size("512->256x256", "full cuda", 512))
    headline = None
    weight, sigma_rgb, sigma_xy, scale_factor = 1e-7, 15.0, 100.0, 0.5

    def pixels(self, size):
        return (size.value // 2) ** 2

    def make_inputs(self, size):
        crop = size.value
        images, logits = self.photo_batch(crop)
        rois = torch.zeros(self.B, crop, crop)
        rois[:, : crop - crop // 8, crop // 16:] = 1  # a crop box
        label = torch.randint(0, self.K, (self.B, 1, crop, crop), generator=torch.Generator().manual_seed(1))
        label[:, :, : crop // 3] = 255
        return images, logits, rois, label.to(torch.uint8)

    def _module(self, mode: str, backend: str):
        from ..compat import DenseEnergyLoss

        return DenseEnergyLoss(self.weight, self.sigma_rgb, self.sigma_xy, self.scale_factor, gradient=mode,
                               exact_sum=backend == "exact")

    def call(self, size, mode, backend, inputs):
        images, logits, rois, label = inputs
        loss_fn = self._module(mode, backend)
        logits = logits.detach().requires_grad_()

        def make(i):
            shifted = images + 0.01 * i

            def step():
                logits.grad = None
                loss = loss_fn(shifted, logits.softmax(1), rois, label)
                loss.backward()
                return loss

            return step

        return _cycled(make, 20), None

    def outputs(self, size, mode, backend, inputs):
        images, logits, rois, label = inputs
        logits = logits.detach().requires_grad_()
        if backend == "torch":
            loss = self._reference_loss(mode, images, logits, rois, label)
        else:
            loss = self._module(mode, backend)(images, logits.softmax(1), rois, label)
        (grad,) = torch.autograd.grad(loss, logits)
        # without the loss weight 1e-7, below the floor of the rule
        return {"loss": loss.detach() / self.weight, "grad logits": grad / self.weight}

    def _reference_loss(self, mode, images, logits, rois, label):
        """The family's loss ``weight · L`` from the torch sum × ``LATTICE_SCALE``, with its gradient (``true``) or
        the released one, ``−(2/B)·g·(W S)·ROIs`` (``family``), both reaching the logits by autograd."""
        from ..compat import LATTICE_SCALE
        from ..ops.dense_energy import gate

        module = self._module("true", "exact")
        images_s, probs, roi, ignore = module.at_loss_scale(images, logits.softmax(1), rois, label)
        b, k, h, w = probs.shape
        p, r = probs.reshape(b, k, h * w), roi.reshape(b, 1, h * w).to(probs.dtype)
        feats = bilateral_features(images_s, self.sigma_xy * self.scale_factor, self.sigma_rgb).to(probs.dtype)
        if mode == "true":
            loss = LATTICE_SCALE * ops.dense_energy_loss(images_s.to(probs.dtype), probs, roi, ignore,
                                                         sigma_rgb=self.sigma_rgb, backend="torch",
                                                         sigma_xy=self.sigma_xy * self.scale_factor)
            return self.weight * loss
        with torch.no_grad():
            s = p * r
            gated_ws = gate(p, r[:, 0], ignore.reshape(b, h * w))[:, None] * LATTICE_SCALE * ops.gaussian_product(
                feats, s, backend="torch")
            value = -(s * gated_ws).sum() / b
        surrogate = (p * (gated_ws * r * (-2 / b))).sum()  # its gradient is the released backward
        return self.weight * (surrogate - surrogate.detach() + value)


class TrainStep(Op):
    """One TSCD training step, forward + backward of the whole stage-2 objective (multi-scale CAM,
    VARM, the seg, dense energy, affinity, SCD and ER terms), B=2, every op on one backend.

    Sizes: the CPU demo (hybrid_b0, strides [4,2,1,1], 64², K=6; ``demo_mit``: MiT-b0), the VOC crop
    (MiT-B1, strides [4,2,2,1], 320² and the paper's 512², K=21) and the backbones at ToCo's 448
    crop with their recipes: MiT-B1 (``voc``), ViT-B/16 (``voc_vit_b``), the frozen CLIP ViT-B/16
    (``voc_clip_frozen``)."""

    name = "train_step"
    backends = ("torch", "triton", "cpp")
    modes = ("full",)
    _DEMO = ["model.stride=[4,2,1,1]", "model.pooling=topk", "loss.scd_scale=0.5", "cam.scales=[1.0]",
             "data.num_classes=6"]
    _VOC = ["model.backbone=mit_b1", "model.stride=[4,2,2,1]", "data.num_classes=21"]
    _CROP448 = ["data.num_classes=21", "data.crop_size=448"]
    # label: (built-in config or None for the defaults, overrides, image side, classes)
    SETTINGS = {
        "demo": (None, ["model.backbone=hybrid_b0", *_DEMO], 64, 6),
        "demo_mit": (None, ["model.backbone=mit_b0", *_DEMO], 64, 6),
        "voc320": (None, _VOC, 320, 21),
        "voc512": (None, _VOC, 512, 21),
        "mitb1_448": ("voc", _CROP448, 448, 21),
        "vitb_448": ("voc_vit_b", _CROP448, 448, 21),
        "clip_frozen_448": ("voc_clip_frozen", _CROP448, 448, 21),
    }
    sizes = (_size("demo", "quick full", "demo"), _size("demo_mit", "full", "demo_mit"),
             _size("voc320", "full", "voc320"), _size("voc512", "cuda", "voc512"),
             _size("mitb1_448", "full cuda", "mitb1_448"), _size("vitb_448", "full cuda", "vitb_448"),
             _size("clip_frozen_448", "full cuda", "clip_frozen_448"))
    headline = "demo"
    LOSS_RTOL, GRAD_RTOL = 1e-4, 1e-3  # fused against torch: float32 sums in another order

    def make_inputs(self, size):
        from ..data.transforms import denormalize

        _, _, side, k = self.SETTINGS[size.value]
        g = torch.Generator().manual_seed(0)
        labels = torch.zeros(2, k - 1)
        labels[0, [0, 2 % (k - 1)]] = 1
        labels[1, 1] = 1
        image = torch.randn(2, 3, side, side, generator=g)
        return image, denormalize(image), labels, torch.tensor([[0, side, 0, side], [0, side, 8, side]])

    def _step(self, size: Size, backend: str, inputs: tuple) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
        """A model built with every op on ``backend`` and its seeded step, which returns the loss."""
        from ..config import load_config
        from ..engine.builders import build_model, build_objective, build_pseudo_labeler

        config, overrides, _, _ = self.SETTINGS[size.value]
        cfg = load_config(config, overrides + ["data.name=synthetic"], {"train.backend": backend})
        device = inputs[0].device
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        objective = build_objective(cfg, build_pseudo_labeler(cfg)).to(device)
        batch = dict(zip(("image", "rgb", "label", "box"), inputs))
        stage2 = cfg.loss.stage1_iters + 1

        def step():
            torch.manual_seed(1)
            model.zero_grad(set_to_none=True)
            total, _, _ = objective(model, batch, stage2)
            total.backward()
            return total.detach()

        return model, step

    @staticmethod
    def _step_outputs(model: torch.nn.Module, loss: torch.Tensor) -> dict:
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        return {"loss": loss, "grads": torch.cat(grads)}

    @contextlib.contextmanager
    def workload(self, size, mode, backend, device):
        model, step = self._step(size, backend, self.inputs(size, torch.float32, device))
        yield Workload(step, lambda: self._step_outputs(model, step()))

    def outputs(self, size, mode, backend, inputs):
        model, step = self._step(size, backend, inputs)
        return self._step_outputs(model, step())

    def reference_bytes(self, size):
        _, _, side, _ = self.SETTINGS[size.value]
        n = (side // 2) ** 2
        return 2 * 7 * n * n * 4  # the naive dense energy at ×0.5: (B, 5, N, N) differences + W

    def check(self, case, out, device, limit):
        for name, value in out.items():
            assert torch.isfinite(value).all(), f"{name}: not finite"
        reference_outputs(case, case.backend, torch.float32, device, out)  # kept for the group's later backends
        if self.reference_bytes(case.size) > limit:
            stand_in = self._stand_in(case, torch.device(device).type)
            if stand_in is None:
                return (f"unchecked beyond finite values: the torch reference would need "
                        f"{self.reference_bytes(case.size) / 2**30:.0f} GiB")
        else:
            stand_in = "torch"
        ref = reference_outputs(case, stand_in, torch.float32, device)
        loss_error = abs(out["loss"].item() - ref["loss"].item()) / max(1.0, abs(ref["loss"].item()))
        grad_error = ((out["grads"] - ref["grads"]).norm() / ref["grads"].norm()).item()
        assert loss_error <= self.LOSS_RTOL, f"loss: relative error {loss_error:.2e} against {stand_in}"
        assert grad_error <= self.GRAD_RTOL, f"gradients: relative error {grad_error:.2e} against {stand_in}"
        return f"against {stand_in}: loss {loss_error:.1e}, gradients {grad_error:.1e} (relative)"


class Eval(Op):
    """The whole ``tscd eval`` of a MiT-B1 TSCD model (K=21, random weights: the time does not depend
    on them) on photographs with random masks, per call ``items`` images: segmentation under the
    protocol (``single``: one pass at the image's size; ``msf``: long side 512, scales 1, 0.5, 0.75
    with flips; ``msf+crf``: with the dense CRF, backend ``lattice``, ``pydensecrf`` or ``exact``),
    plus the multi-scale CAM, the VARM-refined labels and the attention random walk; ``seg``: single
    scale without them (``eval.cam_metrics=false``); ``forward``: the network's forward pass of
    each image alone, what the others are measured against. The check is that the evaluation ran
    (its ops are checked by their own cases): finite scores in [0, 1]."""

    name = "eval"
    backends = ("none", "lattice", "pydensecrf", "exact")
    modes = ("forward", "seg", "single", "msf", "msf+crf")
    reference = None
    uses_photographs = True
    PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
    # label: ((h, w), images per call, modes)
    SETTINGS = {"60x80": ((60, 80), 2, ("single",)), "375x500": ((375, 500), 4, modes)}
    sizes = (_size("60x80", "quick", "60x80"), _size("375x500", "full cuda", "375x500"))

    def combinations(self, size):
        for mode in self.SETTINGS[size.value][2]:
            yield from ((mode, b) for b in (("lattice", "pydensecrf", "exact") if mode == "msf+crf" else ("none",)))

    def is_exact(self, backend):
        return True

    def why_unusable(self, backend, device_type):
        if backend == "none":
            return None
        return _exact_unusable(device_type) if backend == "exact" else backends.why_unusable(backend, device_type)

    def too_slow(self, size, backend, device_type):
        if device_type == "cpu" and backend == "exact":
            return "the exact O(N²) CRF of each image takes many minutes on the CPU (timed on CUDA)"
        return None

    def write_dataset(self, root: Path, size: Size) -> None:
        """The size's photographs with blocky random masks, as a ``folder`` dataset in ``root``."""
        from PIL import Image

        from ..data.voc import VOC_CLASSES

        (h, w), n, _ = self.SETTINGS[size.value]
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        rng = np.random.default_rng(0)
        rows = []
        for i in range(n):
            img = photographs(h, w, (self.PHOTOS[i % len(self.PHOTOS)],)).clamp(0, 255)
            Image.fromarray(img[0].permute(1, 2, 0).byte().numpy()).save(root / "images" / f"img{i}.jpg")
            classes = rng.choice(np.arange(1, 21), size=2, replace=False)
            coarse = rng.choice(np.concatenate([[0], classes]), size=(h // 25 + 1, w // 25 + 1))
            mask = np.kron(coarse, np.ones((25, 25), np.int64))[:h, :w].astype(np.uint8)
            Image.fromarray(mask, mode="L").save(root / "masks" / f"img{i}.png")
            rows.append(f"img{i}.jpg," + ";".join(VOC_CLASSES[c] for c in classes))
        (root / "classes.txt").write_text("\n".join(VOC_CLASSES[1:]) + "\n")
        (root / "val.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")

    @contextlib.contextmanager
    def workload(self, size, mode, backend, device):
        from ..config import load_config
        from ..data import build_dataset
        from ..engine.builders import build_model, build_pseudo_labeler, eval_loader
        from ..engine.evaluator import Evaluator
        from ..engine.inference import EvalProtocol

        _, n, _ = self.SETTINGS[size.value]
        msf = dict(scales=(1.0, 0.5, 0.75), flip=True, resize_long=512)
        protocol = {"forward": EvalProtocol(), "seg": EvalProtocol(), "single": EvalProtocol(),
                    "msf": EvalProtocol(**msf), "msf+crf": EvalProtocol(**msf, crf=backend)}[mode]
        with tempfile.TemporaryDirectory(prefix="tscd_bench_eval_") as tmp:
            self.write_dataset(Path(tmp), size)
            cfg = load_config("voc", ["data.name=folder", f"data.root={tmp}", "data.num_workers=0"])
            dataset = build_dataset(cfg, "val", train=False)
            torch.manual_seed(0)
            model = build_model(cfg).to(device).eval()
            evaluator = Evaluator(cfg, build_pseudo_labeler(cfg), dataset.class_names, device, protocol,
                                  cam_metrics=mode != "seg")
            images = [dataset[i]["image"][None].to(device) for i in range(n)] if mode == "forward" else []

            def run():
                with torch.no_grad():
                    if mode == "forward":
                        return [model(x) for x in images]
                    return evaluator.run(model, eval_loader(dataset, 1), max_images=n)

            def outputs():
                if mode == "forward":
                    return {"logits": torch.stack([out.seg.float().abs().mean() for out in run()]),
                            "images": torch.tensor(float(n))}
                metrics = run()
                scores = {k: torch.tensor(float(v)) for k, v in metrics.items() if k.endswith("_miou")}
                return {**scores, "images": torch.tensor(float(metrics["num_images"]))}

            yield Workload(run, outputs, items=n)

    def check(self, case, out, device, limit):
        _, n, _ = self.SETTINGS[case.size.value]
        assert out["images"].item() == n, f"evaluated {out['images'].item():.0f} images, not {n}"
        if "logits" in out:
            assert torch.isfinite(out["logits"]).all(), "the forward's segmentation logits are not finite"
            return f"ran: {n} forward passes with finite logits"
        for name, value in out.items():
            if name != "images":
                assert 0.0 <= value.item() <= 1.0, f"{name} = {value.item()} outside [0, 1]"
        return f"ran: {len(out) - 1} mIoUs in [0, 1] over {n} images (its ops are checked by their own cases)"


OPS: dict[str, Op] = {op.name: op for op in (ScdLoss(), VarmRefine(), DenseEnergyLoss(), GaussianProduct(),
                                                DenseCrf(), CompatFilter(), CompatDenseEnergy(), TrainStep(), Eval())}


@dataclasses.dataclass(frozen=True)
class BenchCase:
    """One benchmark row: ``op`` at ``size`` in ``mode`` on ``backend``."""

    op: str
    size: Size
    mode: str
    backend: str

    @property
    def spec(self) -> Op:
        return OPS[self.op]

    @property
    def id(self) -> str:
        """The test id: ``<backend>-<size>-<mode>``."""
        return f"{self.backend}-{self.size.label}-{self.mode}"

    @property
    def group(self) -> str:
        """The table group (op and size): the reference beside each backend."""
        return f"{self.op} {self.size.label}"

    @property
    def is_reference(self) -> bool:
        """Whether this is the torch reference row the other backends are measured against."""
        return self.backend == self.spec.reference

    @property
    def is_anchor(self) -> bool:
        """Whether this is the outside implementation's row (the released code, pydensecrf2)."""
        return self.backend == self.spec.anchor

    @property
    def headline(self) -> bool:
        """Whether the README's headline table shows this size of the op."""
        return self.size.label == self.spec.headline

    @property
    def work(self) -> dict[str, float]:
        """The work of one call by the op's model (:meth:`Op.work`): ``flops`` or ``bytes``, or empty."""
        return self.spec.work(self.size, self.mode, self.backend)

    def workload(self, device) -> contextlib.AbstractContextManager[Workload]:
        """The inputs and calls of this case on ``device`` (a context manager: some own files)."""
        return self.spec.workload(self.size, self.mode, self.backend, device)


def cases(only: list[str] | None = None) -> list[BenchCase]:
    """Every case of every size (of the ops in ``only``, default all), sizes outermost, backends innermost."""
    found = []
    for name, op in OPS.items():
        if only is None or name in only:
            for size in op.sizes:
                found += [BenchCase(name, size, mode, backend) for mode, backend in op.combinations(size)]
    return found


def select(tier: str, device_type: str, only: list[str] | None = None) -> list[BenchCase]:
    """The cases of ``tier`` (``quick`` or ``full``) on ``device_type`` (``cpu`` or ``cuda``), of the
    ops in ``only`` (default all)."""
    tag = size_tag(tier, device_type)
    return [c for c in cases(only) if tag in c.size.tags]


def skip_reason(case: BenchCase, device_type: str, limit: int) -> str | None:
    """Why ``case`` is not timed on ``device_type`` with the reference limited to ``limit`` bytes
    (None: it is)."""
    op = case.spec
    reason = _why_not_timed(op, case.size, case.backend, device_type)
    if reason is not None:
        return reason
    needed = op.reference_bytes(case.size)
    if (case.is_reference or case.backend == "released" and op.released_is_dense) and needed > limit:
        return (f"the {case.backend} reference would need about {needed / 2**30:.1f} GiB, more than the limit of "
                f"{limit / 2**30:.1f} GiB")
    return None


_references: dict[tuple, dict] = {}


def reference_outputs(case: BenchCase, backend: str, dtype: torch.dtype, device, computed: dict | None = None) -> dict:
    """The outputs of ``backend`` on the case's inputs in ``dtype`` (``computed``: already known),
    kept while the checks stay at the case's (op, size): computed once for all the backends of a
    table group."""
    op = case.spec
    key = (case.op, case.size.label, op.output_kind(case.mode), backend, dtype, str(device))
    if any(k[:2] != key[:2] for k in _references):
        _references.clear()
    if key not in _references:
        if computed is None:
            computed = op.outputs(case.size, case.mode, backend, op.inputs(case.size, dtype, device))
        _references[key] = {k: v.detach() for k, v in computed.items()}
    return _references[key]


def check(case: BenchCase, work: Workload, device, limit: int) -> tuple[str, float]:
    """Compare what ``case``'s backend computes on ``work``'s inputs with the reference (limited to
    ``limit`` bytes), before it is timed. Raises ``AssertionError`` on a mismatch; returns the verdict
    (starting with ``unchecked`` where nothing could be compared) and the seconds the backend's call
    took (a warm-up of the timing, and the measure of how many rounds it affords)."""
    start = time.perf_counter()
    out = work.outputs()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return case.spec.check(case, out, device, limit), seconds
