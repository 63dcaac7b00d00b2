"""Masks and images as ``tscd data`` writes and checks them: palette PNGs, EXIF orientation."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .archives import PrepareError

_ORIENTATION = 0x0112
#: EXIF orientation -> the transpose that shows the image upright (what ImageOps.exif_transpose does)
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map for all 256 indices (VOC's own PNGs use it; 255 is (224, 224, 192))."""
    colours = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours += [r, g, b]
    return colours


_PALETTE = voc_palette()


def encode_mask(mask: np.ndarray) -> bytes:
    """A palette PNG of the uint8 class indices ``mask`` (H, W), with the VOC colour map."""
    im = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="P")
    im.putpalette(_PALETTE)
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def classes_of(mask: np.ndarray) -> str:
    """The class indices present in ``mask``, comma-separated (``"0,5,15,255"``)."""
    return ",".join(str(int(v)) for v in np.flatnonzero(np.bincount(mask.ravel(), minlength=256)))


def parse_classes(text: str) -> set[int]:
    return {int(v) for v in text.split(",") if v}


def jpeg_header(data: bytes, what: str) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) of the image bytes ``data`` as stored (not yet turned)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width, im.height, int(Image.Image.getexif(im).get(_ORIENTATION, 1) or 1)
    except Exception as err:  # noqa: BLE001 - whatever Pillow raises on a broken file, with its name
        raise PrepareError(f"{what} is not a readable image ({err}): the archive is damaged; download it again") \
            from None


def upright(mask: np.ndarray, orientation: int) -> np.ndarray:
    """``mask``, drawn on the pixels as stored, turned as the image's EXIF ``orientation`` turns
    the image for display (tscd reads images upright and masks as they are)."""
    method = _TRANSPOSE.get(orientation)
    if method is None:
        return mask
    return np.asarray(Image.fromarray(mask).transpose(method))
