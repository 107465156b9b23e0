"""Synthetic images for IR-SDE's built-in data (PAPER.md section 9): clean images (`dead_leaves`,
Achddou et al. 2021, `procedural`, `flat_colour`) and each task's degradations, documented with
their parameter ranges; tasks.py says which split uses which.

Images are float32 torch tensors (3, H, W) in [0, 1]. Every function is pure: all randomness is
drawn from the numpy Generator `rng` passed in, so the same generator state gives bit-identical
output, and nothing here reads files or global state. tasks.py and data.py import this module,
never the other way round.
"""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

NOISE_SIGMA = 25 / 255  # section 9: denoising at sigma = 25
SR_SCALE = 4  # section 9: 4x super-resolution
MASK_SIDE = 128  # inpainting holes are sized in pixels of an image this large (the validation images)


# ----------------------------------------------------------------------------- clean images

def dead_leaves(size, rng, alpha=3.0, coverage=5.0):
    """Dead leaves: occluding discs, radius density r^-alpha on [min(H, W)/40 (at least 1), max(H, W)],
    centres uniform on the image grown by r (borders covered like the middle), the first drawn in
    front, until they cover the image `coverage` times over (the rest shows a background). Leaves
    get a colour, a shading ramp and sometimes a sinusoidal texture; an illumination field and an
    optics blur (sigma 0.3-0.9) keep the image from being piecewise flat with aliased edges."""
    h, w = _hw(size)
    r = _power_law(rng, alpha, max(1.0, min(h, w) / 40), float(max(h, w)), h, w, coverage)
    cy, cx = rng.uniform(-r, h + r), rng.uniform(-r, w + r)
    label = _front_labels(h, w, cy, cx, r)
    img = _shade_leaves(label, cy, cx, r, rng)
    img = img * torch.from_numpy(_smooth_field(h, w, rng, 3, 0.8, 1.2)).float()
    img = gaussian_blur(img, rng.uniform(0.3, 0.9))
    return img.clamp(0, 1)


def _power_law(rng, alpha, rmin, rmax, h, w, coverage):
    """Radii with density ~ r^-alpha on [rmin, rmax], enough to cover h x w `coverage` times over."""
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
    """Per pixel, the smallest index of a disc covering its centre (len(r) if none): small discs
    stamped in batches of equal box size (a minimum is order-independent, so the labels are the
    same on every run), the few large ones tested against every pixel."""
    m = 2 * _BUCKETS[-1]  # a margin: boxes need no clipping
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
    colour = np.clip(rng.uniform(0.05, 0.95, (n, 1)) + rng.normal(0, 0.08, (n, 3)), 0, 1)
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
    """Separable Gaussian blur of (C, H, W), reflect padding (replicate for tiny images); a sum of
    shifted copies, much faster than conv2d for so few taps."""
    rad = max(1, int(np.ceil(2.5 * sigma)))
    taps = np.exp(-np.arange(-rad, rad + 1) ** 2 / (2 * sigma ** 2))
    taps = (taps / taps.sum()).tolist()
    _, h, w = img.shape
    mode = "reflect" if min(h, w) > rad else "replicate"
    x = F.pad(img[None], (rad, rad, rad, rad), mode=mode)[0]
    x = sum(t * x[:, :, k:k + w] for k, t in enumerate(taps))
    return sum(t * x[:, k:k + h] for k, t in enumerate(taps))


def flat_colour(size, rng):
    """One colour, uniform in the RGB cube, shaded by a smooth field of +-0.1 (3 control points per
    side): an image whose holes its surroundings predict, the first lesson of inpainting (tasks.py)."""
    h, w = _hw(size)
    colour = torch.from_numpy(rng.uniform(0, 1, (3, 1, 1))).float()
    return (colour + torch.from_numpy(_smooth_field(h, w, rng, 3, -0.1, 0.1)).float()).clamp(0, 1)


def procedural(size, rng):
    """A procedural clean image: piecewise_smooth, gratings, polygons or texture_mix (1/4 each)."""
    return (piecewise_smooth, gratings, polygons, texture_mix)[int(rng.integers(4))](size, rng)


