"""Tests for metrics.py: hand computations, invariants and an independent naive SSIM (PAPER.md section 9)."""
import math
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import metrics  # noqa: E402

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def const(h, w, rgb):
    """HxWx3 uint8 image of one colour."""
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def rand_u8(seed, shape):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def gaussian_2d():
    """The 11x11 Gaussian window (sigma 1.5) built directly in 2-D."""
    k = np.arange(11) - 5
    w = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * 1.5**2))
    return w / w.sum()


def naive_ssim(a, b):
    """SSIM by its definition: loop over every 11x11 window of HxW float64 images, average."""
    w = gaussian_2d()
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            x, y = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            mx, my = np.sum(w * x), np.sum(w * y)
            vx, vy = np.sum(w * (x - mx) ** 2), np.sum(w * (y - my) ** 2)
            cxy = np.sum(w * (x - mx) * (y - my))
            vals.append((2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
    return np.mean(vals)


# ---------------------------------------------------------------- to_uint8
def test_to_uint8_clamps_rounds_and_transposes():
    x = torch.zeros(3, 2, 2)
    x[0, 0, 0], x[1, 0, 1], x[2, 1, 0] = -0.3, 1.7, 0.6 / 255
    x[0, 1, 1] = 254.6 / 255
    u = metrics.to_uint8(x)
    assert u.dtype == np.uint8 and u.shape == (2, 2, 3)
    assert u[0, 0, 0] == 0 and u[0, 1, 1] == 255 and u[1, 0, 2] == 1 and u[1, 1, 0] == 255
    np.testing.assert_array_equal(metrics.to_uint8(x.numpy()), u)
    np.testing.assert_array_equal(metrics.to_uint8(x[None]), u)


def test_to_uint8_rounds_half_to_even_like_reference():
    # x * 255 computed in float32 as the reference's tensor2img does, then np.round (half to even)
    x = np.array([[[0.5, 1.5, 2.5, 3.5]]], np.float32) / np.float32(255)
    expect = np.round(x.transpose(1, 2, 0) * np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(metrics.to_uint8(x), expect)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (3, 4, 5), elements=st.floats(-1, 2, width=32)))
def test_to_uint8_is_nearest_level(x):
    u = metrics.to_uint8(x).astype(np.float64).transpose(2, 0, 1)
    assert np.all(np.abs(u - np.clip(x, 0, 1).astype(np.float64) * 255) <= 0.5 + 1e-4)


def test_to_uint8_passes_uint8_through_and_rejects_bad_input():
    img = rand_u8(0, (5, 6, 3))
    assert metrics.to_uint8(img) is img
    assert metrics.to_uint8(img[..., 0]).shape == (5, 6, 1)
    for bad in (np.zeros((4, 5, 6), np.float32), np.zeros((3, 4), np.int64), torch.zeros(3, 4, 4, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="metrics.py"):
            metrics.to_uint8(bad)
    with pytest.raises(ValueError, match="NaN"):
        metrics.to_uint8(np.full((3, 4, 4), np.nan, np.float32))


# ---------------------------------------------------------------- Y channel
@pytest.mark.parametrize(
    "rgb, y",
    [((0, 0, 0), 16.0), ((255, 255, 255), 235.0), ((255, 0, 0), 16 + 65.481),
     ((0, 255, 0), 16 + 128.553), ((0, 0, 255), 16 + 24.966), ((51, 102, 204), 16 + (65.481 * 51 + 128.553 * 102 + 24.966 * 204) / 255)],
)
def test_y_of_pure_colours(rgb, y):
    out = metrics.rgb_to_y(const(2, 3, rgb))
    assert out.dtype == np.float64 and out.shape == (2, 3)
    np.testing.assert_allclose(out, y, rtol=0, atol=1e-12)  # not re-rounded


# ---------------------------------------------------------------- PSNR
@pytest.mark.parametrize("k", [1, 3, 17])
@pytest.mark.parametrize("crop", [0, 4])
def test_psnr_of_constant_offset(k, crop):
    a, b = const(16, 20, (100, 100, 100)), const(16, 20, (100 + k, 100, 100 - k))
    # two of three channels differ by k: MSE = 2 k^2 / 3
    assert metrics.psnr(a, b, crop) == pytest.approx(10 * math.log10(255**2 / (2 * k**2 / 3)), abs=1e-12)


def test_psnr_y_of_grey_offset():
    # grey levels v and v + d differ in Y by 219 d / 255
    a, b = const(12, 12, (80, 80, 80)), const(12, 12, (85, 85, 85))
    assert metrics.psnr(a, b, 0, y=True) == pytest.approx(20 * math.log10(255 / (219 * 5 / 255)), abs=1e-10)


def test_psnr_identical_is_inf():
    a = rand_u8(1, (16, 16, 3))
    assert metrics.psnr(a, a.copy()) == float("inf")
    assert metrics.psnr(a, a.copy(), y=True) == float("inf")


def frame(img, value):
    """Copy of `img` with its 4-pixel border set to `value`."""
    out = img.copy()
    out[:4], out[-4:], out[:, :4], out[:, -4:] = value, value, value, value
    return out


def test_psnr_border_crop_applies_to_both():
    a = rand_u8(2, (20, 20, 3))
    b = np.clip(a.astype(int) + rand_u8(3, a.shape) % 7, 0, 255).astype(np.uint8)
    base = metrics.psnr(a, b, crop_border=4)
    assert metrics.psnr(frame(a, 0), b, 4) == base  # border of either image is ignored
    assert metrics.psnr(a, frame(b, 255), 4) == base
    assert metrics.psnr(a, frame(b, 255), 0) < metrics.psnr(a, b, 0)  # ...but counts without cropping
    b_mid = b.copy()
    b_mid[10, 10] = 255 - b_mid[10, 10]
    assert metrics.psnr(a, b_mid, 4) < base


def test_psnr_only_border_differs_is_inf_when_cropped():
    a = rand_u8(4, (16, 16, 3))
    b = a.copy()
    b[:2, :] = 255 - b[:2, :]
    assert metrics.psnr(a, b, crop_border=4) == float("inf")
    assert math.isfinite(metrics.psnr(a, b, crop_border=0))


def test_psnr_accepts_float_tensors_via_uint8_rounding():
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    nudged = x + 0.1 / 255  # below half a level: most pixels round to the same uint8
    u, v = metrics.to_uint8(x), metrics.to_uint8(nudged)
    assert metrics.psnr(x, nudged) == metrics.psnr(u, v)


def test_shape_mismatch_and_bad_crop_raise():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(rand_u8(0, (16, 16, 3)), rand_u8(0, (16, 17, 3)))
    with pytest.raises(ValueError, match="crop_border"):
        metrics.psnr(rand_u8(0, (8, 8, 3)), rand_u8(1, (8, 8, 3)), crop_border=4)
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(rand_u8(0, (16, 16, 3)), rand_u8(1, (16, 16, 3)), crop_border=4)


# ---------------------------------------------------------------- SSIM
@settings(max_examples=25, deadline=None)
@given(st.integers(11, 30), st.integers(11, 30), st.integers(0, 2**32 - 1))
def test_separable_filter_equals_direct_2d(h, w, seed):
    img = np.random.default_rng(seed).uniform(0, 255, (h, w))
    win = gaussian_2d()
    direct = sum(win[i, j] * img[i : i + h - 10, j : j + w - 10] for i in range(11) for j in range(11))
    np.testing.assert_allclose(metrics._filter_valid(img), direct, rtol=1e-12, atol=1e-10)


def test_ssim_of_constant_11x11_by_hand():
    # one window, zero variances: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1) per channel
    a, b = const(11, 11, (100, 0, 255)), const(11, 11, (110, 0, 200))
    per = [(2 * 100 * 110 + C1) / (100**2 + 110**2 + C1), 1.0, (2 * 255 * 200 + C1) / (255**2 + 200**2 + C1)]
    assert metrics.ssim(a, b, crop_border=0) == pytest.approx(np.mean(per), abs=1e-12)
    assert metrics.ssim(a[..., 0], b[..., 0], crop_border=0) == pytest.approx(per[0], abs=1e-12)


def test_ssim_constant_vs_textured_by_hand():
    # image b constant: SSIM = (2 m1 m2 + C1)/(m1^2 + m2^2 + C1) * C2 / (var1 + C2), Gaussian-weighted
    a = rand_u8(5, (11, 11)).astype(np.float64)
    w = gaussian_2d()
    m1 = np.sum(w * a)
    v1 = np.sum(w * (a - m1) ** 2)
    expect = (2 * m1 * 128 + C1) / (m1**2 + 128**2 + C1) * C2 / (v1 + C2)
    got = metrics.ssim(a.astype(np.uint8), np.full((11, 11), 128, np.uint8), crop_border=0)
    assert got == pytest.approx(expect, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_ssim_equals_naive_definition(seed):
    a = rand_u8(seed, (16, 16, 3))
    b = np.clip(a.astype(int) + np.random.default_rng(seed + 10).integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    naive = np.mean([naive_ssim(a[..., c].astype(np.float64), b[..., c].astype(np.float64)) for c in range(3)])
    assert abs(metrics.ssim(a, b, crop_border=0) - naive) < 1e-10
    naive_y = naive_ssim(metrics.rgb_to_y(a), metrics.rgb_to_y(b))
    assert abs(metrics.ssim(a, b, crop_border=0, y=True) - naive_y) < 1e-10


def test_ssim_matches_scikit_image_if_available():
    skm = pytest.importorskip("skimage.metrics")  # extra check; the naive test above always runs
    a = rand_u8(7, (40, 48, 3))
    b = np.clip(a.astype(int) + rand_u8(8, a.shape) % 31 - 15, 0, 255).astype(np.uint8)
    ref = skm.structural_similarity(a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=255, channel_axis=-1)
    assert metrics.ssim(a, b, crop_border=0) == pytest.approx(ref, abs=1e-6)


def test_ssim_of_identical_is_one():
    a = rand_u8(9, (24, 24, 3))
    assert metrics.ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(a, a.copy(), y=True) == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 6))
def test_ssim_symmetric(seed, crop):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 256, (2, 24, 23, 3), dtype=np.uint8)
    assert metrics.ssim(a, b, crop) == pytest.approx(metrics.ssim(b, a, crop), abs=1e-14)
    assert metrics.ssim(a, b, crop, y=True) == pytest.approx(metrics.ssim(b, a, crop, y=True), abs=1e-14)


def test_ssim_decreases_with_noise():
    rng = np.random.default_rng(11)
    clean = torch.from_numpy(rng.uniform(0.2, 0.8, (3, 32, 32)))
    noise = torch.from_numpy(rng.standard_normal((3, 32, 32)))
    scores = [metrics.ssim(clean, clean + s / 255 * noise) for s in (2, 5, 10, 20, 40)]
    assert all(x > y for x, y in zip(scores, scores[1:])), scores
    assert scores[0] < 1


def test_evaluate_reports_every_column():
    gt = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(1))
    out = (gt + 0.05 * torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    r = metrics.evaluate(out, gt)
    assert set(r) == {"psnr", "ssim", "psnr_y", "ssim_y", "gmsd", "texture"} == set(metrics.COLUMNS)
    assert r["psnr"] == metrics.psnr(out, gt) and r["ssim"] == metrics.ssim(out, gt)
    assert r["psnr_y"] == metrics.psnr(out, gt, y=True) and r["ssim_y"] == metrics.ssim(out, gt, y=True)
    assert r["gmsd"] == metrics.gmsd(out, gt) > 0 and r["texture"] == metrics.texture_ratio(out, gt) > 1
    assert metrics.mean([r, r]) == r


# ---------------------------------------------------------------- GMSD and texture ratio
def conv2_same(img, k):
    """MATLAB's conv2(img, k, 'same') by its definition: the true convolution, zero outside the
    image, cut to img's size at offset floor(size(k) / 2) into the full result."""
    (h, w), (kh, kw) = img.shape, k.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            for u in range(kh):
                for v in range(kw):
                    r, c = i + kh // 2 - u, j + kw // 2 - v
                    if 0 <= r < h and 0 <= c < w:
                        out[i, j] += img[r, c] * k[u, v]
    return out


def naive_gmsd(y1, y2):
    """Xue et al.'s MATLAB GMSD line by line with loops: 2x2 average, (1:2:end) decimation,
    Prewitt magnitudes, similarity map with T = 170, std2 (N - 1)."""
    hx = np.array([[1.0, 0, -1]] * 3) / 3
    maps = []
    for y in (y1, y2):
        ave = conv2_same(y, np.full((2, 2), 0.25))
        y = np.array([[ave[i, j] for j in range(0, ave.shape[1], 2)] for i in range(0, ave.shape[0], 2)])
        maps.append(np.sqrt(conv2_same(y, hx) ** 2 + conv2_same(y, hx.T) ** 2))
    q = [(2 * m1 * m2 + 170) / (m1**2 + m2**2 + 170) for m1, m2 in zip(maps[0].ravel(), maps[1].ravel())]
    mu = sum(q) / len(q)
    return math.sqrt(sum((v - mu) ** 2 for v in q) / (len(q) - 1))


def textured(seed, size=32):
    """(3,size,size) float image in [0.15, 0.85]: random 4x4 blocks plus a diagonal sinusoid."""
    blocks = np.random.default_rng(seed).uniform(0.25, 0.75, (3, size // 4, size // 4))
    yy, xx = np.mgrid[:size, :size]
    return blocks.repeat(4, 1).repeat(4, 2) + 0.1 * np.sin(0.9 * xx + 0.4 * yy)


def box_blur(img, k):
    """k x k mean filter of a (C,H,W) image, edges replicated, same size."""
    p = np.pad(img, ((0, 0), (k // 2,) * 2, (k // 2,) * 2), mode="edge")
    h, w = img.shape[1:]
    return sum(p[:, i : i + h, j : j + w] for i in range(k) for j in range(k)) / k**2


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 14), st.integers(3, 14), st.integers(0, 2**32 - 1), st.integers(0, 80), st.booleans())
def test_gmsd_equals_naive_matlab_code(h, w, seed, amp, rgb):
    # odd sizes exercise the zero padding of the 2x2 average; rgb compares on rgb_to_y's luma
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-amp, amp + 1, a.shape), 0, 255).astype(np.uint8)
    y1, y2 = (metrics.rgb_to_y(x) if rgb else x.astype(np.float64) for x in (a, b))
    assert abs(metrics.gmsd(a, b, crop_border=0) - naive_gmsd(y1, y2)) < 1e-9


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 5))
def test_gmsd_zero_for_identical_and_symmetric(seed, crop):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 256, (2, 20, 19, 3), dtype=np.uint8)
    assert metrics.gmsd(a, a.copy(), crop) == 0
    assert metrics.gmsd(a, b, crop) == metrics.gmsd(b, a, crop) > 0


