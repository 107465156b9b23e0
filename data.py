"""Data for IR-SDE (PAPER.md section 9): image I/O (files are written only through `atomic_write`),
dataset folders and the built-in synthetic data. Images are float32 torch tensors (3, H, W) in
[0, 1] throughout. `find_pairs` / `PairedFolder` read the layouts users have on disk:
  "gtlq"    <root>/GT/* and <root>/LQ/*, paired by file stem (the reference code's layout);
  "rain100" Rain100H/L as distributed by PReNet: rain-N.png / norain-N.png in one folder,
            or rain/ (or rainy/) and norain/ subfolders;
  "gopro"   <root>/<scene>/blur/*.png and <root>/<scene>/sharp/*.png (or root = one scene).
`SyntheticPairs` degrades synthetic.py's clean images and crops of the photographs in assets/
with each task's degradations (tasks.py).
"""
import os
import re
import signal
import tempfile
import uuid
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

import synthetic
import tasks
from synthetic import upsample

LAYOUTS = ("gtlq", "rain100", "gopro")
ASSETS = Path(__file__).resolve().parent / "assets"
SPLITS = ("train", "val", "unseen")
TRAIN_PHOTOS = ("astronaut.png", "coffee.png", "camera.png", "ihc.png", "coins.png", "text.png",
                "brick.png", "grass.png", "gravel.png")
VAL_PHOTOS = ("chelsea.png",)  # held out from training, like UNSEEN_PHOTOS
UNSEEN_PHOTOS = ("rocket.png", "chelsea.png")
VAL_SEED = 12345  # the validation set never depends on the user's seed
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_TRAIN_LEN = 1000  # nominal epoch length of the synthetic training set
DEFAULT_VAL_LEN = 8


class DataError(ValueError):
    """Bad input data, or an output that cannot be written; the message names the file or folder."""


# ----------------------------------------------------------------------------- image I/O

def load_image(path):
    """Read an image file as a float32 (3, H, W) tensor in [0, 1].

    As the reference code's cv2 reader does, an alpha channel is dropped (not composited) and EXIF
    orientation is ignored. Greyscale is repeated to 3 channels, palettes are expanded, 16-bit
    greyscale (Pillow modes I;16* and I) is divided by 65535; Pillow decodes 16-bit RGB to 8 bits.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    with _decoding(path) as im:
        im.load()
        if im.mode.startswith("I"):
            arr = np.clip(np.asarray(im).astype(np.float32) / 65535.0, 0.0, 1.0)
        elif im.mode == "F":
            arr = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        else:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


@contextmanager
def _decoding(path):
    """Image.open(path), any decoding error raised as DataError "<path>: cannot decode image"."""
    try:
        with Image.open(path) as im:
            yield im
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e


def image_size(path):
    """(width, height) from the file header only (cheap)."""
    with _decoding(path) as im:
        return im.size


def save_image(img, path):
    """Write a (3, H, W) image in [0, 1] as 8 bits (clamp, round) with atomic_write, in the format
    of the suffix (PNG when unknown)."""
    path = Path(path)
    img = torch.as_tensor(img).detach().cpu().float()
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise DataError(f"{path}: expected a (3, H, W) image, got shape {tuple(img.shape)}")
    if torch.isnan(img).any():
        raise DataError(f"{path}: image contains NaN, refusing to save it")
    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    atomic_write(path, lambda f: pil.save(f, format=fmt))


def quantize(img):
    """Round to the 8-bit grid, as an image stored in a PNG would be."""
    return (img.clamp(0, 1) * 255).round() / 255


def list_images(path):
    """[path] for a file, else the folder's image files (IMAGE_EXTS, hidden files skipped) sorted by
    name; DataError when the path does not exist or the folder has none."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"{path}: no images (looked for {', '.join(IMAGE_EXTS)})")
    return files


