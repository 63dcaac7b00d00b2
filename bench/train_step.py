"""One TSCD training step (forward + backward of the full stage-2 objective, B=2) with every
op on the fused backends against the naive reference (``torch``).

Sizes: the CPU demo (hybrid_b0, strides [4,2,1,1], 64×64, K=6; ``demo_mit``: the same with
MiT-b0) and the VOC training crop
(MiT-B1, strides [4,2,2,1], 320×320, K=21); on CUDA also the paper's 512×512. The backbones
at ToCo's 448×448 crop (K=21), each with its recipe's settings: ``mitb1_448`` (``voc``),
``vitb_448`` (``voc_vit_b``: ViT-B/16) and ``clip_frozen_448`` (``voc_clip_frozen``: the
frozen CLIP ViT-B/16). The step
covers the multi-scale CAM, VARM refinement, and the seg, dense energy, affinity, SCD and
ER terms. Where the reference's N×N dense-energy matrix cannot fit in memory the row is
recorded as out of memory without running it.

    python bench/train_step.py [--sizes demo,voc320,vitb_448] [--backends torch,cpp]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from tscd.data.transforms import denormalize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, default_device, device_name, measure, timed_backends, write_results  # noqa: E402

_DEMO = ["model.stride=[4,2,1,1]", "model.pooling=topk", "loss.scd_scale=0.5", "cam.scales=[1.0]", "data.num_classes=6"]
_VOC = ["model.backbone=mit_b1", "model.stride=[4,2,2,1]", "data.num_classes=21"]
_CROP448 = ["data.num_classes=21", "data.crop_size=448"]
SIZES = {
    # name: (built-in config or None for the defaults, overrides, image size, number of classes)
    "demo": (None, ["model.backbone=hybrid_b0", *_DEMO], 64, 6),
    "demo_mit": (None, ["model.backbone=mit_b0", *_DEMO], 64, 6),
    "voc320": (None, _VOC, 320, 21),
    "voc512": (None, _VOC, 512, 21),
    "mitb1_448": ("voc", _CROP448, 448, 21),
    "vitb_448": ("voc_vit_b", _CROP448, 448, 21),
    "clip_frozen_448": ("voc_clip_frozen", _CROP448, 448, 21),
}


def _batch(size: int, num_classes: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(2, num_classes - 1)
    labels[0, [0, 2 % (num_classes - 1)]] = 1
    labels[1, 1] = 1
    image = torch.randn(2, 3, size, size, generator=g)
    return {"image": image.to(device), "rgb": denormalize(image).to(device), "label": labels.to(device),
            "box": torch.tensor([[0, size, 0, size], [0, size, 8, size]], device=device)}


def _reference_dense_bytes(size: int, scale: float = 0.5) -> float:
    """Memory of the naive dense-energy reference: (B, 5, N, N) differences + W, float32."""
    n = int(size * scale) ** 2
    return 2 * 7 * n * n * 4


def step_fn(size_name: str, backend: str, device: str):
    from tscd.config import load_config
    from tscd.engine.builders import build_model, build_objective, build_pseudo_labeler

    config, overrides, size, k = SIZES[size_name]
    cfg = load_config(config, overrides + ["data.name=synthetic"], {"train.backend": backend})
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    objective = build_objective(cfg, build_pseudo_labeler(cfg)).to(device)
    batch = _batch(size, k, device)
    stage2 = cfg.loss.stage1_iters + 1

    def run():
        model.zero_grad(set_to_none=True)
        total, _, _ = objective(model, model, batch, stage2)
        total.backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma list of " + ", ".join(SIZES))
    parser.add_argument("--backends", default=None, help="comma list (default: torch + the fused backends here)")
    args = parser.parse_args()
    device = default_device()
    backends = args.backends.split(",") if args.backends else timed_backends(device, "scd_loss")
    sizes = args.sizes.split(",") if args.sizes else (["demo", "demo_mit", "voc320", "voc512"] if device == "cuda"
                                                       else ["demo", "demo_mit", "voc320"])
    free = (torch.cuda.mem_get_info()[0] if device == "cuda"
            else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    rows = []
    for size_name in sizes:
        _, _, size, _ = SIZES[size_name]
        label = f"{size_name} {size}² B=2"
        for backend in backends:
            if backend == "torch" and _reference_dense_bytes(size) > 0.7 * free:
                inf = float("inf")
                rows.append(Row("train_step", backend, "f+b", label, inf, inf, inf, inf, device_name(device)))
                print(f"{'train_step':>14} {backend:>7} f+b {label:>18}  reference does not fit in memory")
                continue
            rows.append(measure("train_step", backend, "f+b", label, step_fn(size_name, backend, device), device,
                                budget_s=10.0))
    write_results("train_step", rows, "TSCD training step (forward + backward, all terms)")


if __name__ == "__main__":
    main()
