"""Tests of unet.py: the authors' network and weight names, shapes for any H x W, conditioning on
t and mu, gradient flow, rebuild from the config."""
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from unet import GroupNorm32, PRESETS, UNet, build_unet, from_reference_state_dict, reference_name

FIXTURES = Path(__file__).parent / "fixtures"

# two levels with attention at the top and softmax attention in the bottleneck, or three levels
# of two blocks without attention except linear attention in the bottleneck
NARROW = [dict(width=8, mults=(1, 2, 2), blocks=1, attn=(True, False), mid_attn="softmax"),
          dict(width=8, mults=(1, 1, 2, 2), blocks=2, attn=False, mid_attn="linear")]


def make_net(cond=True, config=0, seed=0):
    """Narrow UNet with a randomly initialised final conv, so outputs are not all 0."""
    torch.manual_seed(seed)
    return UNet(cond=cond, zero_out=False, **NARROW[config])


def inputs(h=16, w=16, b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g), torch.rand(b, 3, h, w, generator=g)


def reference(variant):
    """The fixture of the authors' network and the state_dict it ran with (fixtures/README.md)."""
    ref = torch.load(FIXTURES / f"ref_{variant}_nf8.pt", weights_only=True)
    g, state_dict = torch.Generator().manual_seed(ref["seed"]), {}
    for name, shape in ref["keys"]:
        w = torch.randn(shape, generator=g, dtype=torch.float32)
        state_dict[name] = w / math.sqrt(w.numel() / shape[0]) if len(shape) >= 2 else 0.1 * w
    return ref, state_dict


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("variant", ["derain", "denoise"])
def test_reproduces_the_authors_network(variant, prefix):
    ref, state_dict = reference(variant)
    net = from_reference_state_dict({prefix + k: v for k, v in state_dict.items()}, variant)
    assert net.config["cond"] == (variant == "derain") and net.config["width"] == 8
    assert net.config["mid_attn"] == ("linear" if variant == "derain" else "softmax")
    with torch.no_grad():
        out = net(ref["x"], ref["mu"], ref["t"])
    print(variant, "max abs error", (out - ref["out"]).abs().max().item())  # ~1.6e-6
    torch.testing.assert_close(out, ref["out"], rtol=1e-4, atol=1e-5)
    # every one of our weights has exactly one of the authors' names
    assert sorted(map(reference_name, net.state_dict())) == sorted(state_dict)


def test_reference_missing_unexpected_and_misshaped_keys():
    _, state_dict = reference("derain")
    bad = dict(state_dict)
    del bad["downs.1.2.fn.norm.g"]
    bad["downs.0.9.weight"] = torch.zeros(1)
    bad["ups.0.0.block1.proj.weight"] = torch.zeros(7, 7, 3, 3)
    with pytest.raises(ValueError, match="unet.py") as err:
        from_reference_state_dict(bad, "derain")
    message = str(err.value)
    assert "missing (1): downs.1.2.fn.norm.g" in message
    assert "unexpected (1): downs.0.9.weight" in message
    assert "mis-shaped (1): ups.0.0.block1.proj.weight (7, 7, 3, 3) (expected (128, 192, 3, 3))" \
        in message
    # the denoising network's weights are not the conditional one's
    with pytest.raises(ValueError, match="mid_attn.fn.fn.to_out.0.weight"):
        from_reference_state_dict(reference("denoise")[1], "derain")


@pytest.mark.parametrize("not_a_state_dict", [[("init_conv.weight", torch.zeros(1))],
                                              {"params": {"init_conv.weight": torch.zeros(1)}},
                                              None])
def test_reference_refuses_what_is_not_a_state_dict(not_a_state_dict):
    with pytest.raises(TypeError, match="unet.py: expected the authors' state_dict"):
        from_reference_state_dict(not_a_state_dict)
    with pytest.raises(ValueError, match="unet.py: variant"):
        from_reference_state_dict({}, "deblur")


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


@settings(max_examples=10, deadline=None, database=None)
@given(width=st.sampled_from([4, 6, 8]), mults=st.lists(st.integers(1, 3), min_size=2, max_size=4),
       blocks=st.integers(1, 3), attn=st.booleans(),
       mid_attn=st.sampled_from(["auto", "linear", "softmax", "none"]), cond=st.booleans())
def test_any_config_runs_and_rebuilds(width, mults, blocks, attn, mid_attn, cond):
    torch.manual_seed(0)
    net = UNet(width=width, mults=mults, blocks=blocks, attn=attn, mid_attn=mid_attn, cond=cond,
               zero_out=False)
    clone = UNet(**json.loads(json.dumps(net.config)))  # checkpoints may store it as JSON
    clone.load_state_dict(net.state_dict())
    x, mu = inputs(11, 6)
    assert torch.equal(clone(x, mu, 5), net(x, mu, 5))
    assert net(x, mu, 5).shape == x.shape


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
    # the numbers in unet.py's docstring; paper: the authors' ConditionalUNet(3, 3, 64, 4)
    assert counts == {"paper": 137_147_523, "small": 5_126_339, "tiny": 1_435_267, "micro": 371_267}
    assert counts["micro"] < counts["tiny"] <= 2_000_000 < counts["small"] < counts["paper"]


def test_paper_preset_variants():
    with torch.device("meta"):
        derain, denoise = build_unet("paper"), build_unet("paper", cond=False)
    # the denoising SDE's network: softmax attention in the bottleneck, no condition input
    assert derain.config["mid_attn"] == "linear" and denoise.config["mid_attn"] == "softmax"
    assert denoise.init_conv.weight.shape == (64, 3, 7, 7)
    assert sum(p.numel() for p in denoise.parameters()) == 137_137_091


def test_build_unet_overrides():
    net = build_unet("tiny", cond=False, in_ch=1, out_ch=1)
    assert net.config["cond"] is False and net.config["width"] == PRESETS["tiny"]["width"]
    assert net(torch.rand(1, 1, 13, 11)).shape == (1, 1, 13, 11)


@pytest.mark.parametrize("kwargs", [dict(mults=(1,)), dict(mults=(1, 0, 2)),
                                    dict(attn=(True,)), dict(mid_attn="full"), dict(blocks=0),
                                    dict(width=2), dict(width=7), dict(in_ch=0)])
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


def test_group_norm32_normalises_in_float32_under_bf16_autocast():
    """The tiny preset's GroupNorm (every one of them): float32 statistics of a bf16 input, the
    input's dtype out, and exactly nn.GroupNorm in float32."""
    torch.manual_seed(0)
    norm = GroupNorm32(16, 32, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = 3 + 2 * torch.randn(2, 32, 8, 8)
    reference = torch.nn.GroupNorm(16, 32, eps=1e-6)
    reference.load_state_dict(norm.state_dict())
    assert torch.equal(norm(x), reference(x))
    low = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(low)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, reference(low.float()).bfloat16())  # float32 statistics, rounded once at the end
    norms = [m for m in UNet(**PRESETS["tiny"]).modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(isinstance(m, GroupNorm32) for m in norms)
