"""The correctness half of the self-test: every op of :mod:`tscd.ops` on every exact backend usable
on a device, against the torch reference, value and gradients, under the rule of
:mod:`tscd.selftest.tolerance`.

A :class:`Case` is one op at one shape. Its inputs are made in float32 on the CPU from a fixed
seed; the positions listed in ``Case.cast`` are then converted to the dtype under test for the
backend and the same-dtype reference, and to float64 for the float64 reference (the other inputs,
masks and images, stay as made). Each output the case names (values, gradients) must pass the rule.
Sizes come in three tiers: ``quick`` (a few pixels, for the test suite), ``cpu`` and ``cuda``;
the odd shapes (N = 1, K = 1, 81, 200, non-contiguous inputs) are the same tiny ones in every tier.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from .. import ops
from ..ops import backends
from .tolerance import error_and_bound

TIERS = ("quick", "cpu", "cuda")
DTYPES = (torch.float32, torch.bfloat16)
# The dense CRF sums its smoothness kernel in a window of radius ⌈5σ⌉: weights below 4e-6 are left out.
CRF_WINDOW_ALLOWANCE = 5e-5
# Small σ, so that the CRF's window and the image borders both matter at these sizes.
CRF_PARAMS = dict(smooth=(1.5, 3.0), appearance=(6.0, 20.0, 4.0))
ENERGY_SIGMAS = dict(sigma_rgb=15.0, sigma_xy=5.0)


@dataclasses.dataclass(frozen=True)
class Case:
    """One op at one shape.

    ``make(generator)`` returns the CPU inputs; ``run(backend, *inputs)`` returns the named
    outputs to compare. ``allowance`` (an absolute error the op makes on purpose) and ``terms``
    (the length of the sums behind each output) loosen the rule as :func:`error_and_bound` says.
    """

    op: str
    label: str
    make: Callable[[torch.Generator], tuple]
    run: Callable[..., dict[str, torch.Tensor]]
    cast: tuple[int, ...]
    non_contiguous: bool = False
    allowance: float = 0.0
    terms: int = 1


@dataclasses.dataclass
class Result:
    """One line of the self-test's table. ``status``: ok, FAIL (beyond the bound or a wrong
    dtype/shape), ERROR (raised), unavailable (the backend cannot run here: ``detail`` says why)."""

    op: str
    backend: str
    check: str
    status: str
    error: float | None = None
    bound: float | None = None
    seconds: float | None = None
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("FAIL", "ERROR")


# ---- the ops as the checks call them -------------------------------------------------------


def _gaussian(backend, feats, x):
    x = x.detach().requires_grad_()
    y = ops.gaussian_product(feats, x, backend=backend)
    upstream = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    (grad,) = torch.autograd.grad(y, x, upstream)
    return {"W·x": y.detach(), "grad x": grad}


def _scd(backend, t1, t2, s1, s2):
    s1, s2 = s1.detach().requires_grad_(), s2.detach().requires_grad_()
    loss = ops.scd_loss(t1, t2, s1, s2, backend=backend)
    g1, g2 = torch.autograd.grad(loss, (s1, s2))
    B, n1, n2 = s1.shape[0], s1.shape[-1], s2.shape[-1]
    # each gradient scales like 1/(B·N) of its view: brought to O(1) so that the floor means the same
    return {"loss": loss.detach(), "grad s1·B·N1": g1.double() * (B * n1), "grad s2·B·N2": g2.double() * (B * n2)}


def _varm_affinity(backend, images):
    return {"weights": ops.varm_affinity(images, backend=backend)}


def _varm_refine(backend, images, masks):
    return {"masks": ops.varm_refine(images, masks, num_iter=2, backend=backend)}  # 2: both ping-pong buffers


def _dense_energy(backend, images, probs, roi, ignore):
    probs = probs.detach().requires_grad_()
    loss = ops.dense_energy_loss(images, probs, roi, ignore, backend=backend, **ENERGY_SIGMAS)
    (grad,) = torch.autograd.grad(loss, probs)
    return {"loss": loss.detach(), "grad": grad}


def _dense_crf(num_iter):
    def run(backend, images, probs):
        return {"Q": ops.dense_crf(images, probs, num_iter=num_iter, backend=backend, **CRF_PARAMS)}

    return run


# ---- inputs --------------------------------------------------------------------------------


def _cluster_centres(K: int, gen: torch.Generator) -> torch.Tensor:
    """Unit cluster centres (M, K) with pairwise cosines of ±1/2 (±1 when K = 1)."""
    if K == 1:
        return torch.tensor([[1.0], [-1.0]])
    M = min(4, K - 1)
    centres = torch.zeros(M, K)
    centres[:, 0] = 1.0
    centres[torch.arange(M), torch.arange(1, M + 1)] = 1.0
    signs = torch.where(torch.rand(M, 1, generator=gen) < 0.5, -1.0, 1.0)
    rotation, _ = torch.linalg.qr(torch.randn(K, K, generator=gen, dtype=torch.float64))
    return (signs * centres / 2**0.5) @ rotation.float()


def clustered_scd_maps(B: int, C: int, K: int, N1: int, N2: int, gen: torch.Generator):
    """SCD inputs like CAMs and logits: t1 (B,C,N1), t2 (B,C,N2), s1 (B,K,N1), s2 (B,K,N2).

    Each position belongs to one of a few clusters; a student position is its cluster's centre
    plus small noise at a random scale, so the correspondences s_ij stay away from the relu's
    kink at 0, where rounding alone would decide (and flip gradients).
    """
    centres_s = _cluster_centres(K, gen)
    centres_t = torch.randn(centres_s.shape[0], C, generator=gen)
    maps = []
    for N in (N1, N2):
        labels = torch.randint(centres_s.shape[0], (B, N), generator=gen)
        scale = torch.exp(0.5 * torch.randn(B, N, 1, generator=gen))
        s = scale * (centres_s[labels] + 0.1 / K**0.5 * torch.randn(B, N, K, generator=gen))
        t = centres_t[labels] + 0.5 * torch.randn(B, N, C, generator=gen)
        maps.append((t.transpose(1, 2).contiguous(), s.transpose(1, 2).contiguous()))
    (t1, s1), (t2, s2) = maps
    return t1, t2, s1, s2


def _clustered_maps(B, C, K, n1, n2):
    """The inputs' maker for a check: ``gen -> clustered_scd_maps(B, C, K, n1, n2, gen)``."""
    return lambda gen: clustered_scd_maps(B, C, K, n1, n2, gen)


