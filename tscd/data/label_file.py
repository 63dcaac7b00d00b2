"""Image-level label files (``data.label_file``): image name -> (K−1,) multi-hot vector, read without running code.

Two formats, told apart by the suffix:

* ``.npy`` — the AFA family's ``cls_labels_onehot.npy``: ``np.save`` of a dict name -> one-hot
  vector, i.e. a pickle inside an .npy file. It is read with a restricted unpickler that can
  build NumPy arrays, dtypes and scalars and nothing else (dicts, lists, strings and numbers
  need no named global in a pickle; ``_codecs.encode`` is allowed for the bytes of protocol-2
  pickles, as in ``torch.load(weights_only=True)``); any other global — the way a crafted
  pickle runs code — is refused, naming the file, before anything is called. Files written by
  NumPy 1 (which names ``numpy.core``, protocol 2 or 3, Python 2 strings read as Latin-1) and
  NumPy 2 (``numpy._core``) load.
* ``.json`` — the plain format: ``{"2007_000032": [0, 1, 0, ...], ...}``, UTF-8. To convert a
  released file once::

      python -c "import json, sys; from tscd.data.label_file import load_label_file as l; \\
                 json.dump({k: v.tolist() for k, v in l(sys.argv[1]).items()}, sys.stdout)" x.npy > x.json

Values must be 0 or 1. The vector length (K−1, no background) is checked by the dataset.
"""
from __future__ import annotations

import codecs
import json
import pickle
from pathlib import Path

import numpy as np

from .base import DatasetError, read_text

_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]  # numpy's array rebuilder, whatever its module
_SCALAR = np.float32(0).__reduce__()[0]
_ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(_module, "scalar")] = _SCALAR


class _ArrayUnpickler(pickle.Unpickler):
    """Builds NumPy arrays, dtypes and scalars from a pickle; any other global is refused."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"the pickle calls {module}.{name}, which is not allowed (only NumPy "
                                         "arrays, dtypes and scalars are built)") from None


def _read_npy(path: Path):
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f".npy format version {version} is not supported here (1.0 or 2.0)")
        shape, _, dtype = read_header(f)
        if not dtype.hasobject:
            raise DatasetError(f"label file {path} holds a {dtype} array of shape {shape}, expected a mapping "
                               "name -> class vector")
        data = _ArrayUnpickler(f, encoding="latin1").load()
    return data.item() if isinstance(data, np.ndarray) and data.dtype.hasobject and data.shape == () else data


def load_label_file(path) -> dict[str, np.ndarray]:
    """name -> float32 (K−1,) 0/1 vector of a ``.npy`` or ``.json`` label file (module doc)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            labels = json.loads(read_text(path, "label file"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"label file {path} is not valid JSON: {err}") from None
    elif suffix == ".npy":
        try:
            labels = _read_npy(path)
        except DatasetError:
            raise
        except Exception as err:  # whatever a broken or crafted pickle raises, with the file named
            raise DatasetError(f"cannot read label file {path}: {err}") from None
    else:
        raise DatasetError(f"label file {path}: unknown format, expected .npy or .json (see tscd.data.label_file)")
    if not isinstance(labels, dict):
        raise DatasetError(f"label file {path} must hold a mapping name -> class vector, got {type(labels).__name__}")
    vectors = {}
    for name, value in labels.items():
        try:
            vector = np.asarray(value, np.float32).reshape(-1)
        except (TypeError, ValueError):
            vector = None
        if not isinstance(name, str) or vector is None or vector.size == 0:
            raise DatasetError(f"label file {path}: '{name}' must map to a class vector, got {value!r}")
        if not np.isin(vector, (0.0, 1.0)).all():
            raise DatasetError(f"label file {path}: the label of '{name}' has values other than 0 and 1")
        vectors[name] = vector
    return vectors
