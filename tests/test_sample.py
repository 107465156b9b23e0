"""Tests of sample.py: checkpoint loading, tiled inference, seeds, the CLI end to end, bad inputs."""
import csv
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

import checkpoint
import irsde
import metrics
import restore
import sample
import tasks
from data import DataError, load_image, save_image, upsample
from unet import UNet

NET = dict(width=8, mults=(1, 2), blocks=1)
H, W = 24, 32  # test images: big enough for SSIM after the 4-pixel border crop


def make_net(cond=True, std=0.1):
    """Tiny UNet whose zero-initialised last layer is randomised, so its output is not 0."""
    torch.manual_seed(0)
    net = UNet(cond=cond, **NET)
    torch.nn.init.normal_(net.final_conv.weight, std=std)
    return net.eval()


def make_config(net, sde, task="derain", loss="ml", param="noise", sampling=None, scale=1):
    """A configuration in the layout of checkpoint.make_config."""
    sampling = {"sampler": tasks.TASKS[task].sampler, "steps": None, "clip_x0": False, **(sampling or {})}
    return {"task": task, "loss": loss, "param": param, "sde": None if sde is None else sde.config(),
            "net": {"name": "unet", **net.config}, "scale": scale, "sampling": sampling,
            "args": {"t_draw": "uniform"}}


def save_checkpoint(path, task="derain", loss="ml", sde=None, sampling=None, scale=1):
    """A checkpoint laid out as checkpoint.save writes it; returns (net, sde, config)."""
    cond = tasks.TASKS[task].conditional and loss != "cnn"
    net = make_net(cond)
    if sde is None and loss != "cnn":
        sde = irsde.IRSDE(10 / 255, T=20)
    config = make_config(net, sde, task, loss, sampling=sampling, scale=scale)
    torch.save({"model": net.state_dict(), "ema": net.state_dict(), "optimizer": {}, "scheduler": {},
                "step": 1, "config": config, "rng": checkpoint.rng_state(torch.Generator())},
               path)
    return net, sde, config


def write_images(folder, names, seed=0, size=(H, W)):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for name in names:
        save_image(torch.rand(3, *size, generator=g), folder / name)


