"""Segmentation inference as papers report it (method §10): multi-scale + flip logits, dense CRF;
and ``tscd infer``, which runs the same protocol on image files.

The published protocol (AFA's ``test_msc_flip``, inherited by TSCD): resize the image so its
long side is 512; for each scale s of [1.0, 0.5, 0.75] run the image and its horizontal flip,
average the two logit maps (un-flipping the second) and resize to the scale-1 logit size;
take the element-wise max over scales; upsample to the label size (bilinear); softmax; dense
CRF (AFA's settings; those of the other codebases' evaluations are the presets of
:data:`tscd.constants.CRF_PRESETS`); argmax. :class:`EvalProtocol` holds those choices and
:meth:`EvalProtocol.predict` runs them on a batch, returning every intermediate prediction
that one evaluation reports, from the same forward passes. Images of a batch share one size
(VOC-like data: batch size 1).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..cam import class_argmax
from ..constants import CRF_CHOICES, CRF_PRESETS, DEFAULT_CRF_PRESET
from ..data.base import DatasetError, load_image
from ..data.transforms import EvalTransform
from ..ops.dense_crf import dense_crf
from .outputs import check_output_folder, check_outputs, file_identity
from .visualize import overlay, save_png, write_palette_png

logger = logging.getLogger(__name__)


def resize_long_side(images: torch.Tensor, long_side: int | None) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, ⌊H·r⌋, ⌊W·r⌋) with r = long_side / max(H, W), bilinear.

    ``None`` or 0 keeps the images as they are.
    """
    if not long_side:
        return images
    h, w = images.shape[-2:]
    ratio = long_side / max(h, w)
    size = (int(h * ratio), int(w * ratio))
    if size == (h, w):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


@dataclasses.dataclass
class Forward:
    """Network outputs of one batch under a protocol (method §10).

    cls (B, K−1) image logits, seg (B, K, h, w) segmentation logits and attn_pred (B, N, N)
    of the scale-1, un-flipped input; msf (B, K, h, w): max over scales of the flip-averaged
    logits (``seg`` itself when the protocol is single-scale without flip); grid: the (h₄, w₄)
    attention grid of ``attn_pred``.
    """

    cls: torch.Tensor
    seg: torch.Tensor
    attn_pred: torch.Tensor
    msf: torch.Tensor
    grid: tuple[int, int]


