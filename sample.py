"""Restore images with a trained IR-SDE checkpoint and measure them (PAPER.md §5, §7, §9, §10).

Examples:

    # a folder of rainy images; the checkpoint's own sampler and step count
    python sample.py --checkpoint runs/derain/last.pt --input rainy/ --output out/
    # a Rain100H test folder (rain-N.png + norain-N.png): GT found automatically, metrics written
    python sample.py --checkpoint runs/derain/last.pt --input Rain100H/test --output out/ --compare
    # 10-step deterministic sampling of one image against its GT, with the paper's Fig. 6 strip
    python sample.py --checkpoint ckpt.pt --input lq.png --gt gt.png --output out/ \\
        --sampler ddim --steps 10 --trajectory
    # Gaussian denoising at sigma = 25 (0-255 scale), from t* with the checkpoint's sampler (PAPER.md §5)
    python sample.py --checkpoint denoise.pt --input noisy/ --output out/ --noise-sigma 25
    # a large image, network evaluated on 512 x 512 tiles (bounded memory, no seams)
    python sample.py --checkpoint ckpt.pt --input big.png --output out/ --tile 512

Input: an image file, a folder of images, or a paired dataset folder in a layout that
data.find_pairs knows (GT/ + LQ/, Rain100 rain-N/norain-N, GoPro blur/sharp); then the GT
comes from the pairs. --gt is an image or a folder paired with the inputs by file name, with
train.py's rule for GT/ + LQ/ folders (same stem; an LQ stem may end in x4); what does not pair
is refused. A super-resolution checkpoint trained on small LQ images (scale s > 1 in its
config) upsamples each input bicubically by s, as training did; GT must then be s x the LQ.

Output: DIR/<stem>.png per image; with GT also metrics.csv and metrics.json (PSNR, SSIM on RGB
and on Y with --crop-border pixels cut, PAPER.md §9); DIR/compare/<stem>.png (LQ |
restored | GT) with --compare; DIR/trajectory/<stem>.png with --trajectory: the reverse process,
the state x_t the network sees at up to 8 of its steps on top and the x0 it predicts from that
state below, each column labelled with t, then the restored x_0 above the GT.

Outputs never land where inputs are: the output folder and its compare/ and trajectory/
subfolders may not hold input or GT images nor lie inside a folder given as --input or --gt.
Ctrl-C stops after writing the metrics of the images finished so far (exit status 130).

Seeds: every image gets its own generator seeded with --seed, so an image's result does not
depend on which other images are in the folder; the same command gives the same numbers on CPU
(CUDA draws differ from CPU draws).
"""
import argparse
import csv
import io
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import irsde
import metrics
from data import (NOISE_SIGMA, DataError, _keyed, _match, atomic_write, check_writable, detect_layout, find_pairs,
                  image_size, list_images, load_image, save_image, upsample)
from unet import UNet, from_reference_state_dict

TRAJECTORY_STATES = 8  # states shown in a trajectory strip (the paper's Fig. 6)
GAP = 4  # white pixels between the pictures of a strip
LABEL_HEIGHT = 12  # the band naming the columns of a trajectory picture
MIN_TILE = 128  # smaller tiles give the network too little context: a warning (to be measured on the final U-Net)


# ---- checkpoint ------------------------------------------------------------------------------

def make_config(args, net, sde, scale=1):
    """The run configuration stored in every train.py checkpoint (the one place that writes it):
    {task, loss, param, net, sde, scale, sampling: {sampler, steps, clip_x0}} is what sample.py
    rebuilds the model from; scale is the SR factor by which training upsampled its LQ images
    (1: LQ given at GT size). `args` (every train.py flag) is kept for the record and for --resume."""
    record = {k: v for k, v in vars(args).items() if k not in ("resume", "device", "out")}
    return dict(task=args.task, loss=args.loss, param=args.param, net=net.config,
                sde=None if sde is None else sde.config(), scale=scale,
                sampling=dict(sampler=args.sampler, steps=args.sample_steps, clip_x0=args.clip_x0),
                args=record)


