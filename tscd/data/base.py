"""Reading a dataset's files, and the datasets stored as image files with masks (VOC, COCO, folder).

The rules every file-based dataset follows:

* **Text** (name lists, ``classes.txt``, CSV, JSON label files) is UTF-8, with or without a byte
  order mark (Excel's "CSV UTF-8" writes one). Any other encoding is refused naming the file,
  the line and the byte offset: Latin-1, cp1252 and the other 8-bit encodings cannot be told
  apart from the bytes, and a guessed class name (``cafÃ©``) would be silently wrong.
* **Paths** read from a text file stay inside the folder they are looked up in: a name is
  normalised lexically (``sub/../a.png`` is ``a.png``) and refused, naming the file and line,
  when it is absolute or leaves its folder (``../../x.png``). Symbolic links inside the dataset
  are followed wherever they point: a dataset whose ``JPEGImages`` links to shared storage is
  common, and whoever can place a link in the dataset can as well place the file itself; what
  is confined is the text, which may come from elsewhere (a downloaded CSV).
* **Images** are what a viewer shows: the EXIF orientation is applied (to masks too), 16-bit
  greyscale is scaled to 8 bits (``round(v / 257)``), everything else converted to RGB.
* **Masks** are palette or greyscale PNGs (8 or 16 bit) of class indices, ``IGNORE_INDEX`` = ignore.
* **Up front**: :meth:`MaskFolderDataset.check` reads every file once when a dataset is built
  (see there), so a bad file stops the run before the first iteration, not at the first evaluation.

A file that cannot be used raises :class:`DatasetError` naming it, also from ``__getitem__``
(a DataLoader worker passes the message on).
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .. import config
from ..constants import IGNORE_INDEX
from .transforms import EvalTransform, TrainTransform


class DatasetError(ValueError):
    """A dataset root, name list, image or mask that cannot be used (the message names the file)."""


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path`` (a leading BOM dropped; :func:`tscd.config.read_text`);
    ``what`` names the file in a :class:`DatasetError`."""
    return config.read_text(path, what, DatasetError)


def inside(folder: Path, entry: str) -> Path | None:
    """``folder / entry`` normalised, or None when ``entry`` is absolute, leads out of ``folder`` or is ``.``."""
    relative = os.path.normpath(entry)
    if os.path.isabs(relative) or relative in (os.curdir, os.pardir) or relative.startswith(os.pardir + os.sep):
        return None
    return Path(folder) / relative


def read_names(path: Path) -> list[str]:
    """Image names, one per line (the first whitespace-separated field; blank lines skipped).

    A name is a path relative to the dataset's folders: one that is absolute or contains
    enough ``..`` to leave them raises, naming the line.
    """
    if not path.is_file():
        raise DatasetError(f"name list not found: {path}")
    names = []
    for lineno, line in enumerate(read_text(path, "name list").splitlines(), 1):
        if not line.strip():
            continue
        name = line.split()[0]
        if inside(Path("."), name) is None:
            raise DatasetError(f"{path} line {lineno}: name '{name}' leads outside the dataset (an absolute path "
                               "or '..')")
        names.append(name)
    if not names:
        raise DatasetError(f"name list is empty: {path}")
    return names


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Whatever Pillow raises on a missing, broken or oversized file, as a DatasetError naming it."""
    try:
        yield
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read {what} {path}: {err}") from None


_ORIENTATION = 0x0112  # EXIF tag; values 5..8 turn the image by 90°
_END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}  # a complete file's last bytes
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # greyscale modes of 16-bit PNGs ("I": older Pillow)
MASK_MODES = ("P", "L") + _SIXTEEN_BIT


def _show(im: Image.Image) -> Image.Image:
    """Load ``im`` and turn it as its EXIF orientation says (in place)."""
    im.load()
    if im.getexif().get(_ORIENTATION, 1) != 1:
        ImageOps.exif_transpose(im, in_place=True)
    return im


def load_image(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB as displayed (EXIF orientation applied; 16-bit greyscale scaled to 8
    bits); a missing or broken file raises DatasetError naming it."""
    with _reading(path, "image"), Image.open(path) as im:
        _show(im)
        if im.mode not in _SIXTEEN_BIT:
            return np.array(im.convert("RGB"))
        grey = np.asarray(im).astype(np.int64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise DatasetError(f"image {path} is a {im.mode} image with values outside 0..65535")
        grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)


