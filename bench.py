"""Benchmarks (never run as tests). Results go in the README with the machine that produced them.

    python bench.py train [--device cuda] [--compile]       # training throughput and peak memory
    python bench.py sample --checkpoint runs/derain/last.pt  # PSNR-Y and time vs network evaluations
    python bench.py reference --reference PATH [--device cuda]  # against the authors' code, same card

`train` times full training steps (loss, backward, Adam, EMA) of the tiny and paper networks at
the presets' batch and crop, with the precision train.py picks for the device. `sample` restores
the fixed synthetic validation set with every sampler at 100, 50, 20, 10 and 5 evaluations.
`reference` runs the authors' ConditionalUNet and IRSDE from a local checkout of their repository
(Algolzw/image-restoration-sde; nothing is downloaded) next to this code's paper network holding
the same weights: output agreement, training images/s (batch 4, 128 x 128, ML loss) and seconds
per 256 x 256 restoration.
"""
import argparse
import importlib
import importlib.util
import platform
import sys
import time
import types
from pathlib import Path

import torch

import data
import irsde
import metrics
import sample
import train
import unet


def machine(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def bench_train(args, device):
    print(f"| network | params | batch x crop | precision | img/s | peak memory | ({machine(device)}, torch {torch.__version__})")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        targs = train.fill_defaults(train.parse_args(["--task", "derain", "--preset", preset]))
        torch.manual_seed(0)
        net, sde = train.build(targs, device)
        cuda = device.type == "cuda"
        model = torch.compile(net) if args.compile else net
        opt, _, ema = train.optimizers(targs, net)
        ds = data.make_dataset("derain", crop=targs.crop)
        lq, gt = (torch.stack(x).to(device) for x in zip(*[ds[i] for i in range(targs.batch)]))
        generator = torch.Generator(device).manual_seed(0)

        def step():
            loss = train.train_step(model, sde, targs, lq, gt, generator)
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
        precision = "bf16 autocast" if cuda else "fp32"
        print(f"| {preset} | {params:.1f} M | {targs.batch} x {targs.crop}^2 | {precision}"
              f"{' + compile' if args.compile else ''} | {targs.batch / seconds:.1f} | {memory} |", flush=True)


def bench_sample(args, device):
    net, sde, config = sample.load_checkpoint(args.checkpoint, device)
    val_set = data.make_dataset(config["task"], crop=train.VAL_CROP, split="val")
    pairs = [val_set[k] for k in range(len(val_set))]
    print(f"| sampler | NFE | PSNR-Y (dB) | PSNR (dB) | s / image | ({machine(device)}, {len(pairs)} images "
          f"{train.VAL_CROP}x{train.VAL_CROP}, {args.checkpoint})")
    print("|---|---|---|---|---|")
    inputs = sample.mean_row([metrics.evaluate(lq.clamp(0, 1), gt) for lq, gt in pairs])
    print(f"| input (LQ) | 0 | {inputs['psnr_y']:.2f} | {inputs['psnr']:.2f} | - |")
    for sampler in args.samplers:
        for steps in args.steps:
            scores, start = [], time.perf_counter()
            for k, (lq, gt) in enumerate(pairs):
                generator = torch.Generator(device).manual_seed(k)
                restored = sample.restore(net, sde, config, lq[None].to(device), sampler=sampler, steps=steps,
                                          generator=generator, noise_sigma=data.NOISE_SIGMA)
                scores.append(metrics.evaluate(restored[0].cpu(), gt))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / len(pairs)
            mean = sample.mean_row(scores)
            print(f"| {sampler} | {steps} | {mean['psnr_y']:.2f} | {mean['psnr']:.2f} | {seconds:.3f} |", flush=True)


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["train", "sample", "reference"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (train)")
    p.add_argument("--presets", nargs="*", default=["tiny", "paper"], help="train.py presets to time (train)")
    p.add_argument("--checkpoint", help="checkpoint to sample from (sample)")
    p.add_argument("--reference", help="checkout of Algolzw/image-restoration-sde (reference)")
    p.add_argument("--samplers", nargs="*", default=["posterior", "ddim", "sde", "ode"])
    p.add_argument("--steps", type=int, nargs="*", default=[100, 50, 20, 10, 5])
    args = p.parse_args()
    device = torch.device(args.device)
    if args.what == "sample" and not args.checkpoint:
        p.error("sample needs --checkpoint")
    if args.what == "reference" and not args.reference:
        p.error("reference needs --reference PATH (a checkout of the authors' repository)")
    {"train": bench_train, "sample": bench_sample, "reference": bench_reference}[args.what](args, device)


if __name__ == "__main__":
    main()
