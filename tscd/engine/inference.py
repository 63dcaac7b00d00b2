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
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..constants import CRF_CHOICES, CRF_PRESETS, DEFAULT_CRF_PRESET
from ..data.base import DatasetError, load_image, read_text
from ..data.transforms import EvalTransform
from ..ops.dense_crf import dense_crf
from ..refine import class_argmax
from .io import write_json
from .outputs import check_output_folder, check_outputs, file_identity
from .stage_timer import StageTimer
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
    attention grid of ``attn_pred``; cam: the raw CAM of the scale-1 input, (B, K−1, h₄, w₄),
    followed by that of its flip with the protocol's flip (2B rows), which
    :func:`~tscd.class_activation.multi_scale_cam` takes as its ``scale1_cam`` when
    ``input_size``, the (H, W) of the scale-1 input, is the images' own.
    """

    cls: torch.Tensor
    seg: torch.Tensor
    attn_pred: torch.Tensor
    msf: torch.Tensor
    grid: tuple[int, int]
    cam: torch.Tensor
    input_size: tuple[int, int]


@torch.no_grad()
def multi_scale_forward(model, images: torch.Tensor, scales: Sequence[float] = (1.0, 0.5, 0.75),
                        flip: bool = True) -> Forward:
    """Run ``model`` (TSCD, whose output has ``cls``, ``seg``, ``attn_pred``, ``cam``) at every scale.

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
        return out.cls[:b], seg[:b], out.attn_pred[:b], averaged, out.cam

    cls, seg, attn_pred, msf, cam = run(images)
    stride = model.output_stride
    grid = (-(-images.shape[-2] // stride), -(-images.shape[-1] // stride))
    for s in scales:
        if s == 1.0:
            continue
        x = F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        logits = F.interpolate(run(x)[3], size=msf.shape[-2:], mode="bilinear", align_corners=False)
        msf = torch.maximum(msf, logits)
    return Forward(cls, seg, attn_pred, msf, grid, cam, tuple(images.shape[-2:]))


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
        return cls(tuple(float(s) for s in cfg.eval.scales), bool(cfg.eval.flip), str(cfg.eval.crf),
                   cfg.eval.resize_long or None, str(cfg.eval.crf_preset))

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
    def predict(self, model, images: torch.Tensor, size: tuple[int, int], rgb: torch.Tensor | None = None,
                timer: StageTimer | None = None) -> tuple[Forward, dict]:
        """(Forward, {kind: labels (B, *size) int64}) for normalised images (B, 3, H, W).

        ``rgb`` (B, 3, H, W), the images in [0, 1], is needed for the CRF. The last kind is the
        protocol's final prediction (with CRF when one is asked for). ``timer`` counts the
        forward passes and their labels as its stage ``forward``, the CRF as ``crf``.
        """
        timer = StageTimer(images.device) if timer is None else timer
        if self.crf != "none" and rgb is None:
            raise ValueError("the CRF needs the images in [0, 1]: pass rgb")
        with timer.stage("forward"):
            fwd = multi_scale_forward(model, resize_long_side(images, self.resize_long), self.scales, self.flip)
            up = lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
            out = {"seg": class_argmax(up(fwd.seg))}
            final = up(fwd.msf)
            if self.multi_scale:
                out["seg_msf"] = class_argmax(final)
        if self.crf == "none":
            return fwd, out
        with timer.stage("crf"):
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
    """A tqdm bar counting images, with their rate (images/s) and the time left; silent when not
    ``enabled`` or when its stream (stderr) is not a terminal (a log file gets no bar lines)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=None if enabled else True, dynamic_ncols=True)


#: The record of what ``tscd infer`` wrote into its output folder (:class:`InferRecord`).
RECORD_NAME = "tscd-infer.json"
#: Seconds between two writes of the record while ``tscd infer`` runs (it is also written at the
#: end, of a failed run too), so that a run killed outright leaves most of its files on record.
RECORD_EVERY_S = 30.0


def file_digest(path) -> str:
    """The SHA-256 of the file at ``path``, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class InferRecord:
    """``OUT/tscd-infer.json``: what ``tscd infer`` wrote into the folder ``OUT``.

    ``files``: each file written (its path relative to ``OUT``) -> the SHA-256 of what was
    written; ``images``: per image, its ``input`` (absolute path), ``mask`` and ``overlay``
    (relative to ``OUT``) and the ``classes`` found. A later run may replace exactly the files
    listed that still hold what was written (:meth:`why_kept`). A file at the record's path that
    is not such a record is no record (and is kept).
    """

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / RECORD_NAME
        self.images: list[dict] = []
        self.files: dict[str, str] = {}
        self.valid = True
        if self.path.exists():
            try:
                record = json.loads(read_text(self.path, "record"))
                self.valid = (isinstance(record, dict) and record.get("written_by") == "tscd infer"
                              and isinstance(record.get("files"), dict) and isinstance(record.get("images"), list))
            except (DatasetError, ValueError):
                self.valid = False
            if self.valid:
                self.images, self.files = record["images"], record["files"]

    def _key(self, path: Path) -> str:
        return path.relative_to(self.out_dir).as_posix()

    def why_kept(self, path: Path) -> str | None:
        """None when the existing file at ``path``, an output, may be replaced (the record
        itself, or a file it lists that still holds what was written), else why it may not."""
        if path == self.path:
            return None if self.valid else "is not a record of tscd infer"
        digest = self.files.get(self._key(path))
        if digest is None:
            return f"tscd infer did not write it (it is not in {self.path})"
        return None if file_digest(path) == digest else "was changed since tscd infer wrote it"

    def add(self, image: Path, mask: Path, overlay: Path, classes: list[str]) -> None:
        """Record the files written for ``image`` (in place of an earlier image's at those paths)."""
        keys = {self._key(mask), self._key(overlay)}
        self.images = [e for e in self.images if not keys & {e.get("mask"), e.get("overlay")}]
        self.images.append({"input": str(image.absolute()), "mask": self._key(mask), "overlay": self._key(overlay),
                            "classes": classes})
        self.files.update({self._key(mask): file_digest(mask), self._key(overlay): file_digest(overlay)})

    def save(self) -> None:
        """Write the record, atomically."""
        write_json({"written_by": "tscd infer", "images": self.images, "files": self.files}, self.path)


def plan_infer_outputs(paths: Sequence, out_dir, reads: Sequence = ()) -> tuple[list[tuple[Path, Path, Path]],
                                                                              InferRecord]:
    """(image, mask path, overlay path) per image file of ``paths``, for ``tscd infer``, and the
    record of ``out_dir`` (:class:`InferRecord`).

    Image ``DIR/photo.jpg`` gives ``OUT/REL/photo_mask.png`` (its mask) and
    ``OUT/REL/photo_overlay.png``, ``REL`` being ``DIR`` relative to the folder that holds
    every input (inputs of one folder: none). A file named twice (even through another path)
    is segmented once. Checked before anything is written
    (:func:`tscd.engine.outputs.check_outputs`): every image exists and is a file; no output is
    an input or one of ``reads`` (checkpoint, config); no two outputs share a path
    (``photo.jpg`` and ``photo.png`` in one folder are refused, naming both); an existing
    file at an output path, the record's included, is replaced only where the record lists it
    as written by tscd infer and unchanged since.
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
    folders = [os.path.dirname(os.path.abspath(path)) for path in images]
    common = os.path.commonpath(folders)
    plan = []
    for path, folder in zip(images, folders):
        place = out_dir / os.path.relpath(folder, common)
        plan.append((path, place / f"{path.stem}_mask.png", place / f"{path.stem}_overlay.png"))
    record = InferRecord(out_dir)
    check_outputs([out for path, mask, shown in plan
                   for out in ((mask, f"the mask of {path}"), (shown, f"the overlay of {path}"))]
                  + [(record.path, "the record of what tscd infer wrote")],
                  inputs=[*images, *reads], existing=record.why_kept)
    return plan, record


@torch.no_grad()
def infer_images(model, paths: Sequence, out_dir, protocol: EvalProtocol, class_names: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], device="cpu", reads: Sequence = ()) -> list[dict]:
    """Segment image files with ``protocol``: a palette mask of class ids and an overlay per
    image, named and checked by :func:`plan_infer_outputs` (``reads``: the other files the job
    read) before the first is written, each written atomically, and recorded in
    ``out_dir/tscd-infer.json`` (:class:`InferRecord`; written at the end, also of a failed run,
    and every :data:`RECORD_EVERY_S` seconds). Returns per image its path, mask and overlay
    paths and the classes it shows."""
    model.eval()
    plan, record = plan_infer_outputs(paths, out_dir, reads)
    to_tensors = EvalTransform(mean, std)
    results, saved = [], time.monotonic()
    try:
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
            record.add(path, mask_path, overlay_path, present)
            logger.info("%s: %s", path, ", ".join(present) or "background only")
            results.append({"path": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
                            "classes": present})
            if time.monotonic() - saved >= RECORD_EVERY_S:
                record.save()
                saved = time.monotonic()
    finally:
        if results:
            record.save()
    logger.info("masks and overlays of %d images in %s, listed in %s", len(results), out_dir, record.path)
    return results
