"""Tests for data.py: image I/O, writing files, dataset layouts and their errors, the
task -> degradation dispatch, datasets. The generators themselves: test_synthetic.py."""
import collections
import dataclasses
import errno
import os
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from PIL import Image

import data
import synthetic
import tasks
from data import DataError

SEEDS = st.integers(0, 2**32 - 1)


FEW = settings(max_examples=8, deadline=None)


def psnr(a, b):
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def write_png(path, h, w, seed=0, mode="RGB"):
    """A random 8-bit image file (format from the suffix); returns its array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return arr


def grey(h=96, w=96, v=0.3):
    return torch.full((3, h, w), v)


def photo_clean(seed, crop=96):
    return data._photo_crop(data.TRAIN_PHOTOS[seed % len(data.TRAIN_PHOTOS)], crop,
                            np.random.default_rng(seed))


# ----------------------------------------------------------------------------- image I/O

def test_load_rgb_exact(tmp_path):
    arr = write_png(tmp_path / "a.png", 5, 7)
    img = data.load_image(tmp_path / "a.png")
    assert img.shape == (3, 5, 7) and img.dtype == torch.float32
    assert torch.equal(img, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1", "CMYK"])
def test_load_other_modes_give_rgb(tmp_path, mode):
    ext = ".jpg" if mode == "CMYK" else ".png"
    write_png(tmp_path / f"a{ext}", 6, 4, mode=mode)
    img = data.load_image(tmp_path / f"a{ext}")
    assert img.shape == (3, 6, 4) and img.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 1


def test_grey_repeated_to_three_channels(tmp_path):
    write_png(tmp_path / "g.png", 6, 4, mode="L")
    img = data.load_image(tmp_path / "g.png")
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def test_rgba_alpha_dropped_not_composited(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0], arr[..., 3] = 200, 0  # fully transparent red
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    img = data.load_image(tmp_path / "a.png")
    assert torch.allclose(img[0], torch.full((4, 4), 200 / 255)) and img[1:].abs().max() == 0


def test_16bit_grey_scaled_by_65535(tmp_path):
    arr = np.array([[0, 32768, 65535]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    img = data.load_image(tmp_path / "g16.png")
    assert img.shape == (3, 1, 3)
    assert torch.allclose(img[:, 0], torch.tensor([0, 32768 / 65535, 1.0]).expand(3, 3))


def _png16_rgb(path, arr):
    """Minimal 16-bit RGB PNG writer (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    chunk = lambda tag, body: (struct.pack(">I", len(body)) + tag + body
                               + struct.pack(">I", zlib.crc32(tag + body)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16bit_rgb_loads_at_8bit_precision(tmp_path):
    arr = np.random.default_rng(0).integers(0, 65536, (3, 5, 3)).astype(np.uint16)
    _png16_rgb(tmp_path / "c16.png", arr)
    img = data.load_image(tmp_path / "c16.png")
    want = torch.from_numpy(arr.astype(np.float32) / 65535).permute(2, 0, 1)
    assert img.shape == (3, 3, 5) and (img - want).abs().max() <= 1 / 255 + 1e-6


def test_load_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        data.load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(DataError, match="bad.png"):
        data.load_image(tmp_path / "bad.png")
    write_png(tmp_path / "cut.png", 64, 64)
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:300])
    with pytest.raises(DataError, match="cut.png"):
        data.load_image(tmp_path / "cut.png")


def test_save_image_roundtrip_atomic(tmp_path):
    img = torch.rand(3, 9, 11) * 1.2 - 0.1
    out = tmp_path / "new" / "dir" / "x.png"
    data.save_image(img, out)
    back = data.load_image(out)
    assert torch.equal(back, (img.clamp(0, 1) * 255).round() / 255)
    assert sorted(os.listdir(out.parent)) == ["x.png"]  # no temporary file left behind
    data.save_image(img[None], out)  # a batch of one is accepted
    with pytest.raises(DataError, match="x.png"):
        data.save_image(torch.rand(2, 3, 4, 4), out)
    with pytest.raises(DataError, match="NaN"):
        data.save_image(torch.full((3, 2, 2), float("nan")), out)


def test_list_images_file_or_folder(tmp_path):
    for name in ("b.png", "a.JPG", ".hidden.png", "notes.txt"):
        write_png(tmp_path / name, 4, 4) if name.lower().endswith(("png", "jpg")) else (tmp_path / name).write_text("x")
    (tmp_path / "sub.png").mkdir()  # a folder named like an image is not one
    assert [p.name for p in data.list_images(tmp_path)] == ["a.JPG", "b.png"]
    assert data.list_images(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]  # a file is taken as given
    with pytest.raises(DataError, match="nope: no such file or folder"):
        data.list_images(tmp_path / "nope")
    with pytest.raises(DataError, match=r"sub.png: no images \(looked for .png, .jpg"):
        data.list_images(tmp_path / "sub.png")


def test_atomic_write_replaces_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "runs" / "x" / "last.pt"
    data.atomic_write(target, lambda f: f.write(b"old"))
    data.atomic_write(target, lambda f: torch.save({"w": torch.ones(2)}, f))
    assert torch.equal(torch.load(target)["w"], torch.ones(2))
    assert os.listdir(target.parent) == ["last.pt"]


def _fail_with(exc):
    def write(f):
        f.write(b"half a checkpoint")
        raise exc
    return write


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 KeyboardInterrupt(), RuntimeError("pickling failed")])
def test_atomic_write_failure_keeps_target_and_removes_temp(tmp_path, exc):
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous checkpoint")
    expected = DataError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected) as info:
        data.atomic_write(target, _fail_with(exc))
    assert target.read_bytes() == b"previous checkpoint"
    assert os.listdir(tmp_path) == ["last.pt"]  # the temporary file is gone
    if isinstance(exc, OSError):
        assert str(info.value) == f"{target}: cannot write (No space left on device)"
        assert info.value.__cause__ is exc


