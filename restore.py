"""Running a trained model, shared by train.py's validation, sample.py and bench.py: the network
under the device's precision (`network`, `use_bf16`) and, for large images, on tiles; a whole
restoration with any sampler; the picture of the reverse process.
"""
import functools

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import data
import irsde
import metrics
import tasks

VAL_BORDER = 4  # pixels validation cuts at each border before PSNR/SSIM, as the reference test configs
TRAJECTORY_IMAGES = 3  # validation images whose reverse process is pictured
TRAJECTORY_STATES = 10  # columns of a trajectory picture (the paper's Fig. 6): every step of 10
GAP = 4  # white pixels between the pictures of a strip
LABEL_HEIGHT = 12  # the band naming the columns of a trajectory picture


@torch.no_grad()
def restore(net, sde, config, lq, sampler=None, steps=None, generator=None, noise_sigma=None,
            tile=None, overlap=32, callback=None, clip_x0=None):
    """Restored (B,3,H,W) in [0, 1] from the LQ batch lq (B,3,H,W). CNN baseline: lq + net(lq) in one
    pass. A task with a noise level (denoising): the noisy image is the state at t* of the denoising
    SDE (PAPER.md §5); noise_sigma on the [0, 1] scale, by default the task's. Otherwise x_T = lq +
    lambda z is run back to x_0 by the sampler. sampler, steps and clip_x0 default to the checkpoint's
    `sampling` settings; tile, overlap: see `tiled`; callback(dict(i, t, s, x, x0)) sees each step."""
    model = network(net, lq.device, tile, overlap)
    if config["loss"] == "cnn":
        return (lq + model(lq, None, None)).clamp(0, 1)
    model = irsde.noise_model(model, sde, config.get("param", "noise"))
    sampling = config["sampling"]
    sampler = sampler or sampling["sampler"]
    steps = steps or sampling["steps"]
    clip_x0 = sampling["clip_x0"] if clip_x0 is None else clip_x0
    kwargs = dict(generator=generator, callback=callback, clip_x0=clip_x0)
    task = tasks.TASKS[config["task"]]
    if task.noise_sigma is not None:
        x0 = irsde.denoise(model, sde, lq, noise_sigma or task.noise_sigma, steps, sampler, **kwargs)
    else:
        x0 = irsde.sample(model, sde, lq, steps, sampler, **kwargs)
    return x0.clamp(0, 1)


def network(net, device, tile=None, overlap=32, bf16=None):
    """net as f(x, mu, t) with a float32 output, under bf16 autocast where `bf16` while the SDE
    arithmetic stays float32; evaluated tile by tile when `tile` is given. bf16 defaults to CUDA
    only: restoring on a CPU in float32 keeps the images independent of its instruction set."""
    bf16 = device.type == "cuda" if bf16 is None else bf16

    def forward(x, mu, t):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return net(x, mu, t).float()
    return forward if tile is None else tiled(forward, tile, overlap)


def use_bf16(device, fp32=False):
    """Whether training runs the network under bf16 autocast: on CUDA and on CPUs with AVX512-BF16 or
    AMX (there a tiny-preset step at 64 x 64 ran 1.8x faster than in float32); not with fp32 (--fp32)
    nor elsewhere, where bf16 is emulated."""
    if fp32:
        return False
    return device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16())


@functools.cache
def native_cpu_bf16():
    """Whether this CPU has bf16 instructions (torch.cpu's checks, where torch has them)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def tiled(net, tile, overlap):
    """f(x, mu, t) on tile x tile windows overlapping by `overlap` pixels, blended (PAPER.md §10): memory
    is bounded by the tile. Only the network call is tiled: the sampler still steps the full-size state
    (only 3 x H x W) with one full-size noise draw per step, so the noise equals the untiled run's and
    the blend weights (raised-cosine ramps over the overlaps, summing to one) leave no seams. The
    network's image-wide context (linear attention, receptive field) still makes a tile's values differ
    somewhat from the whole image's: the blend hides the tile borders, not that difference."""
    if tile < 1 or not 0 <= overlap <= tile // 2:
        raise ValueError(f"tiles need tile >= 1 and 0 <= overlap <= tile / 2, got tile {tile}, overlap {overlap}")

    def forward(x, mu, t):
        h, w = x.shape[-2:]
        if max(h, w) <= tile:
            return net(x, mu, t)
        out = torch.zeros_like(x)
        weight = torch.zeros(h, w, dtype=x.dtype, device=x.device)
        for top, rows in _windows(h, tile, overlap):
            for left, cols in _windows(w, tile, overlap):
                win = (..., slice(top, top + len(rows)), slice(left, left + len(cols)))
                blend = (rows[:, None] * cols[None, :]).to(x)
                out[win] += blend * net(x[win], None if mu is None else mu[win], t)
                weight[win] += blend
        return out / weight
    return forward


