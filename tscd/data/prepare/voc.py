"""``tscd data voc DIR``: PASCAL VOC 2012 + SBD, laid out as ``--config voc`` reads it.

From ``VOCtrainval_11-May-2012.tar`` and SBD's ``benchmark.tgz`` it writes, under
``DIR/VOCdevkit/VOC2012`` (the ``--data-root`` to pass, printed as the last line)::

    JPEGImages/<name>.jpg                   the 12,031 images of train_aug and val, as in VOC's archive
    SegmentationClassAug/<name>.png         palette PNGs, classes 0..20, 255 = VOC's boundary/ignore
    ImageSets/Segmentation/train_aug.txt    10,582 names (sorted)
    ImageSets/Segmentation/val.txt          1,449 names (VOC's own file)
    cls_labels.json                         image-level labels of those 12,031 (data.label_file)

Nothing else is extracted (no Annotations/, SegmentationObject/, the 5,094 images outside the
two splits); archives downloaded go to ``DIR/downloads/``, the state of the run to
``DIR/.tscd-data/``.

**SegmentationClassAug** is the field's merge. Every image of VOC 2012's segmentation trainval
(2,913) keeps VOC's own ``SegmentationClass`` PNG, byte for byte, 255 boundaries included;
every other image of SBD's train ∪ val (11,355 images) gets SBD's ``cls/<name>.mat``
(``GTcls.Segmentation``, classes 0..20, no boundary) as a palette PNG. Where both annotate an
image, VOC's wins: the DeepLab recipe copies VOC's PNGs over SBD's (``cp SegmentationClass_1D/*
cls_png``, the train-DeepLab instructions the SegmentationClassAug download comes from),
mmsegmentation reads VOC's train images from ``SegmentationClass`` and only the rest from SBD
(``pascal_voc12_aug.py``, ``aug.txt``), and FCN's reference loader "takes the VOC truths since
the annotations are more reliable".

**train_aug** = (SBD train ∪ SBD val ∪ VOC train) − VOC val = 10,582 names, as mmsegmentation's
``voc_aug.py`` builds it; ``val`` is VOC's 1,449. Both equal, name for name, the lists AFA
(``datasets/voc``) and so TSCD ship (checked by digest when the archives are the official ones).

**cls_labels.json** holds each image's labels as the lineage made them: the classes named in VOC's
``Annotations/<name>.xml`` (PSA's ``make_cls_labels.py``; AFA's ``cls_labels_onehot.npy`` is
that file, value for value). Pass it as ``data.label_file`` for the paper's labels; without it
tscd takes the classes present in the masks, which the run reports how often differ.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from ..base import DatasetError
from ..voc import VOC_CLASSES, VOCDataset
from .archives import (
    STATE_DIR,
    OutputTree,
    PrepareError,
    UsageError,
    VerifiedArchives,
    check_room,
    earlier_run,
    fetch,
    open_tar,
    reading,
    stream_tar,
    write_atomic,
)
from .images import classes_of, encode_mask, parse_classes

logger = logging.getLogger("tscd.data.prepare")

VOC_TAR, SBD_TGZ = "VOCtrainval_11-May-2012.tar", "benchmark.tgz"
#: The dataset root inside DIR (the --data-root of --config voc).
ROOT = Path("VOCdevkit/VOC2012")
LABEL_FILE = "cls_labels.json"
_VOC, _SBD = "VOCdevkit/VOC2012/", "benchmark_RELEASE/dataset/"
_NAME = re.compile(r"\d{4}_\d{6}")
#: split -> (number of names, sha256 of the sorted names one per line): the lists of AFA's
#: datasets/voc (rulixiang/afa@adcfa29), which TSCD trains and evaluates on.
EXPECTED = {"train_aug": (10582, "d1326bd532648d73bc4b1bd275434eba81930982dc7401a65a8cecb26c028e24"),
            "val": (1449, "cdc1326d12f69ce5153aa5da04a4d8783e146868d42d19f82f44e74b97ac907d")}
#: A few images, their split and labels, as AFA's cls_labels_onehot.npy has them.
KNOWN = {"2007_000032": ("train_aug", ("aeroplane", "person")), "2007_000033": ("val", ("aeroplane",)),
         "2010_005991": ("train_aug", ("dog", "person", "sofa")), "2011_003276": ("train_aug", ("bird",))}
#: Bytes written: the 12,031 JPEGs (~113 kB each) and the masks.
OUTPUT_BYTES = 1_450_000_000


def list_digest(names) -> str:
    return hashlib.sha256("".join(f"{n}\n" for n in sorted(names)).encode()).hexdigest()


def _names(data: bytes, what: str) -> list[str]:
    names = []
    for line in data.decode("utf-8", "replace").split():
        if not _NAME.fullmatch(line):
            raise PrepareError(f"{what} lists '{line[:40]}', which is not a VOC image name: the archive is not the "
                               "official one or is damaged; download it again")
        names.append(line)
    return names


def _sbd_segmentation(data: bytes, what: str) -> np.ndarray:
    """SBD's class mask: ``GTcls.Segmentation`` of a ``cls/<name>.mat`` (torchvision's and
    mmsegmentation's reading), uint8 classes 0..20."""
    from scipy.io import loadmat

    try:
        seg = np.asarray(loadmat(io.BytesIO(data))["GTcls"][0]["Segmentation"][0])
    except Exception as err:  # noqa: BLE001 - whatever scipy raises on a file of another layout
        raise PrepareError(f"{what} is not an SBD class mask (a struct GTcls with a field Segmentation): "
                           f"{type(err).__name__}: {err}; the archive is damaged, download it again") from None
    if seg.ndim != 2 or seg.dtype.kind not in "ui" or seg.size == 0:
        raise PrepareError(f"{what}: GTcls.Segmentation is a {seg.dtype} array of shape {seg.shape}, expected a 2-D "
                           "integer mask; the archive is damaged, download it again")
    if seg.min() < 0 or seg.max() > 20:
        raise PrepareError(f"{what}: GTcls.Segmentation holds class {int(seg.max())}, VOC has 0..20")
    return seg.astype(np.uint8)