def test_atomic_write_into_unwritable_place_names_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"file.sub.a\.png: cannot write \(") as info:
        data.save_image(torch.rand(3, 4, 4), tmp_path / "file" / "sub" / "a.png")
    assert isinstance(info.value.__cause__, OSError)
    assert os.listdir(tmp_path) == ["file"]


def test_check_writable(tmp_path):
    folder = tmp_path / "a" / "b"
    assert data.check_writable(folder) == folder and folder.is_dir() and not os.listdir(folder)
    (tmp_path / "file").write_text("x")  # root ignores chmod: a path under a file fails for all
    with pytest.raises(DataError, match=r"file.sub: cannot write to this folder \(.+\)") as info:
        data.check_writable(tmp_path / "file" / "sub")
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(DataError, match="cannot write to the output folder"):
        data.check_writable(tmp_path / "file" / "sub", "the output folder")


# ----------------------------------------------------------------------------- layouts

def make_gtlq(root, names=("a", "b", "c"), lq_names=None, size=(16, 12), lq_size=None):
    for i, n in enumerate(names):
        write_png(root / "GT" / f"{n}.png", *size, seed=i)
    for i, n in enumerate(lq_names or names):
        write_png(root / "LQ" / f"{n}.png", *(lq_size or size), seed=100 + i)


def test_gtlq_layout(tmp_path):
    make_gtlq(tmp_path, names=("b", "a", "c"))
    assert data.detect_layout(tmp_path) == "gtlq"
    pairs = data.find_pairs(tmp_path)
    assert [(lq.name, gt.name) for lq, gt in pairs] == [(f"{n}.png", f"{n}.png") for n in "abc"]
    assert all(lq.parent.name == "LQ" and gt.parent.name == "GT" for lq, gt in pairs)


def test_gtlq_sr_div2k_names_and_scale_inference(tmp_path):
    for i, n in enumerate(["0001", "0002"]):
        write_png(tmp_path / "GT" / f"{n}.png", 32, 24, seed=i)
        write_png(tmp_path / "LQ" / f"{n}x4.png", 8, 6, seed=i)
    assert len(data.find_pairs(tmp_path, scale=4)) == 2
    assert data.PairedFolder(tmp_path, scale=None).scale == 4
    with pytest.raises(DataError, match="0001x4.png is 6x8 but .*0001.png is 24x32"):
        data.find_pairs(tmp_path, scale=1)