def piecewise_smooth(size, rng):
    """Smooth colour regions with sharp edges: a Voronoi partition of 2-12 random seeds (p 1/2;
    straight edges), else 1-3 smooth random fields (2-5 control points per side) thresholded at
    U(0.3, 0.7) (curved edges, up to 8 regions). Each region: grey U(0.05, 0.95) plus N(0, 0.15)
    per channel and a gradient of slope N(0, 0.3) per image side; then an illumination field in
    [0.7, 1.3] and an optics blur of sigma U(0.3, 0.9) px."""
    h, w = _hw(size)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    if rng.random() < 0.5:
        k = int(rng.integers(2, 13))
        seeds = rng.random((k, 2)) * [h / max(h, w), w / max(h, w)]
        label = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, -1)
    else:
        m = int(rng.integers(1, 4))
        k = 2 ** m
        label = sum((_smooth_field(h, w, rng, int(rng.integers(2, 6)), 0, 1)
                     > rng.uniform(0.3, 0.7)).astype(np.int64) << i for i in range(m))
    colour = np.clip(rng.uniform(0.05, 0.95, (k, 1)) + rng.normal(0, 0.15, (k, 3)), 0, 1)
    slope = rng.normal(0, 0.3, (k, 2))
    img = colour[label] + (slope[label, 0] * (yy - 0.5) + slope[label, 1] * (xx - 0.5))[..., None]
    img = img * _smooth_field(h, w, rng, 4, 0.7, 1.3)[..., None]
    img = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)
    return gaussian_blur(img, rng.uniform(0.3, 0.9)).clamp(0, 1)


