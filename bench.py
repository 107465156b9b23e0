"""Benchmarks (never run as tests). Results go in RESULTS.md with the machine that produced them;
gpu_check.sh runs the ones that matter on a GPU in one go.

    python bench.py train [--device cuda] [--compile [MODE]] [--batch 4 16 64]  # images/s, TFLOP/s, MFU
    python bench.py sample --checkpoint runs/derain/last.pt  # PSNR-Y and time against network evaluations
    python bench.py compare --checkpoints runs/a/last.pt runs/b/last.pt  # PSNR-Y, GMSD, colour shift, a picture
    python bench.py gallery --checkpoints runs/*/last.pt       # one picture: LQ | restored | GT for each task
    python bench.py reference --reference PATH [--device cuda]  # against the authors' code, same card
    python bench.py ablate [--quick] [--fp32] [--device cuda] [--net small --iters 20000]  # the paper's claims
    python bench.py figures                                  # plots of the ablation (needs matplotlib)

`sample` restores the fixed `val` set with each sampler and step count. `reference` runs the authors'
ConditionalUNet and IRSDE from a local checkout of their repository (nothing is downloaded) beside
this code's paper network with the same weights. `ablate` trains the variants of `ablation_variants`,
resuming an interrupted one, then sweeps the samplers and runs the denoising start t* against the
full process; `figures` draws assets/figures/*.png from it.
"""
import argparse
import importlib.util
import itertools
import json
import platform
import sys
import time
import types
import warnings
from pathlib import Path

import torch

import data
import irsde
import checkpoint
import flags
import metrics
import restore
import tasks
import train
import unet


