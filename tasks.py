"""The restoration tasks of PAPER.md §9, one row each: everything that differs between them. A new
task is one row here and its generator in synthetic.py; train.py, sample.py and the tests pick it up
from the table. The rules a row keeps, each checked where it is used:
- a degradation is f(clean, rng) -> LQ, clean a (3, H, W) tensor in [0, 1], every random draw from
  the numpy Generator rng; it calls synthetic's generators through the module at call time, so that
  tests can watch which ones run;
- unseen is a generator that train and val never call, or None: the val degradation on photographs
  training never sees;
- val_seed is the task's own: no other row has it.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import synthetic


@dataclass(frozen=True)
class Task:
    train: Callable                      # degradation of the training pairs: wide ranges
    val: Callable                        # of the fixed validation set: the paper's setting
    unseen: Optional[Callable]           # of the fixed unseen set
    lam: float                           # lambda for training, 0-255 scale (the reference's configs; PAPER.md §5, §6)
    eps: float                           # e^{-theta_bar_T}
    val_seed: int                        # seeds the fixed val/unseen sets
    reference: Optional[tuple] = None    # (lambda, eps) of the authors' test config; None: they released no weights
    conditional: bool = True             # the network sees the LQ image mu; False: the denoising SDE, mu = x0 unknown
    sampler: str = "posterior"           # the authors' sampler, over every index: posterior, the ODE for denoising
    few_step_sampler: str = "posterior"  # the sampler over fewer, respaced indices (PAPER.md §7)
    noise_sigma: Optional[float] = None  # its inputs' noise level: restoration starts at t* (Sec. 4.3)
    scale: int = 1                       # the authors' test upsamples their LQ input by this (SR)
    colour_epochs: int = 0               # built-in training data: its first epochs show synthetic.flat_colour only


def _rain(clean, rng):  # light or heavy, 1/2 each (Rain100L / Rain100H-like)
    return synthetic.rain(clean, rng, heavy=bool(rng.random() < 0.5))


def _rain_train(clean, rng):  # the wide-range streaks 3/4 of the time, else the val rain
    return synthetic.rain_streaks(clean, rng) if rng.random() < 0.75 else _rain(clean, rng)


def _inpaint_train(clean, rng):  # "thick" or "thin" masks, 1/2 each
    return synthetic.inpaint_mask(clean, rng, kind="thick" if rng.random() < 0.5 else "thin")


def _noise(clean, rng):  # sigma 25/255 in every split, unclamped
    return synthetic.gaussian_noise(clean, rng)


def _bicubic(clean, rng):  # x4 bicubic down and up in every split
    return synthetic.downsample_upsample(clean)


TASKS = {
    "derain": Task(_rain_train, _rain, lambda c, r: synthetic.rain_drops(c, r),
                   lam=10, eps=0.005, reference=(10, 0.005), val_seed=1),
    "deblur": Task(lambda c, r: synthetic.motion_blur(c, r, wide=True), lambda c, r: synthetic.motion_blur(c, r),
                   lambda c, r: synthetic.defocus_blur(c, r), lam=10, eps=0.005, reference=(10, 0.005), val_seed=2),
    "denoise": Task(_noise, _noise, None, lam=70, eps=0.04, reference=(75, 0.04), val_seed=3, conditional=False,
                    sampler="ode", few_step_sampler="ddim", noise_sigma=synthetic.NOISE_SIGMA),
    "sr": Task(_bicubic, _bicubic, None, lam=30, eps=0.005, reference=(30, 0.005), val_seed=4,
               scale=synthetic.SR_SCALE),
    # flat colours first teach it to carry the surrounding colour into a hole; photographs and textures
    # from the start teach it to fill every hole grey (RESULTS.md §12)
    "inpaint": Task(_inpaint_train, lambda c, r: synthetic.inpaint_mask(c, r, kind="thin"),
                    lambda c, r: synthetic.inpaint_blobs(c, r), lam=30, eps=0.005, reference=(30, 0.005), val_seed=5,
                    colour_epochs=6),
    # the authors released no dehazing model: their SR and inpainting test lambda
    "dehaze": Task(lambda c, r: synthetic.haze(c, r, wide=True), lambda c, r: synthetic.haze(c, r),
                   lambda c, r: synthetic.fog(c, r), lam=30, eps=0.005, reference=(30, 0.005), val_seed=6),
}
