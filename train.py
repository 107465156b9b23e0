"""Train IR-SDE (Luo et al., ICML 2023) for one restoration task.

Single GPU or CPU:
    python train.py --task derain                          # the paper's recipe (GPU: days)
    python train.py --task derain --preset tiny            # minutes on a laptop CPU
    python train.py --task derain --data datasets/rain/trainH --val datasets/rain/testH
Several GPUs on one machine (DistributedDataParallel; --batch is per GPU, so the global batch
is batch x GPUs while the learning rate stays as given):
    torchrun --standalone --nproc_per_node=4 train.py --task derain
Resume (the checkpoint holds every setting and random state):
    python train.py --resume runs/derain/last.pt
Mixed precision is chosen by the device: bf16 autocast on CUDA and on CPUs with native bf16
arithmetic (AVX512-BF16 or AMX), float32 elsewhere or with --fp32. Validation and sample.py
restore in float32 on the CPU.

A new run refuses a folder that holds another run's checkpoint. Every flag and every image of
--data/--val is checked before step 1. Ctrl-C or SIGTERM stops after the current step, saves,
and exits with 130 or 143; an error after step 1 saves first when it can and prints how to resume.

Without --data it trains on built-in synthetic pairs (data.SyntheticPairs) and validates on a
fixed synthetic set. Checkpoints carry the task, SDE and network configuration, so sample.py
needs nothing else and train/test settings cannot disagree.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Sampler

import data
import irsde
import metrics
import sample
from unet import build_unet

VAL_CROP = 128  # synthetic validation images are 128 x 128 whatever the training crop
VAL_BORDER = 4  # pixels cut at each border before PSNR/SSIM, as the reference test configs (PAPER.md §9)
TRAJECTORY_IMAGES = 3  # validation images whose reverse process is pictured

# Per-task SDE settings of the reference configs (PAPER.md §5, §6): lambda on the 0-255 scale.
TASK_SDE = {
    "derain": dict(max_sigma=10, eps=0.005), "deblur": dict(max_sigma=10, eps=0.005),
    "sr": dict(max_sigma=30, eps=0.005), "inpaint": dict(max_sigma=30, eps=0.005),
    "dehaze": dict(max_sigma=30, eps=0.005), "denoise": dict(max_sigma=70, eps=0.04),
}

# "paper": the reference recipe (PAPER.md §8). "tiny": sized for a 2-core CPU in 3.5-7.5 minutes;
# see the README for what it changes and why (PAPER.md §11: the paper's recipe scaled down does not restore).
PRESETS = {
    "paper": dict(net="paper", iters=700_000, batch=4, crop=128, lr=1e-4,
                  milestones=[200_000, 400_000, 600_000], loss="ml", loss_norm="l1", param="noise", weighting="uniform", t_draw="uniform", ema=0.995,
                  T=100, schedule="cosine", clip_x0=False, sampler="posterior", sample_steps=100,
                  log_every=100, val_every=5000, save_every=5000, workers=4),
    "tiny": dict(net="tiny", iters=1800, batch=8, crop=32, lr=1e-3,
                 milestones=[1238, 1575], loss="ml-posterior", loss_norm="l1", param="x0", weighting="x0", t_draw="chain", ema=0.99,
                 T=100, schedule="cosine", clip_x0=True, sampler="posterior", sample_steps=3,
                 log_every=100, val_every=600, save_every=600, workers=0),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="preset defaults (explicit flags override):\n" + "\n".join(
                                    f"  {k}: {json.dumps(v)}" for k, v in PRESETS.items()))
    p.add_argument("--task", choices=data.TASKS, help="restoration task (required unless --resume)")
    p.add_argument("--preset", choices=PRESETS, help="recipe defaults (default: paper)")
    p.add_argument("--data", help="training folder (GT/+LQ/, Rain100 or GoPro layout); default: synthetic pairs")
    p.add_argument("--val", help="validation folder; default: the fixed synthetic validation set")
    p.add_argument("--out", help="output folder (default: runs/<task>)")
    p.add_argument("--resume", help="continue from this checkpoint (its settings win)")
    p.add_argument("--init-from", help="start from these weights (fine-tuning): a train.py checkpoint "
                   "or the authors' .pth (with --net paper)")
    p.add_argument("--seed", type=int, help="seeds every random source (default: 0)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--fp32", action="store_true", help="train in float32 (default: bf16 autocast on CUDA "
                   "and on CPUs with native bf16)")
    p.add_argument("--loss", choices=["ml", "ml-posterior", "noise", "cnn"],
                   help="ml: eq. 15 (Euler-Maruyama mean, paper); ml-posterior: eq. 15 with the posterior "
                   "step's mean (eq. 14 with x0_hat); noise: eq. 10; cnn: the paper's CNN baseline (LQ -> HQ, L1 in the paper)")
    p.add_argument("--loss-norm", choices=["l1", "l2"], help="distance in the ML loss and the CNN baseline: "
                   "|.| (paper, every preset) or its square (the Gaussian log-likelihood of eq. 13)")
    p.add_argument("--param", choices=["noise", "x0"], help="network output: eps (paper) or an x0 correction")
    p.add_argument("--weighting", choices=["uniform", "x0"], help="gamma_i of the ML loss: 1 (paper) or 1/B_i")
    p.add_argument("--t-draw", choices=["uniform", "sampler", "chain"],
                   help="training indices and states: uniform on 1..T with x_t from the forward process (paper); "
                   "sampler: only the --sample-steps indices the sampler evaluates; chain: those indices with x_t "
                   "built by the sampler's own chain from x_T, as restoration builds it")
    p.add_argument("--net", help="unet preset: paper, small, tiny")
    p.add_argument("--max-sigma", type=float, help="lambda on the 0-255 scale (default per task: "
                   + ", ".join(f"{k} {v['max_sigma']}" for k, v in TASK_SDE.items()) + ")")
    p.add_argument("--eps", type=float, help="e^{-theta_bar_T} (default 0.005; denoise 0.04)")
    p.add_argument("--T", type=int, help="number of SDE steps")
    p.add_argument("--schedule", choices=["cosine", "linear", "constant"])
    p.add_argument("--clip-x0", type=int, choices=[0, 1], help="clip predicted x0 to [0, 1] when sampling")
    p.add_argument("--sampler", choices=list(irsde.SAMPLERS), help="sampler for validation and sample.py")
    p.add_argument("--sample-steps", type=int, help="network evaluations per restoration")
    for name, kind in [("iters", int), ("batch", int), ("crop", int), ("lr", float), ("ema", float),
                       ("log-every", int), ("val-every", int), ("save-every", int), ("workers", int)]:
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--milestones", type=int, nargs="*", help="steps at which the learning rate halves")
    p.add_argument("--val-images", type=int, help=f"images validated (default: {data.DEFAULT_VAL_LEN})")
    return p.parse_args(argv)


def fill_defaults(args):
    """Unset flags take the preset's value, then the task's SDE settings."""
    args.preset = args.preset or "paper"
    args.seed = 0 if args.seed is None else args.seed
    args.val_images = data.DEFAULT_VAL_LEN if args.val_images is None else args.val_images
    if args.task == "denoise" and args.sampler is None:  # the denoising ODE (eq. 16); DDIM for few steps
        args.sampler = "ode" if args.preset == "paper" else "ddim"
    if args.task == "denoise" and args.t_draw is None:  # its sampler starts at t*, which depends on sigma
        args.t_draw = "uniform"
    if args.workers is None:  # the preset's loader workers, no more than this machine's cores
        args.workers = min(PRESETS[args.preset]["workers"], usable_cores())
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.task is not None:
        for key, value in TASK_SDE[args.task].items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    args.clip_x0 = bool(args.clip_x0)
    return args


def usable_cores():
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


RESUME_MAY_CHANGE = ("out", "device", "compile", "fp32", "workers", "iters", "resume")  # not part of the recipe


def resume_args(given, ckpt, path):
    """The checkpoint's settings. --out, --device, --compile, --fp32, --workers and --iters may change; any
    other flag that differs from the checkpoint's value would be ignored, so it is refused."""
    saved = argparse.Namespace(**{"t_draw": "uniform", "loss_norm": "l1",  # runs before those flags
                                  **ckpt["config"]["args"]})
    for key in ("task", "net", "loss", "param"):
        if getattr(given, key) is not None and getattr(given, key) != getattr(saved, key):
            raise data.DataError(f"{path}: checkpoint was trained with {key}={getattr(saved, key)}, not "
                             f"{getattr(given, key)}; start a new run instead of --resume")
    ignored = [f"--{key.replace('_', '-')} (the run has {getattr(saved, key, None)!r})"
               for key, value in vars(given).items()
               if key not in RESUME_MAY_CHANGE and value is not None and value is not False
               and _normalised(key, value) != getattr(saved, key, None)]
    if ignored:
        raise data.DataError(f"{path}: --resume continues the run with its own settings and would ignore "
                         f"{', '.join(ignored)}; drop them, or start a new run with --out")
    for key in RESUME_MAY_CHANGE:
        if key in ("out", "device", "compile", "fp32", "resume") or getattr(given, key) is not None:
            setattr(saved, key, getattr(given, key))
    return saved


