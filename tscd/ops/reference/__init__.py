"""Naive PyTorch references of the ops, written straight from the spec: the test oracle."""