def _gaussian_inputs(B, D, N, K):
    return lambda gen: (torch.randn(B, D, N, generator=gen) * 1.5, torch.randn(B, K, N, generator=gen))


def _images(B, H, W, gen, scale=1.0):
    return torch.rand(B, 3, H, W, generator=gen) * scale


def _probs(B, K, H, W, gen):
    return torch.softmax(torch.randn(B, K, H, W, generator=gen) * 2, dim=1)


def _varm_inputs(B, K, H, W, h, w):
    return lambda gen: (_images(B, H, W, gen), _probs(B, K, h, w, gen))


def _energy_inputs(B, K, H, W):
    def make(gen):
        images, probs = _images(B, H, W, gen, 255.0), _probs(B, K, H, W, gen)
        return images, probs, torch.rand(B, H, W, generator=gen) > 0.2, torch.rand(B, H, W, generator=gen) < 0.2

    return make


def _crf_inputs(B, K, H, W):
    return lambda gen: (_images(B, H, W, gen, 255.0), _probs(B, K, H, W, gen))


# ---- the cases -----------------------------------------------------------------------------

# The typical shape of each op per tier. gaussian (B, D, N, K); scd (B, C, K, N1, N2); varm (B, K,
# H, W); energy (B, K, H, W); crf (B, K, H, W, iterations).
_TYPICAL = {
    "quick": dict(gaussian=(2, 5, 40, 3), scd=(2, 5, 7, 24, 17), varm=(2, 5, 9, 13), energy=(2, 3, 7, 9),
                  crf=(1, 3, 7, 9, 2)),
    "cpu": dict(gaussian=(2, 5, 400, 21), scd=(2, 20, 21, 400, 300), varm=(2, 21, 48, 64), energy=(2, 21, 16, 20),
                crf=(2, 21, 16, 20, 3)),
    "cuda": dict(gaussian=(2, 5, 4096, 21), scd=(2, 20, 21, 1600, 1600), varm=(2, 21, 128, 160),
                 energy=(2, 21, 48, 64), crf=(1, 21, 40, 48, 5)),
}