def atomic_write(path, write):
    """Write `path` all at once, e.g. atomic_write(path, lambda f: torch.save(state, f)), so that a
    reader sees the old file or the new one, never half: `write(f)` fills a hidden temporary file
    next to `path`, which os.replace moves into place. On any failure
    the temporary file is removed, the target left untouched and the error re-raised, an OSError
    as DataError "<path>: cannot write (<reason>)"."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:
            created = True
            write(f)
        os.replace(tmp, path)
        created = False
    except OSError as e:
        raise DataError(f"{path}: cannot write ({e.strerror or e})") from e
    finally:
        if created:
            with suppress(OSError):  # e.g. the folder was removed meanwhile; the original error matters
                tmp.unlink(missing_ok=True)


def check_writable(folder, what="this folder"):
    """Create `folder` and probe-write a file in it, so that a run can stop before doing any work;
    DataError "<folder>: cannot write to <what> (<reason>)" when either fails. Returns a Path."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()  # deleted on close
    except OSError as e:
        raise DataError(f"{folder}: cannot write to {what} ({e.strerror or e})") from e
    return folder


# ----------------------------------------------------------------------------- folders

def find_pairs(root, layout="auto", scale=1):
    """Sorted (lq_path, gt_path) pairs of a folder in `layout` ("auto": detected; see the module
    docstring). Names must match (an LQ stem may carry an "x4"-style suffix) and every LQ image must
    be GT size // scale (header reads only; scale=None infers one from the first pair). Rain100
    only: GT images without a rainy partner are skipped, as PReNet's own loader does, because its
    RainTrainH has norain-N files whose rain-N was deleted."""
    pairs = _layout_pairs(Path(root), layout)
    check_sizes(pairs, scale)
    return pairs


def detect_layout(root):
    """Name of the layout of `root`, or DataError listing the layouts looked for."""
    root = Path(root)
    _require_dir(root)
    if _subdir(root, "GT") and _subdir(root, "LQ"):
        return "gtlq"
    if _rain_files(root, "rain") or (_rain_dirs(root) is not None):
        return "rain100"
    if _gopro_scenes(root):
        return "gopro"
    raise DataError(f"no known layout in {root}: expected GT/ and LQ/, rain-*.png/norain-*.png, "
                    f"or <scene>/blur + <scene>/sharp")