@torch.no_grad()
def multi_scale_forward(model, images: torch.Tensor, scales: Sequence[float] = (1.0, 0.5, 0.75),
                        flip: bool = True) -> Forward:
    """Run ``model`` (TSCD, whose output has ``cls``, ``seg``, ``attn_pred``) at every scale.

    images: (B, 3, H, W) normalised, already resized to the protocol's long side. The image
    and its flip go through the network together (batch 2B). Scale s resizes the input by
    ``scale_factor=s`` (bilinear); its flip-averaged logits are resized (bilinear) to the
    scale-1 logit size before the max.
    """
    if 1.0 not in scales:
        raise ValueError(f"scales must contain 1.0 (the reference size of the logits), got {list(scales)}")
    b = images.shape[0]

    def run(x):
        out = model(torch.cat([x, x.flip(-1)]) if flip else x)
        seg = out.seg.float()
        averaged = (seg[:b] + seg[b:].flip(-1)) / 2 if flip else seg
        return out.cls[:b], seg[:b], out.attn_pred[:b], averaged

    cls, seg, attn_pred, msf = run(images)
    stride = model.output_stride
    grid = (-(-images.shape[-2] // stride), -(-images.shape[-1] // stride))
    for s in scales:
        if s == 1.0:
            continue
        x = F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        logits = F.interpolate(run(x)[3], size=msf.shape[-2:], mode="bilinear", align_corners=False)
        msf = torch.maximum(msf, logits)
    return Forward(cls, seg, attn_pred, msf, grid)


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """How segmentation predictions are made: scales, flip, CRF, long side of the input.

    ``crf`` is ``"none"`` or the ``tscd.ops.dense_crf`` backend request (``auto``, ``exact``,
    ``lattice``, ``pydensecrf``); ``crf_preset`` names the CRF's settings (iterations, kernel
    widths and weights) in :data:`~tscd.constants.CRF_PRESETS`: ``afa`` (TSCD's and AFA's
    published protocol), ``toco``, ``seco``, ``excel``, ``weclip``. The default is the
    training-time check: one forward pass at the image's own size. ``tscd eval`` builds it
    from the config's ``eval`` section (:meth:`from_config`).
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crf: str = "none"
    resize_long: int | None = None
    crf_preset: str = DEFAULT_CRF_PRESET

    def __post_init__(self):
        if 1.0 not in self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive and contain 1.0, got {list(self.scales)}")
        if self.crf not in CRF_CHOICES:
            raise ValueError(f"crf must be one of {CRF_CHOICES}, got {self.crf!r}")
        if self.crf_preset not in CRF_PRESETS:
            raise ValueError(f"crf_preset must be one of {tuple(CRF_PRESETS)}, got {self.crf_preset!r}")
        if self.resize_long is not None and self.resize_long < 0:
            raise ValueError(f"resize_long must be positive (or 0/None: keep the size), got {self.resize_long}")

    @classmethod
    def from_config(cls, cfg) -> EvalProtocol:
        e = cfg.eval
        return cls(tuple(float(s) for s in e.scales), bool(e.flip), str(e.crf), e.resize_long or None,
                   str(e.crf_preset))

    @property
    def multi_scale(self) -> bool:
        return self.flip or len(self.scales) > 1

    def kinds(self) -> tuple[str, ...]:
        """Names of the segmentation predictions :meth:`predict` returns."""
        kinds = ("seg",)
        if self.multi_scale:
            kinds += ("seg_msf",)
        if self.crf != "none":
            kinds += ("seg_msf_crf" if self.multi_scale else "seg_crf",)
        return kinds

    @torch.no_grad()
    def predict(self, model, images: torch.Tensor, size: tuple[int, int],
                rgb: torch.Tensor | None = None) -> tuple[Forward, dict]:
        """(Forward, {kind: labels (B, *size) int64}) for normalised images (B, 3, H, W).

        ``rgb`` (B, 3, H, W), the images in [0, 1], is needed for the CRF. The last kind is the
        protocol's final prediction (with CRF when one is asked for).
        """
        fwd = multi_scale_forward(model, resize_long_side(images, self.resize_long), self.scales, self.flip)
        up = lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        out = {"seg": class_argmax(up(fwd.seg))}
        final = up(fwd.msf)
        if self.multi_scale:
            out["seg_msf"] = class_argmax(final)
        if self.crf != "none":
            if rgb is None:
                raise ValueError("the CRF needs the images in [0, 1]: pass rgb")
            rgb = (rgb.float() * 255).round()
            if rgb.shape[-2:] != tuple(size):
                rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
            preset = CRF_PRESETS[self.crf_preset]
            refined = dense_crf(rgb, final.softmax(1), num_iter=preset.num_iter, smooth=preset.smooth,
                                appearance=preset.appearance, backend=self.crf)
            out[self.kinds()[-1]] = class_argmax(refined)
        return fwd, out


class ImageError(RuntimeError):
    """The network failed on an image: the message names the image, its size and the cause."""


def image_names(dataset, names: Sequence[str]) -> str:
    """The images ``names`` of ``dataset`` as a message names them: their files where the dataset
    (or the one a ``Subset`` takes from) knows them, else their names."""
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    path = getattr(base, "image_path", None)
    return ", ".join(str(path(name)) if path is not None else f"'{name}'" for name in names)


@contextlib.contextmanager
def naming_the_image(what: str, size: Sequence[int], hint: str = ""):
    """Inside, an error of the network (a ``ValueError`` or ``RuntimeError``: a size it cannot
    take, memory) becomes an :class:`ImageError` ``"image <what> (H×W): <its first line><hint>"``;
    a :class:`~tscd.data.base.DatasetError`, which names its file already, passes unchanged."""
    try:
        yield
    except DatasetError:
        raise
    except (ValueError, RuntimeError) as err:
        lines = str(err).strip().splitlines()
        raise ImageError(f"image {what} ({size[0]}×{size[1]}): {lines[0] if lines else type(err).__name__}"
                         f"{hint}") from err


def smallest_images(dataset, max_images: int | None = None) -> dict[str, tuple[int, int]]:
    """name -> (H, W) of the images with the least height and the least width among the first
    ``max_images`` of ``dataset`` (a network that takes them takes every image), from the sizes
    its check recorded; empty for a dataset that records none (synthetic)."""
    sizes = getattr(dataset, "sizes", None) or {}
    names = [name for name in getattr(dataset, "names", ())[:max_images] if name in sizes]
    if not names:
        return {}
    lowest, narrowest = min(names, key=lambda n: sizes[n][0]), min(names, key=lambda n: sizes[n][1])
    return {name: sizes[name] for name in (lowest, narrowest)}


def progress_bar(total: int, enabled: bool = True, desc: str = "eval"):
    """A tqdm bar counting images (its rate reads images/s); silent when not ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=not enabled, dynamic_ncols=True)


def plan_infer_outputs(paths: Sequence, out_dir) -> list[tuple[Path, Path, Path]]:
    """(image, mask path, overlay path) per image file of ``paths``, for ``tscd infer``.

    Image ``photo.jpg`` gives ``out_dir/photo.png`` (its mask) and ``out_dir/photo_overlay.png``.
    A file named twice (even through another path) is segmented once. Checked before anything
    is written (:func:`tscd.engine.outputs.check_outputs`): every image exists and is a file;
    no output overwrites an input; no two outputs share a name (``a/photo.jpg`` and
    ``b/photo.jpg``, ``photo.jpg`` and ``photo.png``, or ``photo.jpg`` and ``photo_overlay.jpg``
    are refused, naming both). Files of an earlier run in ``out_dir`` are replaced.
    """
    check_output_folder(out_dir)
    out_dir = Path(out_dir)
    images, seen = [], set()
    for path in map(Path, paths):
        if not path.exists():
            raise DatasetError(f"image not found: {path}")
        if not path.is_file():
            raise DatasetError(f"{path} is a folder, not an image file")
        ident = file_identity(path)
        if ident not in seen:
            seen.add(ident)
            images.append(path)
    plan = [(path, out_dir / f"{path.stem}.png", out_dir / f"{path.stem}_overlay.png") for path in images]
    check_outputs([out for path, mask, shown in plan
                   for out in ((mask, f"the mask of {path}"), (shown, f"the overlay of {path}"))], inputs=images)
    return plan


@torch.no_grad()
def infer_images(model, paths: Sequence, out_dir, protocol: EvalProtocol, class_names: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], device="cpu") -> list[dict]:
    """Segment image files with ``protocol``: ``out_dir/<stem>.png`` (palette mask of class ids)
    and ``<stem>_overlay.png`` per image, named and checked by :func:`plan_infer_outputs` before
    the first is written, each written atomically. Returns per image its path and the classes
    it shows."""
    model.eval()
    plan = plan_infer_outputs(paths, out_dir)
    to_tensors = EvalTransform(mean, std)
    results = []
    for path, mask_path, overlay_path in plan:
        img = load_image(path)
        fields = to_tensors(img)
        images, rgb = fields["image"][None].to(device), fields["rgb"][None].to(device)
        with naming_the_image(str(path), img.shape[:2], "; --resize-long N resizes the images for the network"):
            _, segs = protocol.predict(model, images, img.shape[:2], rgb)
        mask = segs[protocol.kinds()[-1]][0].cpu().numpy().astype(np.uint8)
        write_palette_png(mask, mask_path)
        save_png(Image.fromarray(overlay(img, mask)), overlay_path)
        present = [class_names[c] for c in np.unique(mask) if c != 0 and c < len(class_names)]
        logger.info("%s: %s", path, ", ".join(present) or "background only")
        results.append({"path": str(path), "classes": present})
    return results
