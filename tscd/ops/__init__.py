"""The public functional API of tscd: fused ops with backend dispatch.

Every op takes ``backend="auto" | "torch" | "triton" | "cpp"`` (see ``_dispatch``).
"""
from ._dispatch import BACKENDS, available_backends
from .dense_crf import dense_crf
from .dense_energy import dense_energy_loss
from .scd import scd_loss
from .varm import varm_affinity, varm_refine

__all__ = ["BACKENDS", "available_backends", "dense_crf", "dense_energy_loss", "scd_loss", "varm_affinity", "varm_refine"]