def _layout_pairs(root, layout):
    _require_dir(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise DataError(f"{root}: unknown layout {layout!r}; expected auto or one of {LAYOUTS}")
    pairs = {"gtlq": _gtlq_pairs, "rain100": _rain100_pairs, "gopro": _gopro_pairs}[layout](root)
    if not pairs:
        raise DataError(f"{root}: no image pairs found (layout {layout})")
    return pairs


def _require_dir(path):
    if not path.exists():
        raise DataError(f"{path}: folder not found")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder")


def _subdir(root, name):
    """Child folder of `root` named `name` (case-insensitive), or None."""
    return next((c for c in sorted(root.iterdir()) if c.is_dir() and c.name.lower() == name.lower()), None)


def _images(folder):
    """list_images of a folder that must exist ("folder not found" / "not a folder")."""
    _require_dir(folder)
    return list_images(folder)


def _natural(key):
    """Sort key that orders rain-2 before rain-10."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", key)]


def _keyed(files, key=lambda p: p.stem):
    """{key(file): file}; DataError when two files share a key (e.g. a.png and a.jpg)."""
    out = {}
    for f in files:
        k = key(f)
        if k in out:
            raise DataError(f"{f} and {out[k]} have the same name; remove one")
        out[k] = f
    return out


def _match(lq, gt, lq_dir, gt_dir, skip_gt_only=False):
    """Pair {key: path} dicts; DataError naming the first unmatched files."""
    lq_only = sorted(set(lq) - set(gt), key=_natural)
    gt_only = [] if skip_gt_only else sorted(set(gt) - set(lq), key=_natural)
    if lq_only or gt_only:
        msg = [f"{lq_dir} has {len(lq)} images and {gt_dir} has {len(gt)}, names must match"]
        if lq_only:
            msg.append("no GT for " + ", ".join(str(lq[k]) for k in lq_only[:5]))
        if gt_only:
            msg.append("no LQ for " + ", ".join(str(gt[k]) for k in gt_only[:5]))
        raise DataError("; ".join(msg))
    return [(lq[k], gt[k]) for k in sorted(set(lq) & set(gt), key=_natural)]


def _gtlq_pairs(root):
    gt_dir, lq_dir = _subdir(root, "GT") or root / "GT", _subdir(root, "LQ") or root / "LQ"
    gt = _keyed(_images(gt_dir))
    # DIV2K names its bicubic LQ 0001x4.png for GT 0001.png
    lq = _keyed(_images(lq_dir), lambda p: p.stem if p.stem in gt else re.sub(r"x\d+$", "", p.stem))
    return _match(lq, gt, lq_dir, gt_dir)


def _rain_key(path):
    """"rain-007" / "norain-7" / "7" -> "7"."""
    key = re.sub(r"^(no)?rain-?", "", path.stem)
    return str(int(key)) if key.isdigit() else key


def _rain_files(folder, prefix):
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
            and re.match(prefix + r"-\d", p.name)]


def _rain_dirs(root):
    """(rain_dir, norain_dir) subfolders if present, else None."""
    lq = _subdir(root, "rain") or _subdir(root, "rainy")
    gt = _subdir(root, "norain")
    return (lq, gt) if lq and gt else None


def _rain100_pairs(root):
    dirs = _rain_dirs(root)
    if dirs:
        lq_files, gt_files = _images(dirs[0]), _images(dirs[1])
        lq_dir, gt_dir = dirs
    else:
        lq_files, gt_files = _rain_files(root, "rain"), _rain_files(root, "norain")
        lq_dir = gt_dir = root
        if not lq_files or not gt_files:
            raise DataError(f"{root}: expected rain-N.png and norain-N.png files, found "
                            f"{len(lq_files)} rain and {len(gt_files)} norain")
    return _match(_keyed(lq_files, _rain_key), _keyed(gt_files, _rain_key), lq_dir, gt_dir,
                  skip_gt_only=True)


def _gopro_scenes(root):
    """Scene folders holding blur/ and sharp/ (root itself when it is one scene)."""
    if (root / "blur").is_dir() and (root / "sharp").is_dir():
        return [root]
    return [d for d in sorted(root.iterdir())
            if d.is_dir() and (d / "blur").is_dir() and (d / "sharp").is_dir()]


def _gopro_pairs(root):
    scenes = _gopro_scenes(root)
    if not scenes:
        raise DataError(f"{root}: no <scene>/blur + <scene>/sharp folders")
    incomplete = [d for d in sorted(root.iterdir()) if d.is_dir() and d not in scenes
                  and ((d / "blur").is_dir() or (d / "sharp").is_dir())]
    if incomplete and scenes != [root]:
        raise DataError(f"{incomplete[0]}: scene has only one of blur/ and sharp/")
    pairs = []
    for scene in scenes:
        blur, sharp = scene / "blur", scene / "sharp"
        pairs += _match(_keyed(_images(blur)), _keyed(_images(sharp)), blur, sharp)
    return pairs


def check_sizes(pairs, scale):
    """Validate LQ size == GT size // scale for every (lq, gt) pair from the file headers; return
    the (inferred, when scale is None) scale."""
    if scale is not None and (int(scale) != scale or scale < 1):
        raise DataError(f"scale must be a positive integer, got {scale!r}")
    for lq, gt in pairs:
        (lw, lh), (gw, gh) = image_size(lq), image_size(gt)
        if scale is None:
            scale = max(1, round(gw / lw))
        if (lw, lh) != (gw // scale, gh // scale):
            extra = f" (expected GT size / {scale} = {gw // scale}x{gh // scale})" if scale > 1 else ""
            raise DataError(f"size mismatch: {lq} is {lw}x{lh} but {gt} is {gw}x{gh}{extra}")
    return int(scale)


def fit_gt(gt, lq, scale, lq_path, gt_path):
    """gt cut to the LQ size x scale ("modcrop"), once both are decoded; DataError unless GT size //
    scale is the LQ size (the pixels must agree with what the headers said)."""
    if (gt.shape[1] // scale, gt.shape[2] // scale) != tuple(lq.shape[1:]):
        raise DataError(f"size mismatch: {lq_path} is {lq.shape[2]}x{lq.shape[1]} "
                        f"but {gt_path} is {gt.shape[2]}x{gt.shape[1]} (expected GT size / {scale} = LQ size)")
    return gt[:, :lq.shape[1] * scale, :lq.shape[2] * scale]


class _Pairs(Dataset):
    """Pair idx of epoch e is ds[(e, idx)], or ds[idx] after set_epoch(e); its randomness is drawn
    from np.random.default_rng([seed, e, idx])."""
    epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __getitem__(self, key):
        with _single_threaded():
            return self._pair(*_epoch_index(key, len(self), self.epoch))


class PairedFolder(_Pairs):
    """(lq, gt) pairs from a dataset folder (layouts: see find_pairs).

    crop=None: whole images, no randomness (validation / test). crop=int: a random aligned crop
    (GT crop x crop, LQ crop // scale), then, if `augment`, one of the 8 flips/90-degree rotations
    (section 8); a GT image smaller than the crop is refused, as padding it would train on
    reflections that no test image has. For scale > 1 the LQ is upsampled bicubically to the GT
    size, as the reference code feeds SR inputs, and GT sides are cut to multiples of scale.
    """

    def __init__(self, root, crop=None, seed=0, layout="auto", scale=1, augment=True):
        self.root = Path(root)
        self.pairs = _layout_pairs(self.root, layout)
        self.scale = check_sizes(self.pairs, scale)
        if crop is not None and (int(crop) != crop or crop < 1 or crop % self.scale):
            raise DataError(f"{self.root}: crop must be a positive multiple of scale "
                            f"{self.scale}, got {crop!r}")
        sides = [min(image_size(gt)) for _, gt in self.pairs] if crop is not None else []
        small = [gt for (_, gt), side in zip(self.pairs, sides) if side < crop]
        if small:
            w, h = image_size(small[0])
            raise DataError(f"{small[0]}: {w}x{h}, smaller than the training crop {crop} ({len(small)} of "
                            f"{len(self.pairs)} GT images are); train with --crop {min(sides)} or less, or leave "
                            "those images out")
        self.crop, self.seed, self.augment = crop, seed, augment

    def __len__(self):
        return len(self.pairs)

    def _pair(self, epoch, idx):
        lq_path, gt_path = self.pairs[idx]
        lq, s = load_image(lq_path), self.scale
        gt = fit_gt(load_image(gt_path), lq, s, lq_path, gt_path)
        if self.crop is not None:  # aligned: GT crop x crop, LQ (crop // scale)^2
            rng = np.random.default_rng([self.seed, epoch, idx])
            c = self.crop // s
            y, x = int(rng.integers(lq.shape[1] - c + 1)), int(rng.integers(lq.shape[2] - c + 1))
            lq, gt = lq[:, y:y + c, x:x + c], gt[:, y * s:(y + c) * s, x * s:(x + c) * s]
        if s > 1:
            lq = upsample(lq, gt.shape[-2:])
        if self.crop is not None and self.augment:
            k = int(rng.integers(8))
            lq, gt = dihedral(lq, k), dihedral(gt, k)
        return lq, gt


@contextmanager
def _single_threaded():
    """Run torch ops on one thread (as DataLoader workers do), then restore the setting: on tensors
    this small, extra threads only add overhead, ~30x on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _epoch_index(key, n, epoch):
    """(epoch, index) from an index (at the epoch of set_epoch) or an (epoch, index) pair: a loader's
    sampler passes the epoch that way, which reaches worker processes where set_epoch does not."""
    epoch, idx = key if isinstance(key, tuple) else (epoch, key)
    if not -n <= idx < n:
        raise IndexError(f"index {idx} out of range for a dataset of {n} pairs")
    return int(epoch), int(idx) % n


def sample_order(n, seed, rank=0, world=1, start=0):
    """train.py's loader order: (epoch, index) pairs without end, one seeded permutation of the n pairs
    per epoch, dealt round-robin to the ranks, from this rank's `start`-th sample on (a resumed run
    sees the same batches)."""
    position = start * world + rank
    while True:
        epoch = position // n
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        while position // n == epoch:
            yield epoch, int(order[position % n])
            position += world


def ignore_stop_signals(worker_id):
    """Loader workers ignore Ctrl-C and SIGTERM: sent to the whole process group (a terminal, timeout,
    SLURM, docker stop), they would kill the workers and the run with them. The main process stops
    the run; the workers end with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def export_pairs(pairs, folder):
    """Write a dataset's (lq, gt) pairs as <folder>/LQ/000.png and <folder>/GT/000.png, ..."""
    for k in range(len(pairs)):
        lq, gt = pairs[k]
        save_image(lq.clamp(0, 1), folder / "LQ" / f"{k:03d}.png")
        save_image(gt, folder / "GT" / f"{k:03d}.png")


def dihedral(img, k):
    """k-th of the 8 flips/90-degree rotations (k in 0..7) of a (C, H, W) image."""
    img = torch.rot90(img, int(k) % 4, dims=(1, 2))
    return (img.flip(2) if k >= 4 else img).contiguous()


# ----------------------------------------------------------------------------- synthetic pairs

@lru_cache(maxsize=None)
def _photo(name):
    """A shipped photograph as an RGB PIL image, loaded once per process."""
    path = ASSETS / name
    load_image(path)  # same checks and error messages as for user data
    with Image.open(path) as im:
        return im.convert("RGB")


def _photo_crop(name, crop, rng):
    """Random crop x crop patch of a shipped photo, zoomed out by a random factor in [1, 2]; Pillow
    resamples 8-bit images in fixed-point arithmetic, so it is bit-identical on every machine."""
    im = _photo(name)
    side = min(int(round(crop * rng.uniform(1.0, 2.0))), im.width, im.height)
    x, y = int(rng.integers(im.width - side + 1)), int(rng.integers(im.height - side + 1))
    box = (x, y, x + side, y + side)
    patch = im.crop(box) if side == crop else im.resize((crop, crop), Image.BICUBIC, box=box)
    return torch.from_numpy(np.asarray(patch, np.float32) / 255.0).permute(2, 0, 1).contiguous()


def degrade(task, clean, rng, split="val"):
    """Low-quality version of `clean` for `task` as drawn for `split` (its row of tasks.TASKS; an
    unseen degradation of None is the val one). The default "val" is the paper's setting."""
    _check(task, split)
    row = tasks.TASKS[task]
    return (getattr(row, split) or row.val)(clean, rng)


def _check(task, split):
    if task not in tasks.TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {', '.join(tasks.TASKS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    seed = tasks.TASKS[task].val_seed
    shared = [name for name, row in tasks.TASKS.items() if row.val_seed == seed and name != task]
    if shared:  # the two tasks' fixed sets would hold the same draws
        raise DataError(f"tasks.TASKS[{task!r}].val_seed {seed} is also {', '.join(shared)}'s: each task's "
                        "fixed val and unseen sets need a seed of their own")


class SyntheticPairs(_Pairs):
    """n (lq, gt) pairs, both (3, crop, crop): clean images degraded by degrade(task, ..., split).

    "train": clean = a random zoomed crop of a TRAIN_PHOTOS photo (p 0.4), dead leaves (p 0.3) or
    a synthetic.procedural image (p 0.3), in the task's first colour_epochs a synthetic.flat_colour
    image; then one of the 8 flips/rotations; n is the nominal epoch length. "val": fixed; even idx
    crops of VAL_PHOTOS, odd idx dead leaves. "unseen": fixed crops of UNSEEN_PHOTOS. val and unseen
    ignore `seed` and the epoch: their 4-word seed sequences from VAL_SEED never equal a training one
    (for seeds below 2**32), so each set is the same on every run and disjoint from training data;
    their clean images are the same for every task. GT and LQ are rounded to 8 bits like images read
    from PNG files, except a noisy input (denoising), which stays unclamped floating point, as noise is.
    """

    def __init__(self, task, n, crop, seed=0, split="train"):
        _check(task, split)
        if int(n) != n or n < 1 or int(crop) != crop or crop < 8:
            raise DataError(f"need n >= 1 and crop >= 8, got n={n!r}, crop={crop!r}")
        self.task, self.n, self.crop, self.seed, self.split = task, int(n), int(crop), seed, split

    def __len__(self):
        return self.n

    def _pair(self, epoch, idx):
        if self.split == "train":
            rng = np.random.default_rng([self.seed, epoch, idx])
            clean = dihedral(self._train_clean(rng, epoch), int(rng.integers(8)))
        else:
            tag = SPLITS.index(self.split)  # 1 (val) or 2 (unseen)
            clean = self._held_out_clean(idx, tag)
            rng = np.random.default_rng([VAL_SEED, idx, tasks.TASKS[self.task].val_seed, tag])
        lq = degrade(self.task, clean, rng, self.split)
        noisy = tasks.TASKS[self.task].noise_sigma is not None
        return (lq if noisy else quantize(lq)), clean

    def _train_clean(self, rng, epoch):
        if epoch < tasks.TASKS[self.task].colour_epochs:
            return quantize(synthetic.flat_colour(self.crop, rng))
        u = rng.random()
        if u < 0.3:
            return quantize(synthetic.dead_leaves(self.crop, rng))
        if u < 0.6:
            return quantize(synthetic.procedural(self.crop, rng))
        return _photo_crop(TRAIN_PHOTOS[int(rng.integers(len(TRAIN_PHOTOS)))], self.crop, rng)

    def _held_out_clean(self, idx, tag):
        rng = np.random.default_rng([VAL_SEED, idx, 0, tag])
        if self.split == "unseen":
            return _photo_crop(UNSEEN_PHOTOS[idx % len(UNSEEN_PHOTOS)], self.crop, rng)
        if idx % 2 == 0:
            return _photo_crop(VAL_PHOTOS[(idx // 2) % len(VAL_PHOTOS)], self.crop, rng)
        return quantize(synthetic.dead_leaves(self.crop, rng))


def make_dataset(task, root=None, crop=128, seed=0, split="train", n=None, scale=None):
    """SyntheticPairs, n defaulting to DEFAULT_TRAIN_LEN (train) or DEFAULT_VAL_LEN; or, given root,
    PairedFolder: random crops with augmentation for "train", whole images for "val", n ignored,
    scale defaulting to 1, or for an SR task (scale > 1 in tasks.py) to the one the image sizes
    show (4 for DIV2K-style LQ, 1 for LQ stored already upsampled)."""
    _check(task, split)
    if root is not None:
        if split == "unseen":
            raise DataError(f"{root}: the 'unseen' split exists only for the built-in synthetic "
                            f"data; use split 'val' for a folder")
        if scale is None and tasks.TASKS[task].scale == 1:
            scale = 1
        train = split == "train"
        return PairedFolder(root, crop=crop if train else None, seed=seed, scale=scale,
                            augment=train)
    if n is None:
        n = DEFAULT_TRAIN_LEN if split == "train" else DEFAULT_VAL_LEN
    return SyntheticPairs(task, n, crop, seed=seed, split=split)
