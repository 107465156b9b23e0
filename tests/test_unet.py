"""Tests of unet.py: shapes for any H x W, conditioning on t and mu, gradient flow, rebuild."""
import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

from unet import PRESETS, UNet, build_unet

# two levels with linear attention and full bottleneck attention, or three levels without
NARROW = [dict(width=8, mults=(1, 2), blocks=1, attn=(True, False), bottleneck_attn="full"),
          dict(width=8, mults=(1, 1, 2), blocks=2, mid_mult=2, bottleneck_attn="linear")]


def make_net(cond=True, config=0, seed=0):
    """Narrow UNet whose zero-initialised final conv is perturbed, so outputs are not all 0."""
    torch.manual_seed(seed)
    net = UNet(cond=cond, **NARROW[config])
    torch.nn.init.normal_(net.final_conv.weight, std=0.1)
    return net


def inputs(h=16, w=16, b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g), torch.rand(b, 3, h, w, generator=g)


def test_zero_initial_output():
    x, mu = inputs()
    torch.manual_seed(0)
    assert torch.equal(UNet(**NARROW[0])(x, mu, torch.tensor([3, 7])), torch.zeros_like(x))


@pytest.mark.parametrize("cond", [True, False])
@pytest.mark.parametrize("config", [0, 1])
@pytest.mark.parametrize("size", [(37, 53), (5, 7), (1, 1), (16, 16)])
def test_output_shape_any_size(cond, config, size):
    x, mu = inputs(*size)
    out = make_net(cond, config)(x, mu, torch.tensor([1, 50]))
    assert out.shape == x.shape and torch.isfinite(out).all()


@settings(max_examples=15, deadline=None, database=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), b=st.integers(1, 3))
def test_output_shape_property(h, w, b):
    x, mu = inputs(h, w, b)
    assert make_net(config=1)(x, mu, torch.full((b,), 10)).shape == (b, 3, h, w)


def test_t_changes_output():
    net, (x, mu) = make_net(), inputs()
    out0 = net(x, mu, None)
    assert torch.equal(out0, net(x, mu, torch.zeros(2, dtype=torch.long)))
    assert torch.equal(out0, net(x, mu, 0))
    assert not torch.allclose(out0, net(x, mu, torch.tensor([5, 5])), atol=1e-6)
    # float steps are accepted as well
    assert torch.allclose(net(x, mu, torch.tensor([5.0, 5.0])), net(x, mu, torch.tensor([5, 5])))


def test_mu_conditioning():
    x, mu = inputs()
    mu2 = mu.flip(-1)
    t = torch.tensor([4, 9])
    cond_net = make_net(cond=True)
    assert not torch.allclose(cond_net(x, mu, t), cond_net(x, mu2, t), atol=1e-6)
    plain = make_net(cond=False)
    assert torch.equal(plain(x, mu, t), plain(x, mu2, t))
    assert torch.equal(plain(x, mu, t), plain(x, None, t))


@pytest.mark.parametrize("config", [0, 1])
def test_gradients_reach_every_parameter(config):
    net, (x, mu) = make_net(config=config), inputs(12, 10)
    net(x, mu, torch.tensor([2, 80])).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_rebuild_from_config_and_state_dict():
    net, (x, mu) = make_net(config=0), inputs(9, 14)
    config = json.loads(json.dumps(net.config))  # checkpoints may store it as JSON
    clone = UNet(**config)
    clone.load_state_dict(net.state_dict())
    t = torch.tensor([3, 60])
    assert clone.config == net.config
    assert torch.equal(clone(x, mu, t), net(x, mu, t))


def test_channels_last_and_bf16_autocast():
    net, (x, mu) = make_net(config=0), inputs(20, 12)
    t = torch.tensor([7, 30])
    ref = net(x, mu, t)
    cl = net.to(memory_format=torch.channels_last)
    out = cl(x.to(memory_format=torch.channels_last), mu.to(memory_format=torch.channels_last), t)
    assert torch.allclose(out, ref, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, mu, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.allclose(out.float(), ref, atol=0.1)


def test_preset_parameter_counts():
    counts = {}
    for name in PRESETS:
        with torch.device("meta"):  # no memory or init time for the 137 M paper net
            counts[name] = sum(p.numel() for p in build_unet(name).parameters())
    print(counts)
    # the numbers quoted at PRESETS in unet.py
    assert counts == {"paper": 137_187_395, "tiny": 1_419_011, "small": 5_110_147}
    assert counts["tiny"] <= 2_000_000 < counts["small"] < counts["paper"]


def test_build_unet_overrides():
    net = build_unet("tiny", cond=False, in_ch=1, out_ch=1)
    assert net.config["cond"] is False and net.config["width"] == PRESETS["tiny"]["width"]
    assert net(torch.rand(1, 1, 13, 11)).shape == (1, 1, 13, 11)


@pytest.mark.parametrize("kwargs", [dict(mults=()), dict(mults=(1, 2), attn=(True,)),
                                    dict(bottleneck_attn="softmax"), dict(blocks=0),
                                    dict(width=1)])
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError, match="unet.py"):
        UNet(**{**NARROW[0], **kwargs})


def test_bad_inputs_raise():
    net, (x, mu) = make_net(), inputs()
    with pytest.raises(ValueError, match="unet.py"):
        net(x)  # conditional model without mu
    with pytest.raises(ValueError, match="unet.py"):
        net(x, mu[..., :-1])
    with pytest.raises(ValueError, match="unet.py"):
        net(x, mu, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="unet.py"):
        net(x[:, :2], mu[:, :2])
    with pytest.raises(ValueError, match="unet.py"):
        build_unet("huge")