def smooth_image(h, w):
    """(1,3,h,w) ramps: small natural column differences, so seams would stand out."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return (torch.stack([xx, yy, (xx + yy) / 2]) * 0.8 + 0.1)[None]


@pytest.fixture
def setup(tmp_path):
    """A derain checkpoint, input folder in/ with a.png, b.png and GT folder gt/ alike."""
    save_checkpoint(tmp_path / "ckpt.pt")
    write_images(tmp_path / "in", ["a.png", "b.png"], seed=1)
    write_images(tmp_path / "gt", ["a.png", "b.png"], seed=2)
    return tmp_path


def run_main(*argv):
    """sample.py's CLI on the CPU, where the tests' reference numbers are computed."""
    sample.main([str(a) for a in argv] + ["--device", "cpu"])


# ---- checkpoint loading ----------------------------------------------------------------------

def test_load_checkpoint_prefers_ema_and_rebuilds_sde(tmp_path):
    net, sde, config = save_checkpoint(tmp_path / "c.pt")
    ckpt = torch.load(tmp_path / "c.pt", weights_only=False)
    ckpt["model"] = {k: torch.zeros_like(v) for k, v in ckpt["model"].items()}  # raw weights differ
    torch.save(ckpt, tmp_path / "c.pt")
    loaded, loaded_sde, loaded_config = checkpoint.load(tmp_path / "c.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    assert loaded_sde.config() == sde.config() and loaded_config == config and not loaded.training


def test_checkpoint_of_the_earlier_layout_restores_the_same_bytes(tmp_path):
    """Checkpoints written before config["sampling"] existed kept sampler, steps and clip_x0 in
    config["args"] and named lambda max_sigma: they load, and restore to the same PNG bytes."""
    save_checkpoint(tmp_path / "new.pt")
    ckpt = torch.load(tmp_path / "new.pt", weights_only=False)
    ckpt["config"]["sampling"] = {"sampler": "ddim", "steps": 4, "clip_x0": True}
    torch.save(ckpt, tmp_path / "new.pt")
    old = {k: v for k, v in ckpt["config"].items() if k not in ("sampling", "scale")}
    old["sde"] = {("max_sigma" if k == "lam" else k): v for k, v in old["sde"].items()}
    old["net"] = {k: v for k, v in old["net"].items() if k != "name"}
    old["args"] = {"sampler": "ddim", "sample_steps": 4, "clip_x0": True, "max_sigma": 10.0}
    torch.save(dict(ckpt, config=old), tmp_path / "old.pt")
    write_images(tmp_path / "in", ["a.png"], seed=1)
    for name in ("new", "old"):
        run_main("--checkpoint", tmp_path / f"{name}.pt", "--input", tmp_path / "in", "--output", tmp_path / name)
    assert (tmp_path / "new" / "a.png").read_bytes() == (tmp_path / "old" / "a.png").read_bytes()
    _, sde, config = checkpoint.load(tmp_path / "old.pt")
    assert config["sampling"] == ckpt["config"]["sampling"] and sde.lam == pytest.approx(10 / 255)


def test_load_checkpoint_falls_back_to_model_weights(tmp_path):
    net, _, _ = save_checkpoint(tmp_path / "c.pt", loss="cnn")
    ckpt = torch.load(tmp_path / "c.pt", weights_only=False)
    del ckpt["ema"]
    torch.save(ckpt, tmp_path / "c.pt")
    loaded, sde, _ = checkpoint.load(tmp_path / "c.pt")
    assert sde is None
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))


# ---- tiled inference -------------------------------------------------------------------------

class LocalNet(torch.nn.Module):
    """A 1x1-conv network with the UNet interface: each output pixel sees only its input pixel."""

    def __init__(self, cond=True):
        super().__init__()
        torch.manual_seed(0)
        self.cond = cond
        self.conv = torch.nn.Conv2d(6 if cond else 3, 3, 1)

    def forward(self, x, mu=None, t=None):
        out = self.conv(torch.cat([x - mu, mu], 1) if self.cond else x)
        return out if t is None else out * (1 + t.float().view(-1, 1, 1, 1) / 20)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 200), tile=st.integers(1, 64), data=st.data())
def test_windows_cover_every_pixel_with_positive_weight(n, tile, data):
    overlap = data.draw(st.integers(0, tile // 2))
    total = torch.zeros(n, dtype=torch.float64)
    for start, weights in restore._windows(n, tile, overlap):
        assert 0 <= start and start + len(weights) <= n and len(weights) == min(tile, n)
        assert (weights > 0).all() and (weights <= 1).all()
        total[start:start + len(weights)] += weights
    assert (total > 0).all()


@pytest.mark.parametrize("cond", [True, False])
def test_tiled_local_network_equals_untiled(cond):
    net, g = LocalNet(cond), torch.Generator().manual_seed(0)
    x, mu = torch.rand(2, 3, 70, 90, generator=g), torch.rand(2, 3, 70, 90, generator=g)
    mu = mu if cond else None
    t = torch.tensor([3, 17])
    torch.testing.assert_close(restore.tiled(net, 32, 8)(x, mu, t), net(x, mu, t), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "posterior"])
def test_tiled_restore_equals_untiled_for_local_network(sampler):
    """Same network values and the same full-size noise draws: the same restored image."""
    net, sde = LocalNet(), irsde.IRSDE(10 / 255, T=20)
    config = make_config(make_net(), sde, param="x0")
    lq = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    run = lambda **kw: restore.restore(net, sde, config, lq, sampler, steps=5,
                                      generator=torch.Generator().manual_seed(4), **kw)
    torch.testing.assert_close(run(tile=32, overlap=8), run(), atol=1e-5, rtol=0)


def test_tiled_unet_has_no_seams():
    """The real UNet differs per tile (normalisation statistics, receptive field), but blending
    hides the tile borders: hard cuts (overlap 0) make them stand out, the blend does not."""
    net, sde = make_net(), irsde.IRSDE(10 / 255, T=20)
    config = make_config(net, sde, param="x0")
    mu = smooth_image(70, 90)

    def border_ratio(overlap):
        out = restore.restore(net, sde, config, mu, "ddim", steps=5, tile=32, overlap=overlap)
        d = (out[..., 1:] - out[..., :-1]).abs().mean(dim=(0, 1, 2))  # d[c-1]: columns c-1 | c
        borders = {s + k for s, w in restore._windows(90, 32, overlap) for k in (0, len(w))} - {0, 90}
        return max(d[c - 1] for c in borders) / d.median()

    assert border_ratio(overlap=0) > 2  # the measure sees seams
    assert border_ratio(overlap=8) < 1.5


# ---- restore() -------------------------------------------------------------------------------

def test_same_seed_same_output_different_seed_different():
    net, sde = make_net(std=0.01), irsde.IRSDE(10 / 255, T=20)
    config = make_config(net, sde)
    lq = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    run = lambda seed: restore.restore(net, sde, config, lq, "posterior", steps=6,
                                      generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_defaults_come_from_checkpoint_sampling_settings():
    net, sde = make_net(), irsde.IRSDE(10 / 255, T=20)
    lq = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    with_args = make_config(net, sde, sampling={"sampler": "ddim", "steps": 4, "clip_x0": True})
    seeded = lambda: torch.Generator().manual_seed(0)
    explicit = restore.restore(net, sde, make_config(net, sde), lq, "ddim", 4, seeded(), clip_x0=True)
    assert torch.equal(restore.restore(net, sde, with_args, lq, generator=seeded()), explicit)
    assert not torch.equal(restore.restore(net, sde, make_config(net, sde), lq, "ddim", 4, seeded()), explicit)


# ---- command line end to end -----------------------------------------------------------------

def test_end_to_end_folder_with_gt(setup, capsys):
    out = setup / "out"
    run_main("--checkpoint", setup / "ckpt.pt", "--input", setup / "in", "--gt", setup / "gt",
             "--output", out, "--compare", "--trajectory", "--seed", "3")
    printed = capsys.readouterr().out
    assert "[1/2] a 24x32" in printed and "[2/2] b 24x32" in printed
    assert printed.count(metrics.LPIPS_SKIPPED) <= 1
    # metrics.csv / .json hold exactly metrics.evaluate of the written files
    report = json.loads((out / "metrics.json").read_text())
    with open(out / "metrics.csv") as f:
        table = {row["image"]: row for row in csv.DictReader(f)}
    assert list(table) == ["a", "b", "mean"] and [r["image"] for r in report["images"]] == ["a", "b"]
    for name, row in zip("ab", report["images"]):
        expected = metrics.evaluate(load_image(out / f"{name}.png"), load_image(setup / "gt" / f"{name}.png"))
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, abs=1e-12)
            assert float(table[name][key]) == pytest.approx(value, abs=1e-6)
    for key in metrics.COLUMNS:
        mean = sum(r[key] for r in report["images"]) / 2
        assert report["mean"][key] == pytest.approx(mean) and float(table["mean"][key]) == pytest.approx(mean, abs=1e-6)
    # pictures: LQ | restored | GT, and 10 of the 20 states above their x0 predictions, then x_0 above the GT
    restored = load_image(out / "a.png")
    compare = load_image(out / "compare" / "a.png")
    assert compare.shape == (3, H, 3 * W + 2 * restore.GAP)
    assert torch.equal(compare[..., W + restore.GAP:2 * W + restore.GAP], restored)
    strip = load_image(out / "trajectory" / "a.png")[:, restore.LABEL_HEIGHT:]  # below the labels
    columns = restore.TRAJECTORY_STATES + 1
    assert strip.shape == (3, 2 * H + restore.GAP, columns * W + (columns - 1) * restore.GAP)
    assert torch.equal(strip[..., :H, -W:], restored)
    assert torch.equal(strip[..., H + restore.GAP:, -W:], load_image(setup / "gt" / "a.png"))
    last_x0 = strip[..., H + restore.GAP:, -2 * W - restore.GAP:-W - restore.GAP]
    assert torch.equal(last_x0, restored)  # the last posterior step returns the x0 predicted at its t


def test_same_command_same_files(setup):
    for out in ("out1", "out2"):
        run_main("--checkpoint", setup / "ckpt.pt", "--input", setup / "in" / "a.png",
                 "--output", setup / out, "--steps", "5")
    assert (setup / "out1" / "a.png").read_bytes() == (setup / "out2" / "a.png").read_bytes()


def test_cnn_checkpoint_on_paired_folder(tmp_path):
    """CNN baseline: restored = lq + net(lq); a GT/ + LQ/ folder brings its own GT."""
    net, _, _ = save_checkpoint(tmp_path / "cnn.pt", loss="cnn")
    write_images(tmp_path / "data" / "LQ", ["x.png", "y.png"], seed=1)
    write_images(tmp_path / "data" / "GT", ["x.png", "y.png"], seed=2)
    run_main("--checkpoint", tmp_path / "cnn.pt", "--input", tmp_path / "data", "--output", tmp_path / "out")
    lq = load_image(tmp_path / "data" / "LQ" / "x.png")[None]
    with torch.no_grad():
        expected = metrics.to_uint8((lq + net(lq))[0])
    assert (metrics.to_uint8(load_image(tmp_path / "out" / "x.png")) == expected).all()
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [r["image"] for r in report["images"]] == ["x", "y"] and report["sampler"] is None


def test_denoise_checkpoint_end_to_end(tmp_path):
    """Denoising ODE from t*(sigma = 5/255) with lambda = 30/255 (section 5)."""
    net, sde, config = save_checkpoint(tmp_path / "dn.pt", task="denoise",
                                       sde=irsde.IRSDE(30 / 255, T=20, eps=0.04))
    write_images(tmp_path / "in", ["n.png"], seed=1)
    write_images(tmp_path / "gt", ["n.png"], seed=2)
    run_main("--checkpoint", tmp_path / "dn.pt", "--input", tmp_path / "in", "--gt", tmp_path / "gt",
             "--output", tmp_path / "out", "--noise-sigma", "5", "--trajectory")
    lq = load_image(tmp_path / "in" / "n.png")[None]
    expected = restore.restore(net, sde, config, lq, "ode", noise_sigma=5 / 255)[0]
    assert (metrics.to_uint8(load_image(tmp_path / "out" / "n.png")) == metrics.to_uint8(expected)).all()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["sampler"] == "ode"
    assert (tmp_path / "out" / "trajectory" / "n.png").is_file()
    with pytest.raises(SystemExit, match="must be in .0, lambda"):  # sigma 40 > lambda 30: before any work
        run_main("--checkpoint", tmp_path / "dn.pt", "--input", tmp_path / "in", "--output", tmp_path / "o2",
                 "--noise-sigma", "40")
    assert not (tmp_path / "o2").exists()


def test_output_names_stay_unique():
    assert sample.output_names([Path("d/a.png"), Path("d/b.jpg")]) == ["a", "b"]
    gopro = [Path("g/s1/blur/0001.png"), Path("g/s2/blur/0001.png")]
    assert sample.output_names(gopro) == ["s1_blur_0001_png", "s2_blur_0001_png"]
    assert sample.output_names([Path("d/a.png"), Path("d/a.jpg")]) == ["a_png", "a_jpg"]


# ---- bad inputs ------------------------------------------------------------------------------

def corrupt_checkpoint(root):
    (root / "ckpt.pt").write_bytes(b"\x80\x02garbage" * 64)


def strip_config(root):
    ckpt = torch.load(root / "ckpt.pt", weights_only=False)
    torch.save({"model": ckpt["model"]}, root / "ckpt.pt")


def pickle_an_object(root):
    """Objects other than plain data and tensors would run code when unpickled."""
    ckpt = torch.load(root / "ckpt.pt", weights_only=False)
    ckpt["hook"] = Path("anything")
    torch.save(ckpt, root / "ckpt.pt")


def widen_network(root):
    ckpt = torch.load(root / "ckpt.pt", weights_only=False)
    ckpt["config"]["net"]["width"] = 16
    torch.save(ckpt, root / "ckpt.pt")


def undecodable_second_image(root):
    (root / "in" / "b.png").write_bytes(b"not a png")


def truncated_second_image(root):
    """Its header reads (the size checks pass); its pixels do not decode."""
    png = (root / "in" / "b.png").read_bytes()
    (root / "in" / "b.png").write_bytes(png[:len(png) // 2])


def tiny_gts(root):
    for name in "ab":
        save_image(torch.rand(3, 12, 16), root / "gt" / f"{name}.png")
        save_image(torch.rand(3, 12, 16), root / "in" / f"{name}.png")


def small_second_gt(root):
    write_images(root / "gt", ["b.png"], size=(H, W - 2))


def missing_gt(root):
    (root / "gt" / "b.png").unlink()


def empty_checkpoint(root):
    """An interrupted copy: torch.load raises an error without a message."""
    (root / "ckpt.pt").write_bytes(b"")


@pytest.mark.parametrize("damage, argv, message", [
    (None, ["--checkpoint", "{root}/nope.pt"], "nope.pt: checkpoint not found"),
    (None, ["--checkpoint", "{root}/in"], "in: is a folder, not a checkpoint file"),
    (empty_checkpoint, [], "ckpt.pt: checkpoint file is empty"),
    (corrupt_checkpoint, [], "ckpt.pt: not a readable torch checkpoint"),
    (strip_config, [], "ckpt.pt: checkpoint lacks 'config'"),
    (pickle_an_object, [], "ckpt.pt: not a readable torch checkpoint"),
    (widen_network, [], "ckpt.pt: checkpoint does not match"),
    (undecodable_second_image, [], "b.png: cannot decode image"),
    (truncated_second_image, [], "b.png: cannot decode image"),
    (tiny_gts, [], "gt/a.png: 16x12, too small for the metrics with --crop-border 4 (they need 19 pixels"),
    (small_second_gt, [], "in/b.png is 32x24 but {root}/gt/b.png is 30x24"),
    (missing_gt, [], "names must match; no GT for {root}/in/b.png"),
    (None, ["--output", "{root}/in"], "output folder holds input or GT images"),
    (None, ["--output", "{root}/ckpt.pt/sub"], "cannot write to the output folder"),
    (None, ["--noise-sigma", "25"], "--noise-sigma applies to tasks with a noise level only"),
])
def test_bad_input_is_a_clear_error(setup, damage, argv, message):
    if damage is not None:
        damage(setup)
    before = {p: p.read_bytes() for p in (setup / "in").iterdir()}
    args = {"--checkpoint": setup / "ckpt.pt", "--input": setup / "in", "--gt": setup / "gt",
            "--output": setup / "out", "--steps": "2"}
    args.update(zip(argv[::2], (a.format(root=setup) for a in argv[1::2])))
    with pytest.raises(SystemExit) as exit_info:
        run_main(*[x for kv in args.items() for x in kv])
    assert str(exit_info.value.code).startswith("error: ")
    assert message.format(root=setup) in str(exit_info.value.code)
    assert {p: p.read_bytes() for p in (setup / "in").iterdir()} == before  # inputs untouched
    if damage in (undecodable_second_image, small_second_gt, tiny_gts):  # found from the headers before any output
        assert not (setup / "out").exists()
    if damage is truncated_second_image:  # found while restoring: the images done before are kept, and their metrics
        assert (setup / "out" / "a.png").is_file() and not (setup / "out" / "b.png").exists()
        report = json.loads((setup / "out" / "metrics.json").read_text())
        assert [r["image"] for r in report["images"]] == ["a"] and report["complete"] is False


def test_error_exit_status_from_the_shell(tmp_path):
    result = subprocess.run([sys.executable, "sample.py", "--checkpoint", str(tmp_path / "none.pt"),
                             "--input", str(tmp_path), "--output", str(tmp_path / "out")],
                            cwd=Path(sample.__file__).parent, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert "error: " in result.stderr and "none.pt: checkpoint not found" in result.stderr


# ---- what a run guarantees ------------------------------------------------------------------------

def test_checkpoint_with_zero_sampling_steps_is_refused(tmp_path):
    """train.py once stored --sample-steps 0, which returned the LQ plus noise."""
    save_checkpoint(tmp_path / "c.pt", sampling={"steps": 0})
    write_images(tmp_path / "in", ["a.png"])
    argv = ["--checkpoint", tmp_path / "c.pt", "--input", tmp_path / "in", "--output", tmp_path / "out"]
    with pytest.raises(SystemExit, match="c.pt: stores 0 sampling steps.*pass --sample-steps N with 1 <= N <= 20"):
        run_main(*argv)
    run_main(*argv, "--steps", "2")
    assert (tmp_path / "out" / "a.png").is_file()


def test_sr_checkpoint_upsamples_inputs_by_its_scale(tmp_path):
    """A model trained on x4 pairs restores LQ images bicubically upsampled x4, as in training."""
    net, sde, config = save_checkpoint(tmp_path / "x4.pt", scale=4)
    write_images(tmp_path / "lq", ["a.png"], seed=1, size=(H // 4, W // 4))
    write_images(tmp_path / "gt", ["a.png"], seed=2, size=(H + 3, W + 3))  # cut to 4 x LQ, as in training
    argv = ["--checkpoint", tmp_path / "x4.pt", "--input", tmp_path / "lq", "--gt", tmp_path / "gt", "--steps", "2"]
    run_main(*argv, "--output", tmp_path / "out")
    lq = upsample(load_image(tmp_path / "lq" / "a.png"), (H, W))[None]
    expected = restore.restore(net, sde, config, lq, steps=2, generator=torch.Generator().manual_seed(0))[0]
    assert (metrics.to_uint8(load_image(tmp_path / "out" / "a.png")) == metrics.to_uint8(expected)).all()
    write_images(tmp_path / "gt", ["a.png"], size=(H, W + 4))
    with pytest.raises(SystemExit, match=r"is 8x6 but .*a.png is 36x24 \(expected GT size / 4 = 9x6\)"):
        run_main(*argv, "--output", tmp_path / "out2")


def test_gt_folder_pairs_by_name_not_by_sorted_order(tmp_path):
    save_checkpoint(tmp_path / "c.pt")
    write_images(tmp_path / "in", ["1.png", "2.png", "10.png"], seed=1)
    write_images(tmp_path / "gt", ["01.png", "02.png", "10.png"], seed=2)
    base = ["--checkpoint", tmp_path / "c.pt", "--gt", tmp_path / "gt", "--steps", "1"]
    with pytest.raises(SystemExit, match=r"no GT for .*in/1.png, .*in/2.png; no LQ for .*gt/01.png, .*gt/02.png"):
        run_main(*base, "--input", tmp_path / "in", "--output", tmp_path / "out")
    run_main(*base, "--input", tmp_path / "in" / "10.png", "--output", tmp_path / "out")  # a file takes its GT
    row, = json.loads((tmp_path / "out" / "metrics.json").read_text())["images"]
    scores = metrics.evaluate(load_image(tmp_path / "out" / "10.png"), load_image(tmp_path / "gt" / "10.png"))
    assert row["image"] == "10" and row["psnr"] == pytest.approx(scores["psnr"])


def test_ctrl_c_writes_metrics_of_finished_images_and_exits_130(setup, monkeypatch, capsys):
    real, calls = sample.restore_file, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(sample, "restore_file", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        run_main("--checkpoint", setup / "ckpt.pt", "--input", setup / "in", "--gt", setup / "gt",
                 "--output", setup / "out", "--steps", "2")
    assert exit_info.value.code == 130 and "Traceback" not in capsys.readouterr().err
    report = json.loads((setup / "out" / "metrics.json").read_text())
    assert [r["image"] for r in report["images"]] == ["a"] and report["complete"] is False


def test_outputs_never_land_among_inputs(setup):
    write_images(setup / "res" / "compare", ["a.png"], seed=3)  # the input folder is OUTPUT/compare
    before = (setup / "res" / "compare" / "a.png").read_bytes()
    for argv, message in [
        (["--input", "{root}/res/compare", "--output", "{root}/res", "--compare"],
         "{root}/res/compare: output folder holds input or GT images"),
        (["--input", "{root}/in", "--output", "{root}/in/sub"], "{root}/in/sub: output folder lies inside {root}/in"),
        (["--input", "{root}/in", "--gt", "{root}/gt", "--output", "{root}/gt"], "{root}/gt: output folder holds"),
    ]:
        with pytest.raises(SystemExit, match=re.escape(message.format(root=setup))):
            run_main("--checkpoint", setup / "ckpt.pt", "--steps", "1", *(a.format(root=setup) for a in argv))
    assert (setup / "res" / "compare" / "a.png").read_bytes() == before and not (setup / "in" / "sub").exists()


def test_colliding_output_names_are_refused():
    with pytest.raises(DataError, match="d/x/y.png and d/x_y.png would both be written as x_y_png.png"):
        sample.output_names([Path("d/x/y.png"), Path("d/x_y.png"), Path("d/y.png")])


def test_steps_beyond_the_available_indices_and_flags_a_cnn_ignores_are_refused(tmp_path, capsys):
    save_checkpoint(tmp_path / "ir.pt")
    save_checkpoint(tmp_path / "dn.pt", task="denoise", sde=irsde.IRSDE(30 / 255, T=20, eps=0.04),
                    sampling={"steps": 5})  # sigma 10/255: t* = 3
    save_checkpoint(tmp_path / "cnn.pt", loss="cnn")
    write_images(tmp_path / "in", ["n.png"], seed=1)
    write_images(tmp_path / "gt", ["n.png"], seed=2)
    go = lambda ckpt, *argv: run_main("--checkpoint", tmp_path / ckpt, "--input", tmp_path / "in",
                                      "--gt", tmp_path / "gt", "--output", tmp_path / "out", *argv)
    for ckpt, argv, message in [
        ("ir.pt", ["--steps", "21"], r"--sample-steps 21: must be between 1 and 20 \(T = 20\)"),
        ("dn.pt", ["--noise-sigma", "10", "--steps", "4"], r"between 1 and 3 \(t\* = 3 for --noise-sigma 10\)"),
        ("cnn.pt", ["--steps", "2"], "--sample-steps: .*cnn.pt is the CNN baseline"),
        ("cnn.pt", ["--sampler", "ddim"], "--sampler: "),
    ]:
        with pytest.raises(SystemExit, match=message):
            go(ckpt, *argv)
    go("dn.pt", "--noise-sigma", "10")  # the checkpoint's 5 steps: 3 run, and metrics.json says 3
    assert "note: the checkpoint's 5 sampling steps exceed the 3 indices" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"] == 3


def test_steps_off_a_sampler_trained_grid_are_run_with_a_note(tmp_path, capsys, t_draw="chain"):
    """--t-draw sampler and chain train only at the indices of the stored steps: other --steps still
    run (a user may want to look), but the output says the network never saw those indices."""
    _, _, config = save_checkpoint(tmp_path / "ckpt.pt", sampling={"steps": 1})
    config["args"] = {"t_draw": t_draw, "sample_steps": 1}
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    torch.save({**ckpt, "config": config}, tmp_path / "ckpt.pt")
    write_images(tmp_path / "in", ["n.png"], seed=1)
    go = lambda out, *argv: run_main("--checkpoint", tmp_path / "ckpt.pt", "--input", tmp_path / "in",
                                     "--output", tmp_path / out, *argv)
    go("same")
    go("same_steps", "--steps", "1")
    assert "never saw" not in capsys.readouterr().out
    go("more", "--steps", "3")
    assert f"trained only at the indices of its 1 sampling step(s) (--t-draw {t_draw}); --sample-steps 3" in capsys.readouterr().out
    assert (tmp_path / "more" / "n.png").exists()


def test_small_tiles_warn_and_unusable_tiles_are_refused(setup, capsys):
    base = ["--checkpoint", setup / "ckpt.pt", "--input", setup / "in" / "a.png", "--steps", "1"]
    run_main(*base, "--output", setup / "out", "--tile", "16", "--overlap", "4")
    assert f"warning: --tile 16 is below {sample.MIN_TILE}" in capsys.readouterr().err
    for tile, overlap in ((0, 0), (40, 32)):
        with pytest.raises(SystemExit, match=f"--tile {tile} --overlap {overlap}: need tile >= 1"):
            run_main(*base, "--output", setup / "out2", "--tile", tile, "--overlap", overlap)
    assert not (setup / "out2").exists()


@pytest.mark.parametrize("device, message", [("gpu", "--device gpu: expected cpu, cuda or cuda:N"),
                                             ("cuda", "--device cuda: CUDA is not available")])
def test_device_is_cpu_cuda_or_cuda_n_and_must_exist(setup, monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    with pytest.raises(SystemExit, match=message):  # not run_main: its --device cpu would win
        sample.main(["--checkpoint", str(setup / "ckpt.pt"), "--input", str(setup / "in"),
                     "--output", str(setup / "out"), "--device", device])


def test_full_disk_is_a_named_error_without_temporary_files(setup, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    target = setup / "out" / "a.png"
    with pytest.raises(SystemExit, match=re.escape(f"error: {target}: cannot write (No space left on device)")):
        run_main("--checkpoint", setup / "ckpt.pt", "--input", setup / "in", "--output", setup / "out", "--steps", "1")
    assert not [p for p in (setup / "out").iterdir() if p.name.endswith(".tmp")]


def test_flag_spellings_match_train_py_and_the_old_ones_still_work():
    """--out and --sample-steps as train.py spells them; --output and --steps are kept as aliases."""
    base = ["--checkpoint", "c.pt", "--input", "in"]
    for spelling in (["--out", "o", "--sample-steps", "3"], ["--output", "o", "--steps", "3"]):
        args = sample.parse_args(base + spelling)
        assert (args.out, args.sample_steps) == ("o", 3)
