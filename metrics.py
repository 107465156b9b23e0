"""Image-quality metrics with the reference code's conventions (PAPER.md §9).

Images are rounded to uint8 first (`to_uint8`); PSNR and SSIM then work in float64 on the 0-255
scale, after cutting `crop_border` pixels from every side of both images. `y=True` measures the
BT.601 luma channel instead of RGB (the paper's deraining numbers). GMSD and the texture ratio,
beyond the paper, always measure luma. LPIPS is optional (`lpips_or_none`).
"""
import functools
import math
import os

import numpy as np
import torch

C1 = (0.01 * 255) ** 2  # SSIM stabilisers for a 255 peak (PAPER.md §9)
C2 = (0.03 * 255) ** 2
WINDOW = 11  # SSIM Gaussian window size and width
SIGMA = 1.5
GMSD_C = 170.0  # GMSD stabiliser for a 255 peak (T in Xue et al.'s MATLAB code)
LPIPS_SKIPPED = "LPIPS skipped: the lpips package (and its AlexNet weights) is not installed"


def to_uint8(img):
    """Float (3,H,W) image in [0,1] (tensor or array) -> HxWxC uint8 array, like the reference's
    tensor2img: float32, clamp to [0, 1], then (x * 255).round() with numpy's round-half-to-even.
    Also accepts (1,3,H,W), (1,H,W) or (H,W) floats, and HxW / HxWx1 / HxWx3 uint8 arrays, which
    pass through unchanged (HxW becomes HxWx1)."""
    if isinstance(img, torch.Tensor):
        if not img.is_floating_point():
            raise ValueError(f"metrics.py: tensor images must be float in [0, 1], got {img.dtype}")
        img = img.detach().cpu().float().numpy()
    img = np.asarray(img)
    if img.dtype == np.uint8:
        if img.ndim == 2:
            img = img[:, :, None]
        if img.ndim != 3 or img.shape[2] not in (1, 3):
            raise ValueError(f"metrics.py: uint8 images must be HxW or HxWx(1|3), got {img.shape}")
        return img
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"metrics.py: images must be float in [0, 1] or uint8, got {img.dtype}")
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"metrics.py: float images must be (3,H,W) or (1,H,W), got {img.shape}")
    if np.isnan(img).any():
        raise ValueError("metrics.py: image contains NaN")
    x = np.clip(img.astype(np.float32), 0, 1).transpose(1, 2, 0)
    return np.round(x * np.float32(255)).astype(np.uint8)


def rgb_to_y(img_uint8):
    """BT.601 luma, MATLAB style, float64 HxW on the 0-255 scale: Y = 16 + 65.481 R + 128.553 G
    + 24.966 B with R, G, B = uint8 / 255, not re-rounded; the reference's bgr2ycbcr(img / 255.,
    only_y=True) * 255 (it feeds BGR and orders the weights to match; here the input is RGB)."""
    rgb = to_uint8(img_uint8)
    if rgb.shape[2] != 3:
        raise ValueError(f"metrics.py: rgb_to_y needs an RGB image, got {rgb.shape}")
    rgb = rgb.astype(np.float64) / 255.0
    return 16.0 + rgb @ np.array([65.481, 128.553, 24.966])


def _prepare(a, b, crop_border, y):
    """Both images as float64 HxWxC on 0-255: uint8 rounding, optional luma, border crop."""
    a, b = to_uint8(a), to_uint8(b)
    if a.shape != b.shape:
        raise ValueError(f"metrics.py: image shapes differ: {a.shape} vs {b.shape}")
    if y and a.shape[2] == 3:  # a one-channel image already is luma (the reference does the same)
        a, b = rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]
    a, b = a.astype(np.float64), b.astype(np.float64)
    c = int(crop_border)
    if c < 0 or 2 * c >= min(a.shape[:2]):
        raise ValueError(f"metrics.py: crop_border={crop_border} invalid for image {a.shape}")
    if c:
        a, b = a[c:-c, c:-c], b[c:-c, c:-c]
    return a, b


