"""Your own tagged images: the ``folder`` dataset.

Layout under ``root``::

    images/<name>.jpg | .jpeg | .png    the images
    classes.txt                          foreground class names, one per line (background is class 0)
    train.csv, val.csv, <split>.csv      header ``image,labels``; ``labels`` = class names joined by ";"
    masks/<name>.png                     optional: class ids (0 background, 255 ignore), for evaluation

``image`` is a path relative to ``images/`` (``cat1.jpg``, ``2024/cat1.jpg``) or that without
its suffix (``cat1``; an error when ``cat1.jpg`` and ``cat1.png`` both exist); a row whose path
is absolute or leads out of ``images/`` is refused (symbolic links inside are followed;
:mod:`tscd.data.base` says why). Text files are UTF-8 with or without a BOM. K
(``num_classes``) is 1 + the classes of ``classes.txt``. Everything is checked when the dataset
is built: an unknown class name, a missing or unreadable image, a row without labels, a
duplicate row, or a mask that cannot be read, has another size than its image or a class beyond
K raises :class:`DatasetError` naming the file and line. Images without a mask evaluate as
all-ignore.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .base import DatasetError, MaskFolderDataset, inside, read_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


#: What separates the labels of a split CSV: its cells, and the class names within the labels cell.
LABEL_SEPARATORS = (",", ";")


def read_classes(path: Path) -> tuple[str, ...]:
    """Foreground class names of ``classes.txt`` (blank lines skipped): each listed once, none
    named ``background``, none holding a :data:`LABEL_SEPARATORS` character (the split CSVs
    could not name it)."""
    if not path.is_file():
        raise DatasetError(f"class list not found: {path} (one foreground class name per line)")
    names, seen = [], {}
    for lineno, line in enumerate(read_text(path, "class list").splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name.lower() == "background":
            raise DatasetError(f"{path} line {lineno}: 'background' is implicit (class 0); list only the "
                               "foreground classes")
        separator = next((c for c in LABEL_SEPARATORS if c in name), None)
        if separator is not None:
            raise DatasetError(f"{path} line {lineno}: class '{name}' contains '{separator}', which separates the "
                               f"labels in the split CSVs (image,labels with the names joined by ';'): rename it")
        if name in seen:
            raise DatasetError(f"{path} line {lineno}: class '{name}' is already listed on line {seen[name]}")
        seen[name] = lineno
        names.append(name)
    if not names:
        raise DatasetError(f"{path} lists no class")
    return tuple(names)


def folder_root(root) -> Path:
    """The dataset root ``root``, which must hold ``images/``."""
    if root is None:
        raise DatasetError("the folder dataset needs a root: pass --data-root DIR (or data.root=DIR)")
    root = Path(root)
    if not (root / "images").is_dir():
        raise DatasetError(f"folder dataset root {root} has no images/ folder (see tscd.data.folder)")
    return root


class FolderDataset(MaskFolderDataset):
    """Images with image-level tags from a CSV file; items as :class:`tscd.data.base.MaskFolderDataset`.

    ``num_classes`` = 1 + the number of lines of ``classes.txt``. ``check`` (default True):
    read every file now (:meth:`MaskFolderDataset.check`).
    """

    def __init__(self, root, split: str = "train", train: bool = True, transform=None, seed: int = 0,
                 check: bool = True):
        root = folder_root(root)
        foreground = read_classes(root / "classes.txt")
        self.class_names = ("background",) + foreground
        self.num_classes = len(self.class_names)
        self.classes_from = f"{root / 'classes.txt'} (with the background, class 0)"
        self.split_file = root / f"{split}.csv"
        self.files: dict[str, Path] = {}
        self.lines: dict[str, int] = {}
        labels = self._read_split(root, {n: i for i, n in enumerate(foreground)})
        super().__init__(root, split, list(self.files), train, transform, labels, seed, str(self.split_file))
        self.sources = (root / "classes.txt", self.split_file)
        if check:
            self.check()

    @staticmethod
    def _find_images(path: Path) -> list[Path]:
        """[``path``] when it is an image file, else the files ``path`` + an image suffix (one
        per file: on a case-insensitive file system ``a.jpg`` and ``a.JPG`` are one)."""
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            return [path]
        found: dict[tuple[int, int], Path] = {}
        for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
            candidate = path.with_name(path.name + suffix)
            if candidate.is_file():
                st = candidate.stat()
                found.setdefault((st.st_dev, st.st_ino), candidate)
        return list(found.values())

    def _read_split(self, root: Path, index: dict[str, int]) -> dict[str, np.ndarray]:
        """Image-level labels name -> (K−1,) of the split CSV; fills ``self.files`` and ``self.lines``."""
        path, images = self.split_file, root / "images"
        if not path.is_file():
            raise DatasetError(f"split file not found: {path} (columns image,labels)")
        labels: dict[str, np.ndarray] = {}
        rows = csv.reader(io.StringIO(read_text(path, "split file"), newline=""))
        header = [h.strip().lower() for h in next(rows, [])]
        if header[:2] != ["image", "labels"]:
            raise DatasetError(f"{path} line 1: the header must be 'image,labels', got {','.join(header)!r}")
        for row in rows:
            lineno = rows.line_num
            if not any(cell.strip() for cell in row):
                continue
            entry = row[0].strip()
            tags = [t.strip() for t in ";".join(row[1:]).split(";") if t.strip()]
            where = f"{path} line {lineno}"
            if not tags:
                raise DatasetError(f"{where}: image '{entry}' has no labels (class names separated by ';')")
            unknown = [t for t in tags if t not in index]
            if unknown:
                raise DatasetError(f"{where}: unknown class '{unknown[0]}' (classes.txt lists "
                                   f"{', '.join(index)})")
            confined = inside(images, entry)
            if confined is None:
                raise DatasetError(f"{where}: image '{entry}' is outside {images} (an absolute path or '..')")
            found = self._find_images(confined)
            if not found:
                raise DatasetError(f"{where}: image '{entry}' not found in {images}")
            if len(found) > 1:
                raise DatasetError(f"{where}: image '{entry}' is ambiguous, {len(found)} files fit it: "
                                   f"{', '.join(map(str, found))}; write the file's name with its suffix")
            image = found[0]
            name = image.stem
            if name in self.lines:
                raise DatasetError(f"{where}: image '{name}' is already listed on line {self.lines[name]}")
            vector = np.zeros(len(index), np.float32)
            vector[[index[t] for t in tags]] = 1.0
            labels[name], self.lines[name], self.files[name] = vector, lineno, image
        if not labels:
            raise DatasetError(f"{path} lists no image")
        return labels

    def image_path(self, name: str) -> Path:
        return self.files[name]

    def mask_path(self, name: str) -> Path:
        return self.root / "masks" / f"{name}.png"

    def has_mask(self, name: str) -> bool:
        return self.mask_path(name).is_file()

    def where(self, name: str) -> str:
        return f"{self.split_file} line {self.lines[name]}: "