def _normalised(key, value):
    """A flag's value as the checkpoint stores it (--clip-x0 1 is stored as True)."""
    return bool(value) if key == "clip_x0" else value


def check_args(args):
    """Every numeric flag and --device, checked before any work: a value the run cannot honour
    is refused with the flag named, never capped or ignored."""
    rules = [
        ("iters", args.iters >= 1, "at least 1"), ("batch", args.batch >= 1, "at least 1"),
        ("crop", args.crop >= 8, "at least 8"), ("lr", 0 < args.lr < math.inf, "a number above 0"),
        ("ema", 0 <= args.ema < 1, "in [0, 1)"), ("log-every", args.log_every >= 1, "at least 1"),
        ("val-every", args.val_every >= 1, "at least 1"), ("save-every", args.save_every >= 1, "at least 1"),
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
            raise data.DataError(f"--{name} {shown}: must be {rule}")
    if args.t_draw != "uniform" and args.task == "denoise":
        raise data.DataError(f"--t-draw {args.t_draw}: denoising starts at t* of each noise level; use uniform")
    if args.t_draw == "chain" and args.loss == "noise":
        raise data.DataError("--t-draw chain: noise matching (eq. 10) needs the noise of the forward process, "
                             "which chain states do not have; with --loss noise pass --t-draw sampler or uniform")
    args.device = str(sample.check_device(args.device))
    if "RANK" in os.environ and args.device.startswith("cuda:"):
        raise data.DataError(f"--device {args.device}: under torchrun each process uses the GPU of its "
                             "LOCAL_RANK; pass --device cuda")


def check_run_folder(out, resume):
    """A new run never replaces another run's checkpoint nor appends to its metrics.jsonl; only
    resuming that checkpoint in place continues them."""
    last, log = out / "last.pt", out / "metrics.jsonl"
    if resume is not None and last.exists() and last.resolve() == Path(resume).resolve():
        return
    if last.exists():
        raise data.DataError(f"{out}: holds the checkpoint of another run ({last}); continue that run with "
                             f"python train.py --resume {last}, or choose another folder with --out")
    if log.exists() and log.stat().st_size > 0:
        raise data.DataError(f"{out}: holds the metrics.jsonl of another run; choose another folder with --out")


# ---- set-up ------------------------------------------------------------------------------------

def setup_distributed(args):
    """(rank, world, device): torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; NCCL on GPUs, gloo on CPU.
    args.device is checked already (check_args)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device(args.device)
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    return rank, dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu")


def build(args, device):
    """(net, sde) from the settings: the denoiser and the CNN baseline see no condition input."""
    cond = args.task != "denoise" and args.loss != "cnn"
    net = build_unet(args.net, cond=cond).to(device)
    sde = None if args.loss == "cnn" else irsde.IRSDE(args.max_sigma / 255, args.T, args.schedule, args.eps)
    return net, sde


def init_weights(net, path, task):
    """Copy the weights of a train.py checkpoint or of the authors' .pth into net (fine-tuning)."""
    source = sample.load_checkpoint(path, "cpu", task)[0]
    arch = lambda config: {k: v for k, v in config.items() if k != "zero_out"}  # zero_out: init only
    if arch(source.config) != arch(net.config):
        raise data.DataError(f"{path}: its network {arch(source.config)} is not this run's "
                             f"{arch(net.config)}; choose the matching --net (the authors' is paper)")
    net.load_state_dict(source.state_dict())


def datasets(args, rank):
    """(train_set, {name: validation set}). Without --val: the fixed synthetic set "val" and the
    "unseen" set, degraded by generators that training never uses, on photos it never sees.
    Folders are decoded completely first, so that a damaged image stops the run before step 1
    rather than when it is first drawn, hours in."""
    train_set = data.make_dataset(args.task, args.data, args.crop, args.seed, "train")
    splits = ["val"] if args.val else ["val", "unseen"]
    val_sets = {split: data.make_dataset(args.task, args.val, VAL_CROP, args.seed, split, n=args.val_images)
                for split in splits}
    for folder, dataset in ((args.data, train_set), (args.val, val_sets["val"])):
        if folder is not None:
            if rank == 0:
                print(f"checking the {len(dataset)} image pairs of {folder}", flush=True)
            check_images(dataset, validation=dataset is not train_set)
    return train_set, val_sets


def check_images(dataset, validation=False):
    """Decode every pair of a PairedFolder once: each file must decode and the LQ must be the GT
    size // scale (the headers said so; the pixels must agree); validation images must be large
    enough for the metrics (metrics.min_side). DataError naming the file."""
    for lq_path, gt_path in dataset.pairs:
        gt = sample.fit_gt(data.load_image(gt_path), data.load_image(lq_path), dataset.scale, lq_path, gt_path)
        if validation and min(gt.shape[1:]) < metrics.min_side(VAL_BORDER):
            raise data.DataError(f"{gt_path}: {gt.shape[2]}x{gt.shape[1]}, too small to validate on: PSNR/SSIM "
                                 f"cut {VAL_BORDER} pixels at each border and need {metrics.min_side(VAL_BORDER)} "
                                 "pixels a side")


def optimizers(args, net):
    """Adam (0.9, 0.99), the learning rate halved at each milestone, and the EMA of the weights.
    Adam runs fused (one kernel for all parameters) where torch has it for the device."""
    try:
        opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.99), fused=True)
    except RuntimeError:  # torch before 2.4 on the CPU
        opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, args.milestones, gamma=0.5)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)
    return opt, sched, ema


