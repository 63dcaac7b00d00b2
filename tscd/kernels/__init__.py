"""The kernel layer: implementations of the primitives the ops are built from.

Every fused backend provides the same primitives with the same schema (:mod:`.primitives`
states the contracts and holds their fake kernels): the C++/CUDA extension of ``tscd/csrc`` as
``torch.ops.tscd.*``, the Triton kernels of this package as ``torch.ops.tscd_triton.*``
(:mod:`.gaussian`, :mod:`.scd`, :mod:`.varm`). The optional pydensecrf package serves the
dense CRF as ``torch.ops.tscd_pydensecrf.dense_crf`` (:mod:`.pydensecrf`). Nothing here
imports the op layer above it.
"""