def _xml_classes(data: bytes, what: str) -> set[str]:
    """The VOC classes named in an ``Annotations/<name>.xml`` (every ``<name>``, as PSA reads it)."""
    try:
        tree = ET.fromstring(data)
    except ET.ParseError as err:
        raise PrepareError(f"{what} is not valid XML ({err}): the archive is damaged; download it again") from None
    return {el.text.strip() for el in tree.iter("name") if el.text and el.text.strip() in VOC_CLASSES[1:]}


class _VOCTar:
    """Random access to the members of VOC's archive that tscd needs."""

    def __init__(self, path: Path):
        self.path = path
        self.tar = open_tar(path)
        with reading(path):
            self.members = {m.name: m for m in self.tar.getmembers() if m.isfile()}

    def read(self, rel: str) -> bytes:
        member = self.members.get(_VOC + rel)
        if member is None:
            raise PrepareError(f"{self.path} has no {_VOC + rel}: it is not the VOC 2012 trainval archive or it is "
                               "truncated; download it again")
        with reading(self.path):
            return self.tar.extractfile(member).read()

    def close(self) -> None:
        self.tar.close()


def _convert_sbd(path: Path, skip: set[str], tree: OutputTree) -> tuple[set[str], set[str]]:
    """One pass over SBD's .tgz: each ``cls/<name>.mat`` not in ``skip`` into
    ``SegmentationClassAug/<name>.png``. Returns (SBD train ∪ val names, names with a .mat)."""
    from tqdm import tqdm

    lists: dict[str, list[str]] = {}
    mats: set[str] = set()
    with stream_tar(path) as tgz, reading(path), tqdm(desc="SBD masks", unit=" files", disable=None,
                                                                 leave=False) as bar:
        for member in tgz:
            if not member.isfile() or not member.name.startswith(_SBD):
                continue
            rel = member.name[len(_SBD):]
            if rel in ("train.txt", "val.txt"):
                lists[rel] = _names(tgz.extractfile(member).read(), f"{path}:{member.name}")
            elif rel.startswith("cls/") and rel.endswith(".mat"):
                name = rel[4:-4]
                if not _NAME.fullmatch(name):
                    continue
                mats.add(name)
                out = f"SegmentationClassAug/{name}.png"
                if name not in skip and tree.done(out) is None:
                    seg = _sbd_segmentation(tgz.extractfile(member).read(), f"{path}:{member.name}")
                    tree.write(out, encode_mask(seg), classes_of(seg))
                bar.update()
    for rel in ("train.txt", "val.txt"):
        if rel not in lists:
            raise PrepareError(f"{path} has no {_SBD}{rel}: it is not SBD's benchmark.tgz or it is truncated; "
                               "download it again")
    listed = set(lists["train.txt"]) | set(lists["val.txt"])
    missing = sorted(listed - mats)
    if missing:
        raise PrepareError(f"{path} lists {len(missing)} images without a cls/<name>.mat (first: {missing[0]}): it "
                           "is truncated or not SBD's archive; download it again")
    return listed, mats


