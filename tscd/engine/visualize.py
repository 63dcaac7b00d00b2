"""Pictures: the VOC palette, overlays, the evaluation grid (image | CAM | refined pseudo label |
prediction | ground truth), the mIoU curve and palette PNG files, each written atomically."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..constants import IGNORE_INDEX
from .io import atomic_write

logger = logging.getLogger(__name__)


def voc_palette() -> np.ndarray:
    """(256, 3) uint8, the PASCAL VOC colour map (class c's bits spread over R, G, B); 255 is white."""
    pal = np.zeros((256, 3), np.uint8)
    for c in range(256):
        r = g = b = 0
        cid = c
        for j in range(8):
            r |= ((cid >> 0) & 1) << (7 - j)
            g |= ((cid >> 1) & 1) << (7 - j)
            b |= ((cid >> 2) & 1) << (7 - j)
            cid >>= 3
        pal[c] = (r, g, b)
    pal[IGNORE_INDEX] = (255, 255, 255)
    return pal


PALETTE = voc_palette()


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H,W) class ids -> (H,W,3) uint8 colours."""
    return PALETTE[np.clip(mask, 0, 255).astype(np.uint8)]


def save_png(image: Image.Image, path) -> Path:
    """``image`` as a PNG file at ``path``, written atomically."""
    return atomic_write(path, lambda file: image.save(file, format="PNG"))


def write_palette_png(mask: np.ndarray, path) -> Path:
    """(H, W) class ids as a palette ("P" mode) PNG whose pixel values are the ids."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(PALETTE.reshape(-1).tolist())
    return save_png(image, path)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an image (H,W,3 uint8); background and ignore stay the image."""
    col = colorize(mask).astype(np.float32)
    out = image.astype(np.float32)
    fg = (mask > 0) & (mask != IGNORE_INDEX)
    out[fg] = (1 - alpha) * out[fg] + alpha * col[fg]
    return out.clip(0, 255).astype(np.uint8)


def heatmap(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """(H,W) values in [0,1] as a jet-like colour blended over the image."""
    v = np.clip(cam, 0, 1)[..., None]
    jet = np.concatenate([np.clip(1.5 - np.abs(4 * v - 3), 0, 1), np.clip(1.5 - np.abs(4 * v - 2), 0, 1),
                          np.clip(1.5 - np.abs(4 * v - 1), 0, 1)], -1) * 255
    return (0.5 * image + 0.5 * jet).astype(np.uint8)


COLUMNS = ("image", "CAM", "pseudo label", "prediction", "ground truth")


def save_grid(samples: list[dict], path, min_cell: int = 128) -> None:
    """samples: dicts with image (H,W,3 uint8), cam (H,W in [0,1]), pseudo, pred, gt (H,W ids).

    Writes one row per sample; small images are enlarged (nearest) to ``min_cell`` pixels.
    """
    if not samples:
        return
    h, w = samples[0]["image"].shape[:2]
    f = max(1, -(-min_cell // max(h, w)))
    cell_h, cell_w, head = h * f, w * f, 16
    canvas = Image.new("RGB", (cell_w * len(COLUMNS), head + cell_h * len(samples)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(COLUMNS):
        draw.text((j * cell_w + 4, 2), title, fill="black")
    for i, s in enumerate(samples):
        img = s["image"]
        cells = (img, heatmap(img, s["cam"]), colorize(s["pseudo"]), colorize(s["pred"]), colorize(s["gt"]))
        for j, cell in enumerate(cells):
            tile = Image.fromarray(cell).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (j * cell_w, head + i * cell_h))
    save_png(canvas, path)


def save_curve(history: list[dict], path, keys=("seg_miou", "cam_miou", "pseudo_miou", "aff_miou")) -> bool:
    """mIoU against iterations, one line per metric, from a ``metrics.json`` history.

    Returns whether a curve was written: not without history, nor without matplotlib (the
    optional extra ``tscd[plot]``).
    """
    if not history:
        return False
    try:
        import matplotlib
    except ImportError:
        logger.info("no curve: matplotlib is not installed (pip install tscd[plot])")
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    its = [h["iteration"] for h in history]
    for k in keys:
        if k in history[0]:
            ax.plot(its, [h[k] for h in history], marker="o", label=k.replace("_miou", ""))
    ax.set_xlabel("iteration")
    ax.set_ylabel("mIoU (val)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda file: fig.savefig(file, format="png", dpi=110))
    plt.close(fig)
    return True
