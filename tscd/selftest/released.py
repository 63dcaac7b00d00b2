"""The released TSCD code as the benchmarks' anchor: the ``released`` backend of the SCD loss, VARM
and the ``bilateralfilter`` drop-in, timed beside tscd's backends in the same run.

tscd ships none of that code. Point ``TSCD_RELEASED`` at the released repository's ``SCD-AAAI2023``
folder (https://github.com/Rongtao-Xu/RepresentationLearning), with its SWIG module built in place
as its README says (``cd wrapper/bilateralfilter && python setup.py build_ext --inplace``); the
modules are loaded from there by path:

- ``corrloss``: ``utils/corrloss.py``, whose ``ContrastiveCorrelationLoss.helper(t1, t2, s1, s2)``
  gives the pairwise loss that ``tscd.ops.scd_loss`` averages;
- ``VARM``: ``network/VARM.py``, the refinement that ``tscd.ops.varm_refine(mode="varm")`` computes;
- ``bilateralfilter``: ``wrapper/bilateralfilter``, the SWIG module that ``tscd.compat.bilateralfilter``
  replaces.

Without ``TSCD_RELEASED`` the ``released`` rows are skipped, saying so.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

ENV = "TSCD_RELEASED"
MODULES = {"corrloss": "utils/corrloss.py", "VARM": "network/VARM.py",
           "bilateralfilter": "wrapper/bilateralfilter/bilateralfilter.py"}


def why_missing(name: str) -> str | None:
    """None when the released module ``name`` (of :data:`MODULES`) loads, else why it does not."""
    root = os.environ.get(ENV)
    if not root:
        return f"the released code is not here: set {ENV} to its SCD-AAAI2023 folder (tscd.selftest.released)"
    path = Path(root) / MODULES[name]
    if not path.is_file():
        return f"{ENV}={root} has no {MODULES[name]}"
    try:
        module(name)
    except Exception as exc:  # a SWIG module not built, an import the released code needs
        return f"{MODULES[name]} under {ENV} does not load: {type(exc).__name__}: {exc}"
    return None


@functools.cache
def module(name: str) -> ModuleType:
    """The released module ``name``, loaded from ``$TSCD_RELEASED`` by path (its folder leads
    ``sys.path`` while it loads, for the SWIG module's compiled half)."""
    path = Path(os.environ[ENV]) / MODULES[name]
    spec = importlib.util.spec_from_file_location(f"tscd_released_{name}", path)
    loaded = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(loaded)
    finally:
        sys.path.remove(str(path.parent))
    return loaded