def _write_labels(tree: OutputTree, names: list[str], labels: dict[str, set[str]]) -> None:
    lines = [f'"{n}": [{", ".join("1" if c in labels[n] else "0" for c in VOC_CLASSES[1:])}]' for n in names]
    tree.write(LABEL_FILE, ("{\n" + ",\n".join(lines) + "\n}\n").encode())


def _label_differences(tree: OutputTree, names: list[str], labels: dict[str, set[str]]) -> list[str]:
    """Names whose XML labels differ from the classes present in their mask."""
    differ = []
    for name in names:
        present = parse_classes(tree.done(f"SegmentationClassAug/{name}.png") or "")
        from_mask = {VOC_CLASSES[c] for c in present if 0 < c < len(VOC_CLASSES)}
        if from_mask != labels[name]:
            differ.append(name)
    return differ


def check_prepared(root: Path, official: bool) -> dict[str, int]:
    """Check the prepared tree: the list sizes and digests and the known images (errors when
    ``official``, the archives having matched their checksums; warnings otherwise), then build
    ``--config voc``'s datasets on it, every image and mask read. Returns the split sizes."""
    sizes = {}
    lists = {}
    for split, (count, digest) in EXPECTED.items():
        path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        names = path.read_text().split()
        lists[split], sizes[split] = set(names), len(names)
        if len(names) != count or list_digest(names) != digest:
            message = (f"{path} has {len(names):,} names, not the {count:,} of the standard list"
                       if len(names) != count else f"{path} is not the standard {split} list (sha256 differs)")
            if official:
                raise PrepareError(f"{message}: please report this with the output of the run")
            logger.warning("%s (archives not verified: --no-verify)", message)
    labels = json.loads((root / LABEL_FILE).read_text())
    if official:
        for name, (split, classes) in KNOWN.items():
            got = tuple(c for c, v in zip(VOC_CLASSES[1:], labels.get(name, [])) if v)
            if name not in lists[split] or got != classes:
                raise PrepareError(f"{root}: {name} should be in {split} labelled {', '.join(classes)}, found "
                                   f"{'in ' + split if name in lists[split] else 'not in ' + split}, labelled "
                                   f"{', '.join(got) or 'nothing'}: please report this with the output of the run")
    for split in EXPECTED:
        try:
            VOCDataset(root, split, train=False, label_file=root / LABEL_FILE)
        except DatasetError as err:
            raise PrepareError(f"the prepared {split} split does not read as --config voc: {err}") from None
    return sizes


