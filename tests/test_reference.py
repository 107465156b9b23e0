"""The authors' released weights through sample.py (--task) and train.py (--init-from), using the
fixture of their network (tests/fixtures/README.md) saved as a plain state_dict, like their .pth."""
import json

import pytest
import torch

import checkpoint
import flags
import metrics
import restore
import sample
import train
from data import DataError, load_image, save_image
from test_unet import reference


def authors_pth(path, variant="derain", prefix="module."):
    """The fixture's state_dict saved as the authors' files are (keys may carry `module.`)."""
    _, state_dict = reference(variant)
    torch.save({prefix + k: v for k, v in state_dict.items()}, path)
    return state_dict


def test_sample_runs_the_authors_weights_with_any_step_count(tmp_path):
    authors_pth(tmp_path / "rain100h_sde.pth")
    g = torch.Generator().manual_seed(0)
    for name in ("a.png", "b.png"):
        save_image(torch.rand(3, 20, 28, generator=g), tmp_path / "in" / name)
    for steps in ("100", "5"):
        sample.main(["--checkpoint", str(tmp_path / "rain100h_sde.pth"), "--task", "derain", "--input",
                     str(tmp_path / "in"), "--output", str(tmp_path / f"out{steps}"), "--steps", steps])
        assert load_image(tmp_path / f"out{steps}" / "a.png").shape == (3, 20, 28)
    net, sde, config = checkpoint.load(tmp_path / "rain100h_sde.pth", task="derain")
    assert (sde.lam, sde.T, sde.eps, sde.schedule) == (10 / 255, 100, 0.005, "cosine")  # their test config
    assert config["sampling"] == {"sampler": "posterior", "steps": None, "clip_x0": False}
    lq = load_image(tmp_path / "in" / "a.png")[None]
    expected = restore.restore(net, sde, config, lq, steps=5, generator=torch.Generator().manual_seed(0))
    assert (metrics.to_uint8(load_image(tmp_path / "out5" / "a.png")) == metrics.to_uint8(expected[0])).all()
    _, sde, config = checkpoint.load(authors_pth(tmp_path / "dn.pth", "denoise") and tmp_path / "dn.pth",
                                            task="denoise")
    assert (sde.lam, sde.eps, config["sampling"]["sampler"]) == (75 / 255, 0.04, "ode")


def test_plain_state_dict_needs_task_and_must_fit(tmp_path):
    state_dict = authors_pth(tmp_path / "w.pth", prefix="")
    with pytest.raises(DataError, match="--task"):
        checkpoint.load(tmp_path / "w.pth")
    torch.save({k: v for k, v in state_dict.items() if k != "init_conv.weight"}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match=r"bad\.pth.*missing.*init_conv\.weight"):
        checkpoint.load(tmp_path / "bad.pth", task="derain")
    with pytest.raises(SystemExit, match="--task"):
        sample.main(["--checkpoint", str(tmp_path / "w.pth"), "--input", str(tmp_path), "--output",
                     str(tmp_path / "o")])


def test_init_from_the_authors_weights_and_from_a_checkpoint(tmp_path):
    authors_pth(tmp_path / "w.pth")
    net = checkpoint.load(tmp_path / "w.pth", task="derain")[0]
    fresh = type(net)(**{**net.config, "zero_out": True})
    checkpoint.init_from(fresh, tmp_path / "w.pth", "derain")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    tiny = checkpoint.build(flags.fill_defaults(flags.parse(["--task", "derain", "--preset", "tiny"])), "cpu")[0]
    with pytest.raises(DataError, match="--net"):
        checkpoint.init_from(tiny, tmp_path / "w.pth", "derain")
    # a train.py checkpoint: fine-tuning starts from its EMA weights
    fast = ["--task", "derain", "--preset", "tiny", "--crop", "32", "--batch", "2", "--val-images", "1",
            "--sample-steps", "2", "--T", "20", "--iters", "2"]
    train.main([*fast, "--out", str(tmp_path / "a")])
    train.main([*fast, "--iters", "1", "--lr", "1e-12", "--out", str(tmp_path / "b"), "--init-from",
                str(tmp_path / "a" / "last.pt")])
    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in "ab")
    assert all(torch.allclose(a["ema"][k], b["model"][k], atol=1e-6) for k in a["ema"])
    assert json.dumps(b["config"]["args"]["init_from"]).endswith('last.pt"')
