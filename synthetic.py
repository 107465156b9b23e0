"""Synthetic images for IR-SDE's built-in data: clean-image generators and degradations.

Clean images: `dead_leaves` (Achddou et al. 2021) and its helpers, `gaussian_blur`.
Degradations, one per task of PAPER.md section 9: `rain` (derain), `motion_blur` with
`motion_kernel` (deblur), `gaussian_noise` (denoise), `downsample_upsample` (sr),
`make_mask` / `inpaint_mask` (inpaint), `haze` (dehaze).

Images are float32 torch tensors (3, H, W) in [0, 1]. Every function is a pure function
of its arguments: all randomness is drawn from the numpy `np.random.Generator` passed in
(`rng`), so the same generator state gives bit-identical output, and nothing here reads
files or global state. The task -> degradation dispatch, the shipped photographs and the
datasets live in data.py, which imports this module (never the other way round).
"""
import numpy as np
import torch
import torch.nn.functional as F

NOISE_SIGMA = 25 / 255  # section 9: denoising at sigma = 25
SR_SCALE = 4  # section 9: 4x super-resolution


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
        raise ValueError(f"unknown mask kind {kind!r}; expected 'thin' or 'thick'")
    lo, hi = (0.1, 0.3) if kind == "thin" else (0.25, 0.45)
    coverage = rng.uniform(lo, hi) if coverage is None else float(coverage)
    if not 0 <= coverage <= 0.9:
        raise ValueError(f"mask coverage must be in [0, 0.9], got {coverage}")
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


# ----------------------------------------------------------------------------- resizing

def upsample(img, size):
    """Bicubic resize of (3, h, w) to size=(H, W), clamped to [0, 1]."""
    out = F.interpolate(img[None], size=tuple(size), mode="bicubic", align_corners=False)
    return out[0].clamp(0, 1)