@contextmanager
def _open_mask(path: Path) -> Iterator[Image.Image]:
    """The decoded mask image of ``path``, EXIF orientation applied; its mode must be one of :data:`MASK_MODES`."""
    with _reading(path, "mask"), Image.open(path) as im:
        if im.mode not in MASK_MODES:
            raise DatasetError(f"mask {path} must be a palette or greyscale PNG of class indices, got mode {im.mode}")
        yield _show(im)


def load_mask(path: Path) -> np.ndarray:
    """int64 (H, W) class indices (palette or greyscale PNG, 8 or 16 bit; ``IGNORE_INDEX`` = ignore)."""
    with _open_mask(path) as im:
        return np.array(im).astype(np.int64)


def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """(H, W) of the image as displayed, from its header; a JPEG or PNG must be complete.

    A truncated file passes a header check, so the last bytes are read too: a JPEG must end
    with its end-of-image marker, a PNG with its IEND chunk. A file that does not (trailing
    bytes some cameras append, or a truncation) is decoded to tell, which raises if truncated.
    A PNG's EXIF orientation counts only when it precedes the pixels (the rare eXIf chunk after
    them would need a decode; a mask that then does not fit shows when the item is read).
    """
    with _reading(path, what), Image.open(path) as im:
        w, h = im.size
        # the base class's getexif reads what the header held; PNG's own would decode the pixels first
        if Image.Image.getexif(im).get(_ORIENTATION, 1) in (5, 6, 7, 8):
            w, h = h, w
        marker = _END_MARKERS.get(im.format)
        if marker is not None:
            with open(path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - len(marker)))
                complete = f.read() == marker
            if not complete:
                im.load()
    return h, w


def mask_classes(im: Image.Image, path: Path, num_classes: int, classes_from: str) -> np.ndarray:
    """(K,) bool: which classes the decoded mask ``im`` holds; a value outside 0..K−1 and
    ``IGNORE_INDEX`` raises naming ``path`` (``classes_from`` says where K comes from).
    8-bit masks are counted by Pillow's histogram, without an array."""
    if im.mode in ("P", "L"):
        counts = np.array(im.histogram())
    else:
        values = np.asarray(im).ravel()
        if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint16).max):
            bad = values.min() if values.min() < 0 else values.max()
            raise DatasetError(f"mask {path} has class {int(bad)}, but {classes_from} defines classes "
                               f"0..{num_classes - 1} ({IGNORE_INDEX} = ignore)")
        counts = np.bincount(values)
    padded = np.zeros(max(counts.size, num_classes, IGNORE_INDEX + 1), np.int64)
    padded[: counts.size] = counts
    padded[IGNORE_INDEX] = 0
    beyond = np.flatnonzero(padded[num_classes:])
    if beyond.size:
        raise DatasetError(f"mask {path} has class {num_classes + int(beyond[0])}, but {classes_from} defines "
                           f"classes 0..{num_classes - 1} ({IGNORE_INDEX} = ignore)")
    return padded[:num_classes] > 0


