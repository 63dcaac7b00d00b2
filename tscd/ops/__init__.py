"""The public functional API of tscd: fused ops with backend dispatch.

Every op takes ``backend="auto" | "torch" | "triton" | "cpp"`` (see ``_dispatch``).
"""
from ._dispatch import BACKENDS, available_backends

__all__ = ["BACKENDS", "available_backends"]
