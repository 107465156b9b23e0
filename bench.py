"""Benchmarks (never run as tests). Results go in RESULTS.md with the machine that produced them.

    python bench.py train [--device cuda] [--compile]       # training throughput and peak memory
    python bench.py sample --checkpoint runs/derain/last.pt  # PSNR-Y and time vs network evaluations
    python bench.py reference --reference PATH [--device cuda]  # against the authors' code, same card
    python bench.py ablate [--quick] [--fp32] [--device cuda] [--net small --iters 20000]  # the paper's claims
    python bench.py figures                                  # plots of the ablation (needs matplotlib)

`train` times full training steps (loss, backward, Adam, EMA) of the tiny and paper networks at
the presets' batch and crop, in float32 and, where train.py picks it for the device, with bf16
autocast. `sample` restores the fixed synthetic validation set with every sampler at 100, 50,
20, 10 and 5 steps, and counts the network evaluations (NFE) they take.
`reference` runs the authors' ConditionalUNet and IRSDE from a local checkout of their repository
(Algolzw/image-restoration-sde; nothing is downloaded) next to this code's paper network holding
the same weights: output agreement, training images/s (batch 4, 128 x 128, ML loss) and seconds
per 256 x 256 restoration.

`ablate` trains the tiny recipe, its CNN baseline and the former recipes with one change per
variant (the paper's Fig. 10, Fig. 11, Tables 1-4, and lambda), validates each on the synthetic
and `unseen` sets, and writes ablate.jsonl and ablate.md in --out (default runs/ablate). A
finished variant is not retrained; an interrupted one resumes from its last checkpoint. It then
restores the validation set with every sampler at 1 to 100 steps, and evaluates the denoising
variant started at t* against the full process. `figures` draws assets/figures/*.png from those.
"""
import argparse
import importlib
import importlib.util
import itertools
import json
import platform
import sys
import time
import types
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
    print(f"| network | params | batch x crop | precision | img/s | peak memory | ({machine(device)}, torch {torch.__version__})")
    print("|---|---|---|---|---|---|")
    # float32 and, where train.py would use it, bf16 autocast: their ratio is the figure to compare
    precisions = [fp32 for fp32 in (True, False) if fp32 or restore.use_bf16(device)]
    for preset, fp32 in itertools.product(args.presets, precisions):
        targs = flags.fill_defaults(flags.parse(["--task", "derain", "--preset", preset]))
        targs.fp32 = fp32
        torch.manual_seed(0)
        net, sde = checkpoint.build(targs, device)
        net = net.to(memory_format=torch.channels_last)  # as train.py
        cuda = device.type == "cuda"
        model = torch.compile(net) if args.compile else net
        opt, _, ema = train.optimizers(targs, net)
        ds = data.make_dataset("derain", crop=targs.crop)
        lq, gt = (torch.stack(x).to(device).contiguous(memory_format=torch.channels_last)
                  for x in zip(*[ds[i] for i in range(targs.batch)]))
        generator = torch.Generator(device).manual_seed(0)

        def step():
            loss = train.batch_loss(model, sde, targs, lq, gt, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(net)

        warmup, reps = (3, 20) if cuda else (1, 3 if preset == "paper" else 10)
        for _ in range(warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(reps):
            step()
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / reps
        memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if cuda else "n/a (CPU)"
        params = sum(p.numel() for p in net.parameters()) / 1e6
        precision = "bf16 autocast" if restore.use_bf16(device, fp32) else "fp32"
        print(f"| {preset} | {params:.1f} M | {targs.batch} x {targs.crop}^2 | {precision}"
              f"{' + compile' if args.compile else ''} | {targs.batch / seconds:.1f} | {memory} |", flush=True)


def bench_sample(args, device):
    net, sde, config = checkpoint.load(args.checkpoint, device)
    check_sweep(args.checkpoint, args.sample_steps, sde, config)
    net = Counted(net)
    val_set = data.make_dataset(config["task"], crop=train.VAL_CROP, split="val")
    pairs = [val_set[k] for k in range(len(val_set))]
    print(f"| sampler | steps | NFE | PSNR-Y (dB) | PSNR (dB) | s / image | ({machine(device)}, {len(pairs)} images "
          f"{train.VAL_CROP}x{train.VAL_CROP}, {args.checkpoint})")
    print("|---|---|---|---|---|---|")
    inputs = metrics.mean([metrics.evaluate(lq.clamp(0, 1), gt) for lq, gt in pairs])
    print(f"| input (LQ) | 0 | 0 | {inputs['psnr_y']:.2f} | {inputs['psnr']:.2f} | - |")
    for sampler in args.samplers:
        for steps in args.sample_steps:
            scores, start, net.calls = [], time.perf_counter(), 0
            for k, (lq, gt) in enumerate(pairs):
                generator = torch.Generator(device).manual_seed(k)
                restored = restore.restore(net, sde, config, lq[None].to(device), sampler=sampler, steps=steps,
                                           generator=generator)
                scores.append(metrics.evaluate(restored[0].cpu(), gt))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / len(pairs)
            mean = metrics.mean(scores)
            print(f"| {sampler} | {steps} | {net.calls // len(pairs)} | {mean['psnr_y']:.2f} | {mean['psnr']:.2f} | "
                  f"{seconds:.3f} |", flush=True)


class Counted(torch.nn.Module):
    """The network, counting its evaluations: tables report network evaluations (NFE), which a
    sampler with more than one evaluation per step does not equal to its steps."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, mu, t):
        self.calls += 1
        return self.net(x, mu, t)


def check_sweep(path, steps, sde, config):
    """Refuse, before the first row, step counts the checkpoint cannot run (1..T, or 1..t* for
    a task with a noise level)."""
    if sde is None:
        raise data.DataError(f"{path}: the CNN baseline restores in one pass; it has no samplers to sweep")
    t_start = restore.start_index(sde, config)
    bad = [n for n in steps if not 1 <= n <= t_start]
    if bad:
        raise flags.UsageError(f"--sample-steps {' '.join(map(str, bad))}: {path} runs 1 to {t_start} steps")


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
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
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
    print("| code | precision | train img/s (batch 4, 128^2) | s / 256^2 image, 100 posterior steps | 10 | 5 |")
    print("|---|---|---|---|---|---|")
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
            with autocast:  # train.train_step with --param noise --weighting uniform
                t = torch.randint(1, sde_ours.T + 1, (batch,), device=device)
                x, _ = sde_ours.q_sample(lq, gt, t)
                loss = sde_ours.ml_loss(x, lq, gt, ours(x, lq, t).float(), t)
            opt.zero_grad()
            loss.backward()
            opt.step()

        sde_theirs.set_model(lambda x, mu, t: theirs(x, mu, t).float())
        mu = torch.rand(1, 3, 256, 256, generator=g).to(device)

        def their_sample():
            with torch.no_grad(), autocast:
                sde_theirs.set_mu(mu)
                sde_theirs.reverse_posterior(sde_theirs.noise_state(mu))

        def our_sample(steps):
            with autocast:
                irsde.sample(lambda x, mu_, t: ours(x, mu_, t).float(), sde_ours, mu, steps, "posterior")

        reps = (3, 10) if device.type == "cuda" else (1, 2)
        their_train = batch / timed(their_step, device, *reps)
        our_train = batch / timed(our_step, device, *reps)
        their_100 = timed(their_sample, device, 1, 2)
        ours_100, ours_10, ours_5 = (timed(lambda: our_sample(n), device, 1, 3) for n in (100, 10, 5))
        print(f"| authors' | {precision} | {their_train:.1f} | {their_100:.3f} | | |", flush=True)
        print(f"| irsde | {precision} | {our_train:.1f} | {ours_100:.3f} | {ours_10:.3f} | {ours_5:.3f} |", flush=True)


# ---- ablation: the paper's claims at laptop scale ---------------------------------------------

def ablation_variants(lam):
    """(name, task, train.py flags, seeds): the tiny recipe (3 posterior steps, trained on the
    sampler's own chain) and the CNN baseline trained alike; then the former recipes as they were
    measured (64 x 64 crops, 800 steps, x_t from the forward process): 1 posterior step, the same
    in L2, 3 steps, their CNN, and the former 3-step recipe with one change each (losses,
    schedules, lambda halved and doubled around the task's default `lam`, tasks.py)."""
    former = ["--crop", "64", "--iters", "800", "--milestones", "550", "700"]
    steps1 = ["--t-draw", "sampler", "--sample-steps", "1", *former]
    steps3 = ["--t-draw", "sampler", "--sample-steps", "3", *former]
    return [
        ("IR-SDE, 3 posterior steps on its own chain (tiny recipe)", "derain", [], (0, 1)),
        ("CNN baseline (same network, L1)", "derain", ["--loss", "cnn"], (0, 1)),
        ("former recipe: 1 posterior step", "derain", steps1, (0, 1)),
        ("former recipe: 1 posterior step, L2", "derain", [*steps1, "--loss-norm", "l2"], (0, 1)),
        ("former recipe: 3 posterior steps", "derain", steps3, (0, 1)),
        ("former recipe: CNN baseline", "derain", ["--loss", "cnn", *former], (0, 1)),
        ("paper's ML loss (Euler-Maruyama step), uniform indices", "derain",
         [*steps3, "--loss", "ml", "--t-draw", "uniform"], (0,)),
        ("noise matching, eq. 10", "derain", [*steps3, "--loss", "noise"], (0,)),
        ("linear schedule", "derain", [*steps3, "--schedule", "linear"], (0,)),
        ("constant schedule", "derain", [*steps3, "--schedule", "constant"], (0,)),
        (f"lambda {lam / 2:g}/255 (half)", "derain", [*steps3, "--max-sigma", f"{lam / 2:g}"], (0,)),
        (f"lambda {lam * 2:g}/255 (double)", "derain", [*steps3, "--max-sigma", f"{lam * 2:g}"], (0,)),
        ("denoising SDE, sigma 25", "denoise", ["--sample-steps", "3", *former], (0,)),
    ]


QUICK_FLAGS = ["--iters", "2", "--crop", "16", "--batch", "2", "--T", "10", "--sample-steps", "2",
               "--val-images", "1", "--val-every", "1", "--log-every", "1"]
NFE = (1, 2, 5, 10, 20, 50, 100)


def run_folder(root, name, seed):
    return root / ("".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")
                   + f"_s{seed}")


def train_variant(folder, task, extra, seed, args):
    """Train one variant in `folder` with train.main; a finished run is kept, an interrupted one
    resumed. Returns (wall seconds of this call, 0 when nothing was left to train)."""
    last = folder / "last.pt"
    recipe = flags.PRESETS["tiny"]
    iters = (["--iters", str(args.iters), "--milestones",  # the learning-rate halvings scale with the budget
              *(str(round(m * args.iters / recipe["iters"])) for m in recipe["milestones"])] if args.iters else [])
    iters += ["--net", args.net] if args.net else []
    precision = ["--fp32"] if args.fp32 else []  # float32 on any machine: the README's numbers exactly
    if last.exists():
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        if ckpt["step"] >= ckpt["config"]["args"]["iters"]:
            print(f"{folder}: finished already (step {ckpt['step']}), kept", flush=True)
            return 0.0
        argv = ["--resume", str(last), "--device", args.device, *precision]
    else:
        if (folder / "metrics.jsonl").exists():  # stopped before its first checkpoint: start again
            (folder / "metrics.jsonl").unlink()
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


def mean_psnr_y(images, gts):
    return sum(metrics.psnr(image, gt, y=True) for image, gt in zip(images.cpu(), gts.cpu())) / len(gts)


def restore_batch(net, sde, config, pairs, sampler, steps, device, seed=0, **kwargs):
    """(mean PSNR-Y, network evaluations) over pairs restored as one batch (one generator, seeded)."""
    lq, gt = (torch.stack(x).to(device) for x in zip(*pairs))
    generator = torch.Generator(device).manual_seed(seed)
    net = Counted(net)
    out = restore.restore(net, sde, config, lq, sampler=sampler, steps=steps, generator=generator, **kwargs)
    return mean_psnr_y(out, gt), net.calls


def nfe_sweep(folder, device, quick):
    """PSNR-Y on the synthetic validation set against network evaluations, for every sampler."""
    net, sde, config = checkpoint.load(folder / "last.pt", device)
    n = config["args"]["val_images"]
    val_set = data.make_dataset(config["task"], crop=train.VAL_CROP, split="val", n=n)
    pairs = [val_set[k] for k in range(len(val_set))]
    rows = []
    for sampler in irsde.SAMPLERS:
        for steps in [s for s in NFE if s <= sde.T][: 2 if quick else None]:
            psnr_y, nfe = restore_batch(net, sde, config, pairs, sampler, steps, device)
            rows.append(dict(kind="nfe", sampler=sampler, steps=steps, nfe=nfe, psnr_y=psnr_y))
            print(f"nfe: {sampler:<9} {steps:>3} steps, {nfe:>3} evaluations | PSNR-Y {psnr_y:.2f}", flush=True)
    return rows


def denoise_starts(folder, device):
    """Table 4: the denoising SDE and ODE started at t* (every index from there) against the full
    process, which first adds noise to reach the marginal at T (x0 + sqrt(v_T) z; exact in law, as
    x_t* = x0 + sqrt(v_t*) z) and then runs all T steps."""
    net, sde, config = checkpoint.load(folder / "last.pt", device)
    val_set = data.make_dataset("denoise", crop=train.VAL_CROP, split="val", n=config["args"]["val_images"])
    pairs = [val_set[k] for k in range(len(val_set))]
    sigma = tasks.TASKS["denoise"].noise_sigma
    t_star = sde.start_index(sigma)
    rows = []
    for sampler in ("ode", "sde"):
        psnr_y, nfe = restore_batch(net, sde, config, pairs, sampler, t_star, device, noise_sigma=sigma)
        rows.append(dict(kind="denoise", start=f"t* = {t_star}", sampler=sampler, nfe=nfe, psnr_y=psnr_y))
    lq, gt = (torch.stack(x).to(device) for x in zip(*pairs))
    generator = torch.Generator(device).manual_seed(0)
    v_T = float(sde.v[-1])
    x_T = lq + (v_T - sigma**2) ** 0.5 * torch.randn(lq.shape, generator=generator, device=device)
    model = irsde.noise_model(restore.network(net, device), sde, config["param"])
    for sampler in ("sde", "ode"):
        out = irsde._sampler(sampler)(model, sde, x_T, None, irsde.timesteps(sde), generator=generator,
                                      clip_x0=config["sampling"]["clip_x0"]).clamp(0, 1)
        rows.append(dict(kind="denoise", start=f"T = {sde.T}", sampler=sampler, nfe=sde.T,
                         psnr_y=mean_psnr_y(out, gt)))
    rows.append(dict(kind="denoise", start="input", sampler="-", nfe=0, psnr_y=mean_psnr_y(lq.clamp(0, 1), gt)))
    return rows


def ablation_table(rows):
    """Markdown: one line per run, then the samplers' sweep and the denoising starts."""
    lines = ["| variant | seed | steps | `val` PSNR-Y / PSNR / SSIM | `unseen` PSNR-Y / PSNR / SSIM "
             "| worst colour shift (/255) | train s |", "|---|---|---|---|---|---|---|"]
    runs = [r for r in rows if r["kind"] == "run"]
    if runs:
        v = runs[0]["val"]
        lines.append(f"| input (LQ) | | | {v['psnr_y_input']:.2f} / {v['psnr_input']:.2f} / {v['ssim_input']:.3f} "
                     f"| {runs[0]['unseen'].get('psnr_y_input', float('nan')):.2f} / "
                     f"{runs[0]['unseen'].get('psnr_input', float('nan')):.2f} / "
                     f"{runs[0]['unseen'].get('ssim_input', float('nan')):.3f} | {v.get('shift_max_input', float('nan')):.1f} | |")
    for r in runs:
        v, u = r["val"], r["unseen"]
        unseen = f"{u['psnr_y']:.2f} / {u['psnr']:.2f} / {u['ssim']:.3f}" if u else "-"
        lines.append(f"| {r['variant']} | {r['seed']} | {r['step']} | {v['psnr_y']:.2f} / {v['psnr']:.2f} / "
                     f"{v['ssim']:.3f} | {unseen} | {v.get('shift_max', float('nan')):.1f} | {r['wall_s']:.0f} |")
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
    # the samplers' sweep needs a network trained at every index, not only the 3 the recipe samples:
    # the paper's training (it is what the 100-step samplers were designed for)
    uniform = next(name for name, _, extra, _ in variants if "uniform" in extra)
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


# ---- figures ----------------------------------------------------------------------------------

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
        for name in chosen:
            for seed in (0, 1):
                if (name, seed) in runs:
                    steps, psnr, _ = zip(*runs[name, seed]["curve"])
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
           title="samplers (paper's ML loss, uniform indices)")
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
    p.add_argument("what", choices=["train", "sample", "reference", "ablate", "figures"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (train)")
    p.add_argument("--presets", nargs="*", default=["tiny", "paper"], help="train.py presets to time (train)")
    p.add_argument("--checkpoint", help="checkpoint to sample from (sample)")
    p.add_argument("--reference", help="checkout of Algolzw/image-restoration-sde (reference)")
    p.add_argument("--samplers", nargs="*", choices=list(irsde.SAMPLERS), default=list(irsde.SAMPLERS))
    p.add_argument("--sample-steps", "--steps", type=int, nargs="*", default=[100, 50, 20, 10, 5],
                   help="step counts of the sweep (sample)")
    p.add_argument("--quick", action="store_true", help="a few steps per variant on tiny crops (ablate; a smoke test)")
    p.add_argument("--iters", type=int, help="training steps per variant (ablate; default: the tiny preset's)")
    p.add_argument("--net", help="network preset of every variant (ablate; default: the tiny recipe's)")
    p.add_argument("--val-every", type=int, default=200, help="validation interval of each variant (ablate)")
    p.add_argument("--fp32", action="store_true", help="train every variant in float32 (ablate; default: "
                   "train.py's choice, bf16 on CUDA and on CPUs with bf16 instructions)")
    p.add_argument("--out", help="ablation folder (ablate, figures; default runs/ablate)")
    p.add_argument("--figures", default="assets/figures", help="where figures writes its PNG files")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.what == "sample" and not args.checkpoint:
        p.error("sample needs --checkpoint")
    if args.what == "reference" and not args.reference:
        p.error("reference needs --reference PATH (a checkout of the authors' repository)")
    run = {"train": bench_train, "sample": bench_sample, "reference": bench_reference,
           "ablate": bench_ablate, "figures": bench_figures}[args.what]
    try:
        run(args, device)
    except (data.DataError, flags.UsageError) as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