def prepare_voc(directory, source=None, mirror: str | None = None, verify: bool = True) -> Path:
    """Prepare VOC 2012 + SBD under ``directory`` (module docstring); returns the dataset root.

    Args:
        directory: DIR; made if missing. Files already in it are never replaced.
        source: a folder holding ``VOCtrainval_11-May-2012.tar`` and ``benchmark.tgz``
            (``--from``; nothing is downloaded), or None to download them into ``DIR/downloads``.
        mirror: download ``mirror/<official name>`` instead of the official hosts.
        verify: check each archive's size and MD5 (``--no-verify``: False).

    Raises:
        UsageError: a missing folder or archive, too little disk space, a file in the way.
        PrepareError: a damaged, truncated or unofficial archive, a broken download.
    """
    directory, source = _folders(directory, source)
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        raise UsageError("tscd data voc needs scipy to read SBD's .mat masks: pip install scipy (or pip install "
                         "'tscd[prepare]')") from None
    state, root = directory / STATE_DIR, directory / ROOT
    marker = state / "voc.done"
    with OutputTree(root, state, "voc") as tree:
        summary = earlier_run(tree, marker, root, check_prepared)
        if summary is not None:
            _report(root, summary)
            return root
        check_room(directory, tree, (VOC_TAR, SBD_TGZ), source, OUTPUT_BYTES, "tscd data voc")
        verified = VerifiedArchives(state)
        voc_path = fetch(VOC_TAR, directory, source, mirror, verify, verified)
        sbd_path = fetch(SBD_TGZ, directory, source, mirror, verify, verified)

        voc = _VOCTar(voc_path)
        try:
            val_bytes = voc.read("ImageSets/Segmentation/val.txt")
            voc_train = set(_names(voc.read("ImageSets/Segmentation/train.txt"), f"{voc_path}: train.txt"))
            voc_val = set(_names(val_bytes, f"{voc_path}: val.txt"))
            voc_seg = voc_train | voc_val
            logger.info("converting SBD's masks from %s", sbd_path)
            sbd_all, _ = _convert_sbd(sbd_path, voc_seg, tree)
            train_aug = sorted((sbd_all | voc_train) - voc_val)
            val = sorted(voc_val)
            labels = _extract_voc(voc, train_aug + val, voc_seg, tree)
        finally:
            voc.close()
        tree.write("ImageSets/Segmentation/train_aug.txt", "".join(f"{n}\n" for n in train_aug).encode())
        tree.write("ImageSets/Segmentation/val.txt", val_bytes)
        names = sorted(train_aug + val)
        _write_labels(tree, names, labels)
        differ = _label_differences(tree, names, labels)
        sizes = check_prepared(root, verify)
        summary = {"official": verify, **sizes, "labels_differing_from_masks": len(differ),
                   "examples": differ[:5]}
        write_atomic(marker, json.dumps(summary, indent=1).encode())
    _report(root, summary)
    return root


def _extract_voc(voc: _VOCTar, names: list[str], voc_seg: set[str], tree: OutputTree) -> dict[str, set[str]]:
    """Each image of ``names`` into JPEGImages/, VOC's own mask where it has one into
    SegmentationClassAug/ (VOC wins over SBD), and each image's labels from its XML."""
    from tqdm import tqdm

    labels = {}
    for name in tqdm(names, desc="VOC images", unit=" images", disable=None, leave=False):
        if tree.done(f"JPEGImages/{name}.jpg") is None:
            tree.write(f"JPEGImages/{name}.jpg", voc.read(f"JPEGImages/{name}.jpg"))
        mask = f"SegmentationClassAug/{name}.png"
        if name in voc_seg and tree.done(mask) is None:
            data = voc.read(f"SegmentationClass/{name}.png")
            try:
                with Image.open(io.BytesIO(data)) as im:
                    present = classes_of(np.asarray(im))
            except Exception as err:  # noqa: BLE001 - a damaged PNG, named
                raise PrepareError(f"{voc.path}: SegmentationClass/{name}.png cannot be read ({err}); download the "
                                   "archive again") from None
            tree.write(mask, data, present)
        labels[name] = _xml_classes(voc.read(f"Annotations/{name}.xml"), f"{voc.path}: Annotations/{name}.xml")
    return labels


def _folders(directory, source) -> tuple[Path, Path | None]:
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} is not a folder: pass the folder to prepare the dataset in")
    if source is not None:
        source = Path(source)
        if not source.is_dir():
            raise UsageError(f"--from {source}: no such folder (the folder holding the downloaded archives)")
    directory.mkdir(parents=True, exist_ok=True)
    return directory, source


def _report(root: Path, summary: dict) -> None:
    logger.info("VOC 2012 + SBD ready in %s: train_aug %s images, val %s images, 21 classes (VOC), masks in "
                "SegmentationClassAug/, labels in %s", root, f"{summary['train_aug']:,}", f"{summary['val']:,}",
                LABEL_FILE)
    differ = summary.get("labels_differing_from_masks", 0)
    if differ:
        logger.info("%s: the XML labels (AFA's, pass data.label_file=%s) differ from the classes in the masks for "
                    "%d image%s (e.g. %s)", LABEL_FILE, root / LABEL_FILE, differ, "s" * (differ > 1),
                    ", ".join(summary["examples"]))
    if not summary.get("official", True):
        logger.warning("the archives were not verified (--no-verify): the numbers may not be comparable to the paper's")
    logger.info("train: tscd train --config voc --data-root %s data.label_file=%s", root, root / LABEL_FILE)