class MaskFolderDataset(torch.utils.data.Dataset):
    """Images + per-pixel masks listed by name; image-level labels from a label file or the masks.

    Subclasses set ``num_classes``, ``class_names``, the path layout (:meth:`image_path`,
    :meth:`mask_path`) and :attr:`sources`, the text files they read (name lists, CSVs, class
    and label files: what no job may write over). Items as :class:`tscd.data.synthetic.SyntheticDataset`. ``labels`` is
    a dict name -> (K−1,) vector read from ``labels_from`` (a file, named in errors), or None
    (labels from the masks). Subclasses run :meth:`check` once built, unless told not to.
    """

    num_classes: int
    class_names: tuple[str, ...]
    classes_from = "the dataset"  # where K comes from, for messages

    def __init__(self, root, split: str, names: list[str], train: bool, transform=None, labels: dict | None = None,
                 seed: int = 0, labels_from: str = "the label file"):
        self.root, self.split, self.names, self.train = Path(root), split, names, train
        self.transform = transform or (TrainTransform(320, (0.5, 2.0)) if train else EvalTransform())
        self.labels, self.labels_from, self.seed = labels, labels_from, int(seed)
        self.sizes: dict[str, tuple[int, int]] = {}  # name -> (H, W) of the image, filled by check()
        self.sources: tuple[Path, ...] = ()  # the text files it was read from (lists, labels): set by subclasses

    def image_path(self, name: str) -> Path:
        raise NotImplementedError

    def mask_path(self, name: str) -> Path:
        raise NotImplementedError

    def has_mask(self, name: str) -> bool:
        """Whether ``name`` has a mask (every image here; the folder dataset's are optional)."""
        return True

    def where(self, name: str) -> str:
        """Where ``name`` is listed, as a message prefix (``"val.csv line 3: "``), or ``""``."""
        return ""

    def __len__(self) -> int:
        return len(self.names)

    def _label(self, name: str) -> np.ndarray:
        """The (K−1,) float32 label of ``name`` from :attr:`labels`, checked."""
        if name not in self.labels:
            raise DatasetError(f"{self.labels_from} has no label for '{name}'")
        vector = self.labels[name]
        if vector.shape != (self.num_classes - 1,):
            raise DatasetError(f"{self.labels_from}: the label of '{name}' has {vector.size} entries, expected "
                               f"{self.num_classes - 1} (one per foreground class)")
        return vector

    def _mask(self, name: str, size: tuple[int, int], as_array: bool) -> tuple[np.ndarray | None, np.ndarray]:
        """(int64 (H, W) mask if ``as_array``, (K,) bool classes present) of ``name``, checked
        against the image size (H, W) and the class count."""
        path = self.mask_path(name)
        with _open_mask(path) as im:
            if im.size[::-1] != size:
                raise DatasetError(f"{self.where(name)}mask {path} is {im.size[::-1]}, its image "
                                   f"{self.image_path(name)} is {size}")
            present = mask_classes(im, path, self.num_classes, self.classes_from)
            return (np.array(im).astype(np.int64) if as_array else None), present

    def _check_one(self, name: str, read_masks: bool) -> tuple[tuple[int, int], np.ndarray | None]:
        size = image_size(self.image_path(name))
        present = self._mask(name, size, as_array=False)[1] if read_masks and self.has_mask(name) else None
        if self.labels is not None:
            self._label(name)
        return size, present

    def check(self) -> None:
        """Read every file once: each image's header and last bytes (:func:`image_size`), and,
        where masks are used (evaluation, or labels from the masks), each mask whole: readable,
        the image's size, values in 0..K−1 or ``IGNORE_INDEX``; each name's label in the label
        file. Files are read by a few threads (Pillow decodes without the GIL). Labels taken
        from the masks are kept, so training does not decode the masks again; the images' sizes
        are kept in :attr:`sizes` (name -> (H, W) as displayed).

        Raises DatasetError with the first bad file (in list order) and how many more there are.
        """
        read_masks = not self.train or self.labels is None
        errors, present = [], {}

        def one(name):
            try:
                return self._check_one(name, read_masks), None
            except DatasetError as err:
                return (None, None), err

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            for name, ((size, classes), error) in zip(self.names, pool.map(one, self.names)):
                if error is not None:
                    errors.append(error)
                present[name] = classes
                self.sizes[name] = size
        if errors:
            more = len(errors) - 1
            suffix = f" (and {more} more bad file{'s' * (more > 1)} in the {self.split} split)" if more else ""
            raise DatasetError(f"{errors[0]}{suffix}")
        if self.labels is None:
            self.labels = {name: classes[1:].astype(np.float32) for name, classes in present.items()}

    def __getitem__(self, key):
        index, aug_seed = key if isinstance(key, tuple) else (key, key)
        name = self.names[int(index)]
        img = load_image(self.image_path(name))
        need_mask = (not self.train or self.labels is None) and self.has_mask(name)
        mask, present = self._mask(name, img.shape[:2], as_array=not self.train) if need_mask else (None, None)
        label = self._label(name) if self.labels is not None else present[1:].astype(np.float32)
        if self.train:
            fields = self.transform(img, None, np.random.default_rng([self.seed, 7, int(aug_seed)]))
        else:
            if mask is None:  # no mask: every pixel is ignored in evaluation
                mask = np.full(img.shape[:2], IGNORE_INDEX, np.int64)
            fields = self.transform(img, mask)
        return {**fields, "label": torch.from_numpy(label.copy()), "name": name}