def test_rain100_flat_layout_natural_order(tmp_path):
    for k in (1, 2, 10):
        write_png(tmp_path / f"rain-{k}.png", 8, 8, seed=k)
    for k in (1, 2, 3, 10):  # norain-3 has no rainy partner (as in RainTrainH): skipped
        write_png(tmp_path / f"norain-{k}.png", 8, 8, seed=k)
    assert data.detect_layout(tmp_path) == "rain100"
    pairs = data.find_pairs(tmp_path)
    assert [(lq.name, gt.name) for lq, gt in pairs] == [
        ("rain-1.png", "norain-1.png"), ("rain-2.png", "norain-2.png"), ("rain-10.png", "norain-10.png")]


def test_rain100_subfolders(tmp_path):
    for k in (1, 2):
        write_png(tmp_path / "rain" / f"rain-{k:03d}.png", 8, 8, seed=k)
        write_png(tmp_path / "norain" / f"norain-{k:03d}.png", 8, 8, seed=k)
    assert data.detect_layout(tmp_path) == "rain100"
    assert [gt.name for _, gt in data.find_pairs(tmp_path)] == ["norain-001.png", "norain-002.png"]


def test_rain100_rain_without_gt_is_an_error(tmp_path):
    write_png(tmp_path / "rain-1.png", 8, 8)
    write_png(tmp_path / "rain-2.png", 8, 8)
    write_png(tmp_path / "norain-1.png", 8, 8)
    with pytest.raises(DataError, match="rain-2.png"):
        data.find_pairs(tmp_path)


def test_gopro_layout(tmp_path):
    for scene in ("GOPR0372_07_00", "GOPR0374_11_00"):
        for k in (47, 48):
            write_png(tmp_path / scene / "blur" / f"{k:06d}.png", 8, 10, seed=k)
            write_png(tmp_path / scene / "sharp" / f"{k:06d}.png", 8, 10, seed=k)
    assert data.detect_layout(tmp_path) == "gopro"
    pairs = data.find_pairs(tmp_path)
    assert len(pairs) == 4 and pairs[0][0].parts[-3:] == ("GOPR0372_07_00", "blur", "000047.png")
    assert pairs[0][1].parts[-2:] == ("sharp", "000047.png")
    assert len(data.find_pairs(tmp_path / "GOPR0374_11_00")) == 2  # root = one scene


def test_gopro_scene_without_sharp(tmp_path):
    write_png(tmp_path / "s1" / "blur" / "1.png", 8, 8)
    write_png(tmp_path / "s1" / "sharp" / "1.png", 8, 8)
    write_png(tmp_path / "s2" / "blur" / "1.png", 8, 8)
    with pytest.raises(DataError, match="s2"):
        data.find_pairs(tmp_path)


def test_mismatched_names(tmp_path):
    make_gtlq(tmp_path, names=("a", "b"), lq_names=("a", "x"))
    with pytest.raises(DataError, match=r"no GT for .*x\.png.*no LQ for .*b\.png"):
        data.find_pairs(tmp_path)


def test_unequal_counts(tmp_path):
    make_gtlq(tmp_path, names=("a", "b", "c"), lq_names=("a", "b"))
    with pytest.raises(DataError, match=r"has 2 images .* has 3.*c\.png"):
        data.find_pairs(tmp_path)


def test_size_mismatch_names_both_files(tmp_path):
    make_gtlq(tmp_path, names=("a",))
    write_png(tmp_path / "LQ" / "a.png", 15, 12)
    with pytest.raises(DataError, match=r"LQ/a\.png is 12x15 but .*GT/a\.png is 12x16"):
        data.find_pairs(tmp_path)


def test_corrupt_file_found_by_header_check(tmp_path):
    make_gtlq(tmp_path, names=("a", "b"))
    (tmp_path / "LQ" / "b.png").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(DataError, match=r"LQ/b\.png"):
        data.find_pairs(tmp_path)


