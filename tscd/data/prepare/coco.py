"""``tscd data coco DIR``: COCO 2014 with semantic masks, laid out as ``--config coco`` reads it.

From ``train2014.zip``, ``val2014.zip`` and ``annotations_trainval2014.zip`` it writes, under
``DIR/coco2014`` (the ``--data-root`` to pass, printed as the last line)::

    JPEGImages/<name>.jpg                 the images with at least one annotation: 82,081 train, 40,137 val
    SegmentationClass/<name>.png          palette PNGs, 0 = background, 1..80 the categories
    ImageSets/Segmentation/train.txt      82,081 names (sorted); val.txt 40,137
    cls_labels.json                       image-level labels: the classes present in each mask
    annotations/instances_{train,val}2014.json   the instance annotations they were made from

**The masks** follow the WSSS lineage's conversion (AFA's and ToCo's READMEs point to
alicranck/coco2voc for it; the masks they share were made with it): pycocotools decodes every
annotation of an image (polygons merged, RLE and uncompressed RLE), sorts them by ``area``, the
smallest first, and a pixel keeps the first instance that covers it, so **the smaller instance
wins where instances overlap**; **crowd regions** (``iscrowd=1``) are painted with their category
like any instance, not ignored. Images without any annotation are left out, as there. Categories
become their rank 1..80 in COCO's id order (:data:`tscd.data.coco.COCO_CATEGORIES`, the order of
ToCo's class list; coco2voc itself writes the raw ids 1..90, which an 81-class model cannot read).
One addition: where a JPEG carries an EXIF rotation, its mask (drawn on the pixels as stored) is
turned the same way, since tscd shows images upright.

Memory: one split's annotation file is loaded by pycocotools (about 2 GB for train2014); masks
are made, written and forgotten one image at a time.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np

from ..base import DatasetError
from ..coco import COCO_CATEGORIES, COCO_CLASSES, COCODataset
from .archives import (
    STATE_DIR,
    OutputTree,
    PrepareError,
    UsageError,
    VerifiedArchives,
    check_room,
    earlier_run,
    fetch,
    open_zip,
    reading,
    write_atomic,
)
from .images import classes_of, encode_mask, jpeg_header, parse_classes, upright
from .voc import _folders

logger = logging.getLogger("tscd.data.prepare")

ANNOTATIONS = "annotations_trainval2014.zip"
IMAGES = {"train": "train2014.zip", "val": "val2014.zip"}
#: The dataset root inside DIR (the --data-root of --config coco).
ROOT = Path("coco2014")
LABEL_FILE = "cls_labels.json"
#: split -> (number of names, sha256 of the sorted names one per line): AFA's datasets/coco lists
#: (rulixiang/afa@adcfa29), the images of COCO 2014 with at least one annotation.
EXPECTED = {"train": (82081, "2985c4b482da49946f2e5dfb9a12f44bee154529cd601f63b1105942d763a8f9"),
            "val": (40137, "6f65de2c151265166b98f2202c9822d6a81f607f2c39e39c01d279d9de690c1a")}
#: Bytes written: the annotated images (~164 kB each), their masks and the two annotation files.
OUTPUT_BYTES = 21_500_000_000
_RANK = {category: k for k, (category, _) in enumerate(COCO_CATEGORIES, 1)}


def _pycocotools():
    try:
        from pycocotools import mask
        from pycocotools.coco import COCO
    except ImportError:
        raise UsageError("tscd data coco needs pycocotools to read COCO's annotations: pip install pycocotools (or "
                         "pip install 'tscd[prepare]')") from None
    return COCO, mask


def _check_categories(coco, path: Path) -> None:
    found = tuple(sorted((c["id"], c["name"]) for c in coco.dataset.get("categories", [])))
    if found != COCO_CATEGORIES:
        raise PrepareError(f"{path} does not have COCO's 80 categories (found {len(found)}, e.g. "
                           f"{found[:2]}): it is not the official annotation file; download {ANNOTATIONS} again")


def _rle(ann: dict, h: int, w: int, mask_utils):
    """An annotation's segmentation as one RLE: polygons merged, uncompressed RLE compressed (coco2voc's annToRLE)."""
    segm = ann["segmentation"]
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, h, w)
    return segm


def semantic_mask(coco, image: dict, mask_utils, what: str) -> np.ndarray:
    """(H, W) uint8 classes 0..80 of one image: the smallest instance wins, crowds count (module doc)."""
    h, w = image["height"], image["width"]
    anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image["id"])), key=lambda a: a["area"])
    seg = np.zeros((h, w), np.uint8)
    for ann in anns:
        if ann["category_id"] not in _RANK:
            raise PrepareError(f"{what}: annotation {ann.get('id')} has category {ann['category_id']}, not one of "
                               "COCO's 80")
        try:
            m = mask_utils.decode(_rle(ann, h, w, mask_utils))
        except Exception as err:  # noqa: BLE001 - a malformed segmentation, named
            raise PrepareError(f"{what}: the segmentation of annotation {ann.get('id')} cannot be decoded ({err})") \
                from None
        seg[(seg == 0) & (m.reshape(h, w) > 0)] = _RANK[ann["category_id"]]
    return seg


def _convert_split(split: str, zip_path: Path, json_path: Path, tree: OutputTree) -> dict[str, str]:
    """The images of ``split`` with at least one annotation, and their masks; returns name -> classes."""
    from tqdm import tqdm

    COCO, mask_utils = _pycocotools()
    zf = open_zip(zip_path)  # a damaged archive is found before the annotations are loaded
    logger.info("reading %s", json_path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(str(json_path))
    except (ValueError, KeyError, TypeError) as err:
        zf.close()
        raise PrepareError(f"{json_path} is not a COCO annotation file ({err}); download {ANNOTATIONS} again") \
            from None
    _check_categories(coco, json_path)
    pattern = re.compile(rf"COCO_{split}2014_\d{{12}}\.jpg")
    annotated = {a["image_id"] for a in coco.dataset.get("annotations", [])}
    unknown = sorted(annotated - set(coco.imgs))
    if unknown:
        zf.close()
        raise PrepareError(f"{json_path} annotates image {unknown[0]}, which it does not list: it is not the official "
                           f"annotation file; download {ANNOTATIONS} again")
    images = sorted((coco.imgs[i] for i in annotated), key=lambda im: im["file_name"])
    classes, turned = {}, 0
    with zf, reading(zip_path), warnings.catch_warnings():
        # pycocotools' decode warns under NumPy 2 (its __array__ takes no copy keyword); harmless
        warnings.simplefilter("ignore", DeprecationWarning)
        for image in tqdm(images, desc=f"COCO {split}", unit=" images", disable=None, leave=False):
            file_name = image["file_name"]
            if not pattern.fullmatch(file_name):
                raise PrepareError(f"{json_path}: image {image['id']} has the file name '{file_name[:60]}', not one "
                                   f"of COCO {split}2014's")
            name = file_name[:-4]
            jpeg, png = f"{ROOT}/JPEGImages/{name}.jpg", f"{ROOT}/SegmentationClass/{name}.png"
            present = tree.done(png)
            if present is None or tree.done(jpeg) is None:
                try:
                    data = zf.read(f"{split}2014/{file_name}")
                except KeyError:
                    raise PrepareError(f"{zip_path} has no {split}2014/{file_name}: it is not the official archive "
                                       "or it is truncated; download it again") from None
                width, height, orientation = jpeg_header(data, f"{zip_path}: {file_name}")
                if (width, height) != (image["width"], image["height"]):
                    raise PrepareError(f"{zip_path}: {file_name} is {width}×{height}, its annotations say "
                                       f"{image['width']}×{image['height']}: the archives do not belong together")
                seg = upright(semantic_mask(coco, image, mask_utils, f"{json_path}: {file_name}"), orientation)
                turned += orientation != 1
                present = classes_of(seg)
                tree.write(jpeg, data)
                tree.write(png, encode_mask(seg), present)
            classes[name] = present
    if turned:
        logger.info("COCO %s: %d images carry an EXIF rotation; their masks were turned with them", split, turned)
    return classes


def _extract_annotations(path: Path, tree: OutputTree) -> dict[str, Path]:
    out = {}
    with open_zip(path) as zf, reading(path):
        for split in IMAGES:
            member = f"annotations/instances_{split}2014.json"
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise PrepareError(f"{path} has no {member}: it is not {ANNOTATIONS} or it is truncated; download it "
                                   "again") from None
            rel = f"{ROOT}/{member}"
            tree.copy(rel, lambda: zf.open(info), info.file_size)
            out[split] = tree.root / rel
    return out


def list_digest(names) -> str:
    return hashlib.sha256("".join(f"{n}\n" for n in sorted(names)).encode()).hexdigest()


def check_prepared(root: Path, official: bool) -> dict[str, int]:
    """The list sizes and digests (errors when ``official``, warnings otherwise), then
    ``--config coco``'s datasets built on the tree: every val mask and every image read."""
    sizes = {}
    for split, (count, digest) in EXPECTED.items():
        path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        names = path.read_text().split()
        sizes[split] = len(names)
        if len(names) != count or list_digest(names) != digest:
            message = (f"{path} has {len(names):,} names, not the {count:,} of the standard list"
                       if len(names) != count else f"{path} is not the standard {split} list (sha256 differs)")
            if official:
                raise PrepareError(f"{message}: please report this with the output of the run")
            logger.warning("%s (archives not verified: --no-verify)", message)
    for split, train in (("val", False), ("train", True)):
        try:
            COCODataset(root, split, train=train, label_file=root / LABEL_FILE)
        except DatasetError as err:
            raise PrepareError(f"the prepared {split} split does not read as --config coco: {err}") from None
    return sizes


