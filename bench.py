"""Benchmarks (never run as tests). Results go in the README with the machine that produced them.

    python bench.py train [--device cuda] [--compile]       # training throughput and peak memory
    python bench.py sample --checkpoint runs/derain/last.pt  # PSNR-Y and time vs network evaluations

`train` times full training steps (loss, backward, Adam, EMA) of the tiny and paper networks at
the presets' batch and crop, with the precision train.py picks for the device. `sample` restores
the fixed synthetic validation set with every sampler at 100, 50, 20, 10 and 5 evaluations.
"""
import argparse
import platform
import time

import torch

import data
import metrics
import sample
import train


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["train", "sample"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (train)")
    p.add_argument("--presets", nargs="*", default=["tiny", "paper"], help="train.py presets to time (train)")
    p.add_argument("--checkpoint", help="checkpoint to sample from (sample)")
    p.add_argument("--samplers", nargs="*", default=["posterior", "ddim", "sde", "ode"])
    p.add_argument("--steps", type=int, nargs="*", default=[100, 50, 20, 10, 5])
    args = p.parse_args()
    device = torch.device(args.device)
    if args.what == "sample" and not args.checkpoint:
        p.error("sample needs --checkpoint")
    (bench_train if args.what == "train" else bench_sample)(args, device)


if __name__ == "__main__":
    main()
