"""Train IR-SDE (Luo et al., ICML 2023) for one restoration task.

Single GPU or CPU:
    python train.py --task derain                          # the paper's recipe, for a GPU
    python train.py --task derain --preset tiny            # about 4 minutes on a 2-core CPU
    python train.py --task derain --data datasets/rain/trainH --val datasets/rain/testH
Several GPUs on one machine (DistributedDataParallel; --batch is per GPU, so the global batch
is batch x GPUs while the learning rate stays as given):
    torchrun --standalone --nproc_per_node=4 train.py --task derain
Resume (the checkpoint holds every setting and random state):
    python train.py --resume runs/derain/last.pt

`main` reads top to bottom: flags (flags.py), data (without --data, built-in synthetic pairs and two
fixed validation sets), model, optimizer, then the loop: batch, loss (`batch_loss`, the paper's training
step), backward, step, EMA, log / validate and save, with `Run` checkpointing and stopping around it.
"""
import json
import os
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
# DDP imports this; imported after init_process_group, its default arguments would hold the group past
# destroy_process_group, and gloo's threads could still be freeing tensors as Python exits (an abort).
import torch.distributed.nn  # noqa: F401
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

import checkpoint
import data
import flags
import irsde
import metrics
import restore
import tasks

VAL_CROP = 128  # synthetic validation images are 128 x 128 whatever the training crop
LOG_EVERY = 100  # steps between progress lines


