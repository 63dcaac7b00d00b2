"""Benchmark of the self-correspondence distillation loss (method §6).

B=2, C=20, K=21, N1 = N2 = N in 1600 (the 40×40 sampling of training), 4096, 9216, 16384
(dense SCD of a 128×128 map): forward+backward ("full") and forward alone ("fwd", no
gradient), for every fused backend that runs here, against the naive torch reference where
its N×N matrices fit in memory (it is skipped, and said so, elsewhere). On the CPU triton
would be the interpreter, which is not a timing: it is skipped there. ``--threads n`` sets
torch's intra-op threads (results then go to ``scd_<n>thread_*``): on a shared, oversubscribed
CPU every parallel region waits for a descheduled thread, and one thread times more steadily.
Usage: ``python bench/scd.py [--sizes 1600,4096,9216,16384] [--ref-limit-gib 8] [--threads n]``.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import default_device, measure, timed_backends, write_results  # noqa: E402

from tscd.ops import available_backends, scd_loss  # noqa: E402

B, C, K = 2, 20, 21


def inputs(n: int, device: str):
    g = torch.Generator().manual_seed(0)
    t1, t2 = (torch.randn(B, C, n, generator=g) for _ in range(2))
    s1, s2 = (torch.randn(B, K, n, generator=g) for _ in range(2))
    return [x.to(device) for x in (t1, t2, s1, s2)]


def reference_bytes(n: int) -> int:
    """Peak of the naive reference: about five (B, N, N) float32 temporaries (measured)."""
    return 5 * B * n * n * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1600,4096,9216,16384")
    parser.add_argument("--ref-limit-gib", type=float, default=8.0,
                        help="skip the torch reference where it would need more memory than this")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args()
    name = "scd"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        name = f"scd_{args.threads}thread"
    device = default_device()
    fused = [b for b in timed_backends(device, "scd_loss") if b != "torch"]
    skipped = []
    if "triton" in available_backends(device) and "triton" not in fused:
        skipped.append("triton on the CPU: the Triton interpreter is far too slow to time")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        size = f"N={n}"
        t1, t2, s1, s2 = inputs(n, device)
        for mode, full in (("full", True), ("fwd", False)):
            backends = list(fused)
            if reference_bytes(n) <= args.ref_limit_gib * 2**30:
                backends.insert(0, "torch")
            else:
                skipped.append(f"torch reference {mode} at {size}: needs about "
                               f"{reference_bytes(n) / 2**30:.0f} GiB")
            for backend in backends:
                def forward_backward(backend=backend):
                    a, b = s1.detach().requires_grad_(), s2.detach().requires_grad_()
                    scd_loss(t1, t2, a, b, backend=backend).backward()
                    return a.grad, b.grad

                def forward(backend=backend):
                    with torch.no_grad():
                        return scd_loss(t1, t2, s1, s2, backend=backend)

                rows.append(measure("scd", backend, mode, size, forward_backward if full else forward, device))
    write_results(name, rows, f"SCD loss, B={B}, C={C}, K={K}, N1=N2=N")
    for line in skipped:
        print(f"skipped: {line}")


if __name__ == "__main__":
    main()