def ignore_stop_signals(worker_id):
    """Loader workers ignore Ctrl-C and SIGTERM: sent to the whole process group (a terminal, timeout,
    SLURM, docker stop), they would otherwise kill the workers and the run with them. The main
    process stops the run; the workers end with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StepSampler(Sampler):
    """Endless (epoch, index) stream: one seeded permutation per epoch, dealt round-robin to the
    ranks, starting after `start` samples of this rank, so a resumed run sees the same batches."""

    def __init__(self, n, seed, rank=0, world=1, start=0):
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world, start

    def __iter__(self):
        position, perm, perm_epoch = self.start * self.world + self.rank, None, None
        while True:
            epoch, i = divmod(position, self.n)
            if epoch != perm_epoch:
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
                perm_epoch = epoch
            yield epoch, int(perm[i])
            position += self.world


class EpochIndexed(torch.utils.data.Dataset):
    """Lets a sampler choose the epoch together with the index (works inside worker processes)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, idx = key
        self.dataset.set_epoch(epoch)
        return self.dataset[idx]


# ---- checkpoints -------------------------------------------------------------------------------

def rng_state(generator):
    """Every random state, as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(torch=torch.get_rng_state(), numpy=(kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
                python=random.getstate(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                train=generator.get_state())


def set_rng_state(state, generator):
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["train"])


def save_checkpoint(path, step, net, ema, opt, sched, generator, config):
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    state = dict(model=net.state_dict(), ema=ema.module.state_dict(), ema_n_averaged=ema.n_averaged,
                 optimizer=opt.state_dict(), scheduler=sched.state_dict(), step=step,
                 rng=rng_state(generator), config=config)
    data.atomic_write(path, lambda f: torch.save(state, f))


class Progress:
    """The step reached and the step last saved to `path`, so that a failure can save the rest.
    state: (net, ema, opt, sched, generator, config) as save_checkpoint takes them."""

    def __init__(self, path, step, state):
        self.path, self.step, self.saved, self.state = path, step, step, state

    def save(self):
        save_checkpoint(self.path, self.step, *self.state)
        self.saved = self.step


def keep_progress(progress, error):
    """An exception stopped the run: save the steps done since the last checkpoint when the file
    can still be written, and say how to go on."""
    if progress.step > progress.saved:
        try:
            progress.save()
        except data.DataError as e:
            print(f"could not save step {progress.step}: {e}", file=sys.stderr)
    if progress.path.exists():
        print(f"stopped at step {progress.step} by {type(error).__name__}; {progress.path} holds step "
              f"{progress.saved}; after fixing the cause, resume with: python train.py --resume {progress.path}",
              file=sys.stderr, flush=True)


def load_resume(path):
    """The checkpoint to resume, with a clear error when it is unusable."""
    ckpt = sample.read_checkpoint(path)
    missing = {"model", "ema", "optimizer", "scheduler", "step", "rng"} - set(ckpt)
    if missing:
        raise data.DataError(f"{path}: not a train.py checkpoint (missing {', '.join(sorted(missing))})")
    return ckpt


def restore_state(ckpt, net, ema, opt, sched, generator):
    """Load a resumed checkpoint's weights, optimizer and random states; returns its step."""
    net.load_state_dict(ckpt["model"])
    ema.module.load_state_dict(ckpt["ema"])
    ema.n_averaged.fill_(int(ckpt["ema_n_averaged"]))
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"], generator)
    return ckpt["step"]


