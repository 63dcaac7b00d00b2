"""What the datasets read: paths stay inside the dataset, UTF-8 text (BOM or not), images as a viewer shows them."""
import numpy as np
import pytest
from PIL import Image

from tests.data.test_folder import make_folder
from tests.data.test_voc import _cfg, _make_voc
from tscd.data import DatasetError, build_dataset
from tscd.data.base import load_image, load_mask
from tscd.data.folder import FolderDataset

ORIENTATION = 0x0112


@pytest.mark.parametrize("entry", ["../../secret.png", "../secret.png", "sub/../../secret.png", "ABSOLUTE"])
def test_folder_rows_cannot_leave_images(tmp_path, entry):
    root = make_folder(tmp_path / "d")
    secret = tmp_path / "secret.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(secret)
    (root / "sub").mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / "secret.png")
    entry = str(secret) if entry == "ABSOLUTE" else entry
    (root / "val.csv").write_text(f"image,labels\na.jpg,cat\n{entry},dog\n")
    with pytest.raises(DatasetError, match=rf"val.csv line 3: image '{entry}' is outside .*images"):
        FolderDataset(root, "val", train=False)


def test_folder_rows_may_name_subfolders_and_symlinks_inside_are_followed(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "images" / "sub").mkdir()
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(root / "images" / "sub" / "c.png")
    shared = tmp_path / "shared.png"
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(shared)
    (root / "images" / "linked.png").symlink_to(shared)
    (root / "val.csv").write_text("image,labels\nsub/./c.png,cat\nsub/../b.png,dog\nlinked,bird\n")
    ds = FolderDataset(root, "val", train=False)
    assert ds.names == ["c", "b", "linked"] and ds[2]["image"].shape == (3, 6, 7)


@pytest.mark.parametrize("name", ["../a", "/etc/passwd", "x/../../a"])
def test_voc_names_cannot_leave_the_root(tmp_path, name):
    root = _make_voc(tmp_path / "voc")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(f"a\n\n{name}\n")
    with pytest.raises(DatasetError, match=rf"val.txt line 3: name '{name}' leads outside the dataset"):
        build_dataset(_cfg(root), "val", train=False)


def test_utf8_bom_is_accepted_everywhere(tmp_path):
    bom = b"\xef\xbb\xbf"
    root = make_folder(tmp_path / "d")
    (root / "classes.txt").write_bytes(bom + "chat\ncafé\nbird\n".encode())
    (root / "val.csv").write_bytes(bom + "image,labels\r\na.jpg,chat;café\r\nb,bird\r\n".encode())
    ds = FolderDataset(root, "val", train=False)
    assert ds.class_names[1:] == ("chat", "café", "bird") and ds.labels["a"].tolist() == [1.0, 1.0, 0.0]
    voc = _make_voc(tmp_path / "voc")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_bytes(bom + b"a\nb\n")
    assert build_dataset(_cfg(voc), "val", train=False).names == ["a", "b"]


def test_non_utf8_text_names_the_file_line_and_byte(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "classes.txt").write_bytes("cat\ncafé\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"classes.txt line 2: not UTF-8 \(byte 0xe9 at offset 7\)"):
        FolderDataset(root, "val")
    (root / "classes.txt").write_text("cat\ndog\nbird\n")
    (root / "val.csv").write_bytes("image,labels\na.jpg,cat\nb,dög\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"val.csv line 3: not UTF-8"):
        FolderDataset(root, "val")


def _rotated_jpeg(path, pixels, orientation):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=100)


def test_exif_orientation_is_applied_to_images_and_their_size_checks(tmp_path):
    root = make_folder(tmp_path / "d", masks=())
    stored = np.zeros((40, 50, 3), np.uint8)
    stored[:10, :] = 255  # a white band at the top of the stored pixels
    _rotated_jpeg(root / "images" / "a.jpg", stored, 6)  # displayed rotated 90° clockwise: 50×40, band on the right
    shown = load_image(root / "images" / "a.jpg")
    assert shown.shape == (50, 40, 3) and shown[:, -5:].mean() > 240 and shown[:, :30].mean() < 15
    displayed_mask = np.zeros((50, 40), np.uint8)
    Image.fromarray(displayed_mask, mode="L").save(root / "masks" / "a.png")
    ds = FolderDataset(root, "val", train=False)
    assert ds[0]["mask"].shape == (50, 40) and ds[0]["image"].shape == (3, 50, 40)
    Image.fromarray(np.zeros((40, 50), np.uint8), mode="L").save(root / "masks" / "a.png")  # the stored size
    with pytest.raises(DatasetError, match=r"mask .*a.png is \(40, 50\), its image .*a.jpg is \(50, 40\)"):
        FolderDataset(root, "val", train=False)


def test_16bit_images_are_scaled_and_16bit_masks_are_class_ids(tmp_path):
    grey = (np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) * 32).astype(np.uint16)  # 0..63968
    Image.fromarray(grey).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    img = load_image(tmp_path / "deep.png")
    expected = np.round(grey / 257.0).astype(np.uint8)
    assert img.dtype == np.uint8 and img.shape == (40, 50, 3)
    assert np.abs(img[..., 0].astype(int) - expected).max() <= 1 and (img == 255).mean() < 0.01
    mask = np.zeros((40, 50), np.uint16)
    mask[5:9, 5:9], mask[0] = 3, 255
    Image.fromarray(mask).save(tmp_path / "mask16.png")
    assert np.array_equal(load_mask(tmp_path / "mask16.png"), mask.astype(np.int64))

    root = make_folder(tmp_path / "d")
    mask[1, 1] = 300
    Image.fromarray(mask).save(root / "masks" / "a.png")
    with pytest.raises(DatasetError, match=r"mask .*a.png has class 300"):
        FolderDataset(root, "val", train=False)
