"""Command-line flags of the evaluation protocol (``tscd eval``) and of ``tscd pseudo-labels``.

Kept free of torch imports: the CLI builds its parser before anything heavy is loaded.
"""
from __future__ import annotations

import argparse

CRF_CHOICES = ("auto", "exact", "pydensecrf", "none")
REFINE_CHOICES = ("varm", "par", "none")


def add_protocol_args(parser) -> None:
    """``--scales --flip/--no-flip --crf --resize-long`` (each sets its ``eval.*`` config key)."""
    parser.add_argument("--scales", help="comma-separated segmentation scales, e.g. 1.0,0.5,0.75 (eval.scales)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average every scale with its horizontal flip (eval.flip)")
    parser.add_argument("--crf", choices=CRF_CHOICES,
                        help="dense CRF: auto (exact on CUDA, pydensecrf on CPU when installed), exact, "
                             "pydensecrf or none (eval.crf)")
    parser.add_argument("--resize-long", type=int, help="long side of the network input, 0 = as is (eval.resize_long)")


def protocol_overrides(args) -> list[str]:
    """The ``eval.*`` ``key=value`` overrides of :func:`add_protocol_args` flags that were given."""
    out = []
    if getattr(args, "scales", None):
        try:
            scales = [float(s) for s in args.scales.split(",")]
        except ValueError:
            raise ValueError(f"--scales must be comma-separated numbers, got {args.scales!r}") from None
        out.append(f"eval.scales={scales}")
    if getattr(args, "flip", None) is not None:
        out.append(f"eval.flip={str(args.flip).lower()}")
    if getattr(args, "crf", None):
        out.append(f"eval.crf={args.crf}")
    if getattr(args, "resize_long", None) is not None:
        out.append(f"eval.resize_long={args.resize_long}")
    return out