def open_log(path):
    """metrics.jsonl opened for appending; DataError naming it when that fails."""
    try:
        return open(path, "a")
    except OSError as e:
        raise data.DataError(f"{path}: cannot write ({e.strerror or e})") from e


def log_row(log, row):
    """Append one JSON line to metrics.jsonl; a full disk is a DataError naming the file."""
    try:
        log.write(json.dumps(row) + "\n")
        log.flush()
    except OSError as e:
        raise data.DataError(f"{log.name}: cannot write ({e.strerror or e})") from e


# ---- validation --------------------------------------------------------------------------------

@torch.no_grad()
def validate(net, sde, config, val_set, device, step, out, name="val"):
    """Mean PSNR/SSIM (RGB and Y, PAPER.md §9) of the restored and of the input images,
    restored exactly as sample.py does, and the worst colour shift over the images (shift_max,
    metrics.colour_shift). Saves <name>_<step>.png, LQ | restored | GT of the first images, and
    <name>_trajectory_<step>.png, the reverse process of the first ones (sample.Trajectory)."""
    args = config["args"]
    scores, rows, shifts = {"restored": [], "input": []}, [], {"restored": [], "input": []}
    trajectories = []
    for k in range(min(args["val_images"], len(val_set))):
        lq, gt = val_set[k]
        generator = torch.Generator(device).manual_seed(args["seed"])  # as sample.py: one per image
        trajectory = None
        if sde is not None and k < TRAJECTORY_IMAGES:
            trajectory = sample.Trajectory(sample.trajectory_steps(sde, config, None, data.NOISE_SIGMA))
        restored = sample.restore(net, sde, config, lq[None].to(device), generator=generator,
                                  noise_sigma=data.NOISE_SIGMA, callback=trajectory)[0].float().cpu()
        scores["restored"].append(metrics.evaluate(restored, gt, crop_border=VAL_BORDER))
        scores["input"].append(metrics.evaluate(lq.clamp(0, 1), gt, crop_border=VAL_BORDER))
        shifts["restored"].append(metrics.colour_shift(restored, gt))
        shifts["input"].append(metrics.colour_shift(lq.clamp(0, 1), gt))
        if k < 4:
            rows.append(torch.cat([lq.clamp(0, 1), restored, gt], dim=2))
        if trajectory is not None:
            trajectories.append(trajectory.picture(restored, gt))
    data.save_image(torch.cat(rows, dim=1), out / f"{name}_{step:07d}.png")
    if trajectories:
        gap = torch.ones(3, 2 * sample.GAP, trajectories[0].shape[2])
        data.save_image(torch.cat([p for t in trajectories for p in (t, gap)][:-1], dim=1),
                        out / f"{name}_trajectory_{step:07d}.png")
    restored = {**sample.mean_row(scores["restored"]), "shift_max": max(shifts["restored"])}
    given = {**sample.mean_row(scores["input"]), "shift_max": max(shifts["input"])}
    return {**restored, **{f"{key}_input": value for key, value in given.items()}}


