"""Tiny archives in the official layouts, for the tests of ``tscd data``: VOC 2012's trainval tar,
SBD's benchmark.tgz (``cls/*.mat`` in SBD's GTcls struct, written with scipy) and COCO 2014's
three zips (instances JSON with polygons, RLE and crowd regions)."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from tscd.data.coco import COCO_CATEGORIES
from tscd.data.prepare import ARCHIVES
from tscd.data.prepare.images import voc_palette

# ---- VOC 2012 + SBD ---------------------------------------------------------------------------
VOC_TRAIN = ["2007_000032", "2007_000039"]          # VOC's segmentation train
VOC_VAL = ["2007_000033", "2007_000042"]            # VOC's segmentation val
SBD_TRAIN = ["2007_000032", "2008_000002", "2008_000003"]
SBD_VAL = ["2007_000033", "2008_000008"]
UNUSED = ["2009_000001"]                            # in VOC's archive, in no split tscd needs
TRAIN_AUG = sorted({*VOC_TRAIN, *SBD_TRAIN, *SBD_VAL} - set(VOC_VAL))
VAL = sorted(VOC_VAL)
#: name -> (height, width, the classes drawn in its mask, the classes named in its XML)
VOC_IMAGES = {
    "2007_000032": (40, 50, (1, 15), ("aeroplane", "person")),
    "2007_000033": (44, 52, (1,), ("aeroplane",)),
    "2007_000039": (48, 40, (20,), ("tvmonitor",)),
    "2007_000042": (42, 56, (19,), ("train",)),
    "2008_000002": (40, 40, (20,), ("tvmonitor",)),
    "2008_000003": (40, 60, (15, 19), ("person", "train")),
    "2008_000008": (52, 44, (13,), ("horse", "person")),  # the XML names a person the mask does not draw
    "2009_000001": (40, 40, (), ("cat",)),
}
_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
            "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
            "tvmonitor")


def jpeg(h: int, w: int, seed: int, orientation: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    out = io.BytesIO()
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(out, "JPEG", quality=90, exif=exif)
    else:
        im.save(out, "JPEG", quality=90)
    return out.getvalue()


def drawn_mask(h: int, w: int, classes, boundary: bool) -> np.ndarray:
    """Class c fills a band of rows; VOC's own masks get a 255 border around each band."""
    mask = np.zeros((h, w), np.uint8)
    for i, c in enumerate(classes):
        top, bottom = 2 + 8 * i, min(h - 2, 8 + 8 * i)
        mask[top:bottom, 3:w - 3] = c
        if boundary:
            mask[top - 1, 2:w - 2] = 255
            mask[bottom, 2:w - 2] = 255
    return mask


def palette_png(mask: np.ndarray) -> bytes:
    im = Image.fromarray(mask, mode="P")
    im.putpalette(voc_palette())
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def sbd_mat(seg: np.ndarray) -> bytes:
    """A ``cls/<name>.mat`` as SBD's: a struct GTcls with Boundaries (20 sparse cells), Segmentation and
    CategoriesPresent."""
    import scipy.io
    import scipy.sparse

    boundaries = np.empty((20, 1), dtype=object)
    for i in range(20):
        boundaries[i, 0] = scipy.sparse.csc_matrix(seg == i + 1, dtype=bool)
    present = np.unique(seg[seg > 0]).astype(np.uint8).reshape(-1, 1)
    out = io.BytesIO()
    scipy.io.savemat(out, {"GTcls": {"Boundaries": boundaries, "Segmentation": seg, "CategoriesPresent": present}})
    return out.getvalue()


def voc_xml(name: str, h: int, w: int, classes) -> bytes:
    objects = "".join(f"<object><name>{c}</name><pose>Left</pose><truncated>0</truncated><difficult>0</difficult>"
                      f"<part><name>head</name></part><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
                      f"<ymax>5</ymax></bndbox></object>" for c in classes)
    return (f"<annotation><folder>VOC2012</folder><filename>{name}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objects}</annotation>").encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_300_000_000
    tar.addfile(info, io.BytesIO(data))


def voc_member_bytes(name: str) -> dict[str, bytes]:
    """The bytes the fixture's VOC archive holds for image ``name``: jpg, png (if segmented), xml."""
    h, w, classes, xml_classes = VOC_IMAGES[name]
    out = {"jpg": jpeg(h, w, seed=int(name.replace("_", ""))), "xml": voc_xml(name, h, w, xml_classes)}
    if name in VOC_TRAIN + VOC_VAL:
        out["png"] = palette_png(drawn_mask(h, w, classes, boundary=True))
    return out


def sbd_seg(name: str) -> np.ndarray:
    h, w, classes, _ = VOC_IMAGES[name]
    seg = drawn_mask(h, w, classes, boundary=False)
    if name in VOC_TRAIN + VOC_VAL:
        seg[0, 0] = 7  # SBD's annotation of an image VOC annotates too differs from VOC's
    return seg