def test_gmsd_of_step_edge_against_black_by_hand():
    # GT 8x8: columns 0-3 black, 4-7 at 90; restored all black, so m2 = 0 even at the zero-padded
    # border and every GMS value is c / (m1^2 + c). Halved, the GT is 4x4 with columns [0 0 90 90].
    # Prewitt on it (zero padding; sums of 3 rows / columns, or 2 at the border, over 3):
    #   gx: centred column differences [0 90 90 -90], summed over 3 rows (2 in rows 0 and 3) / 3
    #   gy: only rows 0 and 3 (next row minus the zero outside), 3-column sums [0 90 180 180] / 3
    # so m1^2 = 0 in column 0 (4 pixels), 60^2 + 30^2 = 4500 at (0,1), (3,1), 60^2 + 60^2 = 7200 at
    # (0,2), (0,3), (3,2), (3,3), and 90^2 = 8100 in rows 1-2 of columns 1-3 (6 pixels).
    gt = np.zeros((8, 8), np.uint8)
    gt[:, 4:] = 90
    q = np.repeat([1.0, 170 / 4670, 170 / 7370, 170 / 8270], [4, 2, 4, 6])
    expect = math.sqrt(np.sum((q - q.mean()) ** 2) / 15)  # std2: N - 1 = 15
    assert metrics.gmsd(np.zeros((8, 8), np.uint8), gt, crop_border=0) == pytest.approx(expect, abs=1e-12)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_noise_and_blur_raise_gmsd_and_move_texture_ratio_apart(seed):
    gt = textured(seed)
    noise = np.random.default_rng(seed + 1).standard_normal(gt.shape)
    noisy = [metrics.gmsd(gt + s / 255 * noise, gt) for s in (2, 8, 32)]
    blurred = [metrics.gmsd(box_blur(gt, k), gt) for k in (3, 5)]
    assert 0 < noisy[0] < noisy[1] < noisy[2], noisy
    assert 0 < blurred[0] < blurred[1], blurred
    assert metrics.texture_ratio(gt + 8 / 255 * noise, gt) > 1 > metrics.texture_ratio(box_blur(gt, 3), gt)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(-40, 40))
