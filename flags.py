"""train.py's flags, its three recipes (presets) and every check of the flags, run before any work.

A run's settings come from the flags given, the preset, then the task's row of tasks.TASKS (with --resume,
the checkpoint's); what a run cannot honour is refused naming the flag (UsageError), never capped or ignored.
"""
import argparse
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import torch

import checkpoint
import data
import tasks


class UsageError(ValueError):
    """A flag or combination of flags the run cannot honour; the message names the flag."""


# "paper": the reference recipe (PAPER.md §8), for a GPU; "tiny": a 2-core CPU in about 4 minutes; "gpu":
# tiny scaled to one GPU for minutes, restoring with 10 posterior steps. What they change and why (the
# paper's recipe scaled down does not restore, PAPER.md §11): README, "What the presets change".
PRESETS = {
    "paper": dict(net="paper", iters=700_000, batch=4, crop=128, lr=1e-4, milestones=[200_000, 400_000, 600_000],
                  ema=0.995, loss="ml", param="noise", t_draw="uniform", T=100, schedule="cosine",
                  sample_steps=100, val_every=5000, workers=4),
    "tiny": dict(net="micro", iters=1400, batch=8, crop=32, lr=1e-3, milestones=[963, 1225], ema=0.99,
                 loss="ml-posterior", param="x0", t_draw="chain", T=100, schedule="cosine",
                 sample_steps=3, val_every=600, workers=0),
    "gpu": dict(net="small", iters=2500, batch=32, crop=64, lr=5e-4, milestones=[1719, 2188], ema=0.99,
                loss="ml-posterior", param="x0", t_draw="chain", T=100, schedule="cosine",
                sample_steps=10, val_every=500, workers=6),
}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes
RESUME_MAY_CHANGE = ("out", "device", "compile", "fp32", "workers", "iters", "resume")  # not part of the recipe
# settings of earlier versions that this one no longer offers, with the value it now implies
RETIRED = ("loss_norm", "first_share", "grid_share", "weighting", "clip_x0")


