"""Per-dtype tolerances in the flash-attention style.

A backend evaluated in dtype ``d`` passes when its error against the float64 reference is
within ``factor`` times the error of the torch reference itself run in ``d`` (plus a small
floor, so an exact reference does not demand bit-exactness)."""
import torch

_FLOOR = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def max_error(x: torch.Tensor, ref64: torch.Tensor) -> float:
    return (x.double() - ref64.double()).abs().max().item() if x.numel() else 0.0


def assert_within_reference_error(out, ref_same_dtype, ref64, dtype, factor: float = 2.0, what: str = "output"):
    """``out`` (backend) and ``ref_same_dtype`` (torch reference) both computed from ``dtype`` inputs."""
    scale = max(1.0, ref64.double().abs().max().item()) if ref64.numel() else 1.0
    ref_err = max_error(ref_same_dtype, ref64)
    err = max_error(out, ref64)
    bound = factor * ref_err + _FLOOR[dtype] * scale
    assert err <= bound, (
        f"{what}: error {err:.3e} against float64 exceeds {factor}x the reference's own error "
        f"{ref_err:.3e} (+ floor) = {bound:.3e} in {dtype}"
    )