def test_texture_ratio_by_linearity_of_the_laplacian(seed, offset):
    # one-channel images are luma as they are: doubling the contrast quadruples the Laplacian
    # energy, a constant offset leaves it unchanged, a flat image has none
    gt = np.random.default_rng(seed).integers(50, 128, (12, 13), dtype=np.uint8)
    assert metrics.texture_ratio(2 * gt, gt, 0) == pytest.approx(4, rel=1e-12)
    assert metrics.texture_ratio((gt.astype(int) + offset).astype(np.uint8), gt, 0) == pytest.approx(1, rel=1e-12)
    assert metrics.texture_ratio(gt, gt.copy(), 0) == 1
    assert metrics.texture_ratio(np.full_like(gt, 90), gt, 0) == 0


def test_texture_ratio_of_impulses_by_hand():
    # the valid region of a 5x5 image is its central 3x3. An impulse v at the centre responds -4v
    # there and v at its 4 neighbours: energy (16 + 4) v^2 / 9. One at (1, 1) keeps only 2 of its
    # neighbours inside: (16 + 2) v^2 / 9. An 8-neighbour Laplacian would give (64 + 3) / (64 + 8).
    centre, corner = np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.uint8)
    centre[2, 2], corner[1, 1] = 200, 100
    assert metrics.texture_ratio(corner, centre, 0) == pytest.approx(18 / 20 / 4, rel=1e-12)


