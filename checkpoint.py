"""The checkpoint: what train.py writes, how train.py and sample.py read it (`upgrade` knows every
older layout), and the networks it can name.

A train.py checkpoint is a dict, written atomically with torch.save and read back with
weights_only=True (plain data and tensors: a file that would run code is refused):
    model, ema            the network's weights and their moving average (sample.py uses the EMA)
    ema_n_averaged, optimizer, scheduler, step, rng   what --resume needs to continue exactly
    config                {task, loss, param, net, sde, scale, sampling, args}: `net` and `sde`
                          rebuild the model, `sampling` restores as validation did, `scale` is the
                          SR factor training upsampled its LQ images by, `args` every train.py flag

The network contract: a class in NETWORKS, built as cls(cond=..., **preset) (cond: whether it sees
mu; False for the denoising SDE and the CNN baseline), sets net.config to the keyword arguments that
rebuild it, and computes net(x, mu, t) -> (B, 3, H, W) for x, mu (B, 3, H, W) and t (B,) integer
indices, mu None when cond is False and t None for the CNN baseline (one pass from LQ to HQ).
config["net"] is {"name": a key of NETWORKS, **net.config}; its presets (the --net choices) are NETS.
"""
import random
from pathlib import Path

import numpy as np
import torch

import irsde
import tasks
import unet
from data import DataError, atomic_write

NETWORKS = {"unet": unet.UNet}
NETS = {name: ("unet", config) for name, config in unet.PRESETS.items()}  # --net preset -> (network, config)


def build(args, device, saved=None):
    """(net, sde) from train.py's settings (sde None for the CNN baseline). saved: a resumed checkpoint's
    config["net"], which wins over the --net preset's current definition (presets may change)."""
    if saved is None:
        name, config = NETS[args.net]
        saved = dict(config, name=name, cond=tasks.TASKS[args.task].conditional and args.loss != "cnn")
    net = network(saved).to(device)
    sde = None if args.loss == "cnn" else irsde.IRSDE(args.max_sigma / 255, args.T, args.schedule, args.eps)
    return net, sde


def network(saved):
    """The untrained network a checkpoint's config["net"] ({"name": ..., **constructor arguments}) names."""
    cls, kwargs = NETWORKS[saved["name"]], {k: v for k, v in saved.items() if k != "name"}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a fork's class that does not keep the contract
        raise TypeError(f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): a network in "
                        "checkpoint.NETWORKS is built with its preset's keyword arguments plus cond (bool: whether "
                        f"it sees mu) and sets net.config to rebuild it ({e})") from e


def make_config(args, net, sde, scale=1):
    """The configuration stored in every checkpoint (the one place that writes it)."""
    name = next(k for k, cls in NETWORKS.items() if type(net) is cls)
    record = {k: v for k, v in vars(args).items() if k not in ("resume", "device", "out")}
    return dict(task=args.task, loss=args.loss, param=args.param, net=dict(name=name, **net.config),
                sde=None if sde is None else sde.config(), scale=scale,
                sampling=dict(sampler=args.sampler, steps=args.sample_steps, clip_x0=args.clip_x0), args=record)


def save(path, step, net, ema, opt, sched, generator, config):
    """Write the training state atomically: a crash mid-write leaves the previous checkpoint intact."""
    state = dict(model=net.state_dict(), ema=ema.module.state_dict(), ema_n_averaged=ema.n_averaged,
                 optimizer=opt.state_dict(), scheduler=sched.state_dict(), step=step,
                 rng=rng_state(generator), config=config)
    atomic_write(path, lambda f: torch.save(state, f))


def rng_state(generator):
    """Every random state, as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(torch=torch.get_rng_state(), python=random.getstate(),
                numpy=(kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                train=generator.get_state())


def resume_state(ckpt, net, ema, opt, sched, generator):
    """Load a checkpoint's weights, optimizer and random states for --resume; returns its step."""
    net.load_state_dict(ckpt["model"])
    ema.module.load_state_dict(ckpt["ema"])
    ema.n_averaged.fill_(int(ckpt["ema_n_averaged"]))
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    state = ckpt["rng"]
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["train"])
    return ckpt["step"]


def init_from(net, path, task):
    """Copy the weights of a train.py checkpoint or of the authors' .pth into net (fine-tuning)."""
    source = load(path, "cpu", task)[0]
    arch = lambda config: {k: v for k, v in config.items() if k != "zero_out"}  # zero_out: init only
    if type(source) is not type(net) or arch(source.config) != arch(net.config):
        raise DataError(f"{path}: its network {arch(source.config)} is not this run's "
                        f"{arch(net.config)}; choose the matching --net (the authors' is paper)")
    net.load_state_dict(source.state_dict())