def psnr(a, b, crop_border=4, y=False):
    """PSNR in dB with peak 255; inf for identical images."""
    a, b = _prepare(a, b, crop_border, y)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return 20 * math.log10(255.0 / math.sqrt(mse))


def _filter_valid(img):
    """'Valid' correlation of HxW float64 `img` with the 11x11 Gaussian, done separably with the
    normalised 1-D Gaussian of cv2.getGaussianKernel(11, 1.5)."""
    g = np.exp(-((np.arange(WINDOW) - WINDOW // 2) ** 2) / (2 * SIGMA**2))
    g = g / g.sum()
    h, w = img.shape[0] - WINDOW + 1, img.shape[1] - WINDOW + 1
    rows = sum(g[k] * img[:, k : k + w] for k in range(WINDOW))
    return sum(g[k] * rows[k : k + h] for k in range(WINDOW))


def _ssim_channel(x, y):
    """Mean of the SSIM map of two HxW float64 images on 0-255 (Wang et al. 2004)."""
    mu_x, mu_y = _filter_valid(x), _filter_valid(y)
    var_x = _filter_valid(x * x) - mu_x**2
    var_y = _filter_valid(y * y) - mu_y**2
    cov = _filter_valid(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + C1) * (2 * cov + C2)
    den = (mu_x**2 + mu_y**2 + C1) * (var_x + var_y + C2)
    return float(np.mean(num / den))


def ssim(a, b, crop_border=4, y=False):
    """SSIM, 11x11 Gaussian window (sigma 1.5), valid region, mean over channels."""
    a, b = _prepare(a, b, crop_border, y)
    if min(a.shape[:2]) < WINDOW:
        raise ValueError(f"metrics.py: SSIM needs at least {WINDOW}x{WINDOW} pixels after cropping, got {a.shape[:2]}")
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def min_side(crop_border=4):
    """The smallest image side `evaluate` accepts: the SSIM window after the border crop."""
    return 2 * crop_border + WINDOW


def _average_downsample(img):
    """MATLAB's conv2(img, fspecial('average', 2), 'same') then img(1:2:end, 1:2:end): the mean of each
    2x2 block, an odd last row or column averaged with zeros ('same' pads them below and right)."""
    h, w = img.shape
    p = np.pad(img, ((0, h % 2), (0, w % 2)))
    return (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) / 4


def _prewitt_magnitude(img):
    """sqrt(gx^2 + gy^2) of the Prewitt filters [1 0 -1; 1 0 -1; 1 0 -1] / 3 and its transpose,
    'same' size with zero padding like MATLAB's conv2 (its kernel flip only changes the signs)."""
    p = np.pad(img, 1)
    dx = p[:, 2:] - p[:, :-2]  # centred differences along rows, then summed over 3 rows
    dy = p[2:] - p[:-2]
    gx = (dx[:-2] + dx[1:-1] + dx[2:]) / 3
    gy = (dy[:, :-2] + dy[:, 1:-1] + dy[:, 2:]) / 3
    return np.sqrt(gx**2 + gy**2)


def gmsd(a, b, crop_border=4):
    """Gradient Magnitude Similarity Deviation (Xue, Zhang, Mou & Bovik, IEEE TIP 2014) on luma, as the
    authors' MATLAB code: both Y images are 2x2-averaged and decimated by 2, their Prewitt gradient
    magnitudes m1, m2 give the similarity map (2 m1 m2 + c) / (m1^2 + m2^2 + c) with c = GMSD_C, and
    GMSD is its standard deviation with N - 1 (MATLAB's std2): 0 for identical images, larger is worse,
    symmetric. Comparing gradients pixel by pixel, it is lowered by neither added noise nor blur."""
    a, b = (x[..., 0] for x in _prepare(a, b, crop_border, y=True))
    m1, m2 = (_prewitt_magnitude(_average_downsample(x)) for x in (a, b))
    gms = (2 * m1 * m2 + GMSD_C) / (m1**2 + m2**2 + GMSD_C)
    if gms.size < 2:
        raise ValueError(f"metrics.py: GMSD needs at least 2 pixels after halving, got {a.shape} after cropping")
    return float(np.std(gms, ddof=1))


def _laplacian_energy(img):
    """Mean squared response of the Laplacian [[0,1,0],[1,-4,1],[0,1,0]] over the valid region."""
    c = img[1:-1, 1:-1]  # as differences from the centre: exactly 0 on a flat image
    lap = (img[:-2, 1:-1] - c) + (img[2:, 1:-1] - c) + (img[1:-1, :-2] - c) + (img[1:-1, 2:] - c)
    return float(np.mean(lap**2))


def texture_ratio(restored, gt, crop_border=4):
    """Laplacian energy of the restored luma over the GT's: a diagnostic that noise can game, so reported
    only beside PSNR and GMSD. Below 1 is less high-frequency energy than the GT (blurry), above 1 more
    (noisy); a flat GT gives 1 when the output is flat too, else inf."""
    restored, gt = (x[..., 0] for x in _prepare(restored, gt, crop_border, y=True))
    if min(gt.shape) < 3:
        raise ValueError(f"metrics.py: texture_ratio needs 3x3 pixels after cropping, got {gt.shape}")
    num, den = _laplacian_energy(restored), _laplacian_energy(gt)
    if den == 0:
        return 1.0 if num == 0 else float("inf")
    return num / den


def evaluate(restored, gt, crop_border=4):
    """{COLUMNS: value}: PSNR / SSIM on RGB and on Y, as the reference test script reports them, and
    GMSD and the texture ratio on Y."""
    restored, gt = to_uint8(restored), to_uint8(gt)  # round once, reuse for all metrics
    return {
        "psnr": psnr(restored, gt, crop_border),
        "ssim": ssim(restored, gt, crop_border),
        "psnr_y": psnr(restored, gt, crop_border, y=True),
        "ssim_y": ssim(restored, gt, crop_border, y=True),
        "gmsd": gmsd(restored, gt, crop_border),
        "texture": texture_ratio(restored, gt, crop_border),
    }


COLUMNS = ("psnr", "ssim", "psnr_y", "ssim_y", "gmsd", "texture")


def mean(rows):
    """The mean of each metric (COLUMNS, and LPIPS where measured) over rows of `evaluate`."""
    keys = [k for k in COLUMNS + ("lpips",) if k in rows[0]]
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


def colour_shift(restored, gt):
    """Largest difference of a channel's mean, restored against GT, on the 0-255 scale: a colour
    cast or brightness shift that PSNR spreads over all pixels. Tensors (3,H,W) in [0, 1]."""
    return float((restored.double() - gt.double()).mean(dim=(-2, -1)).abs().max()) * 255


@functools.cache
def _lpips_net():
    """The AlexNet LPIPS model if the package and all its weights are already on disk, else None."""
    try:
        import lpips
    except ImportError:
        return None
    # lpips would fetch the torchvision AlexNet backbone from the internet if it is not cached.
    backbone = os.path.join(torch.hub.get_dir(), "checkpoints", "alexnet-owt-7be5be79.pth")
    if not os.path.isfile(backbone):
        return None
    try:
        return lpips.LPIPS(net="alex", verbose=False).eval()
    except (OSError, RuntimeError):  # missing or unreadable linear-layer weights
        return None


def lpips_or_none(restored, gt):
    """LPIPS (AlexNet, inputs mapped to [-1, 1]), or None when unavailable (never downloads; the
    caller prints LPIPS_SKIPPED once). Float inputs are clamped to [0, 1] but not rounded, as the
    reference feeds its float outputs; uint8 arrays are divided by 255."""
    net = _lpips_net()
    if net is None:
        return None
    x, y = (_lpips_input(img) for img in (restored, gt))
    with torch.no_grad():
        return float(net(x, y).mean())


def _lpips_input(img):
    """(1,3,H,W) float32 tensor in [-1, 1] from a float (3,H,W) image or a uint8 HxWx3 array."""
    if isinstance(img, np.ndarray) and img.dtype == np.uint8:
        img = torch.from_numpy(to_uint8(img).transpose(2, 0, 1).copy()).float() / 255
    img = torch.as_tensor(img, dtype=torch.float32).detach().cpu()
    return img.reshape(-1, *img.shape[-3:]).clamp(0, 1) * 2 - 1
