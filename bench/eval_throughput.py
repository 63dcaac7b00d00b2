"""Whole-evaluation throughput (images/s) of ``tscd eval`` on VOC-sized images, with and without CRF.

A MiT-B1 TSCD model (K = 21, random weights: the time does not depend on them) evaluates a
``folder`` dataset of 375×500 photographs (scikit-image's sample images, resized) with random
masks, exactly as ``tscd eval`` does: segmentation under the protocol of each row, plus the
multi-scale CAM, the VARM-refined labels and the attention random walk, confusion matrices
streamed image by image. Rows:

* ``single``: one forward pass at the image's size (the training-time check);
* ``msf``: long side 512, scales 1.0/0.5/0.75 with flips (method §10), no CRF;
* ``msf+crf``: the same plus the dense CRF with each backend asked for (``--crf``):
  ``pydensecrf`` (what ``auto`` picks on a CPU when pydensecrf2 is installed) and ``exact``
  (triton on a GPU, the O(N²) C++ path on a CPU — minutes per image there, so it is timed on
  ``--exact-images`` images in one pass, without repetitions).

Usage: ``python bench/eval_throughput.py [--images 4] [--exact-images 1] [--crf pydensecrf,exact]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Row, default_device, device_name, measure, peak_memory_mib, photographs, write_results  # noqa: E402

from tscd.config import load_config  # noqa: E402
from tscd.data import build_dataset  # noqa: E402
from tscd.data.voc import VOC_CLASSES  # noqa: E402
from tscd.engine.builders import build_model, build_pseudo_labeler, eval_loader  # noqa: E402
from tscd.engine.evaluator import Evaluator  # noqa: E402
from tscd.engine.inference import EvalProtocol  # noqa: E402

H, W = 375, 500
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "immunohistochemistry")


def make_dataset(root: Path, n: int) -> None:
    """``n`` photographs at 375×500 with blocky random masks, as a ``folder`` dataset."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img = photographs(H, W, (PHOTOS[i % len(PHOTOS)],)).clamp(0, 255)
        Image.fromarray(img[0].permute(1, 2, 0).byte().numpy()).save(root / "images" / f"img{i}.jpg")
        classes = rng.choice(np.arange(1, 21), size=2, replace=False)
        coarse = rng.choice(np.concatenate([[0], classes]), size=(H // 25 + 1, W // 25 + 1))
        mask = np.kron(coarse, np.ones((25, 25), np.int64))[:H, :W].astype(np.uint8)
        Image.fromarray(mask, mode="L").save(root / "masks" / f"img{i}.png")
        rows.append(f"img{i}.jpg," + ";".join(VOC_CLASSES[c] for c in classes))
    (root / "classes.txt").write_text("\n".join(VOC_CLASSES[1:]) + "\n")
    (root / "val.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images per timed pass (single, msf, pydensecrf)")
    parser.add_argument("--exact-images", type=int, default=1, help="images of the one exact-CRF pass")
    parser.add_argument("--crf", default="pydensecrf,exact", help="CRF backends to time (comma-separated)")
    args = parser.parse_args()
    device = default_device()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dataset(root, max(args.images, args.exact_images))
        cfg = load_config("voc", ["data.name=folder", f"data.root={root}", "data.num_workers=0"])
        dataset = build_dataset(cfg, "val", train=False)
        model = build_model(cfg).to(device).eval()
        pseudo_labeler = build_pseudo_labeler(cfg)
        msf = dict(scales=(1.0, 0.5, 0.75), flip=True, resize_long=512)
        cases = [("single", EvalProtocol(), "-"), ("msf", EvalProtocol(**msf), "-")]
        cases += [("msf+crf", EvalProtocol(**msf, crf=c), c) for c in args.crf.split(",") if c]
        rows, rates = [], []
        for mode, protocol, crf in cases:
            evaluator = Evaluator(cfg, pseudo_labeler, dataset.class_names, device, protocol)
            slow = crf == "exact" and device == "cpu"
            n = args.exact_images if slow else args.images
            size = f"{H}x{W} ({n} img)"

            def run(evaluator=evaluator, n=n):
                with torch.no_grad():
                    evaluator.run(model, eval_loader(dataset, 1), max_images=n)
                if device == "cuda":
                    torch.cuda.synchronize()

            if slow:  # one pass: time and peak memory of the same call
                start = time.perf_counter()
                peak = peak_memory_mib(run, device)
                ms = (time.perf_counter() - start) * 1e3
                row = Row("eval", crf, mode, size, ms / n, ms / n, ms / n, peak, device_name(device))
                print(f"{'eval':>14} {crf:>7} {mode:>4} {size:>18}  {ms / n:10.2f} ms/img  {peak:9.1f} MiB (one pass)")
            else:
                row = measure("eval", crf, mode, size, run, device, min_reps=2, budget_s=0.0)
                row.median_ms, row.p20_ms, row.p80_ms = row.median_ms / n, row.p20_ms / n, row.p80_ms / n
            rows.append(row)
            rates.append(f"| {mode} | {crf} | {n} | {row.median_ms / 1e3:.2f} | {1e3 / row.median_ms:.3f} |"
                         + (" one pass" if slow else ""))
            # rewritten after every row: a long exact-CRF pass can be stopped without losing the others
            write_results("eval_throughput", rows, "tscd eval on 375x500 images, MiT-B1, per image")
    print(f"\nwhole evaluation (seg protocol + CAM + VARM labels + random walk), {device_name(device)}\n")
    print("| protocol | CRF | images | s/image | images/s |\n|---|---|---|---|---|")
    print("\n".join(rates))


if __name__ == "__main__":
    main()
