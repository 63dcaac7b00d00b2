"""The public functional API of tscd: fused ops with backend dispatch.

Every op takes ``backend="auto" | "torch" | "triton" | "cpp"`` (see ``_dispatch``).
"""
from ._dispatch import BACKENDS, available_backends
from .varm import varm_affinity, varm_refine

__all__ = ["BACKENDS", "available_backends", "varm_affinity", "varm_refine"]