def test_texture_ratio_flat_gt_and_too_small_images():
    flat, rgb = const(9, 9, (30, 60, 90)), rand_u8(12, (9, 9, 3))
    assert metrics.texture_ratio(flat, flat.copy(), 0) == 1
    assert metrics.texture_ratio(rgb, flat, 0) == float("inf")
    with pytest.raises(ValueError, match="3x3"):
        metrics.texture_ratio(rgb, rgb, crop_border=4)  # 1x1 left
    with pytest.raises(ValueError, match="GMSD"):
        metrics.gmsd(rgb, rgb, crop_border=4)  # 1x1 left, 1x1 halved


# ---------------------------------------------------------------- LPIPS (optional)
@pytest.fixture
def fresh_lpips(monkeypatch, tmp_path):
    """Fresh lpips cache and an empty torch hub dir, restored afterwards."""
    metrics._lpips_net.cache_clear()
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    yield monkeypatch
    torch.hub.set_dir(old_hub)
    metrics._lpips_net.cache_clear()


def test_lpips_none_without_package(fresh_lpips):
    fresh_lpips.setitem(sys.modules, "lpips", None)  # makes `import lpips` raise ImportError
    x = torch.rand(3, 16, 16)
    assert metrics.lpips_or_none(x, x) is None
    assert metrics.LPIPS_SKIPPED.startswith("LPIPS skipped")