def gratings(size, rng):
    """Stripes: 1-3 gratings summed, mapped between a dark colour U(0, 0.5) and a light one
    U(0.5, 1) per channel. Each: sinusoidal or square-wave (a steep tanh), 1/2 each; period
    log-uniform in [3, 48] px; any orientation; weight U(0.3, 1); p 1/3 a chirp (frequency growing
    by up to 3x across the image). P 1/2 a smooth contrast envelope in [0.2, 1]; optics blur sigma
    U(0.3, 0.8)."""
    h, w = _hw(size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    v = np.zeros((h, w))
    for _ in range(int(rng.integers(1, 4))):
        d = _unit(rng.uniform(0, np.pi, 1))[0]
        u = yy * d[0] + xx * d[1]
        u = u - u.min()
        if rng.random() < 1 / 3:  # chirp
            u = u + (rng.uniform(1, 3) - 1) * u ** 2 / (2 * max(u.max(), 1))
        wave = np.sin(2 * np.pi * u / np.exp(rng.uniform(np.log(3), np.log(48))) + rng.uniform(0, 2 * np.pi))
        if rng.random() < 0.5:
            wave = np.tanh(4 * wave) / np.tanh(4)
        v += rng.uniform(0.3, 1) * wave
    v = 0.5 + 0.5 * v / max(np.abs(v).max(), 1e-9)
    if rng.random() < 0.5:
        v = 0.5 + (v - 0.5) * _smooth_field(h, w, rng, 3, 0.2, 1.0)
    a, b = rng.uniform(0, 0.5, 3), rng.uniform(0.5, 1, 3)
    img = torch.from_numpy((a + (b - a) * v[..., None]).astype(np.float32)).permute(2, 0, 1)
    return gaussian_blur(img, rng.uniform(0.3, 0.8)).clamp(0, 1)


def polygons(size, rng):
    """4-20 random star-shaped polygons over a background, later ones on top: 3-8 vertices at sorted
    random angles, radii U(0.4, 1) R, R = U(0.05, 0.4) x the image side, centres uniform. Each
    region: a random colour plus a ramp of slope N(0, 0.3) per image side; 2 x 2 supersampled."""
    h, w = _hw(size)
    H, W = 2 * h, 2 * w
    label = Image.new("I", (W, H), 0)
    draw = ImageDraw.Draw(label)
    n = int(rng.integers(4, 21))
    for i in range(1, n + 1):
        k = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = rng.uniform(0.4, 1, k) * rng.uniform(0.05, 0.4) * 2 * min(h, w)
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        draw.polygon(list(zip(cx + rad * np.sin(ang), cy + rad * np.cos(ang))), fill=i)
    colour = np.clip(rng.uniform(0.05, 0.95, (n + 1, 1)) + rng.normal(0, 0.15, (n + 1, 3)), 0, 1)
    table = torch.from_numpy(np.concatenate([colour, rng.normal(0, 0.3, (n + 1, 2))], 1)).float()
    p = table[torch.from_numpy(np.asarray(label, np.int64))].permute(2, 0, 1)
    yy = torch.arange(H, dtype=torch.float32)[:, None] / max(H, W) - 0.5
    xx = torch.arange(W, dtype=torch.float32)[None, :] / max(H, W) - 0.5
    img = p[:3] + p[3] * yy + p[4] * xx
    return F.avg_pool2d(img[None], 2)[0].clamp(0, 1)


def texture_mix(size, rng):
    """Two clean images (dead_leaves, piecewise_smooth, gratings or polygons, drawn
    independently) blended through a soft mask: a smooth random field (2-5 control points
    per side) thresholded at U(0.35, 0.65) with an edge ramp U(0.5, 4) px wide."""
    h, w = _hw(size)
    kinds = (dead_leaves, piecewise_smooth, gratings, polygons)
    a, b = (kinds[int(rng.integers(4))]((h, w), rng) for _ in range(2))
    f = _smooth_field(h, w, rng, int(rng.integers(2, 6)), 0, 1) - rng.uniform(0.35, 0.65)
    grad = np.hypot(*np.gradient(f))
    soft = rng.uniform(0.5, 4) * np.maximum(grad, 1e-6)  # field change over the ramp width
    m = torch.from_numpy(np.clip(0.5 + f / soft, 0, 1).astype(np.float32))
    return (a * m + b * (1 - m)).clamp(0, 1)


def _hw(size):
    return (size, size) if np.isscalar(size) else tuple(size)


# ----------------------------------------------------------------------------- degradations

def _fft_conv(img, kernel):
    """Circular convolution of (C, H, W) with an (H, W) kernel centred at index (0, 0)."""
    return torch.fft.irfft2(torch.fft.rfft2(img) * torch.fft.rfft2(kernel), s=img.shape[-2:])


def _streaks(h, w, rng, angle, density, length, width):
    """One rain layer in [0, 1]: sparse drops of brightness U(0.4, 1) smeared along `angle` (radians
    from vertical) by a line of `length` px (at most the image side - 2) tapered at its ends, with a
    Gaussian cross-section of std `width` px; circular convolution is fine, as drops are stationary."""
    drops = (rng.random((h, w)) < density) * rng.uniform(0.4, 1.0, (h, w))
    length = min(length, min(h, w) - 2)
    dy = ((np.arange(h) + h // 2) % h - h // 2)[:, None].astype(np.float64)  # signed offsets on the torus
    dx = ((np.arange(w) + w // 2) % w - w // 2)[None, :].astype(np.float64)
    along = dy * np.cos(angle) + dx * np.sin(angle)
    across = -dy * np.sin(angle) + dx * np.cos(angle)
    taper = np.sqrt(np.clip(1 - np.abs(2 * along / length), 0, 1))
    kernel = np.exp(-across ** 2 / (2 * width ** 2)) * taper
    layer = _fft_conv(torch.from_numpy(drops[None]), torch.from_numpy(kernel))[0]
    return layer.clamp(0, 1).float()


def rain(img, rng, heavy=False):
    """Rain100L-like rain: one layer of thin streaks (up to 30 degrees from vertical); heavy=True,
    Rain100H-like: three denser, longer, wider layers around a common direction, then a veil, as in
    Yang et al. 2017: O = alpha (B + streaks) + (1 - alpha) A. Layers combine by a screen blend
    1 - (1 - B)(1 - S), which brightens like real streaks and stays within [0, 1]."""
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


def rain_streaks(img, rng):
    """Training rain: `rain`'s streak model over ranges containing its own (though its heaviest
    layers cover more). n = 1-4 layers around a direction U(-45, 45) degrees from vertical, each off
    by N(0, 10) degrees; length U(6, 60) px; width (FWHM) log-uniform in [1, 5] px; covered fraction
    density x length x width log-uniform in [0.1, 0.6] / sqrt(n) (density clipped to [2e-4, 2e-2]);
    opacity U(0.4, 0.95); defocus blur sigma U(0, 1) px (none below 0.25). P 1/2 a veil
    O = a O + (1 - a) A, a ~ U(0.7, 0.97), grey A ~ U(0.6, 1)."""
    _, h, w = img.shape
    base = rng.uniform(-np.pi / 4, np.pi / 4)
    n = int(rng.integers(1, 5))
    s = torch.zeros(h, w)
    for _ in range(n):
        angle = base + rng.normal(0, np.radians(10))
        length, fwhm = rng.uniform(6, 60), np.exp(rng.uniform(0, np.log(5)))
        cover = np.exp(rng.uniform(np.log(0.1), np.log(0.6))) / np.sqrt(n)
        density = np.clip(cover / (length * fwhm), 2e-4, 2e-2)
        layer = _streaks(h, w, rng, angle, density, length, fwhm / 2.355)
        sigma = rng.uniform(0, 1)
        if sigma > 0.25:
            layer = gaussian_blur(layer[None], sigma)[0]
        s = 1 - (1 - s) * (1 - rng.uniform(0.4, 0.95) * layer)
    out = 1 - (1 - img) * (1 - s)
    if rng.random() < 0.5:
        a = rng.uniform(0.7, 0.97)
        out = a * out + (1 - a) * rng.uniform(0.6, 1.0)
    return out.clamp(0, 1)


def rain_drops(img, rng):
    """Unseen rain, unlike the streak model: drops at their own depths (setting length, thickness and
    opacity), fanning out towards a vanishing point, covering the scene with their colour rather
    than brightening it, as uniform segments with soft ends; then fog.
    H W U(0.001, 0.006) drops, centres uniform; depth z log-uniform in [1, 8]; length U(30, 90) / z
    px; thickness (FWHM) max(0.8, U(2, 5) / z) px; opacity U(0.35, 0.9) exp(-0.2 (z - 1)); vanishing
    point U(2, 6) image sides below the centre, U(-25, 25) degrees from vertical; grey U(0.75, 1)
    mixed 25 % with the image's mean colour; three depth layers composited far to near. Fog:
    O = (1 - f) O + f A, f = U(0.05, 0.3) (1 - 0.5 y / H) (thicker at the top), A ~ U(0.7, 0.95)."""
    _, h, w = img.shape
    n = max(1, int(round(h * w * rng.uniform(0.001, 0.006))))
    z = np.exp(rng.uniform(0, np.log(8), n))
    length = rng.uniform(30, 90) / z
    thick = np.maximum(rng.uniform(2, 5) / z, 0.8)
    alpha = rng.uniform(0.35, 0.9, n) * np.exp(-0.2 * (z - 1))
    theta, dist = rng.uniform(-np.radians(25), np.radians(25)), rng.uniform(2, 6) * max(h, w)
    centre = rng.random((n, 2)) * [h, w]
    direction = np.array([h / 2, w / 2]) + dist * _unit(np.array([theta]))[0] - centre
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    colour = 0.75 * rng.uniform(0.75, 1.0) + 0.25 * img.mean((1, 2))[:, None, None]
    depth_layer = np.minimum((np.log(z) / np.log(8) * 3).astype(np.int64), 2)
    out = img
    for layer in (2, 1, 0):
        sel = depth_layer == layer
        if sel.any():
            a = _segments(h, w, centre[sel], direction[sel], length[sel], alpha[sel],
                          float(np.median(thick[sel])) / 2.355)
            out = out * (1 - a) + colour * a
    f = rng.uniform(0.05, 0.3) * (1 - 0.5 * torch.arange(h, dtype=torch.float32)[:, None] / h)
    return (out * (1 - f) + rng.uniform(0.7, 0.95) * f).clamp(0, 1)


def _segments(h, w, centre, direction, length, alpha, sigma):
    """(H, W) opacity of anti-aliased line segments with a Gaussian cross-section of std `sigma`,
    `alpha` on each axis; overlaps add up to at most 1."""
    step = 0.5  # px between the points splatted along each segment
    m = (length / step).astype(np.int64) + 1
    idx = np.repeat(np.arange(len(m)), m)
    t = (np.arange(m.sum()) - np.repeat(np.cumsum(m) - m, m)) * step - length[idx] / 2
    p = centre[idx] + t[:, None] * direction[idx]
    acc = np.zeros((h + 2, w + 2))
    _splat(acc, p - 0.5, alpha[idx] * step, offset=1)  # pixel centres at +0.5; a 1 px margin
    acc = torch.from_numpy(acc[1:-1, 1:-1].astype(np.float32))[None]
    spread = np.sqrt(sigma ** 2 + 1 / 6)  # bilinear splatting spreads by a tent of variance 1/6
    return (gaussian_blur(acc, sigma)[0] * np.sqrt(2 * np.pi) * spread).clamp(0, 1)


def _splat(acc, p, weight=1.0, offset=0):
    """Add `weight` at points p (n, 2) into acc with bilinear weights, pixel floor(p) + offset;
    points off acc are dropped."""
    base = np.floor(p).astype(np.int64)
    frac = p - base
    for oy in (0, 1):
        for ox in (0, 1):
            wgt = (frac[:, 0] if oy else 1 - frac[:, 0]) * (frac[:, 1] if ox else 1 - frac[:, 1])
            y, x = base[:, 0] + oy + offset, base[:, 1] + ox + offset
            ok = (y >= 0) & (y < acc.shape[0]) & (x >= 0) & (x < acc.shape[1])
            np.add.at(acc, (y[ok], x[ok]), (wgt * weight)[ok])


def motion_kernel(rng, wide=False):
    """Camera-shake kernel, (k, k) float32 summing to 1, k odd: a 64-step random walk (accelerations of
    std `jitter`, cf. Boracchi & Foi 2012) scaled to `extent` px, splatted bilinearly. extent U(2, 6),
    jitter 0.25; wide=True: extent U(1, 10), jitter U(0.1, 0.6) (nearly straight to tangled paths).
    The extents are GoPro's relative to the image: its blur spans up to a few percent of a 1280-pixel
    frame, and the built-in images are crops of 128 to 256 pixels of photographs (a 32-pixel training
    crop then sees the whole kernel)."""
    extent = rng.uniform(1, 10) if wide else rng.uniform(2, 6)
    jitter = rng.uniform(0.1, 0.6) if wide else 0.25
    v = _unit(rng.uniform(0, 2 * np.pi, 1))[0] + np.cumsum(rng.normal(0, jitter, (64, 2)), 0)
    p = np.cumsum(v, 0)
    p = p - (p.max(0) + p.min(0)) / 2
    p = p * (extent / 2) / max(np.abs(p).max(), 1e-9)
    half = int(np.ceil(extent / 2)) + 1
    k = np.zeros((2 * half + 1, 2 * half + 1))
    _splat(k, p, offset=half)
    return (k / k.sum()).astype(np.float32)


def motion_blur(img, rng, kernel=None, wide=False):
    """Convolve with `kernel`, else motion_kernel(rng, wide=wide) (GoPro-like blur); reflect padding."""
    k = torch.from_numpy(motion_kernel(rng, wide=wide) if kernel is None else kernel)
    p = k.shape[0] // 2
    mode = "reflect" if min(img.shape[1:]) > p else "replicate"
    x = F.pad(img[None], (p, p, p, p), mode=mode)[0]
    full = torch.zeros(x.shape[-2:])
    full[:k.shape[0], :k.shape[1]] = k
    full = torch.roll(full, (-p, -p), (0, 1))
    out = _fft_conv(x, full)[:, p:p + img.shape[1], p:p + img.shape[2]]
    return out.clamp(0, 1)


def defocus_kernel(rng):
    """Unseen blur kernel, (k, k) float32 summing to 1, k odd: a defocus disk of radius U(1.5, 4)
    px smeared along a line of length U(0, 8) px at any angle (object or linear camera motion),
    4 x 4 supersampled; unlike motion_kernel's thin random-walk paths."""
    r, length, angle = rng.uniform(1.5, 4), rng.uniform(0, 8), rng.uniform(0, np.pi)
    half = int(np.ceil(r + length / 2)) + 1
    g = np.arange(-half, half + 1)[:, None] + (np.arange(4) + 0.5)[None, :] / 4 - 0.5
    t = np.linspace(-length / 2, length / 2, int(np.ceil(2 * length)) + 2)
    yy = g[:, None, :, None, None] - t * np.cos(angle)
    xx = g[None, :, None, :, None] - t * np.sin(angle)
    k = (yy ** 2 + xx ** 2 <= r ** 2).mean((2, 3, 4))
    return (k / k.sum()).astype(np.float32)


def defocus_blur(img, rng):
    """Unseen blur: motion_blur with a defocus_kernel."""
    return motion_blur(img, rng, kernel=defocus_kernel(rng))


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


def upsample(img, size):
    """Bicubic resize of (3, h, w) to size=(H, W), clamped to [0, 1]."""
    out = F.interpolate(img[None], size=tuple(size), mode="bicubic", align_corners=False)
    return out[0].clamp(0, 1)


def make_mask(h, w, rng, kind="thin", coverage=None):
    """Inpainting holes (H, W) bool, True = missing, shapes added until they cover `coverage`: "thin",
    brush strokes 2.5-6.5 px wide (like RePaint/LaMa's thin masks on faces at 128 x 128), coverage
    U(0.1, 0.3) by default; "thick", strokes 8-19 px wide mixed with boxes and ellipses 13-51 px a side,
    U(0.25, 0.45). Sizes are in pixels of a MASK_SIDE-pixel image, whatever the image's size: a
    training crop sees the holes of the validation images, not ones shrunk to its size."""
    if kind not in ("thin", "thick"):
        raise ValueError(f"unknown mask kind {kind!r}; expected 'thin' or 'thick'")
    lo, hi = (0.1, 0.3) if kind == "thin" else (0.25, 0.45)
    coverage = rng.uniform(lo, hi) if coverage is None else float(coverage)
    if not 0 <= coverage <= 0.9:
        raise ValueError(f"mask coverage must be in [0, 0.9], got {coverage}")
    mask = np.zeros((h, w), bool)
    side = MASK_SIDE
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
    """Set the pixels whose centre lies within `radius` of the polyline through pts (k, 2); all
    segments at once, each on its own box (padded to a common size)."""
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
    """An axis-aligned box or an ellipse with sides 10-40 % of `side`."""
    h, w = mask.shape
    ry, rx = rng.uniform(0.05, 0.2, 2) * side
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    yy, xx = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    if rng.random() < 0.5:
        mask |= (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    else:
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def inpaint_mask(img, rng, kind="thin", coverage=None):
    """make_mask's holes (same arguments) filled with 1.0, as in the reference's inpainting inputs."""
    mask = make_mask(img.shape[1], img.shape[2], rng, kind, coverage)
    return torch.where(mask, torch.ones(()), img)


def blob_mask(h, w, rng, coverage=None):
    """Unseen inpainting holes (H, W) bool, True = missing: irregular blobs where a smooth random
    field (3-8 control points per side) exceeds its (1 - coverage) quantile, coverage U(0.15, 0.4)
    by default."""
    f = _smooth_field(h, w, rng, int(rng.integers(3, 9)), 0, 1)
    coverage = rng.uniform(0.15, 0.4) if coverage is None else float(coverage)
    return torch.from_numpy(f > np.quantile(f, 1 - coverage))


def inpaint_blobs(img, rng):
    """Masked image with blob_mask holes filled with 1.0 (the inpainting input convention)."""
    return torch.where(blob_mask(img.shape[1], img.shape[2], rng), torch.ones(()), img)


def haze(img, rng, wide=False):
    """Haze I = J t + A (1 - t), t = exp(-beta d) (RESIDE's model), d a smooth depth in [0.2, 1] (a ramp
    in a random direction plus low-frequency noise): beta ~ U(0.6, 1.8) as in RESIDE, airlight
    A ~ U(0.8, 1) + N(0, 0.02) per channel; wide=True: beta ~ U(0.4, 2.5), A ~ U(0.6, 1), tint 0.05."""
    _, h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    g = _unit(rng.uniform(0, 2 * np.pi, 1))[0]
    ramp = yy * g[0] + xx * g[1]
    ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-12)
    depth = 0.2 + 0.8 * (0.6 * ramp + 0.4 * _smooth_field(h, w, rng, 4, 0, 1))
    beta, a_lo, tint = ((0.4, 2.5), 0.6, 0.05) if wide else ((0.6, 1.8), 0.8, 0.02)
    t = torch.from_numpy(np.exp(-rng.uniform(*beta) * depth)).float()
    airlight = torch.from_numpy(rng.uniform(a_lo, 1.0) + rng.normal(0, tint, (3, 1, 1))).float()
    return (img * t + airlight * (1 - t)).clamp(0, 1)


def fog(img, rng):
    """Unseen haze: patchy fog over a ground plane. d = 1 above a horizon at U(0.1, 0.6) H from the top
    (sky), c / (c + (y - horizon) / H) below it, c ~ U(0.1, 0.4); t = exp(-beta d), beta = U(0.8, 2)
    x a smooth field in [0.3, 1.7] (3-6 control points per side); airlight U(0.7, 0.9) +
    0.08 (1 - y / H), bluish (red -0.02, blue +0.03)."""
    _, h, w = img.shape
    y = np.arange(h)[:, None] / h
    horizon, c = rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.4)
    depth = np.where(y <= horizon, 1.0, c / (c + np.maximum(y - horizon, 0)))
    beta = rng.uniform(0.8, 2.0) * _smooth_field(h, w, rng, int(rng.integers(3, 7)), 0.3, 1.7)
    t = torch.from_numpy(np.exp(-beta * depth)).float()
    a = rng.uniform(0.7, 0.9) + 0.08 * (1 - y) + np.array([-0.02, 0, 0.03])[:, None, None]
    airlight = torch.from_numpy(a).float()
    return (img * t + airlight * (1 - t)).clamp(0, 1)