def make_voc_archives(folder: Path) -> Path:
    """``VOCtrainval_11-May-2012.tar`` and ``benchmark.tgz`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "VOCtrainval_11-May-2012.tar", "w") as tar:
        seg = "VOCdevkit/VOC2012/ImageSets/Segmentation/"
        _add(tar, seg + "train.txt", "".join(f"{n}\n" for n in VOC_TRAIN).encode())
        _add(tar, seg + "val.txt", "".join(f"{n}\n" for n in VOC_VAL).encode())
        _add(tar, seg + "trainval.txt", "".join(f"{n}\n" for n in sorted(VOC_TRAIN + VOC_VAL)).encode())
        _add(tar, "VOCdevkit/VOC2012/ImageSets/Main/train.txt", b"2007_000032\n")
        for name in sorted(VOC_IMAGES):
            member = voc_member_bytes(name)
            _add(tar, f"VOCdevkit/VOC2012/JPEGImages/{name}.jpg", member["jpg"])
            _add(tar, f"VOCdevkit/VOC2012/Annotations/{name}.xml", member["xml"])
            if "png" in member:
                _add(tar, f"VOCdevkit/VOC2012/SegmentationClass/{name}.png", member["png"])
                _add(tar, f"VOCdevkit/VOC2012/SegmentationObject/{name}.png", member["png"])
    with tarfile.open(folder / "benchmark.tgz", "w:gz") as tgz:
        base = "benchmark_RELEASE/dataset/"
        for name in sorted(set(SBD_TRAIN + SBD_VAL)):
            _add(tgz, f"{base}cls/{name}.mat", sbd_mat(sbd_seg(name)))
            _add(tgz, f"{base}inst/{name}.mat", sbd_mat(sbd_seg(name)))
            _add(tgz, f"{base}img/{name}.jpg", b"not used")
        _add(tgz, base + "train.txt", "".join(f"{n}\n" for n in SBD_TRAIN).encode())
        _add(tgz, base + "val.txt", "".join(f"{n}\n" for n in SBD_VAL).encode())
    return folder


def voc_label(name: str) -> list[int]:
    return [int(c in VOC_IMAGES[name][3]) for c in _CLASSES[1:]]


# ---- COCO 2014 --------------------------------------------------------------------------------
def _rect(x0, y0, x1, y1) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _binary(h, w, x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _uncompressed_rle(m: np.ndarray) -> dict:
    flat, counts, current, run = m.ravel(order="F"), [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [m.shape[0], m.shape[1]], "counts": counts}


def _compressed_rle(m: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


#: split -> [(image id, height, width, EXIF orientation, annotations)]; an annotation is
#: (category id, segmentation kind, box (x0, y0, x1, y1), iscrowd)
COCO_IMAGES = {
    "train": [
        (9, 30, 40, 1, [(1, "polygon", (0, 0, 20, 20), 0),      # person, large
                        (18, "polygon", (10, 10, 16, 16), 0),   # dog inside it, smaller: wins
                        (3, "rle", (25, 0, 36, 10), 1),         # a crowd of cars (uncompressed RLE)
                        (90, "compressed", (30, 20, 38, 28), 0)]),  # toothbrush, compressed RLE: class 80
        (25, 24, 32, 1, [(62, "polygon", (2, 2, 30, 20), 0),    # chair, listed first, larger
                         (63, "polygon", (5, 5, 12, 12), 0)]),  # couch over it, smaller: wins
        (30, 20, 20, 1, []),                                     # no annotation: left out
        (34, 20, 30, 6, [(17, "polygon", (0, 0, 10, 5), 0)]),   # cat; the JPEG is stored turned (EXIF 6)
    ],
    "val": [
        (42, 26, 34, 1, [(18, "polygon", (4, 4, 20, 20), 0)]),
        (73, 22, 30, 1, [(4, "compressed", (0, 0, 15, 22), 0), (4, "polygon", (18, 2, 28, 12), 0)]),
        (74, 20, 20, 1, []),
    ],
}


def coco_name(split: str, image_id: int) -> str:
    return f"COCO_{split}2014_{image_id:012d}"


def coco_json(split: str) -> dict:
    images, annotations, ann_id = [], [], 1000
    for image_id, h, w, _, anns in COCO_IMAGES[split]:
        images.append({"id": image_id, "file_name": coco_name(split, image_id) + ".jpg", "height": h, "width": w,
                       "license": 1, "coco_url": "", "date_captured": "", "flickr_url": ""})
        for category, kind, (x0, y0, x1, y1), crowd in anns:
            m = _binary(h, w, x0, y0, x1, y1)
            seg = {"polygon": lambda: _rect(x0, y0, x1, y1), "rle": lambda: _uncompressed_rle(m),
                   "compressed": lambda: _compressed_rle(m)}[kind]()
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": category, "segmentation": seg,
                                "area": float(m.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": crowd})
            ann_id += 1
    categories = [{"id": i, "name": n, "supercategory": "x"} for i, n in COCO_CATEGORIES]
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories}


def make_coco_archives(folder: Path) -> Path:
    """``train2014.zip``, ``val2014.zip`` and ``annotations_trainval2014.zip`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "annotations_trainval2014.zip", "w") as zf:
        for split in ("train", "val"):
            zf.writestr(f"annotations/instances_{split}2014.json", json.dumps(coco_json(split)))
            zf.writestr(f"annotations/captions_{split}2014.json", "{}")
    for split in ("train", "val"):
        with zipfile.ZipFile(folder / f"{split}2014.zip", "w") as zf:
            for image_id, h, w, orientation, _ in COCO_IMAGES[split]:
                zf.writestr(f"{split}2014/{coco_name(split, image_id)}.jpg", jpeg(h, w, image_id, orientation))
    return folder


# ---- the checksum table, pointed at the fixtures -----------------------------------------------
def official(monkeypatch, folder: Path, names) -> None:
    """Make the fixture archives in ``folder`` the "official" ones: their sizes and MD5s in ARCHIVES."""
    for name in names:
        data = (folder / name).read_bytes()
        monkeypatch.setitem(ARCHIVES, name, dataclasses.replace(ARCHIVES[name], size=len(data),
                                                               md5=hashlib.md5(data).hexdigest()))


def list_expectation(names) -> tuple[int, str]:
    return len(names), hashlib.sha256("".join(f"{n}\n" for n in sorted(names)).encode()).hexdigest()


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (the state folder excluded) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".tscd-data" not in p.parts}