def test_lpips_none_when_weights_missing_and_never_downloads(fresh_lpips, tmp_path):
    def forbidden(**kwargs):
        raise AssertionError("LPIPS must not be built (it would download AlexNet)")

    fresh_lpips.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=forbidden))
    x = torch.rand(3, 16, 16)
    assert metrics.lpips_or_none(x, x) is None  # backbone not in the (empty) hub cache

    def broken(**kwargs):
        raise FileNotFoundError("alex.pth")

    metrics._lpips_net.cache_clear()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth").touch()
    fresh_lpips.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=broken))
    assert metrics.lpips_or_none(x, x) is None


def test_lpips_feeds_minus_one_to_one(fresh_lpips, tmp_path):
    class FakeLPIPS(torch.nn.Module):
        def forward(self, a, b):
            assert a.shape == (1, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
            return (a - b).abs().mean().reshape(1, 1, 1, 1)

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth").touch()
    fresh_lpips.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=lambda **kw: FakeLPIPS()))
    x = torch.full((3, 16, 16), 0.25)
    assert metrics.lpips_or_none(x, torch.full((3, 16, 16), 2.0)) == pytest.approx(1.5)  # clamped to 1
    assert metrics.lpips_or_none(const(16, 16, (0, 0, 0)), const(16, 16, (255, 255, 255))) == pytest.approx(2.0)


def test_lpips_real_package_returns_none_or_float():
    metrics._lpips_net.cache_clear()
    x = torch.rand(3, 32, 32)
    r = metrics.lpips_or_none(x, x)
    assert r is None or (isinstance(r, float) and r >= 0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2), st.floats(-0.2, 0.2))
def test_colour_shift_is_the_largest_channel_mean_difference(seed, channel, offset):
    gt = torch.rand(3, 9, 7, generator=torch.Generator().manual_seed(seed))
    shifted = gt.clone()
    shifted[channel] += offset
    assert metrics.colour_shift(shifted, gt) == pytest.approx(abs(offset) * 255, abs=1e-4)
    noise = torch.randn(3, 9, 7, generator=torch.Generator().manual_seed(seed + 1)) * 0.1
    by_hand = max(abs(float(noise[c].double().mean())) for c in range(3)) * 255
    # gt + noise is rounded to float32: each pixel is off by at most half an ulp (2^-24 below 2)
    assert metrics.colour_shift(gt + noise, gt) == pytest.approx(by_hand, abs=255 * 2**-24)