def export_val_set(val_set, folder):
    """Write the synthetic validation pairs as <folder>/LQ and <folder>/GT, so that sample.py can
    restore and score them like any dataset on disk."""
    for k in range(len(val_set)):
        lq, gt = val_set[k]
        data.save_image(lq.clamp(0, 1), folder / "LQ" / f"{k:03d}.png")
        data.save_image(gt, folder / "GT" / f"{k:03d}.png")


# ---- training ----------------------------------------------------------------------------------

def train_step(net, sde, args, lq, gt, generator):
    """One loss evaluation: the ML loss (eq. 15), noise matching (eq. 10) or the CNN baseline.
    The network runs under bf16 autocast where `bf16_training` says so; the SDE arithmetic stays float32."""
    forward = sample.network(net, gt.device, bf16=bf16_training(gt.device, args.fp32))
    if args.loss == "cnn":
        return (F.l1_loss if args.loss_norm == "l1" else F.mse_loss)(lq + forward(lq, None, None), gt)
    mu = None if args.task == "denoise" else lq           # denoising SDE: mu = x0 (Sec. 4.3)
    t = draw_indices(sde, args, gt.shape[0], generator, gt.device)
    model = irsde.noise_model(forward, sde, args.param)
    if args.t_draw == "chain":
        x_t = irsde.chain_states(model, sde, mu, t, irsde.timesteps(sde, args.sample_steps), args.sampler,
                                 generator, args.clip_x0)
    else:
        x_t, noise = sde.q_sample(mu, gt, t, generator=generator)
    noise_pred = model(x_t, mu, t)
    if args.loss == "noise":
        return sde.noise_matching_loss(noise_pred, noise)
    step = "posterior" if args.loss == "ml-posterior" else "sde"
    return sde.ml_loss(x_t, mu, gt, noise_pred, t, args.weighting, step, args.loss_norm)