def machine(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def bench_train(args, device):
    """Full training steps (loss, backward, Adam, EMA) of each preset at its batch and crop (or --batch)
    in float32 and, where train.py would use it, bf16 autocast; with --compile each also compiled, on the
    next row, timed in alternating rounds with the eager step so that the machine's load falls on both
    alike: the ratios are the figures to compare. Columns: images/s (the median round), the model FLOPs
    of a step (`step_flops`), TFLOP/s, and MFU: that rate over the peak of a large matmul in the same
    precision measured on this device (--peak: the card's datasheet bf16 figure instead); the graphs
    torch.compile made; the built-in data's rate in one loader worker: train.py needs the step's
    images/s divided by it in --workers."""
    peaks = {True: matmul_peak(device, torch.float32),
             False: args.peak * 1e12 if args.peak else matmul_peak(device, torch.bfloat16)}
    print(f"{machine(device)}, torch {torch.__version__}; matmul peak {peaks[True] / 1e12:.1f} TFLOP/s fp32 "
          f"(measured), {peaks[False] / 1e12:.1f} bf16 ({'given' if args.peak else 'measured'})")
    print("| network | params | batch x crop | precision | img/s | GFLOP / image | TFLOP/s | MFU | peak memory "
          "| host syncs / step | graphs compiled | data img/s per worker |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    precisions = [fp32 for fp32 in (True, False) if fp32 or restore.use_bf16(device)]
    cuda = device.type == "cuda"
    for preset, batch, fp32 in itertools.product(args.presets, args.batch or [None], precisions):
        targs = flags.fill_defaults(flags.parse(["--task", "derain", "--preset", preset]))
        targs.fp32, targs.batch = fp32, batch or targs.batch
        flops = step_flops(training_step(targs, device)[0])  # counted eagerly
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()  # the graphs of this compiled step alone
        steps = {mode: training_step(targs, device, mode) for mode in [None, args.compile][: 1 + bool(args.compile)]}
        reps = 10 if cuda or preset == "tiny" else 1
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        rounds = {mode: [] for mode in steps}
        for k in range(4):  # round 0 warms up (and compiles)
            for mode, (step, _) in steps.items():
                rounds[mode].append(timed(step, device, 0, reps if k else 2))
        memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if cuda else "n/a (CPU)"
        for mode, (step, net) in steps.items():
            seconds = sorted(rounds[mode][1:])[1]
            params = sum(p.numel() for p in net.parameters()) / 1e6
            precision = ("bf16 autocast" if restore.use_bf16(device, fp32) else "fp32") + (
                f" + compile {mode}" if mode else "")
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] if mode else "-"
            print(f"| {preset} | {params:.1f} M | {targs.batch} x {targs.crop}^2 | {precision} | "
                  f"{targs.batch / seconds:.3g} | {flops / targs.batch / 1e9:.1f} | {flops / seconds / 1e12:.2f} | "
                  f"{flops / seconds / peaks[fp32]:.1%} | {memory} | {host_syncs(step, device)} | {graphs} | "
                  f"{loader_rate(targs):.0f} |", flush=True)


def training_step(targs, device, compile_mode=None):
    """(step, net): step() runs one step of train.py's loop (loss, backward, Adam, EMA) on a fixed batch."""
    torch.manual_seed(0)
    net, sde = checkpoint.build(targs, device)
    net = net.to(memory_format=torch.channels_last)  # as train.py
    model = torch.compile(net, mode=compile_mode) if compile_mode else net
    opt, _, ema = train.optimizers(targs, net)
    lq, gt = fixed_batch(targs, device)
    generator = torch.Generator(device).manual_seed(0)

    def step():
        loss = train.batch_loss(model, sde, targs, lq, gt, generator, net)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(net)
    return step, net


def fixed_batch(targs, device):
    ds = data.make_dataset("derain", crop=targs.crop)
    return (torch.stack(x).to(device).contiguous(memory_format=torch.channels_last)
            for x in zip(*[ds[i % len(ds)] for i in range(targs.batch)]))


def step_flops(step, steps=4):
    """Model FLOPs (forward and backward; not the optimizer's elementwise work) of one call of the eager
    training step, counted by torch.utils.flop_counter over a few calls and averaged: with --t-draw
    chain a step's network evaluations vary with its indices."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        for _ in range(steps):
            step()
    return counter.get_total_flops() / steps


def host_syncs(step, device):
    """Times one training step makes the host wait for the GPU (torch.cuda's sync debug mode): each
    wait keeps the host from queueing the next kernels while the GPU runs; "-" on a CPU."""
    if device.type != "cuda":
        return "-"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def matmul_peak(device, dtype):
    """FLOP/s of a large square matmul in dtype on device: what its matrix units deliver here."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / timed(lambda: a @ b, device, 3, 20 if device.type == "cuda" else 5)


def loader_rate(targs, n=64):
    """Training pairs per second that one loader worker makes (the built-in data at the run's crop)."""
    ds = data.make_dataset(targs.task, crop=targs.crop)
    index = itertools.cycle(range(len(ds)))
    return 1 / timed(lambda: ds[next(index)], torch.device("cpu"), 1, n)


def sweep(net, sde, config, pairs, device, samplers, counts, **kwargs):
    """(sampler, steps, NFE per image, mean metrics, seconds per image) for each sampler and step
    count over the (lq, gt) pairs, image k restored with a generator seeded k."""
    net = Counted(net)
    for sampler, steps in itertools.product(samplers, counts):
        scores, start, net.calls = [], time.perf_counter(), 0
        for k, (lq, gt) in enumerate(pairs):
            restored = restore.restore(net, sde, config, lq[None].to(device), sampler, steps,
                                       torch.Generator(device).manual_seed(k), **kwargs)
            scores.append(metrics.evaluate(restored[0].float().cpu(), gt))
        if device.type == "cuda":
            torch.cuda.synchronize()
        yield sampler, steps, net.calls // len(pairs), metrics.mean(scores), (time.perf_counter() - start) / len(pairs)


def bench_sample(args, device):
    net, sde, config = checkpoint.load(args.checkpoint, device)
    if sde is None:
        raise data.DataError(f"{args.checkpoint}: the CNN baseline restores in one pass; it has no samplers to sweep")
    t_start = restore.start_index(sde, config)  # T, or t* for a task with a noise level
    bad = [n for n in args.sample_steps if not 1 <= n <= t_start]
    if bad:  # refused before the first row
        raise flags.UsageError(f"--sample-steps {' '.join(map(str, bad))}: {args.checkpoint} runs 1 to {t_start} steps")
    pairs = list(data.make_dataset(config["task"], crop=train.VAL_CROP, split="val"))
    print(f"| sampler | steps | NFE | PSNR-Y (dB) | PSNR (dB) | s / image | ({machine(device)}, {len(pairs)} images "
          f"{train.VAL_CROP}x{train.VAL_CROP}, {args.checkpoint})")
    print("|---|---|---|---|---|---|")
    inputs = metrics.mean([metrics.evaluate(lq.clamp(0, 1), gt) for lq, gt in pairs])
    print(f"| input (LQ) | 0 | 0 | {inputs['psnr_y']:.2f} | {inputs['psnr']:.2f} | - |")
    samplers = args.samplers or list(irsde.SAMPLERS)
    for sampler, steps, nfe, mean, seconds in sweep(net, sde, config, pairs, device, samplers, args.sample_steps):
        print(f"| {sampler} | {steps} | {nfe} | {mean['psnr_y']:.2f} | {mean['psnr']:.2f} | {seconds:.3f} |",
              flush=True)


def bench_gallery(args, device):
    """One picture, a row per checkpoint (one per task): LQ | restored | GT of `val` image --index,
    restored as validation restores it, each row labelled with its task and PSNR-Y."""
    rows = []
    for path in args.checkpoints:
        net, sde, config = checkpoint.load(path, device)
        lq, gt = data.make_dataset(config["task"], crop=train.VAL_CROP, split="val")[args.index]
        out = restore.restore(net, sde, config, lq[None].to(device), generator=torch.Generator(device).manual_seed(0))
        images = [lq.clamp(0, 1), out[0].float().cpu(), gt]
        scores = [f"{metrics.psnr(x, gt, restore.VAL_BORDER, y=True):.1f} dB" for x in images[:2]]
        labels = [f"{config['task']}: LQ {scores[0]}", f"restored {scores[1]}", "GT"]
        rows += [restore.labelled(restore.strip(images), labels, train.VAL_CROP), torch.ones(3, restore.GAP, 1)]
    width = rows[0].shape[2]
    picture = torch.cat([row.expand(3, -1, width) for row in rows[:-1]], dim=1)
    out = Path(args.out or "runs/gallery.jpg")
    data.save_image(picture, out)
    print(f"picture: {out} ({len(args.checkpoints)} rows, `val` image {args.index})")


def bench_compare(args, device):
    """Checkpoints side by side on the `val` and `unseen` images (each restored with its own
    sampler and step count, or --sample-steps): PSNR-Y, SSIM-Y, GMSD (structure of the gradients
    against the GT's; noise cannot game it) and the texture ratio (high-frequency energy over the
    GT's; noise can), the mean colour shift (largest channel-mean difference: a cast or veil left
    behind, which costs PSNR but not structure), and one picture per set: LQ, each output, GT."""
    models = [(Path(path).parent.name, *checkpoint.load(path, device)) for path in args.checkpoints]
    task, *others = {config["task"] for _, _, _, config in models}
    if others:
        raise flags.UsageError(f"--checkpoints: they restore different tasks ({', '.join(sorted([task, *others]))})")
    out = Path(args.out or "runs/compare")
    print(f"| model | set | PSNR-Y | SSIM-Y | GMSD | texture | colour shift (/255) | ({machine(device)})")
    print("|---|---|---|---|---|---|---|")
    steps = args.sample_steps[0] if args.sample_steps else None
    for split in ("val", "unseen"):
        pairs = list(data.make_dataset(task, crop=train.VAL_CROP, split=split))
        outputs = [[lq.clamp(0, 1) for lq, _ in pairs]]
        for name, net, sde, config in models:
            outputs.append([restore.restore(net, sde, config, lq[None].to(device), steps=steps,
                                            generator=torch.Generator(device).manual_seed(k))[0].float().cpu()
                            for k, (lq, _) in enumerate(pairs)])
        for name, images in zip(["input (LQ)"] + [m[0] for m in models], outputs):
            mean = metrics.mean([metrics.evaluate(x, gt, restore.VAL_BORDER) for x, (_, gt) in zip(images, pairs)])
            shift = sum(metrics.colour_shift(x, gt) for x, (_, gt) in zip(images, pairs)) / len(pairs)
            print(f"| {name} | {split} | {mean['psnr_y']:.2f} | {mean['ssim_y']:.4f} | {mean['gmsd']:.4f} | "
                  f"{mean['texture']:.2f} | {shift:.1f} |", flush=True)
        rows = [restore.strip([images[k] for images in outputs] + [pairs[k][1]]) for k in range(min(4, len(pairs)))]
        picture = torch.cat([r for row in rows for r in (row, torch.ones(3, restore.GAP, row.shape[2]))][:-1], 1)
        labels = ["LQ"] + [m[0] for m in models] + ["GT"]
        data.save_image(restore.labelled(picture, labels, train.VAL_CROP), out / f"compare_{split}.png")
    print(f"pictures: {out / 'compare_val.png'}, {out / 'compare_unseen.png'}")


class Counted(torch.nn.Module):
    """The network, counting its evaluations: tables report network evaluations (NFE), which a
    sampler with more than one evaluation per step does not equal to its steps."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, mu, t):
        self.calls += 1
        return self.net(x, mu, t)


def load_reference(root):
    """(ConditionalUNet, IRSDE) classes from a checkout of the authors' repository at `root`."""
    modules = Path(root) / "codes/config/deraining/models/modules"
    package = types.ModuleType("reference_modules")  # their __init__ also imports NAFNet: skip it
    package.__path__ = [str(modules)]
    sys.modules["reference_modules"] = package
    arch = importlib.import_module("reference_modules.DenoisingUNet_arch")
    spec = importlib.util.spec_from_file_location("reference_sde", Path(root) / "codes/utils/sde_utils.py")
    sde_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sde_utils)
    return arch.ConditionalUNet, sde_utils.IRSDE


def timed(fn, device, warmup, reps):
    """Seconds per call of fn() after warm-up calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - start) / reps


def bench_reference(args, device):
    ConditionalUNet, ReferenceSDE = load_reference(args.reference)
    torch.manual_seed(0)
    theirs = ConditionalUNet(3, 3, 64, 4).to(device)
    ours = unet.from_reference_state_dict(theirs.state_dict()).to(device)
    batch, crop, lam = 4, 128, 10 / 255
    g = torch.Generator().manual_seed(0)
    gt, lq = (torch.rand(batch, 3, crop, crop, generator=g).to(device) for _ in range(2))
    t = torch.randint(1, 101, (batch,), generator=g).to(device)
    with torch.no_grad():
        diff = (theirs(gt, lq, t) - ours(gt, lq, t)).abs().max().item()
    print(f"{machine(device)}, torch {torch.__version__}: same weights, max |output difference| {diff:.2e} (fp32)")
    print("| code | precision | train img/s (batch 4, 128^2) | s / 256^2 image, 100 posterior steps | 10 | 5 "
          "| img/s, 10 steps on a batch of 8 |")
    print("|---|---|---|---|---|---|---|")
    sde_theirs = ReferenceSDE(max_sigma=lam, T=100, schedule="cosine", eps=0.005, device=device)
    sde_ours = irsde.IRSDE(lam, 100, "cosine", 0.005)
    for precision in ("fp32", "bf16"):
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

        def their_step(opt=torch.optim.Adam(theirs.parameters(), lr=1e-4)):
            with autocast:  # their training loop (models/denoising_model.py), ML loss, L1
                timesteps, states = sde_theirs.generate_random_states(gt, lq)
                timesteps = timesteps.to(device)  # their model class moves it (models/denoising_model.py)
                noise = sde_theirs.noise_fn(states, timesteps.squeeze())
                score = sde_theirs.get_score_from_noise(noise, timesteps)
                loss = (sde_theirs.reverse_sde_step_mean(states, score, timesteps)
                        - sde_theirs.reverse_optimum_step(states, gt, timesteps)).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        def our_step(opt=torch.optim.Adam(ours.parameters(), lr=1e-4)):
            with autocast:  # train.batch_loss of --preset paper: ML loss, noise output, uniform t
                t = torch.randint(1, sde_ours.T + 1, (batch,), device=device)
                x, _ = sde_ours.q_sample(lq, gt, t)
                loss = sde_ours.ml_loss(x, lq, gt, ours(x, lq, t).float(), t)
            opt.zero_grad()
            loss.backward()
            opt.step()

        sde_theirs.set_model(lambda x, mu, t: theirs(x, mu, t).float())
        mu = torch.rand(1, 3, 256, 256, generator=g).to(device)
        batch_of_8 = mu.expand(8, -1, -1, -1).contiguous()

        def their_sample():
            with torch.no_grad(), autocast:
                sde_theirs.set_mu(mu)
                sde_theirs.reverse_posterior(sde_theirs.noise_state(mu))

        def our_sample(steps, lq=mu):
            with autocast:
                irsde.sample(lambda x, mu_, t: ours(x, mu_, t).float(), sde_ours, lq, steps, "posterior")

        reps = (3, 10) if device.type == "cuda" else (1, 2)
        their_train = batch / timed(their_step, device, *reps)
        our_train = batch / timed(our_step, device, *reps)
        their_100 = timed(their_sample, device, 1, 2)
        ours_100, ours_10, ours_5 = (timed(lambda: our_sample(n), device, 1, 3) for n in (100, 10, 5))
        batch_rate = 8 / timed(lambda: our_sample(10, batch_of_8), device, 1, 3)
        print(f"| authors' | {precision} | {their_train:.1f} | {their_100:.3f} | | | |", flush=True)
        print(f"| irsde | {precision} | {our_train:.1f} | {ours_100:.3f} | {ours_10:.3f} | {ours_5:.3f} | "
              f"{batch_rate:.1f} |", flush=True)


def ablation_variants(lam):
    """(name, task, train.py flags, seeds): the tiny recipe and its CNN baseline, then the recipe with one
    change each, as named: the losses of the paper's Fig. 10 (its ML loss is eq. 15, noise matching
    eq. 10), the schedules of Fig. 11, lambda halved and doubled around the task's `lam`, and the
    denoising SDE of Table 4."""
    paper = ["--param", "noise", "--t-draw", "uniform"]
    return [
        ("IR-SDE, 3 posterior steps on its own chain (tiny recipe)", "derain", [], (0, 1)),
        ("CNN baseline (same network, L1)", "derain", ["--loss", "cnn"], (0, 1)),
        ("forward-process states (--t-draw uniform)", "derain", ["--t-draw", "uniform"], (0,)),
        ("paper's ML loss (Euler-Maruyama step)", "derain", ["--loss", "ml"], (0,)),
        ("paper's method: ML loss, noise output, uniform indices", "derain", ["--loss", "ml", *paper], (0,)),
        ("paper's method with noise matching, eq. 10", "derain", ["--loss", "noise", *paper], (0,)),
        ("linear schedule", "derain", ["--schedule", "linear"], (0,)),
        ("constant schedule", "derain", ["--schedule", "constant"], (0,)),
        (f"lambda {lam / 2:g}/255 (half)", "derain", ["--max-sigma", f"{lam / 2:g}"], (0,)),
        (f"lambda {lam * 2:g}/255 (double)", "derain", ["--max-sigma", f"{lam * 2:g}"], (0,)),
        ("denoising SDE, sigma 25", "denoise", [], (0,)),
    ]


QUICK_FLAGS = ["--iters", "2", "--crop", "16", "--batch", "2", "--T", "10", "--sample-steps", "2",
               "--val-images", "1", "--val-every", "2"]
NFE = (1, 2, 5, 10, 20, 50, 100)


def run_folder(root, name, seed):
    return root / ("".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")
                   + f"_s{seed}")


def train_variant(folder, task, extra, seed, args):
    """Train one variant in `folder` with train.main; a finished run is kept, an interrupted one
    resumed. Returns (wall seconds of this call, 0 when nothing was left to train)."""
    last = folder / "last.pt"
    iters = ["--iters", str(args.iters)] if args.iters else []  # the learning-rate halvings scale with it
    iters += ["--net", args.net] if args.net else []
    precision = ["--fp32"] if args.fp32 else []  # float32 on any machine: the README's numbers exactly
    if last.exists():
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        if ckpt["step"] >= ckpt["config"]["args"]["iters"]:
            print(f"{folder}: finished already (step {ckpt['step']}), kept", flush=True)
            return 0.0
        argv = ["--resume", str(last), "--device", args.device, *precision]
    else:
        (folder / "metrics.jsonl").unlink(missing_ok=True)  # stopped before its first checkpoint: start again
        argv = ["--task", task, "--preset", "tiny", "--seed", str(seed), "--device", args.device,
                "--val-every", str(args.val_every), "--out", str(folder), *extra,
                *(QUICK_FLAGS if args.quick else []), *iters, *precision]
    print(f"\n== {folder.name}: python train.py {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    train.main(argv)
    return time.perf_counter() - start


def last_validation(folder):
    """The final validation row of a run's metrics.jsonl, and its (step, PSNR-Y) curve."""
    rows = [json.loads(line) for line in open(folder / "metrics.jsonl") if '"psnr"' in line]
    return rows[-1], [(r["step"], r["psnr_y"], r.get("unseen_psnr_y")) for r in rows]