def cases(tier: str) -> list[Case]:
    """Every check of one size tier (``quick``, ``cpu`` or ``cuda``)."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
    typical = _TYPICAL[tier]
    found = []

    def add(op, label, make, run, cast, **kw):
        found.append(Case(op, label, make, run, cast, **kw))

    B, D, N, K = typical["gaussian"]
    for (b, d, n, k), label in (((B, D, N, K), None), ((1, 5, 1, 1), "N=1 K=1"), ((1, 5, 23, 81), "K=81"),
                                ((1, 3, 17, 200), "K=200"), ((3, 8, 17, 5), "D=8")):
        add("gaussian_product", label or f"B={b} D={d} N={n} K={k}", _gaussian_inputs(b, d, n, k), _gaussian, (1,),
            terms=n + 1)
    add("gaussian_product", "non-contiguous", _gaussian_inputs(2, 5, 31, 4), _gaussian, (1,), non_contiguous=True,
        terms=32)

    B, C, K, N1, N2 = typical["scd"]
    for (b, c, k, n1, n2), label in (((B, C, K, N1, N2), None), ((1, 20, 21, 1, 37), "N1=1"),
                                     ((2, 4, 1, 13, 1), "K=1 N2=1"), ((1, 81, 81, 19, 23), "C=K=81"),
                                     ((1, 200, 200, 17, 23), "C=K=200")):
        add("scd_loss", label or f"B={b} C={c} K={k} N1={n1} N2={n2}", _clustered_maps(b, c, k, n1, n2), _scd,
            (0, 1, 2, 3))
    add("scd_loss", "non-contiguous", _clustered_maps(2, 6, 5, 21, 12), _scd, (0, 1, 2, 3), non_contiguous=True)

    B, K, H, W = typical["varm"]
    for (b, h, w), label in (((B, H, W), None), ((1, 1, 30), "H=1"), ((1, 17, 1), "W=1")):
        add("varm_affinity", label or f"B={b} {h}×{w}", lambda gen, b=b, h=h, w=w: (_images(b, h, w, gen),),
            _varm_affinity, (0,))
    add("varm_affinity", "non-contiguous", lambda gen: (_images(2, 9, 13, gen),), _varm_affinity, (0,),
        non_contiguous=True)
    for (b, k, h, w, mh, mw), label in (((B, K, H, W, H // 2, W // 2), f"B={B} K={K} {H}×{W} masks ×0.5"),
                                        ((1, 1, 1, 30, 1, 30), "H=1 K=1"), ((1, 3, 17, 1, 17, 1), "W=1"),
                                        ((1, 81, 9, 11, 9, 11), "K=81"), ((1, 200, 6, 7, 6, 7), "K=200")):
        add("varm_refine", label, _varm_inputs(b, k, h, w, mh, mw), _varm_refine, (0, 1))
    add("varm_refine", "non-contiguous", _varm_inputs(2, 5, 9, 13, 9, 13), _varm_refine, (0, 1), non_contiguous=True)

    B, K, H, W = typical["energy"]
    for (b, k, h, w), label in (((B, K, H, W), None), ((1, 1, 1, 1), "N=1 K=1"), ((1, 81, 5, 6), "K=81"),
                                ((1, 200, 4, 5), "K=200")):
        add("dense_energy_loss", label or f"B={b} K={k} {h}×{w}", _energy_inputs(b, k, h, w), _dense_energy, (1,))
    add("dense_energy_loss", "non-contiguous", _energy_inputs(2, 3, 7, 9), _dense_energy, (1,), non_contiguous=True)

    B, K, H, W, iters = typical["crf"]
    for (b, k, h, w, n), label in (((B, K, H, W, iters), None), ((1, 1, 5, 4, 2), "K=1"), ((1, 81, 5, 6, 2), "K=81"),
                                   ((1, 200, 4, 5, 1), "K=200")):
        add("dense_crf", label or f"B={b} K={k} {h}×{w} {n} iters", _crf_inputs(b, k, h, w), _dense_crf(n), (1,),
            allowance=CRF_WINDOW_ALLOWANCE)
    add("dense_crf", "non-contiguous", _crf_inputs(2, 3, 7, 9), _dense_crf(2), (1,), non_contiguous=True,
        allowance=CRF_WINDOW_ALLOWANCE)
    return found


# ---- running them --------------------------------------------------------------------------


def exact_backends(op: str) -> list[str]:
    """The exact fused backends of ``op``, usable here or not (the torch reference excluded)."""
    return [b for b in backends.OP_BACKENDS[op] if b != "torch" and backends.is_exact(b)]


def _non_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The same values with every stride doubled (a view into a tensor twice as large)."""
    return torch.stack((x, x), dim=-1)[..., 0]


