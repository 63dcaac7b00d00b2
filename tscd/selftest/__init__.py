"""One command that verifies and benchmarks tscd's kernels on a machine: ``python -m tscd.selftest``.

- :mod:`.checks`: every op of :mod:`tscd.ops` on every exact backend usable on the device, value
  and gradients, float32 and bfloat16 inputs, odd shapes, against the torch reference under the
  rule of :mod:`.tolerance` (a second CUDA device too, when present).
- :mod:`.cases`: every benchmark case (op × backend × size × mode, its inputs, its check against the
  reference), which ``bench/`` (pytest-benchmark) imports from here.
- :mod:`.benchmarks`: those cases at the GPU sizes (CUDA) or quick small ones (CPU), checked, then
  measured by :mod:`.timing`, the measuring core (time, and peak memory in a call of its own).
- :mod:`.runner`: the command line, the table, the time budget and the exit status.
"""
