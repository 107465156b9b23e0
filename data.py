"""Data for IR-SDE (PAPER.md section 9): image I/O, paired folders, synthetic degradations.

Images are float32 torch tensors (3, H, W) in [0, 1] throughout; the
degradations take and return such tensors and draw all randomness from a numpy
`np.random.Generator`, so every pair is a pure function of its seed.

Real data: `find_pairs` / `PairedFolder` read the layouts users have on disk (section 9):
  "gtlq"    <root>/GT/* and <root>/LQ/*, paired by file stem (the reference code's layout);
  "rain100" Rain100H/L as distributed by PReNet: rain-N.png / norain-N.png in one folder,
            or rain/ (or rainy/) and norain/ subfolders;
  "gopro"   <root>/<scene>/blur/*.png and <root>/<scene>/sharp/*.png (or root = one scene).
Synthetic data: `SyntheticPairs` degrades clean images that are either dead-leaves images
(Achddou et al. 2021) or crops of the photographs shipped in assets/ (see ATTRIBUTION.md).
`TRAIN_PHOTOS` are used for training only; `VAL_PHOTOS` (chelsea.png) are held out for the
fixed validation set.
"""
import os
import re
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

TASKS = ("derain", "deblur", "denoise", "sr", "inpaint", "dehaze")
LAYOUTS = ("gtlq", "rain100", "gopro")
ASSETS = Path(__file__).resolve().parent / "assets"
TRAIN_PHOTOS = ("astronaut.png", "coffee.png", "rocket.png", "camera.png")
VAL_PHOTOS = ("chelsea.png",)
VAL_SEED = 12345  # the validation set never depends on the user's seed
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
NOISE_SIGMA = 25 / 255  # section 9: denoising at sigma = 25
SR_SCALE = 4  # section 9: 4x super-resolution
DEFAULT_TRAIN_LEN = 1000  # nominal epoch length of the synthetic training set
DEFAULT_VAL_LEN = 8


class DataError(ValueError):
    """Bad input data; the message names the file or folder and the problem."""


# ----------------------------------------------------------------------------- image I/O

def load_image(path):
    """Read an image file as a float32 (3, H, W) tensor in [0, 1].

    Greyscale is repeated to 3 channels; an alpha channel is dropped (not composited), as
    the reference code's cv2 reader does; palette images are expanded; 16-bit greyscale
    (Pillow modes I;16* and I) is divided by 65535. Pillow reduces 16-bit RGB PNGs to 8 bits
    while decoding. EXIF orientation is ignored, as in the reference code.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()
            arr = _to_float_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _to_float_rgb(im):
    """HxWx3 float32 array in [0, 1] from a decoded PIL image of any mode."""
    if im.mode.startswith("I"):
        arr = np.clip(np.asarray(im).astype(np.float32) / 65535.0, 0.0, 1.0)
    elif im.mode == "F":
        arr = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    else:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def save_image(img, path):
    """Write a (3, H, W) image in [0, 1] as 8 bits (clamp, round), atomically.

    The format follows the suffix (PNG when unknown). The file is written next to its
    target and moved into place with os.replace, so a reader never sees half a file.
    """
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            pil.save(f, format=fmt)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- folders

def find_pairs(root, layout="auto", scale=1):
    """Sorted list of (lq_path, gt_path) in a dataset folder, validated.

    layout: "auto" (detect), "gtlq", "rain100" or "gopro" (see the module docstring).
    Names must match (stems; an LQ stem may carry an "x4"-style suffix), counts must agree,
    and every LQ image must be GT size // scale (header reads only; scale=None infers one
    integer scale from the first pair). Rain100 only: GT images without a rainy partner are
    skipped, because PReNet's RainTrainH has norain-N files whose rain-N was deleted (its
    own loader skips them the same way).
    """
    root = Path(root)
    pairs = _layout_pairs(root, layout)
    _check_sizes(pairs, scale)
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
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


def _images(folder):
    """Image files in `folder` (hidden files skipped); DataError when there are none."""
    _require_dir(folder)
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"{folder}: no images (looked for {', '.join(IMAGE_EXTS)})")
    return files


def _natural(key):
    """Sort key that orders rain-2 before rain-10."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", key)]


