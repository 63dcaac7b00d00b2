"""Naive PyTorch references of the ops, written straight from the method (docs/method.md): the test oracle."""