def nfe_sweep(folder, device, quick):
    """PSNR-Y on the `val` images against network evaluations, for every sampler."""
    net, sde, config = checkpoint.load(folder / "last.pt", device)
    pairs = list(data.make_dataset(config["task"], crop=train.VAL_CROP, split="val", n=config["args"]["val_images"]))
    counts = [n for n in NFE if n <= sde.T][: 2 if quick else None]
    return [dict(kind="nfe", sampler=sampler, steps=steps, nfe=nfe, psnr_y=mean["psnr_y"])
            for sampler, steps, nfe, mean, _ in sweep(net, sde, config, pairs, device, irsde.SAMPLERS, counts)]


def denoise_starts(folder, device):
    """Table 4: the denoising SDE and ODE started at t* (every index from there) against the full
    process, which first adds noise to reach the marginal at T (x0 + sqrt(v_T) z; exact in law, as
    x_t* = x0 + sqrt(v_t*) z) and then runs all T steps."""
    net, sde, config = checkpoint.load(folder / "last.pt", device)
    pairs = list(data.make_dataset("denoise", crop=train.VAL_CROP, split="val", n=config["args"]["val_images"]))
    sigma = tasks.TASKS["denoise"].noise_sigma
    t_star = sde.start_index(sigma)
    rows = [dict(kind="denoise", start=f"t* = {t_star}", sampler=sampler, nfe=nfe, psnr_y=mean["psnr_y"])
            for sampler, _, nfe, mean, _ in sweep(net, sde, config, pairs, device, ("ode", "sde"), [t_star],
                                                  noise_sigma=sigma)]
    model = irsde.noise_model(restore.network(net, device), sde, config["param"])
    for sampler in ("sde", "ode"):
        scores = []
        for k, (lq, gt) in enumerate(pairs):
            generator = torch.Generator(device).manual_seed(k)
            x_T = lq[None].to(device) + (float(sde.v[-1]) - sigma**2) ** 0.5 * irsde._randn(lq[None], generator)
            out = irsde.SAMPLERS[sampler](model, sde, x_T, None, irsde.timesteps(sde), generator=generator,
                                          clip_x0=config["sampling"]["clip_x0"])
            scores.append(metrics.psnr(out[0].clamp(0, 1).cpu(), gt, y=True))
        rows.append(dict(kind="denoise", start=f"T = {sde.T}", sampler=sampler, nfe=sde.T,
                         psnr_y=sum(scores) / len(scores)))
    inputs = sum(metrics.psnr(lq.clamp(0, 1), gt, y=True) for lq, gt in pairs) / len(pairs)
    return rows + [dict(kind="denoise", start="input", sampler="-", nfe=0, psnr_y=inputs)]


