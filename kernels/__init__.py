"""The kernel layer (``tscd.kernels``, the repository's top-level ``kernels/``): implementations of
the primitives the ops are built from, and the one owner of the native build.

Every fused backend provides the same primitives with the same schema (:mod:`.primitives`
states the contracts and holds their fake kernels): the C++/CUDA library of ``csrc/`` as
``torch.ops.tscd.*`` (built and loaded by :mod:`.extension`), the Triton kernels of this package
as ``torch.ops.tscd_triton.*`` (:mod:`.gaussian`, :mod:`.scd`, :mod:`.varm`). The optional
pydensecrf package serves the dense CRF as ``torch.ops.tscd_pydensecrf.dense_crf``
(:mod:`.pydensecrf`). Nothing here imports the op layer above it.
"""
if __name__ != "tscd.kernels":
    # Imported by the bare name "kernels" because a tscd checkout's root is on sys.path (Python run
    # from it): that name belongs to another distribution (Hugging Face's kernels, which transformers
    # requires). Hand the import to it when it is installed, else refuse.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _spec = _machinery.PathFinder.find_spec(
        __name__, [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _checkout])
    if _spec is None:
        raise ImportError(f"{__name__!r} is tscd's kernel folder here (importable only as 'tscd.kernels'), and "
                          f"no other package named {__name__!r} is installed")
    _module = _util.module_from_spec(_spec)
    _sys.modules[__name__] = _module
    _spec.loader.exec_module(_module)