def main(argv=None):
    # ---- flags: the run's settings, every one checked before anything is written
    args, ckpt = flags.settings(flags.parse(argv, __doc__))
    out = flags.output_folder(args)
    rank, world, device = setup_distributed(args)

    # ---- data: built-in synthetic pairs, or folders decoded in full before step 1
    train_set, val_sets = datasets(args, rank)
    if rank == 0:
        data.check_writable(out, "the output folder")
        if args.val is None:  # the built-in sets, exported for sample.py
            for name, val_set in val_sets.items():
                data.export_pairs(val_set, out / name)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    np.random.seed(args.seed)
    random.seed(args.seed)
    generator = torch.Generator(device).manual_seed(args.seed + rank)  # each rank's noise and indices

    # ---- model
    net, sde = checkpoint.build(args, device, ckpt and ckpt["config"]["net"])
    if args.init_from and ckpt is None:  # a resumed run has its own weights
        checkpoint.init_from(net, args.init_from, args.task)
    config = checkpoint.make_config(args, net, sde, train_set.scale if args.data else 1)

    # ---- optimizer
    opt, sched, ema = optimizers(args, net)
    step = 0 if ckpt is None else checkpoint.resume_state(ckpt, net, ema, opt, sched, generator)
    del ckpt
    net = net.to(memory_format=torch.channels_last)  # faster convolutions on GPUs and CPUs (oneDNN)
    model = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model, mode=args.compile)
    batches = iter(DataLoader(train_set, batch_size=args.batch,
                              sampler=data.sample_order(len(train_set), args.seed, rank, world, step * args.batch),
                              num_workers=args.workers, pin_memory=device.type == "cuda",
                              persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers > 0 else None,
                              worker_init_fn=data.ignore_stop_signals))
    if rank == 0:
        print(f"{args.task}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, {world} x {device}, "
              f"{'bf16 autocast' if restore.use_bf16(device, args.fp32) else 'float32'}, batch {args.batch} x "
              f"{world}, {args.iters} iterations, from step {step}\n{flags.describe(args)}", flush=True)

    # ---- the loop
    log = out / "metrics.jsonl"
    with Run(out / "last.pt", rank, step, (net, ema, opt, sched, generator, config)) as run:
        pace = Pace(step)
        while step < args.iters and run.signal is None:
            lq, gt = (x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                      for x in next(batches))
            loss = batch_loss(model, sde, args, lq, gt, generator, net)
            run.watch(loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema.update_parameters(net)
            step = run.step = step + 1
            last = step == args.iters
            if last or 0 in (step % LOG_EVERY, step % args.val_every):
                run.check_finite()  # every rank at the same steps, before anything is logged or saved
            if rank != 0:
                continue
            if step % LOG_EVERY == 0 or last:
                log_training(log, args, step, loss, sched.get_last_lr()[0], world, pace.its(step))
            estimate = pace.estimate(step, args.iters, device)
            if estimate:
                print(estimate, flush=True)
            if step % args.val_every == 0 or last:
                ema.module.eval()
                log_validation(log, step, {name: restore.validate(ema.module, sde, config, val_set, device, step,
                                                                  out, name) for name, val_set in val_sets.items()})
                ema.module.train()
                pace.reset(step)  # keep validation out of the steps-per-second figures
                run.save()
        run.check_finite()  # a signal's save must not keep a non-finite model
    del model  # DDP holds the process group, which finish destroys
    finish(run, net, rank, world)


# ---- the loss ----------------------------------------------------------------------------------

def batch_loss(trained, sde, args, lq, gt, generator, net=None):
    """The loss of one batch (B, 3, H, W): the paper's training step (PAPER.md §6), from which each variant
    (--loss cnn / noise / ml-posterior, --param x0, --t-draw chain; irsde.py, "beyond the paper") branches
    off once. `trained` is the network as it trains (compiled, in DDP); `net`, the same module plain, makes
    the chain's calls, which need no gradients (default: trained). The network runs under bf16 autocast where
    restore.use_bf16 says so, the SDE in float32."""
    bf16 = restore.use_bf16(gt.device, args.fp32)
    forward = restore.network(trained, gt.device, bf16=bf16)
    if args.loss == "cnn":  # the paper's CNN baseline: the same network trained with L1 from LQ to HQ
        return F.l1_loss(lq + forward(lq, None, None), gt)
    mu = lq if tasks.TASKS[args.task].conditional else None  # None: the denoising SDE, mu = x0 (Sec. 4.3)
    model = irsde.noise_model(forward, sde, args.param)  # --param x0: the network predicts x0 - mu
    n, device = gt.shape[0], gt.device
    if args.t_draw == "uniform":  # the paper: t ~ U{1..T}, x_t ~ p(x_t | x0) (eq. 6)
        t = torch.randint(1, sde.T + 1, (n,), generator=generator, device=device)
        x_t, noise = sde.q_sample(mu, gt, t, generator=generator)
    else:  # --t-draw chain: an index restoration visits, x_t where the sampler's own chain stands there
        ts = irsde.timesteps(sde, args.sample_steps)
        grid = torch.tensor(ts[:-1], device=device)
        t = grid[torch.randint(len(grid), (n,), generator=generator, device=device)]
        # on the plain network: each call moves only the images still above their index, a batch size that
        # changes from call to call and would make a compiled network recompile
        plain = irsde.noise_model(restore.network(net or trained, device, bf16=bf16), sde, args.param)
        x_t = irsde.chain_states(plain, sde, mu, t, ts, args.sampler, generator, args.clip_x0)
    noise_pred = model(x_t, mu, t)  # eps_phi(x_t, mu, t)
    if args.loss == "ml":  # the paper: eq. 15
        return sde.ml_loss(x_t, mu, gt, noise_pred, t)
    if args.loss == "noise":  # the paper's alternative: noise matching, eq. 10
        return sde.noise_matching_loss(noise_pred, noise)
    return irsde.posterior_ml_loss(sde, x_t, mu, gt, noise_pred, t)  # --loss ml-posterior: |x0_hat - x0|


# ---- set-up ------------------------------------------------------------------------------------

def setup_distributed(args):
    """(rank, world, device): torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; NCCL on GPUs, gloo on CPU."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device(args.device)
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    return rank, dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu")


def datasets(args, rank):
    """(train_set, {name: validation set}); without --val the fixed synthetic "val" and "unseen", degraded
    by generators training never uses, on photos it never sees. Folders are decoded in full first: a
    damaged image stops the run before step 1, not hours in, as does one too small for the metrics."""
    train_set = data.make_dataset(args.task, args.data, args.crop, args.seed, "train")
    splits = ["val"] if args.val else ["val", "unseen"]
    val_sets = {split: data.make_dataset(args.task, args.val, VAL_CROP, args.seed, split, n=args.val_images)
                for split in splits}
    min_side = metrics.min_side(restore.VAL_BORDER)  # of a validation image
    for folder, dataset, smallest in ((args.data, train_set, 1), (args.val, val_sets["val"], min_side)):
        if folder is None:
            continue
        if rank == 0:
            print(f"checking the {len(dataset)} image pairs of {folder}", flush=True)
        for lq_path, gt_path in dataset.pairs:
            gt = data.fit_gt(data.load_image(gt_path), data.load_image(lq_path), dataset.scale, lq_path, gt_path)
            if min(gt.shape[1:]) < smallest:
                raise data.DataError(f"{gt_path}: {gt.shape[2]}x{gt.shape[1]}, too small to validate on: PSNR/SSIM "
                                     f"need {min_side} pixels a side ({restore.VAL_BORDER} are cut at each border)")
    return train_set, val_sets


def optimizers(args, net):
    """Adam (0.9, 0.99), fused where torch has it; the learning rate halved at each milestone; the EMA."""
    try:
        opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.99), fused=True)
    except RuntimeError:  # torch before 2.4 on the CPU
        opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, args.milestones, gamma=0.5)
    return opt, sched, EMA(net, args.ema)


class EMA(AveragedModel):
    """ema += (1 - decay) (w - ema) over weights and buffers in one foreach call: torch's EMA (AveragedModel with
    get_ema_multi_avg_fn) computes the same, but copies its step counter to the GPU per update, a host wait."""

    def __init__(self, net, decay):
        super().__init__(net, use_buffers=True)
        self.decay = decay

    @torch.no_grad()
    def update_parameters(self, model):
        pairs = list(zip([*self.module.parameters(), *self.module.buffers()], [*model.parameters(), *model.buffers()]))
        first = self.n_averaged == 0  # the first update copies (n_averaged stays on the host)
        if not first:
            floats = [(a, c) for a, c in pairs if a.is_floating_point()]
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - self.decay)
        for a, c in pairs:
            if first or not a.is_floating_point():  # integer buffers (counters) follow the model
                a.copy_(c)
        self.n_averaged += 1


# ---- checkpointing and stopping ----------------------------------------------------------------

class Run:
    """Checkpointing and stopping around the loop. Ctrl-C or SIGTERM (to the process or its group) sets `signal`:
    the loop ends after its step, leaving the block saves last.pt and `finish` exits 128 + signal, so that
    `train.py ... && sample.py ...` stops. An exception first saves the steps since the last checkpoint and
    prints the --resume command; a NaN loss (FloatingPointError) keeps the last good one. NaN is caught on the
    device (`watch`) and read only to log, validate or save (`check_finite`): the host waits for the GPU then."""

    def __init__(self, path, rank, step, state):
        self.path, self.rank, self.step, self.saved, self.state, self.signal = path, rank, step, step, state, None
        self.bad_step = None  # on the device: the first step whose loss was not finite, 0 while none

    def watch(self, loss):
        if self.bad_step is None:
            self.bad_step = torch.zeros((), dtype=torch.long, device=loss.device)
        self.bad_step = torch.where((self.bad_step == 0) & ~torch.isfinite(loss.detach()), self.step + 1, self.bad_step)

    def finite(self):
        return self.bad_step is None or int(self.bad_step) == 0  # the host waits for the device here

    def check_finite(self):
        if not self.finite():
            raise FloatingPointError(f"loss is not finite at step {int(self.bad_step)}; stopped. The last good "
                                     f"checkpoint is kept ({self.path}); try a lower --lr")

    def __enter__(self):
        self.handlers = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def stop(self, number, frame):
        self.signal = number

    def save(self):
        checkpoint.save(self.path, self.step, *self.state)  # state: (net, ema, opt, sched, generator, config)
        self.saved = self.step

    def __exit__(self, kind, error, traceback):
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        if self.rank != 0 or isinstance(error, FloatingPointError):
            return False
        if error is None and self.signal is not None:
            self.save()
            print(f"stopped by signal {self.signal} at step {self.step}; resume with: "
                  f"python train.py --resume {self.path}")
        elif error is not None:
            if self.step > self.saved and self.finite():
                try:
                    self.save()
                except data.DataError as e:
                    print(f"could not save step {self.step}: {e}", file=sys.stderr)
            if self.path.exists():
                print(f"stopped at step {self.step} by {type(error).__name__}; {self.path} holds step {self.saved}; "
                      f"after fixing the cause, resume with: python train.py --resume {self.path}",
                      file=sys.stderr, flush=True)
        return False


def finish(run, net, rank, world):
    """After the loop: check that the DDP replicas agree, name the checkpoint, exit 128 + signal if stopped."""
    if world > 1:
        checksum = torch.stack([p.detach().double().sum() for p in net.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(checksum) for _ in range(world)]
        dist.all_gather(gathered, checksum)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"DDP replicas diverged: weight checksums {[g.item() for g in gathered]}")
        if rank == 0:
            print(f"{world} replicas in sync (weight checksum {gathered[0].item():.6f})")
        dist.destroy_process_group()
    if rank == 0:
        print(f"checkpoint: {run.path}")
    if run.signal is not None:
        sys.exit(128 + run.signal)


# ---- logging and validation --------------------------------------------------------------------

def log_row(log, row):
    """Append one JSON line to the file `log` (metrics.jsonl); a full disk is a DataError naming it."""
    try:
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise data.DataError(f"{log}: cannot write ({e.strerror or e})") from e


def log_training(log, args, step, loss, lr, world, its):
    """Print and log the loss, speed and learning rate."""
    eta = (args.iters - step) / max(its, 1e-9)
    print(f"step {step:>7d} | loss {loss.item():.5f} | {its:.2f} it/s | {its * args.batch * world:.1f} img/s"
          f" | lr {lr:.2e} | eta {eta / 60:.1f} min", flush=True)
    log_row(log, dict(step=step, loss=loss.item(), lr=lr, its=its))


class Pace:
    """Steps per second since the last reset (validation left out), and one estimate of the run's time
    after 5 steps past the first (warm-up) or 20 s: a recipe too long for the machine says so early."""

    def __init__(self, step):
        self.reset(step)
        self.first, self.estimated = None, False

    def reset(self, step):
        self.tic, self.tic_step = time.time(), step

    def its(self, step):
        return (step - self.tic_step) / max(time.time() - self.tic, 1e-9)

    def estimate(self, step, iters, device):
        """The line to print after `step`, once; None before it is due and after."""
        now = time.time()
        if self.first is None:
            self.first = (step, now)
        n, elapsed = step - self.first[0], now - self.first[1]
        if self.estimated or n == 0 or (n < 5 and elapsed < 20):
            return None
        self.estimated, seconds = True, elapsed / n * (iters - step)
        line = (f"timing: {elapsed / n:.2f} s per step (the {n} step{'s' * (n > 1)} after the first); the remaining "
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
    row = dict(step=step)
    for name, scores in results.items():
        print(f"{name:<6} {step:>7d} | PSNR {scores['psnr']:.2f} dB (input {scores['psnr_input']:.2f}) | "
              f"PSNR-Y {scores['psnr_y']:.2f} (input {scores['psnr_y_input']:.2f}) | SSIM {scores['ssim']:.4f} "
              f"(input {scores['ssim_input']:.4f}) | GMSD {scores['gmsd']:.4f} (input {scores['gmsd_input']:.4f}) | "
              f"colour shift <= {scores['shift_max']:.1f}/255 (input {scores['shift_max_input']:.1f})", flush=True)
        row.update(scores if name == "val" else {f"{name}_{k}": v for k, v in scores.items()})
    log_row(log, row)


def cli(argv=None):
    """main() with the project's own errors as `error: ...` and exit status 1."""
    try:
        main(argv)
    except (data.DataError, flags.UsageError, FloatingPointError) as e:  # others keep their traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    cli()