def ablation_table(rows):
    """Markdown: one line per run (the inputs first), then the samplers' sweep and the denoising starts."""
    scores = lambda s, of="": f"{s['psnr_y' + of]:.2f} / {s['psnr' + of]:.2f} / {s['ssim' + of]:.3f}"
    lines = ["| variant | seed | steps | `val` PSNR-Y / PSNR / SSIM | `unseen` PSNR-Y / PSNR / SSIM "
             "| worst colour shift (/255) | train s |", "|---|---|---|---|---|---|---|"]
    runs = [r for r in rows if r["kind"] == "run"]
    if runs:
        v, u = runs[0]["val"], runs[0]["unseen"]
        lines.append(f"| input (LQ) | | | {scores(v, '_input')} | {scores(u, '_input')} | "
                     f"{v['shift_max_input']:.1f} | |")
    lines += [f"| {r['variant']} | {r['seed']} | {r['step']} | {scores(r['val'])} | {scores(r['unseen'])} | "
              f"{r['val']['shift_max']:.1f} | {r['wall_s']:.0f} |" for r in runs]
    nfe = [r for r in rows if r["kind"] == "nfe"]
    if nfe:
        counts = sorted({r["nfe"] for r in nfe})
        lines += ["", "| sampler (`val` PSNR-Y) | " + " | ".join(f"{n} NFE" for n in counts) + " |",
                  "|---|" + "---|" * len(counts)]
        for sampler in dict.fromkeys(r["sampler"] for r in nfe):
            by = {r["nfe"]: r["psnr_y"] for r in nfe if r["sampler"] == sampler}
            lines.append(f"| {sampler} | " + " | ".join(f"{by[n]:.2f}" if n in by else "" for n in counts) + " |")
    den = [r for r in rows if r["kind"] == "denoise"]
    if den:
        lines += ["", "| denoising (sigma 25, `val`) | start | NFE | PSNR-Y |", "|---|---|---|---|"]
        lines += [f"| {r['sampler']} | {r['start']} | {r['nfe']} | {r['psnr_y']:.2f} |" for r in den]
    return "\n".join(lines) + "\n"


