"""The C++/CUDA sources of tscd's native library, installed as the data package ``tscd._csrc``.

Nothing here is Python: :mod:`tscd.kernels.extension` finds these files with
:mod:`importlib.resources` and compiles them (just in time, or ahead of time for ``setup.py``).
"""
