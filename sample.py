"""Restore images with a trained IR-SDE checkpoint and measure them (PAPER.md §5, §7, §9, §10).

Examples:

    # a Rain100H test folder (rain-N.png + norain-N.png): GT found automatically, metrics written
    python sample.py --checkpoint runs/derain/last.pt --input Rain100H/test --out out/ --compare
    # 10-step deterministic sampling of one image against its GT, with the paper's Fig. 6 strip
    python sample.py --checkpoint ckpt.pt --input lq.png --gt gt.png --out out/ \\
        --sampler ddim --sample-steps 10 --trajectory
    # Gaussian denoising at sigma = 25 (0-255 scale), from t* with the checkpoint's sampler
    python sample.py --checkpoint denoise.pt --input noisy/ --out out/ --noise-sigma 25
    # a large image, network evaluated on 512 x 512 tiles (bounded memory, no seams)
    python sample.py --checkpoint ckpt.pt --input big.png --out out/ --tile 512

Input: an image, a folder of images, or a paired dataset folder that data.find_pairs knows (GT/ +
LQ/, Rain100 rain-N/norain-N, GoPro blur/sharp), which brings its own GT. --gt is an image or a
folder paired with the inputs by file name; what does not pair is refused. A super-resolution
checkpoint (scale s > 1) upsamples each input bicubically by s, as training did; GT must then be s x
the LQ.

Output: DIR/<stem>.png per image; with GT also metrics.csv and metrics.json (PSNR and SSIM on RGB and
on Y with --crop-border pixels cut, GMSD and the texture ratio on Y); DIR/compare/<stem>.png (LQ |
restored | GT) with --compare; DIR/trajectory/<stem>.png with --trajectory: the state x_t the network
sees at up to 10 of its steps over the x0 it predicts from it, labelled with t, then the restored x_0
over the GT. The output folder and its subfolders may not hold input or GT images nor lie inside an
--input or --gt folder. Ctrl-C stops after writing the metrics of the images finished (exit status 130).

Seeds: every image gets its own generator seeded with --seed, so its result does not depend on the
other images; the same command gives the same numbers on CPU (CUDA draws differ from CPU draws).
--output and --steps are kept as aliases of --out and --sample-steps (train.py's spelling).
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

import torch

import checkpoint
import irsde
import metrics
import tasks
from data import (DataError, _keyed, _match, atomic_write, check_sizes, check_writable, detect_layout, find_pairs,
                  fit_gt, image_size, list_images, load_image, save_image, upsample)
from flags import UsageError, check_device
from restore import Trajectory, restore, strip, trajectory_steps

MIN_TILE = 128  # smaller tiles give the network too little context: a warning
OUTPUT_SUBFOLDERS = ("compare", "trajectory")


# ---- input and output files ------------------------------------------------------------------

def find_jobs(input_path, gt_path=None, scale=1):
    """[(lq, gt or None)]: a paired dataset folder's pairs (data.find_pairs, LQ = GT size / scale), else
    the inputs paired with --gt by train.py's rule for GT/ + LQ/ folders, not by sorted order (1, 2, 10
    vs 01, 02, 10): the same stem, where an LQ stem may carry an "x4"-style suffix (DIV2K). One input
    file pairs with one GT file whatever their names, and with the GT of its name in a GT folder."""
    input_path = Path(input_path)
    try:
        paired = input_path.is_dir() and detect_layout(input_path)
    except DataError:
        paired = False
    if paired:
        if gt_path is not None:
            raise DataError(f"{input_path} is a paired dataset folder: it brings its own GT, drop --gt")
        return find_pairs(input_path, scale=scale)
    inputs = list_images(input_path)
    if gt_path is None:
        return [(lq, None) for lq in inputs]
    gt_path = Path(gt_path)
    gts = list_images(gt_path)
    if input_path.is_file() and gt_path.is_file():
        return [(inputs[0], gts[0])]
    gt = _keyed(gts, lambda p: p.stem)
    lq = _keyed(inputs, lambda p: p.stem if p.stem in gt else re.sub(r"x\d+$", "", p.stem))
    return _match(lq, gt, input_path, gt_path, skip_gt_only=input_path.is_file())


def output_names(paths):
    """Output stems: the file stems or, where stems repeat (GoPro scenes, a.png + a.jpg), the path
    below the inputs' common folder with "/" and "." turned into "_"; DataError where two collide."""
    names = [p.stem for p in paths]
    if len(set(names)) < len(names):
        root = Path(os.path.commonpath([p.parent for p in paths]))
        names = ["_".join(p.relative_to(root).parts).replace(".", "_") for p in paths]
    first = {}
    for path, name in zip(paths, names):  # x/y.png and x_y.png both become x_y_png
        if name in first:
            raise DataError(f"{first[name]} and {path} would both be written as {name}.png; rename one")
        first[name] = path
    return names