def bench_ablate(args, device):
    root = Path(args.out or "runs/ablate")
    root.mkdir(parents=True, exist_ok=True)
    rows, start = [], time.perf_counter()
    done = [json.loads(line) for line in open(root / "ablate.jsonl")] if (root / "ablate.jsonl").exists() else []
    variants = ablation_variants(tasks.TASKS["derain"].lam)
    for name, task, extra, seeds in variants:
        for seed in seeds:
            folder = run_folder(root, name, seed)
            wall = train_variant(folder, task, extra, seed, args)
            final, curve = last_validation(folder)
            val = {k: v for k, v in final.items() if not k.startswith("unseen_") and k != "step"}
            unseen = {k[len("unseen_"):]: v for k, v in final.items() if k.startswith("unseen_")}
            earlier = [r["wall_s"] for r in done if r.get("folder") == folder.name and r["kind"] == "run"]
            rows.append(dict(kind="run", variant=name, task=task, flags=extra, seed=seed, folder=folder.name,
                             step=final["step"], wall_s=wall or (earlier[0] if earlier else 0.0),
                             val=val, unseen=unseen, curve=curve))
            write_ablation(root, rows)
    # the samplers' sweep needs a network trained at every index (not only the recipe's 3) with the x0
    # output: a noise output's x0_hat multiplies its error by sqrt(v_t) e^{theta_bar_t}, about 8 at T
    uniform = next(name for name, _, extra, _ in variants if extra == ["--t-draw", "uniform"])
    rows += nfe_sweep(run_folder(root, uniform, 0), device, args.quick)
    denoising = next(name for name, task, _, _ in variants if task == "denoise")
    rows += denoise_starts(run_folder(root, denoising, 0), device)
    write_ablation(root, rows)
    print(f"\n{ablation_table(rows)}\nablation: {time.perf_counter() - start:.0f} s here "
          f"({machine(device)}); {root / 'ablate.jsonl'}, {root / 'ablate.md'}", flush=True)


