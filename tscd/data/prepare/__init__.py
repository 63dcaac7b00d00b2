"""``tscd data voc|coco DIR``: the paper's datasets from their official archives, as tscd reads them.

* :func:`prepare_voc` (:mod:`tscd.data.prepare.voc`): VOC 2012 + SBD → ``DIR/VOCdevkit/VOC2012``
  with ``SegmentationClassAug``, ``train_aug`` (10,582) and ``val`` (1,449), and the label file.
* :func:`prepare_coco` (:mod:`tscd.data.prepare.coco`): COCO 2014 → ``DIR/coco2014`` with the
  semantic masks of the lineage's conversion, ``train`` (82,081) and ``val`` (40,137), and the label file.

Archives are downloaded (resumably, checksummed) or read from ``--from FOLDER``
(:mod:`tscd.data.prepare.archives`, whose :data:`~tscd.data.prepare.archives.ARCHIVES` lists
them). Runs are idempotent and resumable, and never replace a file they did not write.
Needs scipy (VOC) and pycocotools (COCO): ``pip install 'tscd[prepare]'``.
"""
from __future__ import annotations

from pathlib import Path

from .archives import ARCHIVES, PrepareError, UsageError
from .coco import prepare_coco
from .voc import prepare_voc

DATASETS = {"voc": prepare_voc, "coco": prepare_coco}


def prepare(dataset: str, directory, source=None, mirror: str | None = None, verify: bool = True) -> Path:
    """Prepare ``dataset`` (``"voc"`` or ``"coco"``) under ``directory``; returns the ``--data-root``.

    Args:
        dataset: ``"voc"`` or ``"coco"``.
        directory: DIR, made if missing; nothing already in it is replaced or deleted.
        source: the folder holding the archives under their official names (``--from``), or
            None to download them into ``DIR/downloads``.
        mirror: a base URL to download the archives from instead of their official hosts.
        verify: check each archive's size and MD5 (False: ``--no-verify``).

    Returns:
        The dataset root to pass as ``--data-root``.

    Raises:
        UsageError: the command cannot run as asked (the CLI exits 2).
        PrepareError: an archive or download cannot be used (the CLI exits 1).
    """
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset '{dataset}': tscd data prepares {', '.join(DATASETS)}")
    return DATASETS[dataset](directory, source, mirror, verify)


__all__ = ["ARCHIVES", "DATASETS", "PrepareError", "UsageError", "prepare", "prepare_coco", "prepare_voc"]
