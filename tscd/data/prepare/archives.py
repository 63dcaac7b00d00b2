"""The official archives behind ``tscd data``, and how they are fetched, checked, read and unpacked.

:data:`ARCHIVES` is the one table of what ``tscd data`` downloads: each archive's official file
name, URL, size and MD5, with where the checksum was found. An archive comes from the folder
given with ``--from`` (read in place, nothing contacted), or is downloaded into
``DIR/downloads/`` (resumed with an HTTP Range request when a ``.part`` file is left from a
broken download; ``--mirror URL`` fetches ``URL/<official name>`` instead, ``file://`` included).
Either way its size and MD5 are checked before it is opened (``--no-verify`` skips that, and
only that); a verified archive is remembered by path, size and modification time in
``DIR/.tscd-data/verified.json``, so a second run does not hash it again.

:class:`OutputTree` writes the prepared files: each to a temporary name, then renamed, and never
over a file it did not write itself. What it wrote is journaled in ``DIR/.tscd-data/``, so an
interrupted run skips what is done, and a file that is already there with the same bytes (the
user's own copy) is adopted, not rewritten.

Errors are one line naming the file and what to do: :class:`UsageError` (the command cannot run
as asked: a missing folder or archive, a full disk, a file in the way; the CLI exits 2) and
:class:`PrepareError` (an archive that is damaged, truncated or not the official one, a broken
download; exit 1).
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger("tscd.data.prepare")

#: The state of ``tscd data`` inside DIR: verified archives, journals of written files, done markers.
STATE_DIR = ".tscd-data"
#: Where downloads go inside DIR.
DOWNLOAD_DIR = "downloads"
_CHUNK = 1 << 20


class PrepareError(Exception):
    """An archive or download that cannot be used (the message names the file and what to do)."""


class UsageError(PrepareError):
    """``tscd data`` cannot run as asked (a missing folder or archive, no room, a file in the way)."""


@dataclass(frozen=True)
class Archive:
    """One official archive: its file name, URL, size in bytes, MD5 and where the MD5 was found."""

    name: str
    url: str
    size: int
    md5: str
    what: str
    source: str


#: The archives ``tscd data`` reads, by official file name. Sizes are the servers' Content-Length.
ARCHIVES: dict[str, Archive] = {a.name: a for a in (
    Archive("VOCtrainval_11-May-2012.tar",
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            1_999_639_040, "6cd6e144f989b92b3379bac3b3de84fd", "PASCAL VOC 2012 trainval",
            "pytorch/vision torchvision/datasets/voc.py, DATASET_YEAR_DICT['2012']['md5']"),
    Archive("benchmark.tgz",
            "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
            1_419_539_633, "82b4d87ceb2ed10f6038a1cba92111cb", "SBD (Semantic Boundaries Dataset)",
            "pytorch/vision torchvision/datasets/sbd.py, SBDataset.md5"),
    Archive("train2014.zip", "http://images.cocodataset.org/zips/train2014.zip",
            13_510_573_713, "0da8c0bd3d6becc4dcb32757491aca88", "COCO 2014 train images",
            "salesforce/LAVIS lavis/datasets/download_scripts/download_coco.py (and the COCO entries of "
            "several dataset downloaders)"),
    Archive("val2014.zip", "http://images.cocodataset.org/zips/val2014.zip",
            6_645_013_297, "a3d79f5ed8d289b7a7554ce06a5782b3", "COCO 2014 val images",
            "salesforce/LAVIS lavis/datasets/download_scripts/download_coco.py"),
    Archive("annotations_trainval2014.zip", "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
            252_872_794, "0a379cfc70b0e71301e0f377548639bd", "COCO 2014 train/val annotations",
            "PaddlePaddle/PaddleNLP COCOCaptions.MD5_ANNO (also the S3 object's ETag)"),
)}


def human(size: float) -> str:
    """``"1.9 GB"``, ``"252.9 MB"``, ``"512 B"`` (powers of 1000, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError


def _progress(total: int | None, desc: str, initial: int = 0):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                dynamic_ncols=True, leave=False, disable=None)


# ---- disk space ------------------------------------------------------------------------------
def check_space(directory: Path, downloads: int, outputs: int, command: str) -> None:
    """Raise :class:`UsageError` when the disk of ``directory`` has less free space than
    ``downloads + outputs`` bytes (plus 5 %)."""
    probe = Path(directory).absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = int((downloads + outputs) * 1.05)
    if free < need:
        parts = [f"{human(downloads)} of downloads"] if downloads else []
        parts.append(f"{human(outputs)} of prepared files")
        raise UsageError(f"{directory} has {human(free)} free, {command} needs about {human(need)} "
                         f"({' and '.join(parts)}): free some space or choose another DIR")