def prepare_output(out, jobs, given, subfolders):
    """Create the output folders; before anything is restored, refuse one (out or a subfolder) that
    holds input or GT images, lies inside a folder in `given` (--input, --gt) or cannot be written."""
    out = Path(out)
    sources = {p.parent.resolve() for job in jobs for p in job if p is not None}
    inside = [Path(g).resolve() for g in given if g is not None and Path(g).is_dir()]
    for folder in [out] + [out / s for s in OUTPUT_SUBFOLDERS]:
        target = folder.resolve()
        if target in sources:
            raise DataError(f"{folder}: output folder holds input or GT images, which would be overwritten; "
                            "choose another --out")
        for root in inside:
            if target == root or root in target.parents:
                raise DataError(f"{folder}: output folder lies inside {root}, given as --input/--gt; "
                                "choose an --out outside it")
    for folder in [out] + [out / s for s in subfolders]:
        check_writable(folder, "the output folder")


# ---- metrics report --------------------------------------------------------------------------

def write_metrics(out, rows, info):
    """metrics.csv (one row per image and a mean row) and metrics.json in the output folder."""
    mean = metrics.mean(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image"] + list(mean))
    for row in rows + [dict(mean, image="mean")]:
        writer.writerow([row["image"]] + [f"{row[k]:.6f}" for k in mean])
    atomic_write(out / "metrics.csv", lambda f: f.write(buf.getvalue().encode()))
    report = json.dumps(dict(info, images=rows, mean=mean), indent=2) + "\n"
    atomic_write(out / "metrics.json", lambda f: f.write(report.encode()))


def print_table(rows):
    mean = metrics.mean(rows)
    width = max(len(r["image"]) for r in rows + [{"image": "mean"}])
    print(f"{'image':<{width}}  " + "  ".join(f"{k:>8}" for k in mean))
    for row in rows + [dict(mean, image="mean")]:
        print(f"{row['image']:<{width}}  " + "  ".join(f"{row[k]:8.4f}" for k in mean))


# ---- command line ----------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint written by train.py, or the authors' .pth (then --task is needed)")
    p.add_argument("--task", choices=tasks.TASKS,
                   help="for the authors' .pth files: the task, which sets their test SDE (lambda, T, eps)")
    p.add_argument("--input", required=True, help="image, folder of images, or paired dataset folder")
    p.add_argument("--out", "--output", required=True, help="output folder")
    p.add_argument("--gt", help="GT image or folder")
    p.add_argument("--sampler", choices=irsde.SAMPLERS, help="default: the checkpoint's")
    p.add_argument("--sample-steps", "--steps", type=int, help="sampling steps, 1 to T (from t* for a task "
                   "with a noise level: 1 to t*) (default: the checkpoint's, else every index)")
    p.add_argument("--seed", type=int, default=0, help="noise seed, the same for every image")
    p.add_argument("--noise-sigma", type=float, help="a task with a noise level (denoising): the noise level "
                   "of the inputs on the 0-255 scale (default: the task's, " + ", ".join(
                       f"{k} {v.noise_sigma * 255:g}" for k, v in tasks.TASKS.items() if v.noise_sigma) + ")")
    p.add_argument("--tile", type=int,
                   help=f"evaluate the network on tiles of this size (large images; below {MIN_TILE} costs quality)")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels")
    p.add_argument("--compare", action="store_true", help="also write LQ | restored | GT pictures")
    p.add_argument("--trajectory", action="store_true", help="also write the reverse process (Fig. 6)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--crop-border", type=int, default=4, help="pixels cut from each side for metrics")
    return p.parse_args(argv)


def check_args(args, sde, config):
    """UsageError naming an option whose value argparse cannot judge alone, before any work. Sets
    args.noise_sigma, args.sampler and args.sample_steps to what will run, for metrics.json."""
    if args.crop_border < 0:
        raise UsageError(f"--crop-border must be 0 or more, got {args.crop_border}")
    check_tile(args.tile, args.overlap)
    if sde is None:
        given = [flag for flag, value in (("--sample-steps", args.sample_steps), ("--sampler", args.sampler),
                                          ("--noise-sigma", args.noise_sigma)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: {args.checkpoint} is the CNN baseline, which restores in one "
                             "network pass without them; drop them")
        return
    task = tasks.TASKS[config["task"]]
    if args.noise_sigma is not None and task.noise_sigma is None:
        raise UsageError(f"--noise-sigma applies to tasks with a noise level only (this checkpoint: {config['task']})")
    t_start, start = sde.T, f"T = {sde.T}"
    if task.noise_sigma is not None:
        args.noise_sigma = task.noise_sigma * 255 if args.noise_sigma is None else args.noise_sigma
        try:
            t_start = sde.start_index(args.noise_sigma / 255)
        except ValueError as e:  # unless 0 < sigma < lambda
            raise UsageError(f"--noise-sigma {args.noise_sigma:g}: {e}") from None
        if t_start < 1:
            raise UsageError(f"--noise-sigma {args.noise_sigma:g}: too small for this checkpoint's noise levels "
                             "(t* = 0: nothing to denoise)")
        start = f"t* = {t_start} for --noise-sigma {args.noise_sigma:g}"
    args.sampler = args.sampler or config["sampling"]["sampler"]
    args.sample_steps = sampling_steps(args, config["sampling"]["steps"], t_start, start)
    trained = config["args"]
    if trained.get("t_draw") == "chain" and args.sample_steps != trained.get("sample_steps"):
        print(f"note: {args.checkpoint} was trained only at the indices of its {trained['sample_steps']} "
              f"sampling step(s) (--t-draw {trained['t_draw']}); --sample-steps {args.sample_steps} also asks "
              "it about indices it never saw")


def sampling_steps(args, stored, available, start):
    """The number of sampling steps that will run: --sample-steps, which must be 1..available (the
    indices from `start` down to 0), else the checkpoint's number, capped at `available` with a note
    (t* depends on --noise-sigma), else every index."""
    if args.sample_steps is not None:
        if not 1 <= args.sample_steps <= available:
            raise UsageError(f"--sample-steps {args.sample_steps}: must be between 1 and {available} ({start})")
        return args.sample_steps
    if stored is None:
        return available
    if stored < 1:
        raise DataError(f"{args.checkpoint}: stores {stored} sampling steps (train.py did not check "
                        f"--sample-steps then); pass --sample-steps N with 1 <= N <= {available}")
    if stored > available:
        print(f"note: the checkpoint's {stored} sampling steps exceed the {available} indices from {start}; "
              f"running {available}")
    return min(stored, available)


def check_tile(tile, overlap):
    """Refuse tiles the blend cannot use; warn about tiles below MIN_TILE."""
    if tile is None:
        return
    if tile < 1 or overlap < 0 or tile < 2 * overlap:
        raise UsageError(f"--tile {tile} --overlap {overlap}: need tile >= 1, overlap >= 0 and tile >= 2 x overlap")
    if tile < MIN_TILE:
        print(f"warning: --tile {tile} is below {MIN_TILE}: each tile gives the network less context, which costs "
              f"quality; use --tile {MIN_TILE} or more if memory allows", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (DataError, UsageError) as e:  # the project's own errors; anything else keeps its traceback
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # run() has written what was finished
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def run(args):
    """Restore every input in order, writing each result as it is done, then the metrics; stopped early
    (Ctrl-C, an unusable image, a full disk), those of the finished images, marked "complete": false."""
    device = check_device(args.device)
    net, sde, config = checkpoint.load(args.checkpoint, device, args.task)
    if args.task not in (None, config["task"]):
        raise UsageError(f"{args.checkpoint}: checkpoint was trained for {config['task']}, not --task {args.task}")
    check_args(args, sde, config)
    if args.trajectory and sde is None:
        print("--trajectory: the CNN baseline has no intermediate states; no trajectory written")
    jobs = find_jobs(args.input, args.gt, config["scale"])
    check_inputs(jobs, config["scale"], args.crop_border, args.tile)
    names = output_names([lq for lq, _ in jobs])
    out = Path(args.out)
    prepare_output(out, jobs, (args.input, args.gt), [s for s in OUTPUT_SUBFOLDERS if getattr(args, s)])
    info = dict(checkpoint=str(args.checkpoint), task=config["task"], scale=config["scale"], sampler=args.sampler,
                steps=args.sample_steps, seed=args.seed, crop_border=args.crop_border)
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
    """Restore the jobs one by one, printing progress; append each image's metrics to rows."""
    for k, ((lq_path, gt_path), name) in enumerate(zip(jobs, names), 1):
        start = time.perf_counter()
        restored, gt = restore_file(args, net, sde, config, lq_path, gt_path, out, name, device)
        line = f"[{k}/{len(jobs)}] {name} {restored.shape[1]}x{restored.shape[2]} {time.perf_counter() - start:.1f}s"
        if gt is not None:
            row = dict(image=name, **metrics.evaluate(restored, gt, args.crop_border))
            lpips = metrics.lpips_or_none(restored, gt)
            if lpips is not None:
                row["lpips"] = lpips
            elif not rows:
                print(metrics.LPIPS_SKIPPED)
            rows.append(row)
            mean = metrics.mean(rows)
            line += (f"  PSNR {rows[-1]['psnr']:.2f} PSNR-Y {rows[-1]['psnr_y']:.2f}"
                     f"  (mean {mean['psnr']:.2f} / {mean['psnr_y']:.2f})")
        print(line, flush=True)


def restore_file(args, net, sde, config, lq_path, gt_path, out, name, device):
    """Load one pair (an SR checkpoint's LQ upsampled by its scale, as data.PairedFolder does), restore
    it, write out/<name>.png and its compare / trajectory pictures; (restored, gt or None), (3,H,W) on CPU."""
    lq = load_image(lq_path)
    gt = None if gt_path is None else fit_gt(load_image(gt_path), lq, config["scale"], lq_path, gt_path)
    if config["scale"] > 1:
        lq = upsample(lq, (lq.shape[1] * config["scale"], lq.shape[2] * config["scale"]))
    noise_sigma = None if args.noise_sigma is None else args.noise_sigma / 255
    generator = torch.Generator(device).manual_seed(args.seed)
    trajectory = (Trajectory(trajectory_steps(sde, config, args.sample_steps, noise_sigma))
                  if args.trajectory and sde is not None else None)
    restored = restore(net, sde, config, lq[None].to(device), args.sampler, args.sample_steps, generator,
                       noise_sigma, args.tile, args.overlap, trajectory)[0].float().cpu()
    save_image(restored, out / f"{name}.png")
    if args.compare:
        save_image(strip([lq, restored] + ([gt] if gt is not None else [])), out / "compare" / f"{name}.png")
    if trajectory is not None:
        save_image(trajectory.picture(restored, gt), out / "trajectory" / f"{name}.png")
    return restored, gt


def check_inputs(jobs, scale, crop_border, tile):
    """Check the flags that depend on image sizes, from the file headers, before anything is written:
    a GT must be scale x its LQ (data.fit_gt's rule) and at least metrics.min_side(crop_border) a side.
    A --tile that no image exceeds is noted: it changes nothing."""
    check_sizes([job for job in jobs if job[1] is not None], scale)
    for lq_path, gt_path in jobs:
        w, h = image_size(gt_path or lq_path)
        if gt_path is not None and min(w, h) < metrics.min_side(crop_border):
            raise UsageError(f"{gt_path}: {w}x{h}, too small for the metrics with --crop-border {crop_border} "
                             f"(they need {metrics.min_side(crop_border)} pixels a side); lower --crop-border "
                             "or leave out --gt")
    if tile is not None and all(max(image_size(lq)) * scale <= tile for lq, _ in jobs):
        print(f"note: --tile {tile}: no input is larger, so every image is restored whole")


if __name__ == "__main__":
    main()
