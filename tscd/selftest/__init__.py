"""One command that verifies and benchmarks tscd's kernels on a machine: ``python -m tscd.selftest``.

- :mod:`.checks`: every op of :mod:`tscd.ops` on every exact backend usable on the device, value
  and gradients, float32 and bfloat16 inputs, odd shapes, against the torch reference under the
  rule of :mod:`.tolerance` (a second CUDA device too, when present).
- :mod:`.benchmarks`: the scripts of ``bench/`` at the GPU sizes (CUDA) or quick small ones (CPU),
  measured by :mod:`.timing`, the measuring core that ``bench/common.py`` shares.
- :mod:`.runner`: the command line, the table, the time budget and the exit status.
"""