def write_ablation(root, rows):
    """ablate.jsonl and ablate.md, each replaced whole (written aside, then renamed)."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    data.atomic_write(root / "ablate.jsonl", lambda f: f.write(text.encode()))
    data.atomic_write(root / "ablate.md", lambda f: f.write(ablation_table(rows).encode()))


def bench_figures(args, device):
    root, out = Path(args.out or "runs/ablate"), Path(args.figures)
    if not (root / "ablate.jsonl").exists():
        raise SystemExit(f"{root / 'ablate.jsonl'}: not found; run python bench.py ablate first")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("bench.py figures needs matplotlib, an optional extra for this command only: "
                         "pip install matplotlib (train.py, sample.py and the tests do not use it)")
    rows = [json.loads(line) for line in open(root / "ablate.jsonl")]
    out.mkdir(parents=True, exist_ok=True)
    runs = {(r["variant"], r["seed"]): r for r in rows if r["kind"] == "run"}
    names = list(dict.fromkeys(name for name, _ in runs))
    panels = [("loss (Fig. 10)", [n for n in names if not any(w in n for w in ("schedule", "lambda", "denoising"))]),
              ("theta schedule (Fig. 11)", [n for n in names if "3 posterior" in n or "schedule" in n]),
              ("lambda", [n for n in names if "3 posterior" in n or "lambda" in n])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), sharey=True)
    for ax, (title, chosen) in zip(axes, panels):
        for (name, seed), run in runs.items():
            if name in chosen:
                steps, psnr, _ = zip(*run["curve"])
                ax.plot(steps, psnr, marker="o", label=f"{name}, seed {seed}")
        ax.axhline(next(iter(runs.values()))["val"]["psnr_y_input"], color="gray", ls=":", label="input")
        ax.set(title=title, xlabel="training step")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("val PSNR-Y (dB)")
    save_figure(fig, out / "training.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    nfe = [r for r in rows if r["kind"] == "nfe"]
    for sampler in dict.fromkeys(r["sampler"] for r in nfe):
        points = [(r["nfe"], r["psnr_y"]) for r in nfe if r["sampler"] == sampler]
        ax.plot(*zip(*points), marker="o", label=sampler)
    ax.set(xscale="log", xlabel="network evaluations", ylabel="val PSNR-Y (dB)",
           title="samplers (x0 output, trained at every index)")
    ax.legend()
    save_figure(fig, out / "samplers.png")

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
    for schedule in ("cosine", "linear", "constant"):
        sde = irsde.IRSDE(tasks.TASKS["derain"].lam / 255, 100, schedule, tasks.TASKS["derain"].eps)
        for ax, values, label in zip(axes, (sde.theta_rate, sde.theta_bar, sde.v.sqrt() * 255),
                                     ("theta_i", "theta_bar_i", "sqrt(v_i) (0-255 scale)")):
            ax.plot(values.numpy(), label=schedule)
            ax.set(xlabel="i", title=label)
    axes[0].legend()
    save_figure(fig, out / "schedules.png")


def save_figure(fig, path):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    data.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["train", "sample", "compare", "gallery", "reference", "ablate", "figures"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", nargs="?", const="default", choices=flags.COMPILE_MODES,
                   help="torch.compile the network, in this mode (train; reduce-overhead: CUDA graphs)")
    p.add_argument("--batch", type=int, nargs="*", help="batch sizes to time (train; default: each preset's)")
    p.add_argument("--peak", type=float, help="bf16 peak TFLOP/s for the MFU (train; default: a measured matmul)")
    p.add_argument("--presets", nargs="*", default=["tiny", "paper"], help="train.py presets to time (train)")
    p.add_argument("--checkpoint", help="checkpoint to sample from (sample)")
    p.add_argument("--reference", help="a clone of the authors' repository, Algolzw/image-restoration-sde (reference)")
    p.add_argument("--checkpoints", nargs="*", help="checkpoints to compare (compare), one per task (gallery)")
    p.add_argument("--index", type=int, default=0, help="the `val` image shown (gallery)")
    p.add_argument("--samplers", nargs="*", choices=list(irsde.SAMPLERS), help="samplers (sample; default: all)")
    p.add_argument("--sample-steps", "--steps", type=int, nargs="*",
                   help="step counts (sample; default 100 50 20 10 5); compare: the first (default: each model's own)")
    p.add_argument("--quick", action="store_true", help="a few steps per variant on tiny crops (ablate; a smoke test)")
    p.add_argument("--iters", type=int, help="training steps per variant (ablate; default: the tiny preset's)")
    p.add_argument("--net", help="network preset of every variant (ablate; default: the tiny recipe's)")
    p.add_argument("--val-every", type=int, default=200, help="validation interval of each variant (ablate)")
    p.add_argument("--fp32", action="store_true", help="train every variant in float32 (ablate; default: "
                   "train.py's choice, bf16 on CUDA and on CPUs with bf16 instructions)")
    p.add_argument("--out", help="ablation folder (ablate, figures; default runs/ablate); picture (gallery; default "
                   "runs/gallery.jpg); pictures' folder (compare; default runs/compare)")
    p.add_argument("--figures", default="assets/figures", help="where figures writes its PNG files")
    args = p.parse_args(argv)
    needs = {"sample": "checkpoint", "compare": "checkpoints", "gallery": "checkpoints", "reference": "reference"}
    if args.what in needs and not getattr(args, needs[args.what]):
        p.error(f"{args.what} needs --{needs[args.what]}")
    if args.sample_steps is None and args.what == "sample":
        args.sample_steps = [100, 50, 20, 10, 5]
    run = {"train": bench_train, "sample": bench_sample, "compare": bench_compare, "gallery": bench_gallery,
           "reference": bench_reference, "ablate": bench_ablate, "figures": bench_figures}[args.what]
    try:
        run(args, torch.device(args.device))
    except (data.DataError, flags.UsageError) as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