def _keyed(files, key):
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
    gt = _keyed(_images(gt_dir), lambda p: p.stem)
    # DIV2K names its bicubic LQ 0001x4.png for GT 0001.png
    lq = _keyed(_images(lq_dir),
                lambda p: p.stem if p.stem in gt else re.sub(r"x\d+$", "", p.stem))
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
        pairs += _match(_keyed(_images(blur), lambda p: p.stem),
                        _keyed(_images(sharp), lambda p: p.stem), blur, sharp)
    return pairs


def _header_size(path):
    """(width, height) from the file header only (cheap)."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e


def _check_sizes(pairs, scale):
    """Validate LQ size == GT size // scale for every pair; return the (inferred) scale."""
    if scale is not None and (int(scale) != scale or scale < 1):
        raise DataError(f"scale must be a positive integer, got {scale!r}")
    for lq, gt in pairs:
        (lw, lh), (gw, gh) = _header_size(lq), _header_size(gt)
        if scale is None:
            scale = max(1, round(gw / lw))
        if (lw, lh) != (gw // scale, gh // scale):
            extra = f" (expected GT size / {scale} = {gw // scale}x{gh // scale})" if scale > 1 else ""
            raise DataError(f"size mismatch: {lq} is {lw}x{lh} but {gt} is {gw}x{gh}{extra}")
    return int(scale)


class PairedFolder(Dataset):
    """(lq, gt) pairs from a dataset folder (layouts: see find_pairs).

    crop=None: whole images, no randomness (validation / test). crop=int: a random aligned
    crop (GT crop x crop, LQ crop // scale), then, if `augment`, one of the 8 flips/90-degree
    rotations (section 8). Images smaller than the crop are mirror-padded (symmetric, which
    keeps LQ and GT aligned for scale > 1). For scale > 1 the LQ is upsampled bicubically to
    the GT size, as the reference code feeds SR inputs (section 9), so lq and gt have the
    same shape; GT sides that are not multiples of scale are cropped ("modcrop").
    Randomness: np.random.default_rng([seed, epoch, idx]); call set_epoch(e) every epoch.
    """

    def __init__(self, root, crop=None, seed=0, layout="auto", scale=1, augment=True):
        self.root = Path(root)
        self.pairs = _layout_pairs(self.root, layout)
        self.scale = _check_sizes(self.pairs, scale)
        if crop is not None and (int(crop) != crop or crop < 1 or crop % self.scale):
            raise DataError(f"{self.root}: crop must be a positive multiple of scale "
                            f"{self.scale}, got {crop!r}")
        self.crop, self.seed, self.augment, self.epoch = crop, seed, augment, 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, idx):
        with _single_threaded():
            return self._pair(_check_index(idx, len(self)))

    def _pair(self, idx):
        lq_path, gt_path = self.pairs[idx]
        lq, gt = load_image(lq_path), load_image(gt_path)
        s = self.scale
        gt = gt[:, :lq.shape[1] * s, :lq.shape[2] * s]
        if self.crop is not None:
            rng = np.random.default_rng([self.seed, self.epoch, idx])
            lq, gt = _paired_crop(lq, gt, self.crop, s, rng)
        if s > 1:
            lq = upsample(lq, gt.shape[-2:])
        if self.crop is not None and self.augment:
            k = int(rng.integers(8))
            lq, gt = dihedral(lq, k), dihedral(gt, k)
        return lq, gt