def _windows(n, tile, overlap):
    """(start, 1-D blend weights) of the windows covering 0..n-1 with stride tile - overlap. Weights
    ramp as sin^2 over the first/last `overlap` pixels where a neighbour overlaps (its cos^2 ramp
    complements them) and are 1 elsewhere, never 0."""
    size = min(tile, n)
    starts = list(range(0, n - size, tile - overlap)) + [n - size]
    ramp = torch.sin(torch.pi / 2 * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap) ** 2
    windows = []
    for k, start in enumerate(starts):
        weights = torch.ones(size, dtype=torch.float64)
        if k > 0:
            weights[:overlap] = ramp
        if k < len(starts) - 1:
            weights[size - overlap:] = ramp.flip(0)
        windows.append((start, weights))
    return windows


class Trajectory:
    """Sampler callback for the picture of the reverse process (the paper's Fig. 6): at up to
    TRAJECTORY_STATES evenly spaced network evaluations among `ts` (all but the last index), it
    keeps the state x_t that the network saw and the x0 it predicted from it."""

    def __init__(self, ts):
        evaluated = ts[:-1]
        picks = torch.linspace(0, len(evaluated) - 1, min(TRAJECTORY_STATES, len(evaluated)))
        self.keep = {evaluated[k] for k in picks.round().long().tolist()}
        self.columns = []

    def __call__(self, step):
        if step["t"] in self.keep:
            self.columns.append((f"t={step['t']}", step["x"][0].float().clamp(0, 1).cpu(),
                                 step["x0"][0].float().clamp(0, 1).cpu()))

    def picture(self, restored, gt=None):
        """x_t over x0_hat(x_t) for each kept t, then x_0 over the GT (white without one), labelled."""
        gt = torch.ones_like(restored) if gt is None else gt
        labels, top, bottom = zip(*self.columns, ("x_0 / GT", restored, gt))
        top, bottom = strip(top), strip(bottom)
        return labelled(torch.cat([top, torch.ones(3, GAP, top.shape[2]), bottom], dim=1), labels, restored.shape[2])


def start_index(sde, config, noise_sigma=None):
    """Where a restoration of this checkpoint starts: T, or t* of the noise level (by default the
    task's) for a task that has one."""
    task = tasks.TASKS[config["task"]]
    return sde.T if task.noise_sigma is None else sde.start_index(noise_sigma or task.noise_sigma)


def trajectory_steps(sde, config, steps=None, noise_sigma=None):
    """The indices a restoration of this checkpoint runs through, from `start_index` down to 0."""
    return irsde.timesteps(sde, steps or config["sampling"]["steps"], start_index(sde, config, noise_sigma))


def labelled(picture, labels, width):
    """picture with a white band above it naming each column of `width` pixels (GAP apart)."""
    band = Image.new("RGB", (picture.shape[2], LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(band)
    for k, label in enumerate(labels):
        draw.text((k * (width + GAP) + 2, 1), label, fill="black", font=ImageFont.load_default())
    band = torch.from_numpy(np.asarray(band, dtype=np.float32) / 255).permute(2, 0, 1)
    return torch.cat([band, picture], dim=1)


def strip(images):
    """Images (3,H,W) side by side, separated by white gaps."""
    gap = torch.ones(3, images[0].shape[1], GAP)
    parts = [p for img in images for p in (img, gap)][:-1]
    return torch.cat(parts, dim=2)


@torch.no_grad()
def validate(net, sde, config, val_set, device, step, out, name="val"):
    """train.py's validation: the mean of metrics.evaluate and the largest metrics.colour_shift over
    the images restored as sample.py does (keys with "_input": over the LQ images). Saves
    <name>_<step>.png, LQ | restored | GT of the first 4 images, and <name>_trajectory_<step>.png,
    the reverse process of the first TRAJECTORY_IMAGES."""
    args = config["args"]
    scores, shifts, rows, pictures = {"": [], "_input": []}, {"": [], "_input": []}, [], []
    for k in range(min(args["val_images"], len(val_set))):
        lq, gt = val_set[k]
        generator = torch.Generator(device).manual_seed(args["seed"])  # as sample.py: one per image
        trajectory = Trajectory(trajectory_steps(sde, config)) if sde is not None and k < TRAJECTORY_IMAGES else None
        restored = restore(net, sde, config, lq[None].to(device), generator=generator,
                           callback=trajectory)[0].float().cpu()
        for suffix, image in (("", restored), ("_input", lq.clamp(0, 1))):
            scores[suffix].append(metrics.evaluate(image, gt, crop_border=VAL_BORDER))
            shifts[suffix].append(metrics.colour_shift(image, gt))
        if k < 4:
            rows.append(torch.cat([lq.clamp(0, 1), restored, gt], dim=2))
        if trajectory is not None:
            pictures += [trajectory.picture(restored, gt), torch.ones(3, 2 * GAP, 1)]
    data.save_image(torch.cat(rows, dim=1), out / f"{name}_{step:07d}.png")
    if pictures:
        width = pictures[0].shape[2]
        data.save_image(torch.cat([p.expand(3, -1, width) for p in pictures[:-1]], dim=1),
                        out / f"{name}_trajectory_{step:07d}.png")
    return {f"{k}{suffix}": v for suffix in scores
            for k, v in {**metrics.mean(scores[suffix]), "shift_max": max(shifts[suffix])}.items()}