# ---- checksums -------------------------------------------------------------------------------
class VerifiedArchives:
    """Archives whose MD5 was checked, by absolute path, with the size and mtime they had then."""

    def __init__(self, state: Path):
        self.path = state / "verified.json"
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def _key(path: Path) -> tuple[str, list[int]]:
        st = path.stat()
        return str(path.resolve()), [st.st_size, st.st_mtime_ns]

    def known(self, path: Path, md5: str) -> bool:
        key, stamp = self._key(path)
        return self.entries.get(key) == [*stamp, md5]

    def add(self, path: Path, md5: str) -> None:
        key, stamp = self._key(path)
        self.entries[key] = [*stamp, md5]
        write_atomic(self.path, json.dumps(self.entries, indent=1).encode())


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f, _progress(path.stat().st_size, f"md5 {path.name}") as bar:
        for chunk in iter(lambda: f.read(8 * _CHUNK), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify(path: Path, archive: Archive, verified: VerifiedArchives, again: str) -> None:
    """Check the size and MD5 of ``path`` against ``archive``; ``again`` says how to get a good copy."""
    size = path.stat().st_size
    if size < archive.size:
        raise PrepareError(f"{path} is truncated: {size:,} of {archive.size:,} bytes; {again}")
    if verified.known(path, archive.md5):
        return
    logger.info("checking %s (%s)", path, human(size))
    md5 = md5_of(path) if size == archive.size else None
    if md5 != archive.md5:
        found = f"md5 {md5}" if md5 else f"{size:,} bytes, expected {archive.size:,}"
        raise PrepareError(f"{path} is not the official {archive.name} ({found}; expected md5 {archive.md5}): "
                           f"{again}, or pass --no-verify for a copy you trust (a mirror's)")
    verified.add(path, md5)


# ---- getting the archives --------------------------------------------------------------------
def _download(url: str, dest: Path, archive: Archive) -> None:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with an HTTP Range request."""
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "tscd-data"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    retry = f"run the same command again to resume, or download {url} by hand and pass --from FOLDER"
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start == archive.size:  # the .part is already whole
            os.replace(part, dest)
            return
        raise PrepareError(f"cannot download {archive.name} from {url}: HTTP {err.code} {err.reason}; "
                           f"download it by hand and pass --from FOLDER") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise PrepareError(f"cannot download {archive.name} from {url}: {reason}; {retry}") from None
    with response:
        status = getattr(response, "status", None) or response.getcode()
        resumed = start and status == 206 and (response.headers.get("Content-Range") or "").startswith(
            f"bytes {start}-")
        if start and not resumed:
            logger.info("%s: the server does not resume; downloading it from the start", url)
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else archive.size
        done = start
        try:
            with open(part, "ab" if start else "wb") as f, _progress(total, archive.name, start) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    f.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
        except (TimeoutError, OSError, http.client.HTTPException) as err:
            raise PrepareError(f"the download of {archive.name} from {url} broke off at {done:,} of {total:,} "
                               f"bytes ({err}); {retry}") from None
    if done < total:
        raise PrepareError(f"the download of {archive.name} from {url} broke off at {done:,} of {total:,} bytes; "
                           f"{retry}")
    os.replace(part, dest)


def require(names, source: Path | None) -> None:
    """With ``--from``, every archive of ``names`` must be in ``source`` before any is read."""
    for name in names if source is not None else ():
        if not (source / name).is_file():
            archive = ARCHIVES[name]
            raise UsageError(f"{source} has no {name} (the {archive.what} archive, from {archive.url}): put it "
                             "there under that name, or leave out --from to download it")


def fetch(name: str, directory: Path, source: Path | None, mirror: str | None, verify_it: bool,
          verified: VerifiedArchives) -> Path:
    """The path of archive ``name``: in ``source`` (``--from``), else downloaded into
    ``directory/downloads`` (from ``mirror`` if given); checked unless ``verify_it`` is False."""
    archive = ARCHIVES[name]
    if source is not None:
        require([name], source)
        path = source / name
        again = "download it again (without --from, tscd data downloads and resumes it)"
    else:
        path = directory / DOWNLOAD_DIR / name
        if not path.is_file():
            url = mirror.rstrip("/") + "/" + name if mirror else archive.url
            path.parent.mkdir(parents=True, exist_ok=True)
            logger.info("downloading %s (%s) from %s", name, human(archive.size), url)
            _download(url, path, archive)
        again = f"it is damaged or another file: move {path} away and run again to download it anew"
    if verify_it:
        verify(path, archive, verified, again)
    return path


# ---- reading the archives --------------------------------------------------------------------
_DAMAGE = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, gzip.BadGzipFile)


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Whatever a truncated or damaged archive raises while it is read, as one PrepareError naming it."""
    try:
        yield
    except PrepareError:
        raise
    except _DAMAGE as err:
        raise PrepareError(f"{path} is truncated or damaged ({err or type(err).__name__}): download it again "
                           "(tscd data resumes a broken download; with --from, replace the file)") from None


def open_tar(path: Path) -> tarfile.TarFile:
    """``path`` as a tar archive with random access (an uncompressed .tar)."""
    with reading(path):
        return tarfile.open(path, "r:")


@contextmanager
def stream_tar(path: Path) -> Iterator[tarfile.TarFile]:
    """One pass over the .tgz ``path``, read to the end of its gzip stream afterwards: tarfile
    takes a .tgz cut at a member boundary for a shorter archive, gzip does not."""
    with reading(path), gzip.open(path, "rb") as gz:
        with tarfile.open(fileobj=gz, mode="r|") as tar:
            yield tar
        while gz.read(_CHUNK):
            pass


def open_zip(path: Path) -> zipfile.ZipFile:
    with reading(path):
        return zipfile.ZipFile(path)


# ---- writing the outputs ---------------------------------------------------------------------
def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed over it."""
    tmp = path.with_name(path.name + ".tscd-partial")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class OutputTree:
    """The files one ``tscd data`` preparation writes under ``root``, journaled in ``state/<name>.written``.

    :meth:`write` skips a file this tree already wrote (journaled, same size) and adopts one that
    is there with the same bytes; a file with other bytes is the user's, and is never replaced
    (:class:`UsageError` naming it). Each line of the journal is ``path<TAB>size<TAB>extra``;
    ``extra`` carries what the writer needs to know about a skipped file (a mask's classes).
    """

    def __init__(self, root: Path, state: Path, name: str):
        self.root, self.journal_path = root, state / f"{name}.written"
        self.entries: dict[str, tuple[int, str]] = {}
        if self.journal_path.is_file():
            for line in self.journal_path.read_text().splitlines():
                fields = line.split("\t")
                if len(fields) == 3 and fields[1].isdigit():  # a line cut short by a crash is skipped
                    self.entries[fields[0]] = (int(fields[1]), fields[2])
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(state / f"{name}.lock", "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # freed by the kernel if the process dies
        except BlockingIOError:
            self._lock.close()
            raise UsageError(f"another tscd data {name} is preparing {state.parent} (it holds {self._lock.name}): "
                             "wait for it to finish") from None
        self._journal = open(self.journal_path, "a")

    def close(self) -> None:
        self._journal.close()
        self._lock.close()

    def __enter__(self) -> OutputTree:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def done(self, rel: str) -> str | None:
        """The journaled ``extra`` of ``rel`` if this tree wrote it and it is still there, else None."""
        entry = self.entries.get(rel)
        if entry is None:
            return None
        try:
            return entry[1] if (self.root / rel).stat().st_size == entry[0] else None
        except OSError:
            return None

    def written(self) -> dict[str, tuple[int, str]]:
        return dict(self.entries)

    def _in_the_way(self, path: Path) -> UsageError:
        return UsageError(f"{path} is already there and is not the file tscd data writes there: tscd data never "
                          "replaces a file it did not write; move it away, or prepare into another DIR")

    def _record(self, rel: str, size: int, extra: str) -> None:
        self.entries[rel] = (size, extra)
        self._journal.write(f"{rel}\t{size}\t{extra}\n")
        self._journal.flush()

    def write(self, rel: str, data: bytes, extra: str = "") -> None:
        """Write ``data`` to ``root/rel`` unless it is there already (see the class)."""
        if self.done(rel) is not None:
            return
        path = self.root / rel
        if path.exists() or path.is_symlink():
            if not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
                raise self._in_the_way(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        self._record(rel, len(data), extra)

    def copy(self, rel: str, open_source: Callable[[], BinaryIO], size: int) -> None:
        """:meth:`write` for large files: ``open_source()`` opens the ``size`` bytes to copy, read in chunks."""
        if self.done(rel) is not None:
            return
        path = self.root / rel
        if path.exists() or path.is_symlink():
            if not (path.is_file() and path.stat().st_size == size and _same_bytes(path, open_source)):
                raise self._in_the_way(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tscd-partial")
            with open_source() as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            os.replace(tmp, path)
        self._record(rel, size, "")


def earlier_run(tree: OutputTree, marker: Path, root: Path, check: Callable[[Path, bool], object]) -> dict | None:
    """The summary that an earlier run left in ``marker`` when every file it wrote into ``tree`` is
    still there, after ``check(root, official)`` has checked the prepared tree; None when there was
    no complete earlier run (the files it wrote that are still there are kept and not written again).
    """
    if not marker.is_file():
        return None
    summary = json.loads(marker.read_text())
    if all(tree.done(rel) is not None for rel in tree.written()):
        logger.info("%s was prepared by an earlier run: checking it", root)
        check(root, summary.get("official", False))
        return summary
    logger.info("files of the earlier run are missing from %s: preparing again", root)
    return None


def check_room(directory: Path, tree: OutputTree, names, source: Path | None, output_bytes: int,
               command: str) -> None:
    """Before anything is downloaded or written: with ``--from``, every archive of ``names`` is in
    ``source`` (:func:`require`); the disk has room for the archives still to download and the
    part of the ``output_bytes`` that ``tree`` has not written yet (:func:`check_space`)."""
    pending = [n for n in names if source is None and not (directory / "downloads" / n).is_file()]
    require(names, source)
    written = sum(size for size, _ in tree.written().values())
    check_space(directory, sum(ARCHIVES[n].size for n in pending), max(0, output_bytes - written), command)


def _same_bytes(path: Path, open_source: Callable[[], BinaryIO]) -> bool:
    with open(path, "rb") as mine, open_source() as theirs:
        while True:
            a, b = mine.read(_CHUNK), theirs.read(_CHUNK)
            if a != b:
                return False
            if not a:
                return True
