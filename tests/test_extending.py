"""Forking: a new network, a new task and a new sampler each take one place (README, "Extending"),
and then train, restore and benchmark like the built-in ones."""
import numpy as np
import pytest
import torch
from torch import nn

import bench
import checkpoint
import data
import irsde
import sample
import synthetic
import tasks
import train

QUICK = ["--preset", "tiny", "--crop", "16", "--batch", "2", "--T", "10", "--sample-steps", "2", "--iters", "2",
         "--val-images", "2", "--val-every", "2"]


class ConvNet(nn.Module):
    """A 3-layer conv net that keeps the network contract: net(x, mu, t), and net.config rebuilds it."""

    def __init__(self, width=8, cond=True):
        super().__init__()
        self.config = dict(width=width, cond=cond)
        self.body = nn.Sequential(nn.Conv2d(6 if cond else 3, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x, mu, t):
        return self.body(x if mu is None else torch.cat([x - mu, mu], dim=1))


def test_a_new_network_is_one_class_in_networks_and_a_preset(monkeypatch, tmp_path):
    monkeypatch.setitem(checkpoint.NETWORKS, "convnet", ConvNet)
    monkeypatch.setitem(checkpoint.NETS, "conv3", ("convnet", dict(width=8)))
    train.main(["--task", "derain", *QUICK, "--net", "conv3", "--out", str(tmp_path / "run")])
    net, _, config = checkpoint.load(tmp_path / "run" / "last.pt")
    assert type(net) is ConvNet and config["net"] == {"name": "convnet", "width": 8, "cond": True}
    sample.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--input", str(tmp_path / "run" / "val"),
                 "--out", str(tmp_path / "restored")])
    assert (tmp_path / "restored" / "metrics.json").is_file()
    monkeypatch.delitem(checkpoint.NETWORKS, "convnet")  # a checkpoint of a network this code lacks
    with pytest.raises(data.DataError, match="its network 'convnet' is not one this code has"):
        checkpoint.load(tmp_path / "run" / "last.pt")


def test_a_new_task_is_one_row(monkeypatch, tmp_path):
    quantise = lambda clean, rng: (clean * 4).round() / 4  # a stand-in for a JPEG generator in synthetic.py
    before = data.SyntheticPairs("derain", 2, 32, split="val")[1][0]
    monkeypatch.setitem(tasks.TASKS, "posterize", tasks.Task(quantise, quantise, lambda c, r: synthetic.fog(c, r),
                                                             lam=10, eps=0.005, val_seed=7))  # no released weights
    train.main(["--task", "posterize", *QUICK, "--out", str(tmp_path / "run")])
    lq, gt = data.SyntheticPairs("posterize", 2, 32, split="val")[0]
    assert torch.equal(lq, data.quantize((gt * 4).round() / 4))  # its degradation, stored in 8 bits
    assert torch.equal(data.SyntheticPairs("derain", 2, 32, split="val")[1][0], before)  # other sets unchanged
    sample.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--input", str(tmp_path / "run" / "unseen"),
                 "--out", str(tmp_path / "restored")])
    assert (tmp_path / "restored" / "metrics.json").is_file()


def test_a_task_row_that_breaks_a_rule_is_told_which(monkeypatch):
    """A val_seed another row has, or weights asked of a task the authors released none for."""
    quantise = lambda clean, rng: (clean * 4).round() / 4
    monkeypatch.setitem(tasks.TASKS, "posterize", tasks.Task(quantise, quantise, None, lam=10, eps=0.005, val_seed=1))
    with pytest.raises(data.DataError, match=r"val_seed 1 is also derain's: each task's fixed val and unseen sets "
                                             "need a seed of their own"):
        data.SyntheticPairs("posterize", 2, 32, split="val")
    with pytest.raises(data.DataError, match="the authors released no weights for posterize"):
        checkpoint.reference_model({}, "their.pth", "posterize", "cpu")


def test_every_task_seeds_its_validation_sets_with_a_number_of_its_own():
    seeds = [task.val_seed for task in tasks.TASKS.values()]
    assert len(set(seeds)) == len(seeds)


def sample_twice(model, sde, x, mu, ts, generator=None, callback=None, clip_x0=False):
    """Posterior sampling with x0 averaged over two evaluations per step: a sampler whose network
    evaluations are not its steps, as a second-order (Heun) sampler's are not."""
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = sum(irsde._predict(model, sde, x, mu, t, clip_x0)[1] for _ in range(2)) / 2
        if callback is not None:
            callback(dict(i=i, t=t, s=s, x=x, x0=x0))
        x = sde.posterior_step(x, mu, x0, t, s, generator)
    return x


def test_a_new_sampler_is_one_function_in_samplers(monkeypatch, tmp_path):
    monkeypatch.setitem(irsde.SAMPLERS, "twice", sample_twice)
    train.main(["--task", "derain", *QUICK, "--out", str(tmp_path / "run")])
    sample.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--input", str(tmp_path / "run" / "val"),
                 "--out", str(tmp_path / "restored"), "--sampler", "twice", "--trajectory"])
    assert (tmp_path / "restored" / "trajectory" / "000.png").is_file()
    net, sde, config = checkpoint.load(tmp_path / "run" / "last.pt")
    pairs = [data.SyntheticPairs("derain", 2, 32, split="val")[k] for k in range(2)]
    (_, steps, nfe, mean, _), = bench.sweep(net, sde, config, pairs, torch.device("cpu"), ["twice"], [2])
    assert (steps, nfe) == (2, 4) and np.isfinite(mean["psnr_y"])  # 2 steps, 4 network evaluations


def test_a_fork_that_breaks_a_contract_is_told_which(monkeypatch, tmp_path):
    """A network class without `cond`, and a sampler without the samplers' arguments, are refused
    with the rule they break, before any training or restoration."""

    class NoCond(nn.Module):
        def __init__(self, width=8):
            super().__init__()

    monkeypatch.setitem(checkpoint.NETWORKS, "nocond", NoCond)
    monkeypatch.setitem(checkpoint.NETS, "nocond", ("nocond", dict(width=8)))
    with pytest.raises(TypeError, match=r"built with its preset's keyword arguments plus cond \(bool"):
        train.main(["--task", "derain", *QUICK, "--net", "nocond", "--out", str(tmp_path / "run")])
    monkeypatch.setitem(irsde.SAMPLERS, "bare", lambda model, sde, x, mu, ts: x)
    with pytest.raises(TypeError, match=r"sampler 'bare': every entry of irsde.SAMPLERS takes \(model, sde, x, mu"):
        irsde.sample(None, irsde.IRSDE(), torch.zeros(1, 3, 4, 4), sampler="bare")