def bf16_training(device, fp32=False):
    """Mixed precision chosen by the device: bf16 autocast on CUDA and on CPUs with native bf16
    (AVX512-BF16 or AMX, where a tiny preset training step runs about 1.8x faster than in float32:
    bench.py train); float32 with --fp32 or elsewhere (without those instructions bf16 is emulated)."""
    if fp32:
        return False
    return device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16())


@functools.cache
def native_cpu_bf16():
    """Whether this CPU has bf16 instructions (torch.cpu's checks; False where torch lacks them)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def draw_indices(sde, args, n, generator, device):
    """Training indices t: uniform on 1..T (the paper), or uniform over the indices the few-step
    sampler evaluates (timesteps(sde, --sample-steps) without its final 0; --t-draw sampler, chain)."""
    if args.t_draw == "uniform":
        return torch.randint(1, sde.T + 1, (n,), generator=generator, device=device)
    grid = torch.tensor(irsde.timesteps(sde, args.sample_steps)[:-1], device=device)
    return grid[torch.randint(len(grid), (n,), generator=generator, device=device)]


def check_replicas(net):
    """DDP keeps the replicas identical; verify it once at the end (a cheap checksum)."""
    checksum = torch.stack([p.detach().double().sum() for p in net.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"DDP replicas diverged: weight checksums {[g.item() for g in gathered]}")
    if dist.get_rank() == 0:
        print(f"{len(gathered)} replicas in sync (weight checksum {gathered[0].item():.6f})")


def settings(args):
    """(args, ckpt or None): the run's settings, from the flags or the resumed checkpoint, checked."""
    ckpt = None
    if args.resume:
        ckpt = load_resume(args.resume)
        args = resume_args(args, ckpt, args.resume)
    elif args.task is None:
        raise data.DataError("--task is required (one of " + ", ".join(data.TASKS) + ")")
    else:
        args = fill_defaults(args)
    check_args(args)
    if ckpt is not None and ckpt["step"] >= args.iters:
        raise data.DataError(f"{args.resume}: the run is at step {ckpt['step']} already; pass --iters above it "
                             "to train further")
    return args, ckpt