def prepare_coco(directory, source=None, mirror: str | None = None, verify: bool = True) -> Path:
    """Prepare COCO 2014 under ``directory`` (module docstring); returns the dataset root.

    Arguments and errors as :func:`tscd.data.prepare.voc.prepare_voc`; the archives are
    ``train2014.zip``, ``val2014.zip`` and ``annotations_trainval2014.zip``.
    """
    directory, source = _folders(directory, source)
    _pycocotools()
    state, root = directory / STATE_DIR, directory / ROOT
    marker = state / "coco.done"
    with OutputTree(directory, state, "coco") as tree:
        summary = earlier_run(tree, marker, root, check_prepared)
        if summary is not None:
            _report(root, summary)
            return root
        names = [ANNOTATIONS, *IMAGES.values()]
        check_room(directory, tree, names, source, OUTPUT_BYTES, "tscd data coco")
        verified = VerifiedArchives(state)
        paths = {n: fetch(n, directory, source, mirror, verify, verified) for n in names}
        jsons = _extract_annotations(paths[ANNOTATIONS], tree)
        classes, lists = {}, {}
        for split, archive in IMAGES.items():
            found = _convert_split(split, paths[archive], jsons[split], tree)
            lists[split] = sorted(found)
            classes.update(found)
            tree.write(f"{ROOT}/ImageSets/Segmentation/{split}.txt", "".join(f"{n}\n" for n in lists[split]).encode())
        lines = []
        for name in sorted(classes):
            present = parse_classes(classes[name])
            lines.append(f'"{name}": [{", ".join("1" if k in present else "0" for k in range(1, 81))}]')
        tree.write(f"{ROOT}/{LABEL_FILE}", ("{\n" + ",\n".join(lines) + "\n}\n").encode())
        sizes = check_prepared(root, verify)
        summary = {"official": verify, **sizes}
        write_atomic(marker, json.dumps(summary, indent=1).encode())
    _report(root, summary)
    return root


def _report(root: Path, summary: dict) -> None:
    logger.info("COCO 2014 ready in %s: train %s images, val %s images, %d classes (background + COCO's 80), masks "
                "in SegmentationClass/, labels in %s", root, f"{summary['train']:,}", f"{summary['val']:,}",
                len(COCO_CLASSES), LABEL_FILE)
    if not summary.get("official", True):
        logger.warning("the archives were not verified (--no-verify): the numbers may not be comparable to the paper's")
    logger.info("train: tscd train --config coco --data-root %s data.label_file=%s", root, root / LABEL_FILE)
