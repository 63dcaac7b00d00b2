"""The public functional API of tscd: fused ops with backend dispatch.

Every op takes ``backend="auto" | "exact" | <backend name>`` (see :mod:`tscd.ops.backends`).
"""
from .backends import BACKENDS, available_backends, can_run
from .dense_crf import dense_crf
from .dense_energy import dense_energy_loss
from .gaussian import LATTICE_SCALE, gaussian_product
from .scd import scd_loss
from .varm import varm_affinity, varm_refine

__all__ = ["BACKENDS", "LATTICE_SCALE", "available_backends", "can_run", "dense_crf", "dense_energy_loss",
           "gaussian_product", "scd_loss", "varm_affinity", "varm_refine"]