def test_truncated_file_fails_at_load_time_with_its_name(tmp_path):
    make_gtlq(tmp_path, names=("a",), size=(64, 64))
    f = tmp_path / "GT" / "a.png"
    f.write_bytes(f.read_bytes()[:200])
    ds = data.PairedFolder(tmp_path)
    with pytest.raises(DataError, match=r"GT/a\.png"):
        ds[0]


def test_empty_missing_and_unknown_folders(tmp_path):
    (tmp_path / "GT").mkdir()
    (tmp_path / "LQ").mkdir()
    with pytest.raises(DataError, match=r"GT: no images"):
        data.find_pairs(tmp_path)
    with pytest.raises(DataError, match="does_not_exist: folder not found"):
        data.find_pairs(tmp_path / "does_not_exist")
    other = tmp_path / "other"
    write_png(other / "photo.png", 8, 8)
    with pytest.raises(DataError, match=r"no known layout in .*other: expected GT/ and LQ/"):
        data.find_pairs(other)
    with pytest.raises(DataError, match="unknown layout 'kitti'"):
        data.find_pairs(other, layout="kitti")
    with pytest.raises(DataError, match=r"other.GT: folder not found"):
        data.find_pairs(other, layout="gtlq")
    with pytest.raises(DataError, match="photo.png: not a folder"):
        data.find_pairs(other / "photo.png")


def test_duplicate_stems_rejected(tmp_path):
    make_gtlq(tmp_path, names=("a",))
    write_png(tmp_path / "GT" / "a.jpg", 16, 12)
    with pytest.raises(DataError, match=r"a\.(png|jpg) and .*a\.(png|jpg)"):
        data.find_pairs(tmp_path)


# ----------------------------------------------------------------------------- PairedFolder

def test_paired_folder_whole_images_unchanged(tmp_path):
    make_gtlq(tmp_path)
    ds = data.PairedFolder(tmp_path)
    lq, gt = ds[1]
    assert len(ds) == 3 and lq.shape == gt.shape == (3, 16, 12)
    assert torch.equal(gt, data.load_image(tmp_path / "GT" / "b.png"))
    assert torch.equal(lq, data.load_image(tmp_path / "LQ" / "b.png"))


def test_paired_folder_crops_seeded_and_epoch_dependent(tmp_path):
    make_gtlq(tmp_path, size=(40, 40), lq_size=(40, 40))
    ds = data.PairedFolder(tmp_path, crop=16, seed=3)
    a = [ds[i] for i in range(3)]
    assert all(lq.shape == gt.shape == (3, 16, 16) for lq, gt in a)
    b = data.PairedFolder(tmp_path, crop=16, seed=3)[1]
    assert torch.equal(a[1][0], b[0]) and torch.equal(a[1][1], b[1])
    assert not torch.equal(data.PairedFolder(tmp_path, crop=16, seed=4)[1][1], a[1][1])
    ds.set_epoch(1)
    assert not torch.equal(ds[1][1], a[1][1])