def read(path, plain_ok=False):
    """The checkpoint dict in the current layout (`upgrade`). plain_ok also accepts a bare
    state_dict (name -> tensor), returned as it is. DataError naming the file when it is missing,
    not a checkpoint, or lacks what sample.py needs."""
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
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        if plain_ok:
            return ckpt
        raise DataError(f"{path}: a plain state_dict, not a train.py checkpoint; if it holds the authors' "
                        f"weights (e.g. rain100h_sde.pth), give --task ({', '.join(tasks.TASKS)}) "
                        "to use their test settings")
    missing = _missing_keys(ckpt)
    if missing:
        raise DataError(f"{path}: checkpoint lacks {', '.join(missing)} (not written by train.py?)")
    return upgrade(ckpt, path)


def _missing_keys(ckpt):
    """Names of the entries sample.py needs that the checkpoint lacks."""
    if not isinstance(ckpt, dict):
        return ["everything (it is not a dict)"]
    missing = [] if ckpt.get("ema") or ckpt.get("model") else ["'ema'/'model' weights"]
    config = ckpt.get("config")
    if not isinstance(config, dict):
        return missing + ["'config'"]
    needed = ("task", "loss", "net") + (() if config.get("loss") == "cnn" else ("sde",))
    return missing + [f"'config.{k}'" for k in needed if config.get(k) is None]


def upgrade(ckpt, path):
    """A checkpoint of any earlier layout in the current one (the one place that knows them):
    before `sampling`, those settings lived in `args` and lambda was `max_sigma`; before `scale`,
    training ran at scale 1; before `net.name`, every network was the U-Net; before --t-draw, runs
    drew uniform indices. Networks from before the authors' exact U-Net (`mid_mult`) cannot be rebuilt."""
    config = dict(ckpt["config"])
    args = {"t_draw": "uniform", **config.get("args", {})}
    if "mid_mult" in config["net"]:
        raise DataError(f"{path}: written for an earlier network of this project (`mid_mult`, GroupNorm "
                        "blocks) that this version cannot rebuild; retrain, or restore it with the version "
                        "of this repository that wrote it")
    config["net"] = {"name": "unet", **config["net"]}
    config.setdefault("scale", 1)
    if config.get("sde") is not None and "max_sigma" in config["sde"]:
        config["sde"] = {("lam" if k == "max_sigma" else k): v for k, v in config["sde"].items()}
    if "sampling" not in config:
        sampler = args.get("sampler") or tasks.TASKS[config["task"]].sampler
        config["sampling"] = dict(sampler=sampler, steps=args.get("sample_steps"),
                                  clip_x0=bool(args.get("clip_x0", False)))
    return {**ckpt, "config": {**config, "args": args}}


def read_for_resume(path):
    """The checkpoint to continue with --resume, with a clear error when it cannot be."""
    ckpt = read(path)
    missing = {"model", "ema", "optimizer", "scheduler", "step", "rng"} - set(ckpt)
    if missing:
        raise DataError(f"{path}: not a train.py checkpoint (missing {', '.join(sorted(missing))})")
    return ckpt


def load(path, device="cpu", task=None):
    """(net, sde, config) from a checkpoint, with the EMA weights where it has them (sde None for the
    CNN baseline). The authors' released .pth files (plain state_dicts) need `task`: their test settings."""
    ckpt = read(path, plain_ok=task is not None)
    if not isinstance(ckpt.get("config"), dict):
        return reference_model(ckpt, path, task, device)
    config = ckpt["config"]
    name = config["net"]["name"]
    if name not in NETWORKS:
        raise DataError(f"{path}: its network {name!r} is not one this code has (checkpoint.NETWORKS: "
                        f"{', '.join(NETWORKS)})")
    try:
        net = network(config["net"])
        net.load_state_dict(ckpt.get("ema") or ckpt["model"])
        sde = None if config["loss"] == "cnn" else irsde.IRSDE(**config["sde"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{path}: checkpoint does not match this code's network or SDE ({e})") from e
    return net.to(device).eval(), sde, config


def reference_model(state_dict, path, task, device):
    """(net, sde, config) for the authors' weights: their network (unet.from_reference_state_dict),
    the SDE of their test config for `task`, and their sampler over every index."""
    row = tasks.TASKS[task]
    if row.reference is None:
        raise DataError(f"{path}: the authors released no weights for {task} (tasks.py has no test config for it)")
    try:
        net = unet.from_reference_state_dict(state_dict, "derain" if row.conditional else "denoise")
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {e}") from e
    lam, eps = row.reference
    sde = irsde.IRSDE(lam / 255, 100, "cosine", eps)
    config = dict(task=task, loss="ml", param="noise", net=dict(name="unet", **net.config), sde=sde.config(),
                  scale=row.scale, sampling=dict(sampler=row.sampler, steps=None, clip_x0=False),
                  args=dict(source=str(path)))
    return net.to(device).eval(), sde, config