def describe(exc: Exception) -> str:
    """The exception's type and the first line of its message (CUDA errors run to pages)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compare(case: Case, out: dict, ref: dict, ref64: dict, dtype: torch.dtype) -> tuple[str, float, float, str]:
    """(status, error, bound, detail) of the output with the largest error/bound ratio."""
    worst = ("ok", 0.0, 0.0, "")
    for name, value in out.items():
        if value.shape != ref[name].shape or value.dtype != ref[name].dtype:
            return ("FAIL", float("nan"), float("nan"), f"{name}: {value.dtype} {tuple(value.shape)}, reference "
                    f"{ref[name].dtype} {tuple(ref[name].shape)}")
        error, bound = error_and_bound(value, ref[name], ref64[name], dtype, allowance=case.allowance,
                                       terms=case.terms)
        if not error <= bound:  # NaN fails too
            return "FAIL", error, bound, name
        if bound > 0 and error / bound >= (worst[1] / worst[2] if worst[2] else 0.0):
            worst = ("ok", error, bound, name)
    return worst


def _inputs_for(case: Case, made: tuple, dtype: torch.dtype, device: torch.device, for_backend: bool) -> tuple:
    converted = []
    for i, x in enumerate(made):
        x = x.to(device, dtype) if i in case.cast else x.to(device)
        converted.append(_non_contiguous(x) if for_backend and case.non_contiguous else x)
    return tuple(converted)


def run_case(case: Case, device: str | torch.device, dtypes=DTYPES, backends_to_check: list[str] | None = None,
             seed: int = 0) -> list[Result]:
    """Check ``case`` on ``device`` for each dtype and each usable exact backend (default: all of
    the op's; an unusable one gives an ``unavailable`` row with its reason)."""
    device = torch.device(device)
    candidates = exact_backends(case.op) if backends_to_check is None else backends_to_check
    results = [Result(case.op, b, case.label, "unavailable", detail=reason) for b in candidates
               if (reason := backends.why_unusable(b, device.type)) is not None]
    usable = [b for b in candidates if backends.why_unusable(b, device.type) is None]
    if not usable:
        return results
    made = case.make(torch.Generator().manual_seed(seed))
    try:
        ref64 = case.run("torch", *_inputs_for(case, made, torch.float64, device, for_backend=False))
    except Exception as exc:
        return results + [Result(case.op, "torch", f"{case.label} float64", "ERROR", detail=describe(exc))]
    for dtype in dtypes:
        what = f"{case.label} {str(dtype).removeprefix('torch.')}" + (f" on {device}" if device.index else "")
        try:
            ref = case.run("torch", *_inputs_for(case, made, dtype, device, for_backend=False))
        except Exception as exc:
            results.append(Result(case.op, "torch", what, "ERROR", detail=describe(exc)))
            continue
        inputs = _inputs_for(case, made, dtype, device, for_backend=True)
        for backend in usable:
            try:
                _synchronize(device)
                start = time.perf_counter()
                out = case.run(backend, *inputs)
                _synchronize(device)
                seconds = time.perf_counter() - start
            except Exception as exc:  # a crash of a backend is a result, not the end of the self-test
                results.append(Result(case.op, backend, what, "ERROR", detail=describe(exc)))
                continue
            status, error, bound, detail = _compare(case, out, ref, ref64, dtype)
            results.append(Result(case.op, backend, what, status, error, bound, seconds, detail))
    return results


def run_checks(device: str, tier: str, only: list[str] | None = None, dtypes=DTYPES,
               second_device: bool = True, report: Callable[[Result], None] | None = None) -> list[Result]:
    """Every case of ``tier`` (of the ops in ``only``, default all) on ``device``; with
    ``second_device`` and two or more CUDA devices, each op's first case also on ``cuda:1``
    while ``cuda:0`` stays current. ``report`` is called with each result as it comes."""
    results = []
    chosen = [c for c in cases(tier) if only is None or c.op in only]
    on_second = []
    if second_device and torch.device(device).type == "cuda" and torch.cuda.device_count() > 1:
        firsts = {}
        for c in chosen:
            firsts.setdefault(c.op, c)
        on_second = list(firsts.values())
    for case, where in [(c, device) for c in chosen] + [(c, "cuda:1") for c in on_second]:
        for result in run_case(case, where, dtypes):
            results.append(result)
            if report is not None:
                report(result)
    return results