def test_paired_folder_lq_and_gt_cropped_at_same_place(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    for d in ("GT", "LQ"):
        (tmp_path / d).mkdir()
        Image.fromarray(arr).save(tmp_path / d / "a.png")
    ds = data.PairedFolder(tmp_path, crop=24)
    for e in range(5):
        ds.set_epoch(e)
        lq, gt = ds[0]
        assert torch.equal(lq, gt)


def test_paired_folder_sr_aligned_and_upsampled(tmp_path):
    yy, xx = np.mgrid[0:96, 0:128]
    gt = 0.5 + 0.4 * np.sin(yy / 9.0)[..., None] * np.cos(xx[..., None] / 13.0 + np.arange(3))
    lq = gt.reshape(24, 4, 32, 4, 3).mean((1, 3))  # 4x box downsampling
    for d, a in (("GT", gt), ("LQ", lq)):
        (tmp_path / d).mkdir()
        Image.fromarray((a * 255).round().astype(np.uint8)).save(tmp_path / d / "a.png")
    ds = data.PairedFolder(tmp_path, crop=32, scale=4)
    for e in range(6):
        ds.set_epoch(e)
        lq_t, gt_t = ds[0]
        assert lq_t.shape == gt_t.shape == (3, 32, 32)
        assert (lq_t - gt_t).abs().mean() < 0.02  # a crop off by one LQ pixel would be ~0.1
    with pytest.raises(DataError, match="multiple of scale 4"):
        data.PairedFolder(tmp_path, crop=30, scale=4)


def test_image_smaller_than_crop_is_refused_before_training(tmp_path):
    """Padding it would train on reflections that no test image has: refused, naming the image and a crop that fits."""
    make_gtlq(tmp_path, names=("a", "b"), size=(48, 40))
    make_gtlq(tmp_path, names=("c",), size=(10, 7))  # (H, W)
    with pytest.raises(DataError, match=r"c\.png: 7x10, smaller than the training crop 32 \(1 of 3 GT.*--crop 7 or less"):
        data.PairedFolder(tmp_path, crop=32)
    assert data.PairedFolder(tmp_path, crop=7)[2][1].shape == (3, 7, 7)
    assert len(data.PairedFolder(tmp_path)) == 3  # whole images (validation): any size


def test_dihedral_group():
    x = torch.arange(12.0).reshape(1, 3, 4)
    outs = [data.dihedral(x, k) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) + tuple(o.shape) for o in outs}) == 8


# ----------------------------------------------------------------------------- degradation dispatch

DEGRADED_DB = 36  # below this PSNR a degradation is plainly visible


@FEW
@given(SEEDS, st.sampled_from(list(tasks.TASKS)))
def test_each_degradation_degrades(seed, task):
    rng = np.random.default_rng(seed)
    clean = photo_clean(seed) if seed % 2 else synthetic.dead_leaves(96, rng)
    assume(clean.std() > 0.05)  # a flat patch of sky hardly changes under blur or SR
    lq = data.degrade(task, clean, rng)
    assert lq.shape == clean.shape and lq.dtype == torch.float32
    assert psnr(lq, clean) < DEGRADED_DB


def test_degrade_unknown_task():
    with pytest.raises(DataError, match="unknown task 'colorize'"):
        data.degrade("colorize", grey(), np.random.default_rng(0))
    with pytest.raises(DataError, match="unknown split 'test'"):
        data.degrade("derain", grey(), np.random.default_rng(0), "test")


@FEW
@given(SEEDS, st.sampled_from(list(tasks.TASKS)), st.sampled_from(["train", "unseen"]))
def test_train_and_unseen_degradations_degrade(seed, task, split):
    clean = synthetic.dead_leaves(96, np.random.default_rng(seed))
    lq = data.degrade(task, clean, np.random.default_rng([seed, 1]), split)
    assert lq.shape == clean.shape and lq.dtype == torch.float32
    assert not torch.equal(lq, clean) and psnr(lq, clean) < DEGRADED_DB
    if tasks.TASKS[task].noise_sigma is None:  # noise stays unclamped
        assert 0 <= lq.min() and lq.max() <= 1


def test_val_degradations_unchanged_by_the_split_argument():
    """degrade's default is the val setting: the fixed validation set keeps its numbers."""
    clean = photo_clean(4, 64)
    for task in tasks.TASKS:
        a = data.degrade(task, clean, np.random.default_rng(3))
        assert torch.equal(a, data.degrade(task, clean, np.random.default_rng(3), "val"))


# ----------------------------------------------------------------------------- synthetic datasets

@pytest.mark.parametrize("task", tasks.TASKS)
def test_synthetic_pairs_shapes_and_ranges(task):
    for split in data.SPLITS:
        ds = data.SyntheticPairs(task, 4, 64, split=split)
        for lq, gt in (ds[0], ds[1]):
            assert lq.shape == gt.shape == (3, 64, 64)
            assert lq.dtype == gt.dtype == torch.float32
            assert 0 <= gt.min() and gt.max() <= 1 and torch.equal(gt, data.quantize(gt))
            if tasks.TASKS[task].noise_sigma is None:
                assert 0 <= lq.min() and lq.max() <= 1 and torch.equal(lq, data.quantize(lq))