def read_config(config):
    """A checkpoint's configuration in the current layout (the one place that reads it). Checkpoints
    written before the layout had `sampling` kept those settings in `args` and named lambda
    `max_sigma`; they are translated here. Those without `scale` were trained at scale 1."""
    config = dict(config)
    config.setdefault("scale", 1)
    if config.get("sde") is not None and "max_sigma" in config["sde"]:
        config["sde"] = {("lam" if k == "max_sigma" else k): v for k, v in config["sde"].items()}
    if "sampling" not in config:
        args = config.get("args", {})
        sampler = args.get("sampler") or ("ode" if config["task"] == "denoise" else "posterior")
        config["sampling"] = dict(sampler=sampler, steps=args.get("sample_steps"),
                                  clip_x0=bool(args.get("clip_x0", False)))
    return config


def load_checkpoint(path, device="cpu", task=None):
    """(net, sde, config) from a train.py checkpoint: UNet(**config["net"]) with the EMA weights
    (the raw "model" weights if there is no EMA) and IRSDE(**config["sde"]), or sde None for the
    CNN baseline (loss "cnn"). A plain state_dict of the authors' ConditionalUNet (their released
    .pth files) needs `task`, which supplies their test settings. DataError naming the file for
    anything unusable."""
    path = Path(path)
    ckpt = read_checkpoint(path, plain_ok=task is not None)
    if not isinstance(ckpt.get("config"), dict):
        return reference_model(ckpt, path, task, device)
    config = read_config(ckpt["config"])
    if "mid_mult" in config["net"]:
        raise DataError(f"{path}: written for the network before the authors' exact U-Net (it has "
                        "GroupNorm blocks); this version cannot rebuild it: retrain, or sample with "
                        "commit 8102553 or older")
    try:
        net = UNet(**config["net"])
        net.load_state_dict(ckpt.get("ema") or ckpt["model"])
        sde = None if config["loss"] == "cnn" else irsde.IRSDE(**config["sde"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{path}: checkpoint does not match this code's network or SDE ({e})") from e
    return net.to(device).eval(), sde, config


# The authors' test settings per task (codes/config/<task>/options/test/ir-sde.yml; PAPER.md §5, §6,
# §8): lambda on the 0-255 scale and eps, with T = 100 and the cosine schedule everywhere. Dehazing
# has no released IR-SDE model; it takes the SR/inpainting lambda.
REFERENCE_TASKS = {"derain": (10, 0.005), "deblur": (10, 0.005), "sr": (30, 0.005),
                   "inpaint": (30, 0.005), "dehaze": (30, 0.005), "denoise": (75, 0.04)}


def reference_model(state_dict, path, task, device):
    """(net, sde, config) for the authors' weights: their network (unet.from_reference_state_dict),
    their test SDE for `task`, and their sampler, 100 posterior steps (the denoising ODE for denoising)."""
    try:
        net = from_reference_state_dict(state_dict, "denoise" if task == "denoise" else "derain")
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {e}") from e
    lam, eps = REFERENCE_TASKS[task]
    sde = irsde.IRSDE(lam / 255, 100, "cosine", eps)
    sampler = "ode" if task == "denoise" else "posterior"
    config = dict(task=task, loss="ml", param="noise", net=net.config, sde=sde.config(),
                  scale=4 if task == "sr" else 1,  # their SR test upsamples the x4 LR input bicubically
                  sampling=dict(sampler=sampler, steps=None, clip_x0=False), args=dict(source=str(path)))
    return net.to(device).eval(), sde, config


def read_checkpoint(path, plain_ok=False):
    """The checkpoint dict, loaded with weights_only=True: plain data and tensors only; a pickle
    that would run code is refused. plain_ok accepts a bare state_dict (name -> tensor) as well.
    DataError naming the file when it is missing or unusable."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a checkpoint file (train.py writes <folder>/last.pt)")
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: checkpoint file is empty (0 bytes: an interrupted copy or save?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # optimizer state stays off the GPU
    except Exception as e:  # torch raises many types for foreign or damaged files, some without a message
        reason = next(iter(str(e).splitlines()), "") or type(e).__name__
        raise DataError(f"{path}: not a readable torch checkpoint ({reason})") from e
    plain = isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values())
    if plain and not plain_ok:
        raise DataError(f"{path}: a plain state_dict, not a train.py checkpoint; if it holds the authors' "
                        f"weights (e.g. rain100h_sde.pth), give --task ({', '.join(REFERENCE_TASKS)}) "
                        "to use their test settings")
    missing = [] if plain else _missing_keys(ckpt)
    if missing:
        raise DataError(f"{path}: checkpoint lacks {', '.join(missing)} (not written by train.py?)")
    return ckpt


def _missing_keys(ckpt):
    """Names of the entries sample.py needs that the checkpoint lacks (see train.save_checkpoint)."""
    if not isinstance(ckpt, dict):
        return ["everything (it is not a dict)"]
    missing = [] if ckpt.get("ema") or ckpt.get("model") else ["'ema'/'model' weights"]
    config = ckpt.get("config")
    if not isinstance(config, dict):
        return missing + ["'config'"]
    needed = ("task", "loss", "net") + (() if config.get("loss") == "cnn" else ("sde",))
    return missing + [f"'config.{k}'" for k in needed if config.get(k) is None]


# ---- restoration -----------------------------------------------------------------------------

@torch.no_grad()
def restore(net, sde, config, lq, sampler=None, steps=None, generator=None, noise_sigma=None,
            tile=None, overlap=32, callback=None, clip_x0=None):
    """Restored (B,3,H,W) in [0, 1] from the LQ batch lq (B,3,H,W).

    CNN baseline: lq + net(lq) in one pass. Denoising: the noisy image is the state at t* of the
    denoising SDE (PAPER.md §5); noise_sigma on the [0, 1] scale. Otherwise x_T = lq + lambda z is
    run back to x_0 by the sampler (PAPER.md §6, §7). sampler, steps and clip_x0 default to the
    checkpoint's `sampling` settings. tile: evaluate the network on tile x tile windows
    overlapping by `overlap` pixels (see `tiled`). callback(dict(i, t, x, x0)) sees each step.
    """
    model = network(net, lq.device, tile, overlap)
    if config["loss"] == "cnn":
        return (lq + model(lq, None, None)).clamp(0, 1)
    model = irsde.noise_model(model, sde, config.get("param", "noise"))
    sampling = config["sampling"]
    sampler = sampler or sampling["sampler"]
    steps = steps or sampling["steps"]
    clip_x0 = sampling["clip_x0"] if clip_x0 is None else clip_x0
    kwargs = dict(generator=generator, callback=callback, clip_x0=clip_x0)
    if config["task"] == "denoise":
        if noise_sigma is None:
            raise DataError("denoising needs the noise level of the input (noise_sigma)")
        x0 = irsde.denoise(model, sde, lq, noise_sigma, steps, sampler, **kwargs)
    else:
        x0 = irsde.sample(model, sde, lq, steps, sampler, **kwargs)
    return x0.clamp(0, 1)


def network(net, device, tile=None, overlap=32, bf16=None):
    """net as f(x, mu, t) with a float32 output: under bf16 autocast where `bf16` (default: on CUDA;
    train.py also on CPUs with native bf16), the SDE arithmetic staying float32; evaluated tile by
    tile when `tile` is given."""
    bf16 = device.type == "cuda" if bf16 is None else bf16

    def forward(x, mu, t):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return net(x, mu, t).float()
    return forward if tile is None else tiled(forward, tile, overlap)


def tiled(net, tile, overlap):
    """f(x, mu, t) computed on overlapping tile x tile windows and blended (PAPER.md §10).

    Only the network call is tiled: the sampler still steps the full-size state with one
    full-size noise draw per step, so the noise equals the untiled run's and the blend weights
    (raised-cosine ramps over the overlaps, summing to one there) leave no seams. Memory is
    bounded by the tile; the state itself is only 3 x H x W. A network with image-wide context
    (its linear attention is image-wide, and its receptive field) still gives somewhat different values
    per tile than on the whole image: the blend hides the tile borders, not that difference.
    """
    if tile < 1 or not 0 <= overlap <= tile // 2:
        raise DataError(f"tiles need tile >= 1 and 0 <= overlap <= tile / 2, got tile {tile}, overlap {overlap}")

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
    """(start, 1-D blend weights) of the windows covering 0..n-1 with stride tile - overlap.

    Weights ramp as sin^2 over the first/last `overlap` pixels where a neighbour overlaps (the
    neighbour's cos^2 ramp complements it) and are 1 elsewhere, never 0."""
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


# ---- trajectory and pictures -----------------------------------------------------------------

class Trajectory:
    """Sampler callback for the picture of the reverse process (the paper's Fig. 6). At up to 8
    evenly spaced network evaluations from the first (t = T, or t* for denoising) to the last, it
    keeps the state x_t that the network saw (top row) and the x0 it predicted from that state
    (bottom row); `picture` labels each column with its t and adds the restored x_0 above the GT."""

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
        """x_t over x0_hat(x_t) for each kept t, then x_0 over the GT (white without one)."""
        gt = torch.ones_like(restored) if gt is None else gt
        labels, top, bottom = zip(*self.columns, ("x_0 / GT", restored, gt))
        return labelled(torch.cat([strip(top), torch.ones(3, GAP, strip(top).shape[2]), strip(bottom)], dim=1),
                        labels, restored.shape[2])


def trajectory_steps(sde, config, steps, noise_sigma):
    """The indices a restoration of this checkpoint runs through (T, or t* for denoising, down to 0)."""
    t_start = sde.start_index(noise_sigma) if config["task"] == "denoise" else sde.T
    return irsde.timesteps(sde, steps or config["sampling"]["steps"], t_start)


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


# ---- input and output files ------------------------------------------------------------------

def find_jobs(input_path, gt_path=None, scale=1):
    """[(lq, gt or None)]: a paired dataset folder (data.find_pairs, LQ = GT size / scale), or
    the inputs paired with --gt by name (pair_by_name)."""
    input_path = Path(input_path)
    if input_path.is_dir() and _paired_layout(input_path):
        if gt_path is not None:
            raise DataError(f"{input_path} is a paired dataset folder: it brings its own GT, drop --gt")
        return find_pairs(input_path, scale=scale)
    inputs = list_images(input_path)
    if gt_path is None:
        return [(lq, None) for lq in inputs]
    return pair_by_name(inputs, list_images(gt_path), input_path, Path(gt_path))


def pair_by_name(inputs, gts, input_path, gt_path):
    """(lq, gt) pairs by train.py's rule for GT/ + LQ/ folders: the same stem, where an LQ stem
    may carry an "x4"-style suffix (DIV2K). Sorted order would pair 1, 2, 10 with 01, 02, 10 wrongly.
    One input file and one GT file pair whatever their names; one input file against a GT folder
    takes the GT of its name. DataError naming the files that do not pair."""
    if input_path.is_file() and gt_path.is_file():
        return [(inputs[0], gts[0])]
    gt = _keyed(gts, lambda p: p.stem)
    lq = _keyed(inputs, lambda p: p.stem if p.stem in gt else re.sub(r"x\d+$", "", p.stem))
    return _match(lq, gt, input_path, gt_path, skip_gt_only=input_path.is_file())


def _paired_layout(folder):
    try:
        detect_layout(folder)
    except DataError:
        return False
    return True


def output_names(paths):
    """Output stems: the file stems or, where stems repeat (GoPro scenes, a.png + a.jpg), the
    path below the inputs' common folder with "/" and "." turned into "_"."""
    stems = [p.stem for p in paths]
    names = stems
    if len(set(stems)) < len(stems):
        root = Path(os.path.commonpath([p.parent for p in paths]))
        names = ["_".join(p.relative_to(root).parts).replace(".", "_") for p in paths]
    first = {}
    for path, name in zip(paths, names):  # x/y.png and x_y.png would both become x_y_png
        if name in first:
            raise DataError(f"{first[name]} and {path} would both be written as {name}.png; rename one")
        first[name] = path
    return names


OUTPUT_SUBFOLDERS = ("compare", "trajectory")


def prepare_output(out, jobs, given, subfolders):
    """Create the output folders, refusing before anything is restored: an output folder (or its
    compare/ or trajectory/ subfolder) that holds input or GT images, which would be overwritten,
    or that lies inside a folder given as --input / --gt (`given`), and one that cannot be written."""
    out = Path(out)
    sources = {p.parent.resolve() for job in jobs for p in job if p is not None}
    inside = [Path(g).resolve() for g in given if g is not None and Path(g).is_dir()]
    for folder in [out] + [out / s for s in OUTPUT_SUBFOLDERS]:
        target = folder.resolve()
        if target in sources:
            raise DataError(f"{folder}: output folder holds input or GT images, which would be overwritten; "
                            "choose another --output")
        for root in inside:
            if target == root or root in target.parents:
                raise DataError(f"{folder}: output folder lies inside {root}, given as --input/--gt; "
                                "choose an --output outside it")
    for folder in [out] + [out / s for s in subfolders]:
        check_writable(folder, "the output folder")


# ---- metrics report --------------------------------------------------------------------------

COLUMNS = ("psnr", "ssim", "psnr_y", "ssim_y")


def measure(name, restored, gt, crop_border):
    """PSNR / SSIM on RGB and Y, plus LPIPS where it is installed (PAPER.md §9)."""
    row = dict(image=name, **metrics.evaluate(restored, gt, crop_border))
    lpips = metrics.lpips_or_none(restored, gt)
    if lpips is not None:
        row["lpips"] = lpips
    return row


def mean_row(rows):
    keys = [k for k in COLUMNS + ("lpips",) if k in rows[0]]
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


def write_metrics(out, rows, info):
    """metrics.csv (one row per image and a mean row) and metrics.json in the output folder."""
    mean = mean_row(rows)
    keys = list(mean)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image"] + keys)
    for row in rows + [dict(mean, image="mean")]:
        writer.writerow([row["image"]] + [f"{row[k]:.6f}" for k in keys])
    atomic_write(out / "metrics.csv", lambda f: f.write(buf.getvalue().encode()))
    report = json.dumps(dict(info, images=rows, mean=mean), indent=2) + "\n"
    atomic_write(out / "metrics.json", lambda f: f.write(report.encode()))


def print_table(rows):
    mean = mean_row(rows)
    keys = list(mean)
    width = max(len(r["image"]) for r in rows + [{"image": "mean"}])
    print(f"{'image':<{width}}  " + "  ".join(f"{k:>8}" for k in keys))
    for row in rows + [dict(mean, image="mean")]:
        print(f"{row['image']:<{width}}  " + "  ".join(f"{row[k]:8.4f}" for k in keys))


# ---- command line ----------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint written by train.py, or the authors' .pth (then --task is needed)")
    p.add_argument("--task", choices=sorted(REFERENCE_TASKS),
                   help="for the authors' .pth files: the task, which sets their test SDE (lambda, T, eps)")
    p.add_argument("--input", required=True, help="image, folder of images, or paired dataset folder")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--gt", help="GT image or folder, paired with the inputs by file name")
    p.add_argument("--sampler", choices=sorted(irsde.SAMPLERS),
                   help="default: the checkpoint's (train.py stores ode for paper-preset denoising, ddim for tiny)")
    p.add_argument("--steps", type=int, help="sampling steps, 1 to T (denoising: 1 to t*) "
                   "(default: the checkpoint's, else every index)")
    p.add_argument("--seed", type=int, default=0, help="noise seed, the same for every image")
    p.add_argument("--noise-sigma", type=float,
                   help=f"denoising: noise level of the inputs on the 0-255 scale (default {NOISE_SIGMA * 255:g})")
    p.add_argument("--tile", type=int, help="evaluate the network on tiles of this size (large images; "
                   f"below {MIN_TILE} costs quality)")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels")
    p.add_argument("--compare", action="store_true", help="also write LQ | restored | GT pictures")
    p.add_argument("--trajectory", action="store_true", help="also write intermediate states and x0 predictions (Fig. 6)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--crop-border", type=int, default=4, help="pixels cut from each side for metrics")
    return p.parse_args(argv)


def check_device(name):
    """The torch.device for a --device value: cpu, cuda or cuda:N; None picks cuda when available.
    DataError for any other name and for a GPU this machine does not have (shared with train.py)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", name)
    if match is None:
        raise DataError(f"--device {name}: expected cpu, cuda or cuda:N")
    if name != "cpu":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DataError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if int(match.group(1) or 0) >= count:
            raise DataError(f"--device {name}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return torch.device(name)


def check_args(args, sde, config):
    """Option values that argparse cannot judge alone, checked before any work; DataError naming
    the option. Sets args.noise_sigma, args.sampler and args.steps to what will run, so that
    metrics.json records that."""
    if args.crop_border < 0:
        raise DataError(f"--crop-border must be 0 or more, got {args.crop_border}")
    check_tile(args.tile, args.overlap)
    if sde is None:
        given = [flag for flag, value in (("--steps", args.steps), ("--sampler", args.sampler),
                                          ("--noise-sigma", args.noise_sigma)) if value is not None]
        if given:
            raise DataError(f"{', '.join(given)}: {args.checkpoint} is the CNN baseline, which restores in one "
                            "network pass without them; drop them")
        return
    if args.noise_sigma is not None and config["task"] != "denoise":
        raise DataError(f"--noise-sigma applies to denoising checkpoints only (this one: {config['task']})")
    t_start, start = sde.T, f"T = {sde.T}"
    if config["task"] == "denoise":
        args.noise_sigma = NOISE_SIGMA * 255 if args.noise_sigma is None else args.noise_sigma
        try:
            t_start = sde.start_index(args.noise_sigma / 255)
        except ValueError as e:  # unless 0 < sigma < lambda
            raise DataError(f"--noise-sigma {args.noise_sigma:g}: {e}") from None
        if t_start < 1:
            raise DataError(f"--noise-sigma {args.noise_sigma:g}: too small for this checkpoint's noise levels "
                            "(t* = 0: nothing to denoise)")
        start = f"t* = {t_start} for --noise-sigma {args.noise_sigma:g}"
    args.sampler = args.sampler or config["sampling"]["sampler"]
    args.steps = sampling_steps(args, config["sampling"]["steps"], t_start, start)
    trained = config.get("args", {})
    if trained.get("t_draw") in ("sampler", "chain") and args.steps != trained.get("sample_steps"):
        print(f"note: {args.checkpoint} was trained only at the indices of its {trained['sample_steps']} "
              f"sampling step(s) (--t-draw {trained['t_draw']}); --steps {args.steps} also asks it about "
              "indices it never saw")


def sampling_steps(args, stored, available, start):
    """The number of sampling steps that will run: --steps, which must be 1..available (the
    indices from `start` down to 0), else the checkpoint's number, capped at `available` with a
    note (t* depends on --noise-sigma), else every index."""
    if args.steps is not None:
        if not 1 <= args.steps <= available:
            raise DataError(f"--steps {args.steps}: must be between 1 and {available} ({start})")
        return args.steps
    if stored is None:
        return available
    if stored < 1:
        raise DataError(f"{args.checkpoint}: stores {stored} sampling steps (train.py did not check "
                        f"--sample-steps then); pass --steps N with 1 <= N <= {available}")
    if stored > available:
        print(f"note: the checkpoint's {stored} sampling steps exceed the {available} indices from {start}; "
              f"running {available}")
    return min(stored, available)


def check_tile(tile, overlap):
    """Refuse tiles the blend cannot use; warn about tiles small enough to cost quality."""
    if tile is None:
        return
    if tile < 1 or overlap < 0 or tile < 2 * overlap:
        raise DataError(f"--tile {tile} --overlap {overlap}: need tile >= 1, overlap >= 0 and tile >= 2 x overlap")
    if tile < MIN_TILE:
        print(f"warning: --tile {tile} is below {MIN_TILE}: each tile gives the network less context, which costs "
              f"quality; use --tile {MIN_TILE} or more if memory allows", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except DataError as e:  # the project's own errors; anything else keeps its traceback
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # run() has written what was finished
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def run(args):
    """Restore every input in order, writing each result as it is done; then the metrics. Stopped
    early (Ctrl-C, an unusable image, a full disk), it writes the metrics of the finished images
    first, marked "complete": false."""
    device = check_device(args.device)
    net, sde, config = load_checkpoint(args.checkpoint, device, args.task)
    if args.task not in (None, config["task"]):
        raise DataError(f"{args.checkpoint}: checkpoint was trained for {config['task']}, not --task {args.task}")
    check_args(args, sde, config)
    if args.trajectory and sde is None:
        print("--trajectory: the CNN baseline has no intermediate states; no trajectory written")
    jobs = find_jobs(args.input, args.gt, config["scale"])
    check_sizes(jobs, config["scale"], args.crop_border, args.tile)
    names = output_names([lq for lq, _ in jobs])
    out = Path(args.output)
    prepare_output(out, jobs, (args.input, args.gt), [s for s in OUTPUT_SUBFOLDERS if getattr(args, s)])
    info = dict(checkpoint=str(args.checkpoint), task=config["task"], scale=config["scale"], sampler=args.sampler,
                steps=args.steps, seed=args.seed, crop_border=args.crop_border)
    rows = []
    try:
        restore_all(args, net, sde, config, jobs, names, out, device, rows)
    except (KeyboardInterrupt, DataError):
        if rows:
            write_metrics(out, rows, dict(info, complete=False))
            print(f"stopped: the metrics of the {len(rows)} image(s) finished are in {out / 'metrics.json'}",
                  file=sys.stderr)
        raise
    if rows:
        print_table(rows)
        write_metrics(out, rows, dict(info, complete=True))
    print(f"{len(jobs)} image(s) written to {out}")


def restore_all(args, net, sde, config, jobs, names, out, device, rows):
    """Restore the jobs one by one, printing progress; appends each image's metrics to rows."""
    for k, ((lq_path, gt_path), name) in enumerate(zip(jobs, names), 1):
        start = time.perf_counter()
        restored, gt = restore_file(args, net, sde, config, lq_path, gt_path, out, name, device)
        line = f"[{k}/{len(jobs)}] {name} {restored.shape[1]}x{restored.shape[2]} {time.perf_counter() - start:.1f}s"
        if gt is not None:
            rows.append(measure(name, restored, gt, args.crop_border))
            if len(rows) == 1 and "lpips" not in rows[0]:
                print(metrics.LPIPS_SKIPPED)
            mean = mean_row(rows)
            line += (f"  PSNR {rows[-1]['psnr']:.2f} PSNR-Y {rows[-1]['psnr_y']:.2f}"
                     f"  (mean {mean['psnr']:.2f} / {mean['psnr_y']:.2f})")
        print(line, flush=True)


def restore_file(args, net, sde, config, lq_path, gt_path, out, name, device):
    """Load one pair, restore it, write out/<name>.png (and its compare / trajectory pictures).
    An SR checkpoint's LQ is first upsampled by its scale, as in training (data.PairedFolder).
    Returns (restored, gt or None) as (3,H,W) CPU tensors."""
    lq = load_image(lq_path)
    gt = None if gt_path is None else fit_gt(load_image(gt_path), lq, config["scale"], lq_path, gt_path)
    if config["scale"] > 1:
        lq = upsample(lq, (lq.shape[1] * config["scale"], lq.shape[2] * config["scale"]))
    noise_sigma = None if args.noise_sigma is None else args.noise_sigma / 255
    # one generator per image, seeded alike: a result does not depend on the other images
    generator = torch.Generator(device).manual_seed(args.seed)
    trajectory = (Trajectory(trajectory_steps(sde, config, args.steps, noise_sigma))
                  if args.trajectory and sde is not None else None)
    restored = restore(net, sde, config, lq[None].to(device), args.sampler, args.steps, generator,
                       noise_sigma, args.tile, args.overlap, trajectory)[0].float().cpu()
    save_image(restored, out / f"{name}.png")
    if args.compare:
        save_image(strip([lq, restored] + ([gt] if gt is not None else [])), out / "compare" / f"{name}.png")
    if trajectory is not None:
        save_image(trajectory.picture(restored, gt), out / "trajectory" / f"{name}.png")
    return restored, gt


def check_sizes(jobs, scale, crop_border, tile):
    """Every input against the flags that depend on its size, from the file headers, before anything
    is written: a GT must be scale x its LQ (fit_gt's rule) and large enough for the metrics with
    --crop-border (metrics.min_side). A --tile that no image exceeds is noted: it changes nothing."""
    sizes = [image_size(lq) for lq, _ in jobs]
    for (lq_path, gt_path), (w, h) in zip(jobs, sizes):
        if gt_path is None:
            continue
        gw, gh = image_size(gt_path)
        if (gw // scale, gh // scale) != (w, h):
            need = f" (this x{scale} checkpoint needs GT = LQ size x {scale})" if scale > 1 else ""
            raise DataError(f"size mismatch: {lq_path} is {w}x{h} but {gt_path} is {gw}x{gh}{need}")
        if min(w, h) * scale < metrics.min_side(crop_border):
            raise DataError(f"{gt_path}: {w * scale}x{h * scale}, too small for the metrics with --crop-border "
                            f"{crop_border} (they need {metrics.min_side(crop_border)} pixels a side); "
                            f"lower --crop-border or leave out --gt")
    if tile is not None and all(max(w, h) * scale <= tile for w, h in sizes):
        print(f"note: --tile {tile}: no input is larger, so every image is restored whole")


def fit_gt(gt, lq, scale, lq_path, gt_path):
    """gt cut to the LQ size x scale, as training does ("modcrop"); DataError unless GT size //
    scale is the LQ size."""
    if (gt.shape[1] // scale, gt.shape[2] // scale) != tuple(lq.shape[1:]):
        need = f" (this x{scale} checkpoint needs GT = LQ size x {scale})" if scale > 1 else ""
        raise DataError(f"size mismatch: {lq_path} is {lq.shape[2]}x{lq.shape[1]} "
                        f"but {gt_path} is {gt.shape[2]}x{gt.shape[1]}{need}")
    return gt[:, :lq.shape[1] * scale, :lq.shape[2] * scale]


if __name__ == "__main__":
    main()
