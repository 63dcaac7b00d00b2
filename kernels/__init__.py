"""Triton kernels of tscd, installed as ``tscd.kernels``: one file per op (kernel, launcher)."""