def test_synthetic_seeding_and_epochs():
    a = data.SyntheticPairs("derain", 10, 48, seed=7)
    b = data.SyntheticPairs("derain", 10, 48, seed=7)
    order = [b[i] for i in (5, 2, 9)]  # access order (workers) does not matter
    for i, (lq, gt) in zip((5, 2, 9), order):
        assert torch.equal(a[i][0], lq) and torch.equal(a[i][1], gt)
    c = data.SyntheticPairs("derain", 10, 48, seed=8)
    assert not torch.equal(a[5][1], c[5][1])
    first = a[5][1]
    a.set_epoch(1)
    assert not torch.equal(a[5][1], first)
    assert len(a) == 10
    with pytest.raises(IndexError):
        a[10]


def test_validation_set_fixed_and_disjoint(monkeypatch):
    v1 = data.SyntheticPairs("deblur", 6, 64, seed=0, split="val")
    v2 = data.SyntheticPairs("deblur", 6, 64, seed=123, split="val")
    v2.set_epoch(5)
    for i in range(6):
        assert torch.equal(v1[i][0], v2[i][0]) and torch.equal(v1[i][1], v2[i][1])
    # clean images are shared by all tasks
    assert torch.equal(data.SyntheticPairs("sr", 6, 64, split="val")[3][1], v1[3][1])
    assert not set(data.VAL_PHOTOS) & set(data.TRAIN_PHOTOS)
    used = {"train": set(), "val": set()}
    real = data._photo_crop
    for split in used:
        record = lambda name, *a, s=split: used[s].add(name) or real(name, *a)
        monkeypatch.setattr(data, "_photo_crop", record)
        ds = data.SyntheticPairs("sr", 40, 32, split=split)
        for i in range(len(ds)):
            ds[i]
    assert used["train"] <= set(data.TRAIN_PHOTOS) and len(used["train"]) > 1
    assert used["val"] == set(data.VAL_PHOTOS)
    train_gts = [data.SyntheticPairs("sr", 40, 64, seed=s)[i][1] for s in (0, 1) for i in range(20)]
    assert not any(torch.equal(v1[i][1], g) for i in range(6) for g in train_gts)


def test_validation_set_pinned():
    """Pins the fixed validation set (its photo crops are made by Pillow's fixed-point
    resampling, so exact on every machine): a change here changes everyone's validation
    numbers and must be deliberate."""
    ds = data.SyntheticPairs("derain", 4, 32, split="val")
    assert [int((ds[i][1] * 255).round().sum()) for i in (0, 2)] == [375234, 416316]


def synthetic_calls(monkeypatch, run):
    """The names of synthetic's public functions (its generators) that run() calls, at any depth."""
    called = set()
    with monkeypatch.context() as patch:
        for name, fn in list(vars(synthetic).items()):
            if callable(fn) and getattr(fn, "__module__", None) == "synthetic" and not name.startswith("_"):
                def record(*args, _name=name, _fn=fn, **kwargs):
                    called.add(_name)
                    return _fn(*args, **kwargs)
                patch.setattr(synthetic, name, record)
        run()
    return called


def degradation_calls(monkeypatch, task, splits, draws=40):
    clean = photo_clean(1, 32)
    return synthetic_calls(monkeypatch, lambda: [data.degrade(task, clean, np.random.default_rng([k, 5]), split)
                                                 for k in range(draws) for split in splits])


def _forbid(monkeypatch, names):
    for name in names:
        def refuse(*args, _name=name, **kwargs):
            raise AssertionError(f"synthetic.{_name} called")
        monkeypatch.setattr(synthetic, name, refuse)


OWN_UNSEEN = [name for name, task in tasks.TASKS.items() if task.unseen is not None]  # None: val's degradation


