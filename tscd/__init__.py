"""tscd: Self Correspondence Distillation (TSCD) for weakly supervised semantic segmentation."""
import os as _os

__version__ = "0.1.0"


def _import_mapped_kernels() -> None:
    """Make sure ``tscd.kernels`` is the installation's (a checkout's top-level ``kernels/``).

    When an older checkout left a ``kernels/`` folder inside ``tscd/``, Python's path search, which
    runs before an editable install's finder, would take that folder: the mapped one is imported
    instead, with a warning. Without any install (``PYTHONPATH`` set to a checkout) there is no
    ``tscd.kernels`` at all: an ImportError says how to install.
    """
    import importlib.machinery
    import importlib.util
    import sys
    import warnings

    here = _os.path.dirname(_os.path.abspath(__file__))
    stale = _os.path.join(here, "kernels")
    if not _os.path.isdir(stale) or _os.path.isdir(_os.path.join(here, "_csrc")):
        # nothing left over, or an installed wheel (which carries both folders inside tscd/)
        if importlib.util.find_spec(f"{__name__}.kernels") is None:
            raise ImportError(f"tscd at {here} is not installed: its kernels (the checkout's kernels/ and csrc/) "
                              "are found only through an install; run 'pip install -e .' in the checkout "
                              "(PYTHONPATH pointing at a checkout is not supported)")
        return

    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder or not hasattr(finder, "find_spec"):
            continue
        spec = finder.find_spec(f"{__name__}.kernels", __path__)
        if spec is not None and spec.origin and not spec.origin.startswith(stale + _os.sep):
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            globals()["kernels"] = module
            warnings.warn(f"tscd: ignoring {stale}, left by an older checkout (the kernels are in "
                          f"{_os.path.dirname(spec.origin)} now); delete it", RuntimeWarning, stacklevel=2)
            return
    raise ImportError(f"{stale} is left by an older checkout of tscd (the kernels are in the repository's "
                      "top-level kernels/ now) and no installation maps tscd.kernels elsewhere: delete that "
                      "folder and reinstall (pip install -e .)")


_import_mapped_kernels()