def main(argv=None):
    args, ckpt = settings(parse_args(argv))
    out = Path(args.out) if args.out else Path(args.resume).parent if args.resume else Path("runs", args.task)
    check_run_folder(out, args.resume)
    rank, world, device = setup_distributed(args)
    train_set, val_sets = datasets(args, rank)
    if rank == 0:
        data.check_writable(out, "the output folder")
    # Same seed on every rank for the weights; rank-specific noise and time draws.
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    generator = torch.Generator(device).manual_seed(args.seed + rank)

    if rank == 0 and args.data is None:
        print(f"no --data given: training on built-in synthetic {args.task} pairs (data.SyntheticPairs)")
    if rank == 0 and args.val is None:
        for name, val_set in val_sets.items():
            export_val_set(val_set, out / name)

    net, sde = build(args, device)
    if args.init_from and ckpt is None:  # a resumed run has its own weights
        init_weights(net, args.init_from, args.task)
    config = sample.make_config(args, net, sde, train_set.scale if args.data else 1)
    opt, sched, ema = optimizers(args, net)
    step = 0 if ckpt is None else restore_state(ckpt, net, ema, opt, sched, generator)
    del ckpt

    cuda = device.type == "cuda"
    net = net.to(memory_format=torch.channels_last)  # faster convolutions on GPUs and on CPUs (oneDNN)
    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if cuda else None) if world > 1 else net
    if args.compile:
        model = torch.compile(model)

    loader = DataLoader(EpochIndexed(train_set), batch_size=args.batch,
                        sampler=StepSampler(len(train_set), args.seed, rank, world, step * args.batch),
                        num_workers=args.workers, pin_memory=cuda, persistent_workers=args.workers > 0,
                        prefetch_factor=4 if args.workers > 0 else None, worker_init_fn=ignore_stop_signals)
    progress = Progress(out / "last.pt", step, (net, ema, opt, sched, generator, config))
    if rank == 0:
        precision = "bf16 autocast" if bf16_training(device, args.fp32) else "float32"
        print(f"{args.task}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, "
              f"{world} x {device}, {precision}, batch {args.batch} x {world}, {args.iters} iterations, "
              f"from step {step}")

    stop = {"signal": None}  # Ctrl-C / SIGTERM: finish the step, save, exit 128 + signal
    handlers = {sig: signal.signal(sig, lambda number, frame: stop.update(signal=number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open_log(out / "metrics.jsonl") if rank == 0 else contextlib.nullcontext() as log:
            pace = Pace(step)
            for lq, gt in loader:
                if step >= args.iters or stop["signal"] is not None:
                    break
                lq = lq.to(device, non_blocking=True)
                gt = gt.to(device, non_blocking=True)
                lq, gt = (lq.contiguous(memory_format=torch.channels_last),
                          gt.contiguous(memory_format=torch.channels_last))
                loss = train_step(model, sde, args, lq, gt, generator)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}; stopped. The last good "
                                             f"checkpoint is kept ({progress.path}); try a lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                ema.update_parameters(net)
                step = progress.step = step + 1

                last_step = step == args.iters
                if rank == 0 and (step % args.log_every == 0 or last_step):
                    log_training(log, args, step, loss, sched.get_last_lr()[0], world, pace.its(step))
                if rank == 0 and pace.estimate_due(step):
                    print(pace.estimate(step, args.iters, device), flush=True)
                if rank == 0 and (step % args.val_every == 0 or last_step):
                    ema.module.eval()
                    log_validation(log, step, {name: validate(ema.module, sde, config, val_set, device, step,
                                                              out, name) for name, val_set in val_sets.items()})
                    ema.module.train()
                    pace.reset(step)  # keep validation out of the it/s figures
                if rank == 0 and (step % args.save_every == 0 or last_step):
                    progress.save()
    except FloatingPointError:
        raise  # NaN loss: resuming would fail alike; the last good checkpoint stays as it is
    except Exception as e:
        if rank == 0:
            keep_progress(progress, e)
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    finish(progress, stop["signal"], net, rank, world)


def log_training(log, args, step, loss, lr, world, its):
    """Print and log the loss, speed and learning rate."""
    eta = (args.iters - step) / max(its, 1e-9)
    print(f"step {step:>7d} | loss {loss.item():.5f} | {its:.2f} it/s | {its * args.batch * world:.1f} img/s"
          f" | lr {lr:.2e} | eta {eta / 60:.1f} min", flush=True)
    log_row(log, dict(step=step, loss=loss.item(), lr=lr, its=its))


class Pace:
    """Steps per second since the last reset (validation is left out), and one early estimate of
    the run's time: after the first step of this session (warm-up), once 5 more steps or 20 s have
    passed, so that a recipe too long for the machine says so within the first minute."""

    def __init__(self, step):
        self.reset(step)
        self.first = self.estimated = None

    def reset(self, step):
        self.tic, self.tic_step = time.time(), step

    def its(self, step):
        return (step - self.tic_step) / max(time.time() - self.tic, 1e-9)

    def estimate_due(self, step):
        if self.first is None:
            self.first = (step, time.time())
            return False
        due = not self.estimated and (step - self.first[0] >= 5 or time.time() - self.first[1] >= 20)
        self.estimated = self.estimated or due
        return due

    def estimate(self, step, iters, device):
        per_step = (time.time() - self.first[1]) / (step - self.first[0])
        seconds = per_step * (iters - step)
        n = step - self.first[0]
        line = (f"timing: {per_step:.2f} s per step (the {n} step{'s' * (n > 1)} after the first); the remaining "
                f"{iters - step} steps take about {duration(seconds)} on this machine")
        if device.type == "cpu" and seconds > 2 * 3600:
            line += ". This recipe is meant for a GPU; on a CPU, --preset tiny trains in minutes"
        return line


def duration(seconds):
    """A time span in the unit that reads best: minutes, hours or days."""
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds / 3600:.1f} hours" if seconds < 48 * 3600 else f"{seconds / 86400:.0f} days"


def log_validation(log, step, results):
    """One line per validation set; one metrics.jsonl row, the "unseen" scores prefixed unseen_."""
    for name, scores in results.items():
        print(f"{name:<6} {step:>7d} | PSNR {scores['psnr']:.2f} dB (input {scores['psnr_input']:.2f}) | "
              f"PSNR-Y {scores['psnr_y']:.2f} (input {scores['psnr_y_input']:.2f}) | SSIM {scores['ssim']:.4f} "
              f"(input {scores['ssim_input']:.4f}) | colour shift <= {scores['shift_max']:.1f}/255 "
              f"(input {scores['shift_max_input']:.1f})", flush=True)
    row = dict(step=step)
    for name, scores in results.items():
        row.update(scores if name == "val" else {f"{name}_{k}": v for k, v in scores.items()})
    log_row(log, row)


def finish(progress, stopped_by, net, rank, world):
    """After the loop: check the replicas, save a stopped run, exit 128 + signal when stopped, so
    that `train.py ... && sample.py ...` does not go on with a half-trained model."""
    if world > 1:
        check_replicas(net)
    if rank == 0:
        if stopped_by is not None:
            progress.save()
            print(f"stopped by signal {stopped_by} at step {progress.step}; resume with: "
                  f"python train.py --resume {progress.path}")
        print(f"checkpoint: {progress.path}")
    if dist.is_initialized():
        dist.destroy_process_group()
    if stopped_by is not None:
        sys.exit(128 + stopped_by)


def cli(argv=None):
    """main() with the project's own errors as `error: ...` and exit status 1."""
    try:
        main(argv)
    except (data.DataError, FloatingPointError) as e:  # others keep their traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    cli()