@pytest.mark.parametrize("task", tasks.TASKS)
def test_unseen_generators_never_used_for_training_or_val(monkeypatch, task):
    unseen_only = degradation_calls(monkeypatch, task, ["unseen"]) - degradation_calls(monkeypatch, task, ["train", "val"])
    assert bool(unseen_only) == (task in OWN_UNSEEN), (
        f"tasks.TASKS[{task!r}].unseen must call a generator that train and val never call, or be None "
        "(the val degradation on the unseen photographs)")
    _forbid(monkeypatch, unseen_only)
    train = data.SyntheticPairs(task, 150, 24, seed=1)
    for epoch in (0, 1):
        train.set_epoch(epoch)
        for i in range(len(train)):
            train[i]
    val = data.SyntheticPairs(task, 8, 24, split="val")
    for i in range(len(val)):
        val[i]


@pytest.mark.parametrize("task", OWN_UNSEEN)
def test_unseen_set_uses_its_own_degradation(monkeypatch, task):
    train_val_only = degradation_calls(monkeypatch, task, ["train", "val"]) - degradation_calls(monkeypatch, task, ["unseen"])
    _forbid(monkeypatch, train_val_only | {"dead_leaves", "procedural"})  # and photographs only
    ds = data.SyntheticPairs(task, 6, 32, split="unseen")
    for i in range(len(ds)):
        ds[i]


def _record_calls(monkeypatch, names):
    """A list that gets the name of each synthetic.<name> called, and "photo" for each photograph crop."""
    calls = []
    for name in names:
        real = getattr(synthetic, name)
        monkeypatch.setattr(synthetic, name,
                            lambda *a, _name=name, _real=real, **k: calls.append(_name) or _real(*a, **k))
    real_crop = data._photo_crop
    monkeypatch.setattr(data, "_photo_crop", lambda *a: calls.append("photo") or real_crop(*a))
    return calls


def test_training_draws_every_clean_source_and_both_rain_models(monkeypatch):
    recorded = _record_calls(monkeypatch, ("dead_leaves", "procedural", "rain", "rain_streaks"))
    ds = data.SyntheticPairs("derain", 100, 32, seed=2)
    for i in range(len(ds)):
        ds[i]
    calls = collections.Counter(recorded)
    assert all(15 <= calls[k] <= 50 for k in ("dead_leaves", "procedural", "photo"))
    assert 10 <= calls["rain"] <= 45 and calls["rain_streaks"] >= 55


def test_unseen_set_fixed_held_out_and_disjoint(monkeypatch):
    u1 = data.SyntheticPairs("derain", 6, 64, seed=0, split="unseen")
    u2 = data.SyntheticPairs("derain", 6, 64, seed=99, split="unseen")
    u2.set_epoch(3)
    for i in range(6):
        assert torch.equal(u1[i][0], u2[i][0]) and torch.equal(u1[i][1], u2[i][1])
    assert torch.equal(data.SyntheticPairs("sr", 6, 64, split="unseen")[2][1], u1[2][1])
    assert not set(data.UNSEEN_PHOTOS) & set(data.TRAIN_PHOTOS)
    assert set(data.UNSEEN_PHOTOS) - set(data.VAL_PHOTOS)  # at least one photo beyond val's
    val = data.SyntheticPairs("derain", 6, 64, split="val")
    assert not any(torch.equal(u1[i][1], val[j][1]) for i in range(6) for j in range(6))
    used = set()
    real = data._photo_crop
    monkeypatch.setattr(data, "_photo_crop", lambda name, *a: used.add(name) or real(name, *a))
    for i in range(6):
        data.SyntheticPairs("dehaze", 6, 32, split="unseen")[i]
    assert used == set(data.UNSEEN_PHOTOS)
    monkeypatch.setattr(data, "_photo_crop", real)
    train_gts = [data.SyntheticPairs("sr", 40, 64, seed=s)[i][1] for s in (0, 1) for i in range(20)]
    assert not any(torch.equal(u1[i][1], g) for i in range(6) for g in train_gts)


def test_unseen_set_pinned():
    """Pins the unseen set's clean images (Pillow's fixed-point resampling: exact on every
    machine); a change here changes everyone's unseen numbers and must be deliberate."""
    ds = data.SyntheticPairs("derain", 4, 32, split="unseen")
    assert [int((ds[i][1] * 255).round().sum()) for i in (0, 1)] == [148257, 393063]