def parse(argv=None, doc=None):
    """The flags as given (None where not given); `settings` fills and checks them."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="preset defaults (explicit flags override):\n" + "\n".join(
                                    f"  {k}: {json.dumps(v)}" for k, v in PRESETS.items()))
    p.add_argument("--task", choices=tasks.TASKS, help="restoration task (required unless --resume)")
    p.add_argument("--preset", choices=PRESETS, help="recipe defaults (default: paper)")
    p.add_argument("--data", help="training folder (GT/+LQ/, Rain100 or GoPro layout); default: synthetic pairs")
    p.add_argument("--val", help="validation folder; default: the fixed synthetic validation set")
    p.add_argument("--out", help="output folder (default: runs/<task>)")
    p.add_argument("--resume", help="continue from this checkpoint (its settings win)")
    p.add_argument("--init-from", help="start from these weights (fine-tuning): a train.py checkpoint "
                   "or the authors' .pth (with --net paper)")
    p.add_argument("--seed", type=int, help="seeds every random source (default: 0)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES,
                   help="torch.compile the network's training call, in this mode (default: default; "
                   "reduce-overhead adds CUDA graphs); the chain's calls, whose batch changes from call to call, "
                   "run uncompiled")
    p.add_argument("--fp32", action="store_true", help="train in float32 (default: bf16 autocast on CUDA "
                   "and on CPUs with native bf16)")
    p.add_argument("--loss", choices=["ml", "ml-posterior", "noise", "cnn"],
                   help="ml: eq. 15, the paper's; noise: eq. 10; cnn: the paper's CNN baseline (L1 from LQ to HQ); "
                   "ml-posterior: eq. 15 with the posterior step's mean, weighted 1/B_t: |x0_hat - x0|")
    p.add_argument("--param", choices=["noise", "x0"], help="network output: the noise (paper), or x0 as a "
                   "residual from mu, clipped to [0, 1] when sampling")
    p.add_argument("--t-draw", choices=["uniform", "chain"],
                   help="training indices and states: uniform on 1..T, x_t from the forward process (paper); "
                   "chain: the --sample-steps indices restoration visits, x_t from the sampler's own chain")
    p.add_argument("--net", choices=checkpoint.NETS, help="network preset")
    p.add_argument("--max-sigma", type=float, help="lambda on the 0-255 scale (default per task: "
                   + ", ".join(f"{k} {v.lam:g}" for k, v in tasks.TASKS.items()) + ")")
    p.add_argument("--eps", type=float, help="e^{-theta_bar_T} (default per task: "
                   + ", ".join(f"{k} {v.eps:g}" for k, v in tasks.TASKS.items()) + ")")
    p.add_argument("--T", type=int, help="number of SDE steps")
    p.add_argument("--schedule", choices=["cosine", "linear", "constant"])
    p.add_argument("--sample-steps", type=int, help="steps of the task's sampler in validation and, by default, "
                   "in sample.py (tasks.py: posterior, the authors' sampler; for denoise the ODE, DDIM below T steps)")
    for name, kind in [("iters", int), ("batch", int), ("crop", int), ("lr", float), ("ema", float),
                       ("val-every", int), ("workers", int)]:
        p.add_argument(f"--{name}", type=kind, help={
            "val-every": "validate and save a checkpoint every this many steps",
            "iters": "training steps; the preset's learning-rate halvings scale with them"}.get(name))
    p.add_argument("--milestones", type=int, nargs="*", help="steps at which the learning rate halves "
                   "(default: the preset's, at the same fractions of --iters)")
    p.add_argument("--val-images", type=int, help=f"images validated (default: {data.DEFAULT_VAL_LEN})")
    return p.parse_args(argv)


def settings(args):
    """(args, checkpoint or None): the run's settings, from the flags or --resume's checkpoint, all checked."""
    ckpt = None
    if args.resume:
        ckpt = checkpoint.read_for_resume(args.resume)
        args = resume_args(args, ckpt, args.resume)
    elif args.task is None:
        raise UsageError("--task is required (one of " + ", ".join(tasks.TASKS) + ")")
    else:
        args = fill_defaults(args)
    check_args(args)
    if ckpt is not None and ckpt["step"] >= args.iters:
        raise UsageError(f"{args.resume}: the run is at step {ckpt['step']} already; pass --iters above it "
                         "to train further")
    return args, ckpt


def fill_defaults(args):
    """Unset flags take the preset's value, then the task's; the preset's milestones keep their fractions
    of --iters. The sampler (the task's over every index, its few-step one over fewer) and clip_x0 (where
    the network predicts x0) follow from the others."""
    args.preset = args.preset or "paper"
    preset, task = PRESETS[args.preset], tasks.TASKS[args.task]
    args.seed = 0 if args.seed is None else args.seed
    args.val_images = data.DEFAULT_VAL_LEN if args.val_images is None else args.val_images
    if task.noise_sigma is not None:  # restoration starts at t* of the input's noise level (Sec. 4.3), never at T
        args.t_draw = args.t_draw or "uniform"
    if args.workers is None:  # the preset's loader workers, no more than this machine's cores
        args.workers = min(preset["workers"], usable_cores())
    if args.milestones is None and args.iters is not None:  # the lr halvings keep their place in the run
        args.milestones = [max(1, round(m * args.iters / preset["iters"])) for m in preset["milestones"]]
    for key, value in {**preset, "max_sigma": task.lam, "eps": task.eps}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sampler = task.sampler if args.sample_steps >= args.T else task.few_step_sampler
    args.clip_x0 = args.param == "x0"
    return args


def usable_cores():
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resume_args(given, ckpt, path):
    """The checkpoint's settings, those of RESUME_MAY_CHANGE as given. Any other flag that differs would be
    ignored, so it is refused, as is a run that used a setting this version no longer has."""
    saved = argparse.Namespace(**ckpt["config"]["args"])
    for key in ("task", "net", "loss", "param"):
        if getattr(given, key) is not None and getattr(given, key) != getattr(saved, key):
            raise UsageError(f"{path}: checkpoint was trained with {key}={getattr(saved, key)}, not "
                             f"{getattr(given, key)}; start a new run instead of --resume")
    retired = [f"{key}={value}" for key, value in retired_settings(vars(saved)).items()]
    if retired:
        raise UsageError(f"{path}: trained with {', '.join(retired)}, which this version no longer has; "
                         "sample.py still restores with it, but it cannot be resumed")
    ignored = [f"--{key.replace('_', '-')} (the run has {getattr(saved, key, None)!r})"
               for key, value in vars(given).items()
               if key not in RESUME_MAY_CHANGE and value is not None and value is not False
               and value != getattr(saved, key, None)]
    if ignored:
        raise UsageError(f"{path}: --resume continues the run with its own settings and would ignore "
                         f"{', '.join(ignored)}; drop them, or start a new run with --out")
    for key in RESUME_MAY_CHANGE:
        if key in ("out", "device", "compile", "fp32", "resume") or getattr(given, key) is not None:
            setattr(saved, key, getattr(given, key))
    return saved


def retired_settings(saved):
    """{name: value} of a checkpoint's settings that this version no longer offers, where they differ
    from what it now implies (`implied`, and indices uniform or on the chain)."""
    implied = dict(loss_norm="l1", first_share=0.0, grid_share=0.0,
                   weighting="x0" if saved.get("loss") == "ml-posterior" else "uniform",
                   clip_x0=saved.get("param") == "x0")
    retired = {key: saved[key] for key in RETIRED if key in saved and saved[key] != implied[key]}
    if saved.get("t_draw") not in ("uniform", "chain"):
        retired["t_draw"] = saved.get("t_draw")
    return retired


def check_args(args):
    """Every numeric flag, the combinations and --device, checked before any work."""
    rules = [
        ("iters", args.iters >= 1, "at least 1"), ("batch", args.batch >= 1, "at least 1"),
        ("crop", args.crop >= 8, "at least 8"), ("lr", 0 < args.lr < math.inf, "a number above 0"),
        ("ema", 0 <= args.ema < 1, "in [0, 1)"), ("val-every", args.val_every >= 1, "at least 1"),
        ("workers", args.workers >= 0, "0 or more"), ("T", args.T >= 1, "at least 1"),
        ("eps", 0 < args.eps < 1, "in (0, 1)"),
        ("max-sigma", 0 < args.max_sigma <= 255, "in (0, 255]: lambda on the 0-255 scale (10 means 10/255)"),
        ("sample-steps", 1 <= args.sample_steps <= args.T, f"between 1 and --T ({args.T})"),
        ("milestones", all(m >= 1 for m in args.milestones), "positive step numbers"),
        ("val-images", args.val_images >= 1, "at least 1"), ("seed", 0 <= args.seed < 2**32, "in [0, 2^32)"),
    ]
    for name, ok, rule in rules:
        if not ok:
            value = getattr(args, name.replace("-", "_"))
            shown = " ".join(map(str, value)) if isinstance(value, list) else value  # --milestones
            raise UsageError(f"--{name} {shown}: must be {rule}")
    if args.t_draw == "chain" and tasks.TASKS[args.task].noise_sigma is not None:
        raise UsageError(f"--t-draw chain: {args.task} starts at t* of each noise level, not at T; use uniform")
    if args.t_draw == "chain" and args.loss == "noise":
        raise UsageError("--t-draw chain: noise matching (eq. 10) needs the noise of the forward process, which "
                         "chain states do not have; with --loss noise pass --t-draw uniform")
    args.device = str(check_device(args.device))
    if "RANK" in os.environ and args.device.startswith("cuda:"):
        raise UsageError(f"--device {args.device}: under torchrun each process uses the GPU of its "
                         "LOCAL_RANK; pass --device cuda")
    if args.compile and args.device == "cpu" and not shutil.which(cpp_compiler()):
        raise UsageError(f"--compile on the CPU: torch.compile builds C++ there with {cpp_compiler()} (or $CXX), "
                         "which this machine lacks; install it or drop --compile")


def cpp_compiler():
    """The C++ compiler torch.compile's CPU code is built with: $CXX, else clang++ on macOS and g++ elsewhere."""
    return os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")


