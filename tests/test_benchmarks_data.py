"""Loaders of the published benchmarks on tiny trees fabricated in their original formats; mapped
labels are checked against hand-computed expectations and each defect is reported by file name."""

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from pipa.cli import main
from pipa.data.benchmarks import GTA5, Cityscapes, CityscapesSeq, MappedFolder, Synthia, SynthiaSeq, Viper
from pipa.data.io import DatasetError, _decode_png16, read_flow_kitti, resize_flow
from pipa.data.mappings import load_mapping, names

IGN = 255


# -- writers in the original formats --------------------------------------------------------------
def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def write_png16(path, arr, filters=(0,)):
    """A 16-bit RGB(A)/grey PNG written by hand; row y uses PNG filter ``filters[y % len]``."""
    arr = np.asarray(arr, np.uint16)
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w, c = arr.shape
    bpp = 2 * c
    rows, prev = [], bytes(w * bpp)
    for y in range(h):
        cur = arr[y].astype(">u2").tobytes()
        f = filters[y % len(filters)]
        out = bytearray()
        for i, x in enumerate(cur):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            cc = prev[i - bpp] if i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, cc)][f]
            out.append((x - pred) % 256)
        rows.append(bytes([f]) + bytes(out))
        prev = cur

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ctype = {1: 0, 3: 2, 4: 6}[c]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def write_rgb(path, h, w, seed=0, ext=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def write_palette(path, ids):
    """An indexed (palette) PNG whose indices are the ids, as GTA5 and VIPER ship them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(ids, np.uint8), mode="P")
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def write_grey(path, ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(ids, np.uint8), mode="L").save(path)


# -- mappings --------------------------------------------------------------------------------------
def test_shipped_mappings_have_provenance_and_valid_ids():
    assert {"gta5_19", "cityscapes_19", "cityscapes_16", "cityscapes_13", "cityscapes_12", "cityscapes_15",
            "synthia_19", "synthia_16", "synthia_13", "synthia_seq_12", "viper_15"} <= set(names())
    for n in names():
        m = load_mapping(n)
        assert m.provenance and m.class_names
        assert all(0 <= v < m.num_classes for v in m.table.values())
    assert load_mapping("cityscapes_19").table[26] == 13  # car
    assert load_mapping("viper_15").table[7] == load_mapping("viper_15").table[8] == 6  # tree + vegetation


# -- GTA5 --------------------------------------------------------------------------------------------
def _gta_tree(root):
    write_rgb(root / "images" / "00001.png", 4, 6)
    write_palette(root / "labels" / "00001.png", [[7, 8, 26, 0, 33, 1], [7, 7, 7, 7, 11, 17]] * 2)
    write_rgb(root / "images" / "00002.png", 4, 6, seed=1)  # label of another size
    write_palette(root / "labels" / "00002.png", np.full((5, 6), 7))
    (root / "images").joinpath("00003.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")  # corrupt
    write_palette(root / "labels" / "00003.png", np.full((4, 6), 7))
    write_rgb(root / "images" / "00004.png", 4, 6, seed=2)  # no label at all
    return root


def test_gta5_maps_ids_and_reports_each_defect_by_name(tmp_path):
    root = _gta_tree(tmp_path / "gta")
    with pytest.raises(DatasetError, match="00002.png: label size"):
        GTA5(root)
    ds = GTA5(root, on_error="skip")
    assert len(ds) == 1
    probs = {p["file"].split("/")[-2] + "/" + p["file"].split("/")[-1]: p["problem"] for p in ds.problems}
    assert "label size 6x5 != image size 6x4" in probs["labels/00002.png"]
    assert "unreadable" in probs["images/00003.png"]
    assert probs["labels/00004.png"] == "missing label file"
    expected = np.array([[0, 1, 13, IGN, 18, IGN], [0, 0, 0, 0, 2, 5]] * 2)  # 0 and 1 (ego vehicle) are not classes
    item = ds[0]
    assert torch.equal(item["label"], torch.from_numpy(expected))
    assert item["image"].shape == (3, 4, 6)


# -- Cityscapes --------------------------------------------------------------------------------------
CS_IDS = np.array([[7, 8, 24, 25, 26, 22], [13, 17, 23, 12, 0, 33]])


def _cs_tree(root, split="val", city="frankfurt", stem="frankfurt_000001_000294"):
    write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", 2, 6)
    write_grey(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", CS_IDS)
    return root


@pytest.mark.parametrize("classes,expected", [
    (19, [[0, 1, 11, 12, 13, 9], [4, 5, 10, 3, IGN, 18]]),
    (16, [[0, 1, 10, 11, 12, IGN], [4, 5, 9, 3, IGN, 15]]),  # terrain is not a SYNTHIA class
    (13, [[0, 1, 7, 8, 9, IGN], [IGN, IGN, 6, IGN, IGN, 12]]),
    (12, [[0, 1, 9, 10, 11, IGN], [3, 4, 8, IGN, IGN, IGN]]),
    (15, [[0, 1, 9, 9, 10, 7], [3, IGN, 8, IGN, IGN, 14]]),  # rider -> person (DA-VSN convention)
])
def test_cityscapes_label_ids_to_each_class_set(tmp_path, classes, expected):
    ds = Cityscapes(_cs_tree(tmp_path / "cs"), split="val", classes=classes)
    assert ds[0]["label"].tolist() == expected


def test_cityscapes_rejects_values_that_are_not_label_ids(tmp_path):
    root = _cs_tree(tmp_path / "cs")
    write_grey(root / "gtFine/val/frankfurt/frankfurt_000001_000294_gtFine_labelIds.png", np.full((2, 6), 200))
    with pytest.raises(DatasetError, match=r"gtFine_labelIds.png: label values \[200\]"):
        Cityscapes(root, split="val")[0]


# -- SYNTHIA ------------------------------------------------------------------------------------------
def test_synthia_16bit_labels_read_from_the_red_channel(tmp_path):
    root = tmp_path / "syn"
    write_rgb(root / "RGB" / "0000001.png", 2, 4)
    ids = np.array([[3, 4, 21, 22], [10, 0, 8, 12]])
    lab = np.stack([ids, np.full_like(ids, 513), np.zeros_like(ids), np.full_like(ids, 65535)], -1)
    write_png16(root / "GT" / "LABELS" / "0000001.png", lab, filters=(4, 1))
    # the trap: PIL keeps the high byte of each 16-bit sample, so every id reads as 0
    assert np.asarray(Image.open(root / "GT" / "LABELS" / "0000001.png").convert("RGB"))[..., 0].max() == 0
    assert Synthia(root, classes=19)[0]["label"].tolist() == [[0, 1, 3, IGN], [11, IGN, 13, 17]]
    assert Synthia(root, classes=16)[0]["label"].tolist() == [[0, 1, 3, IGN], [10, IGN, 12, 14]]
    assert Synthia(root, classes=13)[0]["label"].tolist() == [[0, 1, IGN, IGN], [7, IGN, 9, 11]]


@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)])
def test_png16_decoder_handles_every_filter(tmp_path, filters):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, (7, 5, 3)).astype(np.uint16)
    write_png16(tmp_path / "x.png", arr, filters)
    assert np.array_equal(_decode_png16(tmp_path / "x.png"), arr)


# -- SYNTHIA-Seq -------------------------------------------------------------------------------------
def test_synthia_seq_twelve_classes_neighbours_and_bottom_crop(tmp_path):
    root = tmp_path / "seq"
    for t in (0, 1, 2):
        write_rgb(root / "rgb" / f"{t:06d}.png", 4, 3, seed=t)
    ids = np.array([[3, 11, 12], [5, 8, 15], [1, 1, 1], [0, 0, 0]])
    write_png16(root / "label" / "000001.png", np.stack([ids, ids * 0, ids * 0], -1))
    write_png16(root / "label" / "000002.png", np.stack([ids, ids * 0, ids * 0], -1))
    ds = SynthiaSeq(root, crop_bottom=1)
    assert len(ds) == 2  # frame 0 has no predecessor
    item = ds[0]
    assert item["label"].tolist() == [[0, 10, IGN], [3, 11, 5], [8, 8, 8]]  # cyclist -> rider; 1 row cropped
    assert item["prev_image"].shape == item["image"].shape == (3, 3, 3)
    assert torch.equal(item["prev_image"], torch.from_numpy(np.asarray(Image.open(root / "rgb/000000.png"))[:3].copy())
                       .permute(2, 0, 1).float() / 255)


# -- VIPER ---------------------------------------------------------------------------------------------
def test_viper_ego_vehicle_is_ignored_and_missing_neighbours_reported(tmp_path):
    root = tmp_path / "viper"
    ids = np.full((6, 8), 3)  # road
    ids[4:, 2:6] = 24  # ego car: touches the bottom-centre pixel (5, 4)
    ids[3, 6] = 24  # diagonal neighbour of the ego car: same 8-connected component
    ids[0:2, 0:2] = 24  # another car, not connected
    ids[0, 7] = 8  # vegetation
    write_palette(root / "train" / "cls" / "001" / "001_00010.png", ids)
    write_rgb(root / "train" / "img" / "001" / "001_00010.jpg", 6, 8)
    write_rgb(root / "train" / "img" / "001" / "001_00009.jpg", 6, 8, seed=3)
    write_palette(root / "train" / "cls" / "001" / "001_00020.png", ids)
    write_rgb(root / "train" / "img" / "001" / "001_00020.jpg", 6, 8)  # frame 00019 missing
    with pytest.raises(DatasetError, match="001_00019.jpg: missing neighbour frame"):
        Viper(root)
    ds = Viper(root, on_error="skip")
    assert len(ds) == 1 and ds.problems[0]["problem"] == "missing neighbour frame"
    expected = np.zeros((6, 8), np.int64)  # road -> 0
    expected[4:, 2:6] = IGN
    expected[3, 6] = IGN
    expected[0:2, 0:2] = 10  # the other car stays a car
    expected[0, 7] = 6
    item = ds[0]
    assert item["label"].tolist() == expected.tolist()
    assert "prev_image" in item


# -- Cityscapes-Seq and flow -----------------------------------------------------------------------------
def test_cityscapes_seq_long_sequence_names_and_int16_flow(tmp_path):
    root = tmp_path / "csseq"
    stem = "frankfurt_000001_000294"  # a long-sequence city: the annotated frame is not _000019_
    write_grey(root / "gtFine" / "val" / "frankfurt" / f"{stem}_gtFine_labelIds.png", np.full((4, 8), 26))
    seq = root / "leftImg8bit_sequence" / "val" / "frankfurt"
    write_rgb(seq / f"{stem}_leftImg8bit.png", 4, 8)
    write_rgb(seq / "frankfurt_000001_000293_leftImg8bit.png", 4, 8, seed=5)
    write_grey(root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", np.full((4, 8), 7))
    write_rgb(seq.parent / "lindau" / "lindau_000000_000019_leftImg8bit.png", 4, 8)  # its frame 18 is missing
    flows = tmp_path / "flow"
    flows.mkdir()
    f = np.zeros((2, 4, 2), np.int16)  # stored at half resolution, (H, W, 2), int16(flow * 10)
    f[..., 0], f[..., 1] = 15, -5
    np.save(flows / f"{stem}_000293_int16_x10.npy", f)
    with pytest.raises(DatasetError, match="lindau_000000_000018_leftImg8bit.png: missing neighbour frame"):
        CityscapesSeq(root, split="val", flow_root=flows)
    ds = CityscapesSeq(root, split="val", flow_root=flows, on_error="skip")
    assert len(ds) == 1 and ds.entries[0].extra["frame"] == 294
    item = ds[0]
    assert item["label"].unique().tolist() == [13]
    # u doubles with the width ratio (4 -> 8), v with the height ratio (2 -> 4)
    assert torch.allclose(item["flow"][0], torch.full((4, 8), 3.0)) and torch.allclose(item["flow"][1], torch.full((4, 8), -1.0))
    assert item["flow_valid"].all()


def test_kitti_flow_png_and_per_axis_resize(tmp_path):
    u, v = np.array([[1.5, -2.0]]), np.array([[0.25, 3.0]])
    png = np.stack([u * 64 + 2**15, v * 64 + 2**15, np.array([[1, 0]])], -1)
    write_png16(tmp_path / "f.png", png)
    flow, valid = read_flow_kitti(tmp_path / "f.png")
    assert np.allclose(flow[0], u) and np.allclose(flow[1], v) and valid.tolist() == [[True, False]]
    r = resize_flow(torch.ones(2, 10, 20), (5, 60))  # width ×3, height ×0.5
    assert torch.allclose(r[0], torch.full((5, 60), 3.0)) and torch.allclose(r[1], torch.full((5, 60), 0.5))


# -- a user's folder with a mapping file -------------------------------------------------------------------
def test_mapped_folder_with_a_mapping_file(tmp_path):
    root = tmp_path / "mine"
    write_rgb(root / "images" / "a.jpg", 2, 3)
    write_grey(root / "labels" / "a.png", [[10, 20, 30], [20, 99, 10]])
    (root / "mapping.json").write_text(json.dumps({"class_names": ["road", "car"], "map": {"10": 0, "20": 1},
                                                   "max_raw_id": 99}))
    assert MappedFolder(root)[0]["label"].tolist() == [[0, 1, IGN], [1, IGN, 0]]


# -- pipa data-stats ----------------------------------------------------------------------------------------
def test_data_stats_json_counts_and_problems(tmp_path, capsys):
    root = _gta_tree(tmp_path / "gta")
    assert main(["data-stats", "--dataset", "gta5", "--root", str(root), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_images"] == 1 and len(stats["class_names"]) == 19
    counts = stats["pixel_counts"]
    # hand count of the one valid label: road 2+4=6... per the 4x6 map above
    assert counts["road"] == 2 * (1 + 4) and counts["sidewalk"] == 2 and counts["car"] == 2 and counts["bicycle"] == 2
    assert counts["building"] == 2 and counts["pole"] == 2 and sum(counts.values()) == 4 * 6 - 2 * 2
    files = sorted(p["file"].rsplit("/", 1)[-1] for p in stats["problems"])
    assert files == ["00002.png", "00003.png", "00004.png"]
    assert main(["data-stats", "--dataset", "gta5", "--root", str(root), "--json", "--strict"]) == 1
    capsys.readouterr()
    assert main(["data-stats", "--dataset", "gta5", "--root", str(tmp_path / "nope"), "--json"]) == 2
    assert "GTA5 images folder not found" in capsys.readouterr().err


def test_training_on_real_formats_skips_bad_files_before_it_starts(tmp_path):
    """GTA5 source (one corrupt frame, one label with a non-id value) + Cityscapes target/val:
    with on_error=skip and verify_labels, the bad files are left out at indexing and the run
    trains; with on_error=raise it refuses to start, naming the file."""
    from conftest import PRESET, tiny_overrides
    from pipa.config import load_config
    from pipa.engine.trainer import train

    gta = tmp_path / "gta"
    for i in range(1, 5):
        write_rgb(gta / "images" / f"{i:05d}.png", 32, 64, seed=i)
        ids = np.full((32, 64), 7)
        ids[:12] = 23
        ids[20:, 10:20] = 26
        write_palette(gta / "labels" / f"{i:05d}.png", ids)
    (gta / "images" / "00005.png").write_bytes(b"not a png")
    write_palette(gta / "labels" / "00005.png", np.full((32, 64), 7))
    write_rgb(gta / "images" / "00006.png", 32, 64, seed=6)
    write_palette(gta / "labels" / "00006.png", np.full((32, 64), 90))  # not a Cityscapes id
    cs = tmp_path / "cs"
    for split in ("train", "val"):
        for i in range(2):
            stem = f"aachen_000000_{i:06d}"
            write_rgb(cs / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", 32, 64, seed=10 + i)
            write_grey(cs / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", np.full((32, 64), 7))
    common = {"model.num_classes": 19, "method.name": "self_training",
              "data.source.name": "gta5", "data.source.root": str(gta), "data.source.verify_labels": "true",
              "data.target.name": "cityscapes", "data.target.root": str(cs), "data.target.split": "train",
              "data.val.name": "cityscapes", "data.val.root": str(cs), "data.val.split": "val"}
    with pytest.raises(DatasetError, match="00005.png"):
        train(load_config(PRESET, tiny_overrides(tmp_path / "r1", iterations=2, **common)), progress="none")
    cfg = load_config(PRESET, tiny_overrides(tmp_path / "r2", iterations=2, **common, **{"data.source.on_error": "skip"}))
    res = train(cfg, progress="none")
    assert res.iterations == 2 and len(res.per_class_iou) == 19


def test_data_stats_on_the_builtin_benchmark(capsys):
    """The synthetic benchmark goes through the same interface; counts = a bincount of its labels."""
    from pipa.data.datasets import SyntheticDataset

    assert main(["data-stats", "--dataset", "synthetic", "--split", "val", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    ds = SyntheticDataset("target", "val", 300, 96, 192, 0)
    expected = np.bincount(ds.labels.numpy().reshape(-1), minlength=8)
    assert list(stats["pixel_counts"].values()) == expected.tolist() and stats["problems"] == []
    assert sum(expected) == 300 * 96 * 192
