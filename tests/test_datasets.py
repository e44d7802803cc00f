import numpy as np
import pytest
from PIL import Image

from pipa.data.datasets import DatasetError, FolderDataset, SyntheticDataset


def _tree(root, n=3, size=(16, 8)):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.full((size[1], size[0]), i % 3, np.uint8)).save(root / "labels" / f"{i}.png")


def test_folder_dataset_reads_pairs(tmp_path):
    _tree(tmp_path)
    ds = FolderDataset(tmp_path, num_classes=3)
    item = ds[2]
    assert item["image"].shape == (3, 8, 16) and float(item["image"].max()) == pytest.approx(80 / 255)
    assert item["label"].unique().tolist() == [2]


@pytest.mark.parametrize("defect,frag", [
    ("missing", "missing label file"),
    ("size", "label size 8x4 != image size 16x8"),
    ("corrupt", "unreadable image"),
])
def test_defects_named_by_file(tmp_path, defect, frag):
    _tree(tmp_path)
    if defect == "missing":
        (tmp_path / "labels" / "1.png").unlink()
    elif defect == "size":
        Image.fromarray(np.zeros((4, 8), np.uint8)).save(tmp_path / "labels" / "1.png")
    else:
        (tmp_path / "images" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetError) as e:
        FolderDataset(tmp_path, num_classes=3)
    assert "1.png" in str(e.value) and frag in str(e.value)
    ds = FolderDataset(tmp_path, num_classes=3, on_error="skip")  # or leave the file out
    assert len(ds) == 2 and ds.problems[0]["file"].endswith("1.png") and frag in ds.problems[0]["problem"]


def test_label_value_outside_classes(tmp_path):
    _tree(tmp_path)
    Image.fromarray(np.full((8, 16), 9, np.uint8)).save(tmp_path / "labels" / "0.png")
    ds = FolderDataset(tmp_path, num_classes=3)
    with pytest.raises(DatasetError, match=r"0.png: label value 9"):
        ds[0]


def test_synthetic_dataset_cache_and_video_items(tmp_path):
    a = SyntheticDataset("source", "train", 4, 32, 64, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    b = SyntheticDataset("source", "train", 4, 32, 64, cache_dir=tmp_path)  # served from the cache
    assert (a[3]["image"] == b[3]["image"]).all()
    v = SyntheticDataset("target", "train", 6, 32, 64, clip_length=3, cache_dir=tmp_path)
    it = v[1]
    assert set(it) == {"image", "label", "prev_image", "flow", "flow_valid"}
    assert it["flow"].shape == (2, 32, 64) and it["flow_valid"].dtype.is_floating_point is False