@contextmanager
def _single_threaded():
    """Run torch ops on one intra-op thread, then restore the setting.

    The tensors here are small: extra threads only add overhead, and on a busy machine
    (another process on a core) they made each pair ~30x slower (5 ms -> 170 ms measured
    on 2 cores). DataLoader workers are single-threaded already; this covers num_workers=0.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _check_index(idx, n):
    if not -n <= idx < n:
        raise IndexError(f"index {idx} out of range for a dataset of {n} pairs")
    return int(idx) % n


def _pad_to(img, h, w):
    """Mirror-pad (symmetric) at the bottom/right to at least h x w."""
    ph, pw = max(0, h - img.shape[1]), max(0, w - img.shape[2])
    if ph == 0 and pw == 0:
        return img
    return torch.from_numpy(np.pad(img.numpy(), ((0, 0), (0, ph), (0, pw)), mode="symmetric"))


def _paired_crop(lq, gt, crop, scale, rng):
    """Random crop at the same place: GT crop x crop, LQ (crop // scale)^2."""
    c = crop // scale
    lq = _pad_to(lq, c, c)
    gt = _pad_to(gt, lq.shape[1] * scale, lq.shape[2] * scale)
    y = int(rng.integers(lq.shape[1] - c + 1))
    x = int(rng.integers(lq.shape[2] - c + 1))
    return (lq[:, y:y + c, x:x + c],
            gt[:, y * scale:(y + c) * scale, x * scale:(x + c) * scale])


def dihedral(img, k):
    """k-th of the 8 flips/90-degree rotations (k in 0..7) of a (C, H, W) image."""
    img = torch.rot90(img, int(k) % 4, dims=(1, 2))
    return (img.flip(2) if k >= 4 else img).contiguous()


def upsample(img, size):
    """Bicubic resize of (3, h, w) to size=(H, W), clamped to [0, 1]."""
    out = F.interpolate(img[None], size=tuple(size), mode="bicubic", align_corners=False)
    return out[0].clamp(0, 1)


# ----------------------------------------------------------------------------- clean images

def dead_leaves(size, rng, alpha=3.0, rmin=None, rmax=None, coverage=5.0):
    """Dead-leaves image (Achddou et al. 2021): occluding discs with radius density r^-alpha.

    Discs are drawn i.i.d. (centres uniform on the image grown by r, so the borders are
    covered like the middle); the first drawn is the front-most, so each pixel takes the
    colour of the first disc covering it. Enough discs are drawn to cover the image
    `coverage` times over (uncovered fraction ~exp(-coverage)); leftovers get a background
    colour. rmin/rmax default to min(H, W)/40 (at least 1) and max(H, W). Each leaf gets a random
    colour, a linear shading ramp and sometimes a sinusoidal texture; a smooth illumination
    field and a mild Gaussian blur (sigma 0.3-0.9, like optics) follow, so that images are
    not piecewise flat with aliased edges. Returns float32 (3, H, W) in [0, 1].
    """
    h, w = (size, size) if np.isscalar(size) else size
    rmin = rmin or max(1.0, min(h, w) / 40)
    rmax = rmax or float(max(h, w))
    r = _power_law(rng, alpha, rmin, rmax, h, w, coverage)
    cy, cx = rng.uniform(-r, h + r), rng.uniform(-r, w + r)
    label = _front_labels(h, w, cy, cx, r)
    img = _shade_leaves(label, cy, cx, r, rng)
    img = img * torch.from_numpy(_smooth_field(h, w, rng, 3, 0.8, 1.2)).float()
    img = gaussian_blur(img, rng.uniform(0.3, 0.9))
    return img.clamp(0, 1)


def _power_law(rng, alpha, rmin, rmax, h, w, coverage):
    """Radii with density ~ r^-alpha on [rmin, rmax], enough to cover an h x w image
    `coverage` times over when centres are uniform on the image grown by r on each side."""
    a = 1.0 - alpha
    r = np.empty(0)
    need = coverage * h * w
    area = lambda r: np.pi * r ** 2 * h * w / ((h + 2 * r) * (w + 2 * r))
    while np.sum(area(r)) < need and len(r) < 200_000:
        u = rng.random(max(256, len(r)))
        new = (rmin ** a + u * (rmax ** a - rmin ** a)) ** (1 / a) if a else rmin * (rmax / rmin) ** u
        r = np.concatenate([r, new])
    return r[:np.searchsorted(np.cumsum(area(r)), need) + 1]


_BUCKETS = (2, 3, 5, 8, 12, 16, 24, 32, 48, 64)  # box half-widths for vectorised discs


def _front_labels(h, w, cy, cx, r):
    """Per pixel, the smallest index of a disc covering its centre (len(r) if none).

    Small discs are stamped in vectorised batches of equal box size into a canvas with a
    margin (so boxes need no clipping); min is order-independent, so np.minimum.at gives
    the same labels on every run. The few large discs are tested against every pixel.
    """
    m = 2 * _BUCKETS[-1]
    labels = np.full((h + 2 * m, w + 2 * m), len(r), np.int64)
    bucket = np.searchsorted(_BUCKETS, np.ceil(r))
    for b, half in enumerate(_BUCKETS):
        sel = np.nonzero(bucket == b)[0]
        if len(sel):
            _stamp(labels, sel, cy[sel] + m, cx[sel] + m, r[sel], half)
    labels = labels[m:m + h, m:m + w]
    big = np.nonzero(bucket == len(_BUCKETS))[0]
    for chunk in np.array_split(big, len(big) * h * w // 2_000_000 + 1):  # bounded memory
        yy = (np.arange(h) + 0.5)[None, :, None] - cy[chunk, None, None]
        xx = (np.arange(w) + 0.5)[None, None, :] - cx[chunk, None, None]
        inside = yy ** 2 + xx ** 2 <= r[chunk, None, None] ** 2
        first = np.where(inside, chunk[:, None, None], len(r)).min(0, initial=len(r))
        labels = np.minimum(labels, first)
    return labels


def _stamp(labels, idx, cy, cx, r, half):
    """labels = min(labels, idx) over discs that all fit a (2*half+1)^2 box."""
    off = np.arange(-half, half + 1)
    ys = np.floor(cy).astype(np.int64)[:, None, None] + off[None, :, None]
    xs = np.floor(cx).astype(np.int64)[:, None, None] + off[None, None, :]
    inside = ((ys + 0.5 - cy[:, None, None]) ** 2 + (xs + 0.5 - cx[:, None, None]) ** 2
              <= r[:, None, None] ** 2)
    ids = np.broadcast_to(idx[:, None, None], inside.shape)[inside]
    np.minimum.at(labels.reshape(-1), (ys * labels.shape[1] + xs)[inside], ids)


def _shade_leaves(label, cy, cx, r, rng):
    """Colour each leaf: base colour + linear ramp + (for ~30% of leaves) a sinusoid."""
    h, w = label.shape
    n = len(r) + 1  # the last "leaf" is the background
    grey = rng.uniform(0.05, 0.95, (n, 1))
    colour = np.clip(grey + rng.normal(0, 0.08, (n, 3)), 0, 1)
    ramp = rng.normal(0, 0.12, (n, 2)) / np.append(r, max(h, w))[:, None]
    wave = (rng.random(n) < 0.3) * rng.uniform(0, 0.12, n)
    freq = rng.uniform(0.3, 1.5, n)[:, None] * _unit(rng.uniform(0, np.pi, n))
    phase = rng.uniform(0, 2 * np.pi, n)
    centre = np.stack([np.append(cy, h / 2), np.append(cx, w / 2)], axis=1)
    table = np.concatenate([colour, centre, ramp, freq, wave[:, None], phase[:, None]], 1)
    p = torch.from_numpy(table.astype(np.float32))[torch.from_numpy(label)].permute(2, 0, 1)
    dy = torch.arange(h, dtype=torch.float32)[:, None] - p[3]
    dx = torch.arange(w, dtype=torch.float32)[None, :] - p[4]
    shade = p[5] * dy + p[6] * dx + p[9] * torch.sin(p[7] * dy + p[8] * dx + p[10])
    return p[:3] + shade


def _unit(angle):
    """(n, 2) unit vectors (dy, dx) at `angle` radians from the vertical."""
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def _smooth_field(h, w, rng, cells, lo, hi):
    """Low-frequency random field (cells x cells control points, bicubic) rescaled to [lo, hi]."""
    ctrl = torch.from_numpy(rng.random((1, 1, cells, cells)))
    f = F.interpolate(ctrl, size=(h, w), mode="bicubic", align_corners=True)[0, 0].numpy()
    f = (f - f.min()) / max(f.max() - f.min(), 1e-12)
    return lo + (hi - lo) * f


def gaussian_blur(img, sigma):
    """Separable Gaussian blur of (C, H, W), reflect padding (replicate for tiny images).

    Written as a sum of shifted copies: much faster than conv2d for these few taps.
    """
    rad = max(1, int(np.ceil(2.5 * sigma)))
    taps = np.exp(-np.arange(-rad, rad + 1) ** 2 / (2 * sigma ** 2))
    taps = (taps / taps.sum()).tolist()
    _, h, w = img.shape
    mode = "reflect" if min(h, w) > rad else "replicate"
    x = F.pad(img[None], (rad, rad, rad, rad), mode=mode)[0]
    x = sum(t * x[:, :, k:k + w] for k, t in enumerate(taps))
    return sum(t * x[:, k:k + h] for k, t in enumerate(taps))


@lru_cache(maxsize=None)
def _photo(name):
    """A shipped photograph as an RGB PIL image (cached; loaded once per process)."""
    path = ASSETS / name
    load_image(path)  # same checks and error messages as for user data
    with Image.open(path) as im:
        return im.convert("RGB")


def _photo_crop(name, crop, rng):
    """Random crop x crop patch of a shipped photo, zoomed out by a random factor in [1, 2].

    Pillow resamples 8-bit images in fixed-point arithmetic, so the patch is bit-identical
    on every machine.
    """
    im = _photo(name)
    side = min(int(round(crop * rng.uniform(1.0, 2.0))), im.width, im.height)
    x, y = int(rng.integers(im.width - side + 1)), int(rng.integers(im.height - side + 1))
    box = (x, y, x + side, y + side)
    patch = im.crop(box) if side == crop else im.resize((crop, crop), Image.BICUBIC, box=box)
    return torch.from_numpy(np.asarray(patch, np.float32) / 255.0).permute(2, 0, 1).contiguous()


def quantize(img):
    """Round to the 8-bit grid, as an image stored in a PNG would be."""
    return (img.clamp(0, 1) * 255).round() / 255


# ----------------------------------------------------------------------------- degradations

def _fft_conv(img, kernel):
    """Circular convolution of (C, H, W) with an (H, W) kernel centred at index (0, 0)."""
    s = img.shape[-2:]
    return torch.fft.irfft2(torch.fft.rfft2(img) * torch.fft.rfft2(kernel), s=s)


def _wrapped_grid(h, w):
    """Signed pixel offsets (dy, dx) from (0, 0) on the torus, for kernels used by _fft_conv."""
    dy = (np.arange(h) + h // 2) % h - h // 2
    dx = (np.arange(w) + w // 2) % w - w // 2
    return dy[:, None].astype(np.float64), dx[None, :].astype(np.float64)


def _streaks(h, w, rng, angle, density, length, width):
    """One rain layer: sparse drops smeared along `angle` (radians from vertical), in [0, 1].

    Each drop is convolved with a line of the given length, tapered at its ends and with a
    Gaussian cross-section of std `width` pixels; circular convolution is harmless because
    the drop field is stationary.
    """
    drops = (rng.random((h, w)) < density) * rng.uniform(0.4, 1.0, (h, w))
    length = min(length, min(h, w) - 2)
    dy, dx = _wrapped_grid(h, w)
    along = dy * np.cos(angle) + dx * np.sin(angle)
    across = -dy * np.sin(angle) + dx * np.cos(angle)
    taper = np.sqrt(np.clip(1 - np.abs(2 * along / length), 0, 1))
    kernel = np.exp(-across ** 2 / (2 * width ** 2)) * taper
    layer = _fft_conv(torch.from_numpy(drops[None]), torch.from_numpy(kernel))[0]
    return layer.clamp(0, 1).float()


def rain(img, rng, heavy=False):
    """Synthetic rain (Rain100L-like light, Rain100H-like heavy).

    Light: one layer of thin streaks in one direction (up to 30 degrees from vertical).
    Heavy: three denser, longer, wider layers at directions scattered around a common one,
    then a veil, following the heavy-rain model of Yang et al. 2017 (Rain100H):
    O = alpha * (B + sum of streak layers) + (1 - alpha) * A.
    Streaks are combined by a screen blend 1 - (1 - B)(1 - S), which brightens like real
    streaks and stays within [0, 1].
    """
    _, h, w = img.shape
    base = rng.uniform(-np.pi / 6, np.pi / 6)
    if heavy:
        layers = [(base + rng.normal(0, 0.2), rng.uniform(0.0015, 0.004), rng.uniform(20, 50),
                   rng.uniform(0.8, 1.4), rng.uniform(0.5, 0.85)) for _ in range(3)]
    else:
        layers = [(base, rng.uniform(0.0015, 0.004), rng.uniform(10, 35),
                   rng.uniform(0.6, 1.0), rng.uniform(0.5, 0.9))]
    s = torch.zeros(h, w)
    for angle, density, length, width, opacity in layers:
        s = 1 - (1 - s) * (1 - opacity * _streaks(h, w, rng, angle, density, length, width))
    out = 1 - (1 - img) * (1 - s)
    if heavy:
        a, veil = rng.uniform(0.75, 0.9), rng.uniform(0.75, 0.95)
        out = a * out + (1 - a) * veil
    return out.clamp(0, 1)


def motion_kernel(rng, extent=None, steps=64):
    """Random camera-shake kernel: a random-walk trajectory (velocity with random
    accelerations, cf. Boracchi & Foi 2012) scaled to `extent` pixels (default 3-15),
    rasterised with bilinear weights and normalised to sum 1. Returns (k, k) float32, k odd.
    """
    extent = rng.uniform(3, 15) if extent is None else extent
    v = _unit(rng.uniform(0, 2 * np.pi, 1))[0] + np.cumsum(rng.normal(0, 0.25, (steps, 2)), 0)
    p = np.cumsum(v, 0)
    p = p - (p.max(0) + p.min(0)) / 2
    p = p * (extent / 2) / max(np.abs(p).max(), 1e-9)
    half = int(np.ceil(extent / 2)) + 1
    k = np.zeros((2 * half + 1, 2 * half + 1))
    base = np.floor(p).astype(np.int64)
    frac = p - base
    for oy in (0, 1):
        for ox in (0, 1):
            wgt = (frac[:, 0] if oy else 1 - frac[:, 0]) * (frac[:, 1] if ox else 1 - frac[:, 1])
            np.add.at(k, (base[:, 0] + oy + half, base[:, 1] + ox + half), wgt)
    return (k / k.sum()).astype(np.float32)


def motion_blur(img, rng, kernel=None):
    """Convolve with a random camera-shake kernel (GoPro-like blur), reflect padding."""
    k = torch.from_numpy(motion_kernel(rng) if kernel is None else kernel)
    p = k.shape[0] // 2
    mode = "reflect" if min(img.shape[1:]) > p else "replicate"
    x = F.pad(img[None], (p, p, p, p), mode=mode)[0]
    full = torch.zeros(x.shape[-2:])
    full[:k.shape[0], :k.shape[1]] = k
    full = torch.roll(full, (-p, -p), (0, 1))
    out = _fft_conv(x, full)[:, p:p + img.shape[1], p:p + img.shape[2]]
    return out.clamp(0, 1)


def gaussian_noise(img, rng, sigma=NOISE_SIGMA):
    """Additive white Gaussian noise of std `sigma` (section 5); NOT clamped, as in the
    usual sigma = 25 denoising benchmarks, so the noise stays exactly Gaussian."""
    noise = rng.standard_normal(tuple(img.shape), dtype=np.float32)
    return img + sigma * torch.from_numpy(noise)


def downsample_upsample(img, scale=SR_SCALE):
    """x`scale` bicubic downsampling (antialiased, a = -0.5 like MATLAB imresize) then bicubic
    upsampling back to the input size: the reference feeds SR inputs at HQ size."""
    _, h, w = img.shape
    lr = F.interpolate(img[None], size=(max(1, h // scale), max(1, w // scale)), mode="bicubic",
                       antialias=True, align_corners=False)
    return upsample(lr[0], (h, w))


def make_mask(h, w, rng, kind="thin", coverage=None):
    """Inpainting hole mask (H, W) bool, True = missing, covering about `coverage`.

    "thin": random brush strokes of width 2-5 % of the image side (like the "thin" masks of
    RePaint/LaMa), default coverage 10-30 %. "thick": strokes of width 6-15 % mixed with
    boxes and ellipses, default coverage 25-45 %. Shapes are added until the coverage is
    reached, so it overshoots by at most one stroke or shape.
    """
    if kind not in ("thin", "thick"):
        raise DataError(f"unknown mask kind {kind!r}; expected 'thin' or 'thick'")
    lo, hi = (0.1, 0.3) if kind == "thin" else (0.25, 0.45)
    coverage = rng.uniform(lo, hi) if coverage is None else float(coverage)
    if not 0 <= coverage <= 0.9:
        raise DataError(f"mask coverage must be in [0, 0.9], got {coverage}")
    mask = np.zeros((h, w), bool)
    side = min(h, w)
    target = coverage * h * w
    for _ in range(10_000):
        if np.count_nonzero(mask) >= target:
            break
        if kind == "thick" and rng.random() < 0.4:
            _add_blob(mask, rng, side)
        else:
            width = rng.uniform(0.02, 0.05) if kind == "thin" else rng.uniform(0.06, 0.15)
            _add_stroke(mask, rng, side * width, side)
    return torch.from_numpy(mask)


def _add_stroke(mask, rng, width, side):
    """A brush stroke: a polyline of 4-10 segments with a wandering direction."""
    h, w = mask.shape
    n = int(rng.integers(4, 11))
    angle = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.7, n))
    steps = rng.uniform(0.05, 0.2, (n, 1)) * side * _unit(angle)
    pts = np.array([rng.uniform(0, h), rng.uniform(0, w)]) + np.cumsum(np.vstack([[0, 0], steps]), 0)
    _add_polyline(mask, pts, width / 2)


def _add_polyline(mask, pts, radius):
    """Set the pixels whose centre lies within `radius` of the polyline through pts (k, 2).

    All segments at once, each on its own box (boxes padded to a common size).
    """
    h, w = mask.shape
    p, q = pts[:-1], pts[1:]
    lo = np.floor(np.minimum(p, q) - radius).astype(np.int64)
    size = int((np.ceil(np.maximum(p, q) + radius) - lo).max()) + 1
    ys = lo[:, 0, None, None] + np.arange(size)[None, :, None]
    xs = lo[:, 1, None, None] + np.arange(size)[None, None, :]
    d = (q - p)[:, :, None, None]
    yy, xx = ys + 0.5 - p[:, 0, None, None], xs + 0.5 - p[:, 1, None, None]
    t = np.clip((yy * d[:, 0] + xx * d[:, 1]) / np.maximum((d ** 2).sum(1), 1e-12), 0, 1)
    near = ((yy - t * d[:, 0]) ** 2 + (xx - t * d[:, 1]) ** 2 <= radius ** 2)
    near &= (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    mask[np.broadcast_to(ys, near.shape)[near], np.broadcast_to(xs, near.shape)[near]] = True


def _add_blob(mask, rng, side):
    """An axis-aligned box or an ellipse with sides 10-40 % of the image side."""
    h, w = mask.shape
    ry, rx = rng.uniform(0.05, 0.2, 2) * side
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    yy, xx = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    if rng.random() < 0.5:
        mask |= (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    else:
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def inpaint_mask(img, rng, kind="thin", coverage=None):
    """Masked image: holes (make_mask with the same rng) filled with 1.0, as in the
    reference code's inpainting inputs."""
    mask = make_mask(img.shape[1], img.shape[2], rng, kind, coverage)
    return torch.where(mask, torch.ones(()), img)


def haze(img, rng):
    """Atmospheric scattering I = J t + A (1 - t), t = exp(-beta d) (RESIDE's model).

    d: synthetic smooth depth in [0.2, 1] (a ramp in a random direction plus low-frequency
    noise); beta ~ U(0.6, 1.8) as in RESIDE; airlight A ~ U(0.8, 1.0), slightly tinted.
    """
    _, h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    g = _unit(rng.uniform(0, 2 * np.pi, 1))[0]
    ramp = yy * g[0] + xx * g[1]
    ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-12)
    depth = 0.2 + 0.8 * (0.6 * ramp + 0.4 * _smooth_field(h, w, rng, 4, 0, 1))
    t = torch.from_numpy(np.exp(-rng.uniform(0.6, 1.8) * depth)).float()
    airlight = torch.from_numpy(rng.uniform(0.8, 1.0) + rng.normal(0, 0.02, (3, 1, 1))).float()
    return (img * t + airlight * (1 - t)).clamp(0, 1)


def degrade(task, clean, rng):
    """Low-quality version of `clean` for `task` (section 9).

    derain: light or heavy rain with probability 1/2 each (Rain100L / Rain100H);
    deblur: camera shake; denoise: sigma = 25/255, unclamped; sr: x4 bicubic down/up;
    inpaint: "thin" masks (the paper's CelebA-HQ setting); dehaze: synthetic haze.
    """
    _check_task(task)
    if task == "derain":
        return rain(clean, rng, heavy=bool(rng.random() < 0.5))
    if task == "deblur":
        return motion_blur(clean, rng)
    if task == "denoise":
        return gaussian_noise(clean, rng)
    if task == "sr":
        return downsample_upsample(clean)
    if task == "inpaint":
        return inpaint_mask(clean, rng, kind="thin")
    return haze(clean, rng)


def _check_task(task):
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {TASKS}")


# ----------------------------------------------------------------------------- synthetic pairs

class SyntheticPairs(Dataset):
    """(lq, gt) pairs made by degrading clean crop x crop images, both (3, crop, crop).

    split="train": clean = a dead-leaves image or a random zoomed crop of a TRAIN_PHOTOS
    photo (1/2 each), one of 8 flips/rotations, degraded; all drawn from
    np.random.default_rng([seed, epoch, idx]); n is the nominal epoch length.
    split="val": n fixed images (even idx: crops of VAL_PHOTOS, odd idx: dead leaves)
    drawn from seeds derived from VAL_SEED only (not from `seed`), whose 4-word seed
    sequences can never equal a training one (for seeds below 2**32), so the set is the
    same on every run and disjoint from training data. Clean images are the same for every task.
    GT and LQ are rounded to 8 bits like images read from PNG files, except the noisy
    denoising input, which stays unclamped floating point.
    """

    def __init__(self, task, n, crop, seed=0, split="train"):
        _check_task(task)
        if split not in ("train", "val"):
            raise DataError(f"unknown split {split!r}; expected 'train' or 'val'")
        if int(n) != n or n < 1 or int(crop) != crop or crop < 8:
            raise DataError(f"need n >= 1 and crop >= 8, got n={n!r}, crop={crop!r}")
        self.task, self.n, self.crop, self.seed, self.split = task, int(n), int(crop), seed, split
        self.epoch = 0

    def set_epoch(self, epoch):
        """Select the training epoch (the validation set ignores it)."""
        self.epoch = int(epoch)

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        with _single_threaded():
            return self._pair(_check_index(idx, self.n))

    def _pair(self, idx):
        if self.split == "train":
            rng = np.random.default_rng([self.seed, self.epoch, idx])
            clean = self._train_clean(rng)
            clean = dihedral(clean, int(rng.integers(8)))
        else:
            clean = self._val_clean(idx)
            rng = np.random.default_rng([VAL_SEED, idx, TASKS.index(self.task) + 1, 1])
        lq = degrade(self.task, clean, rng)
        return (lq if self.task == "denoise" else quantize(lq)), clean

    def _train_clean(self, rng):
        if rng.random() < 0.5:
            return quantize(dead_leaves(self.crop, rng))
        return _photo_crop(TRAIN_PHOTOS[int(rng.integers(len(TRAIN_PHOTOS)))], self.crop, rng)

    def _val_clean(self, idx):
        rng = np.random.default_rng([VAL_SEED, idx, 0, 1])
        if idx % 2 == 0:
            return _photo_crop(VAL_PHOTOS[(idx // 2) % len(VAL_PHOTOS)], self.crop, rng)
        return quantize(dead_leaves(self.crop, rng))


def make_dataset(task, root=None, crop=128, seed=0, split="train", n=None, scale=None):
    """PairedFolder(root) when root is given, else SyntheticPairs.

    Folders: split="train" gives random crops with augmentation, split="val" whole images;
    n is ignored; scale defaults to 1, and for task "sr" is inferred from the image sizes
    (4 for DIV2K-style LQ, 1 when LQ is stored already upsampled).
    Synthetic: n defaults to DEFAULT_TRAIN_LEN (train) or DEFAULT_VAL_LEN (val).
    """
    _check_task(task)
    if split not in ("train", "val"):
        raise DataError(f"unknown split {split!r}; expected 'train' or 'val'")
    if root is not None:
        if scale is None and task != "sr":
            scale = 1  # for "sr", None makes _check_sizes infer it
        train = split == "train"
        return PairedFolder(root, crop=crop if train else None, seed=seed, scale=scale,
                            augment=train)
    if n is None:
        n = DEFAULT_TRAIN_LEN if split == "train" else DEFAULT_VAL_LEN
    return SyntheticPairs(task, n, crop, seed=seed, split=split)
