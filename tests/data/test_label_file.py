"""``data.label_file``: the released pickled-dict .npy loads without running code; JSON as the plain format."""
import io
import json
import pickle

import numpy as np
import pytest

from tests.data.test_voc import _cfg, _make_voc
from tscd.data import DatasetError, build_dataset
from tscd.data.label_file import load_label_file


class _WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: a crafted pickle's way to run code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _onehot(*classes, k=21):
    v = np.zeros(k - 1, np.float32)
    v[[c - 1 for c in classes]] = 1
    return v


def test_a_crafted_npy_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "marker"
    for payload in ({"a": _WritesMarker(marker)}, _WritesMarker(marker)):
        path = tmp_path / "cls_labels_onehot.npy"
        np.save(path, np.array(payload, dtype=object), allow_pickle=True)
        with pytest.raises(DatasetError, match=r"labels_onehot.npy: the pickle calls (builtins|io).open, which is not"):
            load_label_file(path)
        assert not marker.exists()


def test_the_released_dict_npy_loads(tmp_path):
    labels = {"2007_000032": _onehot(1, 15), "2007_000039": _onehot(20)}
    path = tmp_path / "cls_labels_onehot.npy"
    np.save(path, labels)
    loaded = load_label_file(path)
    assert loaded.keys() == labels.keys()
    for name, vector in labels.items():
        assert loaded[name].dtype == np.float32 and np.array_equal(loaded[name], vector)


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_numpy1_npy_loads(tmp_path, protocol):
    """numpy 1.x (the released files) names ``numpy.core.multiarray`` and pickles with protocol 3
    (2 before numpy 1.16, with the array bytes as ``_codecs.encode`` calls)."""
    labels = {"a": _onehot(3), "b": _onehot(4, 5)}
    buf = io.BytesIO()
    np.save(buf, labels)
    header = buf.getvalue()[: buf.getvalue().index(b"\n") + 1]
    stream = pickle.dumps(np.array(labels, dtype=object), protocol=protocol)
    assert b"numpy._core.multiarray" in stream and (protocol == 3 or b"_codecs" in stream)
    path = tmp_path / "old.npy"
    path.write_bytes(header + stream.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = load_label_file(path)
    assert np.array_equal(loaded["b"], labels["b"])


def test_json_and_bad_files(tmp_path):
    path = tmp_path / "labels.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": [0, 1, 0], "b": [1, 0, 0]}).encode())
    assert load_label_file(path)["a"].tolist() == [0.0, 1.0, 0.0]
    for text, message in [("[1, 2]", "must hold a mapping"), ('{"a": [0, 2]}', "'a'.*0 and 1"),
                          ('{"a": "cat"}', "'a'.*vector"), ("{", "not valid JSON")]:
        path.write_text(text)
        with pytest.raises(DatasetError, match=r"labels.json.*" + message):
            load_label_file(path)
    np.save(tmp_path / "plain.npy", np.zeros((3, 20)))
    with pytest.raises(DatasetError, match=r"plain.npy.*mapping"):
        load_label_file(tmp_path / "plain.npy")
    (tmp_path / "labels.txt").write_text("a 1 2\n")
    with pytest.raises(DatasetError, match=r"labels.txt.*\.npy or \.json"):
        load_label_file(tmp_path / "labels.txt")
    with pytest.raises(DatasetError, match=r"not found: .*missing.npy"):
        load_label_file(tmp_path / "missing.npy")


def test_voc_uses_the_label_file_and_checks_it_up_front(tmp_path):
    root = _make_voc(tmp_path / "voc")
    path = tmp_path / "labels.npy"
    np.save(path, {"a": _onehot(2), "b": _onehot(7, 9)})
    train = build_dataset(_cfg(root, f"data.label_file={path}"), "train_aug", train=True)
    assert train[(1, 0)]["label"].nonzero()[:, 0].tolist() == [6, 8]
    np.save(path, {"a": _onehot(2)})
    with pytest.raises(DatasetError, match=r"labels.npy has no label for 'b'"):
        build_dataset(_cfg(root, f"data.label_file={path}"), "train_aug", train=True)
    np.save(path, {"a": _onehot(2), "b": np.zeros(21, np.float32)})
    with pytest.raises(DatasetError, match=r"labels.npy: the label of 'b' has 21 entries, expected 20"):
        build_dataset(_cfg(root, f"data.label_file={path}"), "train_aug", train=True)