def test_colour_epochs_show_flat_colours_first(monkeypatch):
    calls = _record_calls(monkeypatch, ("flat_colour", "dead_leaves", "procedural"))
    monkeypatch.setitem(tasks.TASKS, "inpaint", dataclasses.replace(tasks.TASKS["inpaint"], colour_epochs=2))
    ds = data.SyntheticPairs("inpaint", 40, 16, seed=3)
    for epoch, expected in ((0, {"flat_colour"}), (1, {"flat_colour"}), (2, {"dead_leaves", "procedural", "photo"})):
        calls.clear()
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ds[i]
        assert set(calls) == expected, epoch


@pytest.mark.parametrize("task", tasks.TASKS)
def test_only_rows_with_colour_epochs_draw_flat_colours(monkeypatch, task):
    calls = _record_calls(monkeypatch, ("flat_colour", "dead_leaves", "procedural"))
    ds = data.SyntheticPairs(task, 20, 16, seed=4)
    for i in range(len(ds)):
        ds[i]
    assert ("flat_colour" in calls) == (tasks.TASKS[task].colour_epochs > 0)


@pytest.mark.parametrize("task", tasks.TASKS)
def test_pairs_of_every_task_fast(task):
    ds = data.SyntheticPairs(task, 100, 64)
    ds.set_epoch(tasks.TASKS[task].colour_epochs)  # past any flat colours: photographs and procedural images
    ds[0]
    t = time.process_time()
    for i in range(30):
        ds[i]
    assert (time.process_time() - t) / 30 < 0.02  # 1-5 ms measured; loose for slow CI


def test_synthetic_pairs_fast():
    ds = data.SyntheticPairs("derain", 100, 128)
    ds[0]
    t = time.process_time()
    for i in range(20):
        ds[i]
    assert (time.process_time() - t) / 20 < 0.05  # ~2-5 ms measured; loose for slow CI


def test_getitem_restores_torch_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        data.SyntheticPairs("sr", 2, 32)[0]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n)


def test_synthetic_bad_arguments():
    with pytest.raises(DataError, match="unknown task"):
        data.SyntheticPairs("deraining", 4, 64)
    with pytest.raises(DataError, match="split"):
        data.SyntheticPairs("derain", 4, 64, split="test")
    with pytest.raises(DataError, match="crop"):
        data.SyntheticPairs("derain", 4, 4)


def test_make_dataset(tmp_path):
    ds = data.make_dataset("dehaze", crop=32)
    assert isinstance(ds, data.SyntheticPairs) and len(ds) == data.DEFAULT_TRAIN_LEN
    val = data.make_dataset("dehaze", crop=32, split="val")
    assert val.split == "val" and len(val) == data.DEFAULT_VAL_LEN
    for i, n in enumerate(["0001", "0002"]):
        write_png(tmp_path / "GT" / f"{n}.png", 32, 32, seed=i)
        write_png(tmp_path / "LQ" / f"{n}.png", 8, 8, seed=i)
    sr = data.make_dataset("sr", root=tmp_path, crop=16)
    assert isinstance(sr, data.PairedFolder) and sr.scale == 4 and sr[0][0].shape == (3, 16, 16)
    whole = data.make_dataset("sr", root=tmp_path, split="val")
    assert whole[0][0].shape == whole[0][1].shape == (3, 32, 32)
    with pytest.raises(DataError, match="size mismatch"):
        data.make_dataset("derain", root=tmp_path)  # scale 1 for non-SR tasks
    with pytest.raises(DataError, match="split"):
        data.make_dataset("derain", split="training")
    unseen = data.make_dataset("derain", crop=32, split="unseen")
    assert isinstance(unseen, data.SyntheticPairs) and unseen.split == "unseen"
    assert len(unseen) == data.DEFAULT_VAL_LEN
    with pytest.raises(DataError, match="'unseen' split exists only for the built-in"):
        data.make_dataset("sr", root=tmp_path, split="unseen")