def check_device(name):
    """The torch.device for a --device value: cpu, cuda or cuda:N; None picks cuda when available.
    UsageError for any other name and for a GPU this machine does not have (train.py and sample.py)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", name)
    if match is None:
        raise UsageError(f"--device {name}: expected cpu, cuda or cuda:N")
    if name != "cpu":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if int(match.group(1) or 0) >= count:
            raise UsageError(f"--device {name}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return torch.device(name)


def output_folder(args):
    """--out, else the resumed checkpoint's folder, else runs/<task>; refused when it holds another
    run: a new run never replaces another's checkpoint nor appends to its metrics.jsonl."""
    out = Path(args.out) if args.out else Path(args.resume).parent if args.resume else Path("runs", args.task)
    last, log = out / "last.pt", out / "metrics.jsonl"
    if args.resume is not None and last.exists() and last.resolve() == Path(args.resume).resolve():
        return out
    if last.exists():
        raise data.DataError(f"{out}: holds the checkpoint of another run ({last}); continue that run with "
                             f"python train.py --resume {last}, or choose another folder with --out")
    if log.exists() and log.stat().st_size > 0:
        raise data.DataError(f"{out}: holds the metrics.jsonl of another run; choose another folder with --out")
    return out


def describe(args):
    """The resolved recipe, printed when a run starts."""
    loss = "CNN baseline (L1 from LQ to HQ)" if args.loss == "cnn" else (
        f"{args.loss} loss, {args.param} output, indices {args.t_draw}; SDE lambda {args.max_sigma:g}/255, "
        f"eps {args.eps:g}, T {args.T} {args.schedule}; restores with {args.sample_steps} {args.sampler} "
        f"step(s){', x0 clipped' if args.clip_x0 else ''}")
    colour = tasks.TASKS[args.task].colour_epochs
    pairs = "built-in synthetic pairs" + (f" (flat colours for the first {colour} epochs)" if colour else "")
    return (f"recipe ({args.preset}): {args.task} on {args.data or pairs}, net {args.net}, "
            f"{loss}; batch {args.batch} of {args.crop} x {args.crop}, lr {args.lr:g} halved at "
            f"{args.milestones}, {args.iters} steps, EMA {args.ema:g}, seed {args.seed}")
