"""The files a job will write, checked before it writes any: never over one of its inputs (the
files it reads: images, masks, a dataset's lists and label files, checkpoint, config), never two
outputs on one path, never into the folders that hold a dataset's images and masks.

Paths are compared as the files they are, not as strings: an output that exists is matched
to an input by device and inode (through symbolic links, hard links and case-insensitive file
systems); outputs that do not exist yet are matched by their resolved path, letter case
ignored (on macOS and Windows ``Photo.png`` and ``photo.png`` are one file).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..data.base import MaskFolderDataset


class OutputConflictError(ValueError):
    """Planned outputs that would overwrite an input, each other or a dataset's files (the message
    names the files)."""


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file or folder at ``path`` (links followed); None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def dataset_files(dataset) -> list[Path]:
    """The images and ground-truth masks a dataset reads from disk (masks that are absent included:
    their folder is still the dataset's); [] for a dataset that reads no files (synthetic)."""
    if not isinstance(dataset, MaskFolderDataset):
        return []
    return [path for name in dataset.names for path in (dataset.image_path(name), dataset.mask_path(name))]


def check_output_folder(folder, what: str = "output folder") -> None:
    """Raise :class:`OutputConflictError` unless ``folder`` is a folder or can be made one:
    neither it nor a folder above it may be a file. ``what`` names the folder in the message."""
    folder = Path(folder)
    for place in (folder, *folder.parents):
        if place.exists():
            if not place.is_dir():
                where = "" if place == folder else f": {place}"
                raise OutputConflictError(f"{what} {folder}{where} is a file")
            return


def check_outputs(outputs: Sequence[tuple[Path, str]], inputs: Iterable = (), datasets: Iterable = (),
                  existing: Callable[[Path], str | None] | None = None) -> None:
    """Raise :class:`OutputConflictError` unless every planned output is safe to write.

    outputs: (path, what is written there, e.g. "the mask of photo.jpg"). Refused: two outputs
    on one path; an existing folder where a file is to go; an output that is one of ``inputs``
    (files the job reads: checkpoint, config, images) or of the files of ``datasets`` (their
    images, masks and ``sources``: name lists, CSVs, class and label files); an output in a
    folder holding a dataset's images or masks; with ``existing``, a file already at an output
    path for which ``existing(path)`` says why it must stay (None: the job may replace it;
    without ``existing`` every such file may be replaced). Nothing is written; the message names
    the first conflict.
    """
    datasets = list(datasets)
    own = [path for dataset in datasets for path in dataset_files(dataset)]
    read: dict[tuple[int, int], Path] = {}
    for path in [*map(Path, inputs), *own, *(Path(p) for d in datasets for p in getattr(d, "sources", ()))]:
        ident = file_identity(path)
        if ident is not None:
            read.setdefault(ident, path)
    protected = {ident for ident in map(file_identity, {path.parent for path in own}) if ident is not None}
    parents: dict[Path, tuple[Path, tuple[int, int] | None]] = {}  # folder -> (resolved, identity)
    planned: dict[str, str] = {}  # case-folded resolved path -> what goes there
    for path, what in outputs:
        path = Path(path)
        if path.parent not in parents:
            parents[path.parent] = (path.parent.resolve(), file_identity(path.parent))
        parent, parent_ident = parents[path.parent]
        key = str(parent / path.name).casefold()
        if key in planned:
            raise OutputConflictError(f"{path} would be written twice: {planned[key]} and {what} "
                                      f"(rename one of them or write them to separate output folders)")
        planned[key] = what
        if parent_ident is not None and parent_ident in protected:
            raise OutputConflictError(f"{path} ({what}) would be written into the dataset folder {path.parent} "
                                      f"(its images or masks): choose another output folder")
        ident = file_identity(path)
        if ident is None:
            continue
        if ident in read:
            raise OutputConflictError(f"{path} ({what}) would overwrite the input {read[ident]}: choose another "
                                      f"output folder")
        if path.is_dir():
            raise OutputConflictError(f"{path} ({what}) is an existing folder")
        why = existing(path) if existing is not None else None
        if why is not None:
            raise OutputConflictError(f"{path} ({what}) already exists and {why}: move it away or choose another "
                                      f"output folder")
