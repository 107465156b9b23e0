"""Conditional U-Net eps_phi(x, mu, t) of IR-SDE (PAPER.md section 8).

The `paper` preset is the authors' ConditionalUNet(in_nc=3, out_nc=3, nf=64, depth=4) layer for
layer (github Algolzw/image-restoration-sde, codes/config/deraining/models/modules/
DenoisingUNet_arch.py and module_util.py; with cond=False, the denoising-sde variant of that file).
Our weight names are readable ones; `from_reference_state_dict` loads the authors' released
weights and `reference_name` maps a name of ours to theirs. Layout, with c_i = width * mults[i]
and depth = len(mults) - 1 levels:

    input  cat(x - mu, mu)  (cond=True)   or   x  (cond=False: the denoising SDE, CNN baseline),
           reflect-padded to a multiple of 2^depth and cropped back at the end
    time   sinusoidal embedding of t (width dims) -> Linear, GELU, Linear (4 * width dims)
    init   7x7 conv -> c_0
    down   level i: `blocks` ResBlocks at c_i, attention (optional), then a 4x4 stride-2 conv to
           c_{i+1} (the deepest level: a 3x3 conv at the same resolution); every block output
           is a skip connection, the last one taken after the attention
    mid    ResBlock, attention, ResBlock at c_depth
    up     level i: `blocks` ResBlocks at c_{i+1}, each on cat(x, skip), attention (optional),
           then nearest-neighbour x2 + 3x3 conv to c_i (the top level: a 3x3 conv)
    final  cat(x, init conv output) -> ResBlock -> 3x3 conv -> out_ch

As in the authors' code, only the down/upsampling convs, the attention output convs and the final
conv have a bias. Presets, with parameters for cond=True (tests/test_unet.py checks them) and use:
    paper  width 64, mults 1-2-4-8-16, 2 blocks, attention everywhere    137,147,523
    small  width 32, mults 1-2-2-4-4,  2 blocks, attention at levels 2-3   5,126,339  gpu recipe
    tiny   width 32, mults 1-2-2-2-2,  1 block,  attention in bottleneck   1,435,267  CPU runs
    micro  width 16, mults 1-2-2-2-2,  1 block,  attention in bottleneck     371,267  tiny recipe

tiny was sized for batches of 8 crops of 32 x 32; micro, at a quarter of tiny's FLOPs, restores
better after the tiny (CPU) recipe's steps. small, tiny and micro swap the authors'
ResBlock for the pre-activation GroupNorm block of DDPM/ADM (preact=True): without normalisation
the narrow networks did not restore within minutes (the small one's CNN baseline: 21.01 dB PSNR-Y
on `val` after 1000 steps without, 24.43 with; tiny: +1.9 dB PSNR-Y on the validation set after
1200 steps). One deliberate difference, in every preset: the final conv is zero-initialised
(zero_out=True), so an untrained network outputs 0, the mean of the noise it predicts, and the CNN
baseline's residual mu + net(mu) starts as the identity. It changes neither the architecture nor
the weight names.
"""
import functools
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

MID_ATTN = ("auto", "linear", "softmax", "none")

PRESETS = {
    "paper": dict(width=64, mults=(1, 2, 4, 8, 16), blocks=2, attn=True, mid_attn="auto"),
    "small": dict(width=32, mults=(1, 2, 2, 4, 4), blocks=2, attn=(False, False, True, True),
                  mid_attn="linear", preact=True),
    "tiny": dict(width=32, mults=(1, 2, 2, 2, 2), blocks=1, attn=False, mid_attn="linear", preact=True),
}
PRESETS["micro"] = dict(PRESETS["tiny"], width=16)


def pad_to_multiple(x, m):
    """Pad bottom/right so H and W are multiples of m: reflect, or replicate where pad >= size
    (e.g. 5 x 7 with m = 16), since reflect padding needs pad < size."""
    h, w = x.shape[-2:]
    ph, pw = -h % m, -w % m
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class SinusoidalEmbedding(nn.Module):
    """t (B,) -> (B, dim): sin and cos of t at dim/2 frequencies from 1 down to 1/10000."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        # the authors divide by half - 1, so the lowest frequency is exactly 1/10000
        freqs = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000) / (half - 1)))
        args = t.float()[:, None] * freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=1)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel, gain and no bias; float32 statistics (bf16
    autocast); eps as the authors': 1e-5 for float32 inputs, 1e-3 for half precision."""

    def __init__(self, dim):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x):
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        var, mean = torch.var_mean(x.float(), dim=1, unbiased=False, keepdim=True)
        return ((x - mean) * (var + eps).rsqrt() * self.g).to(x.dtype)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 under bf16 autocast, as ADM's GroupNorm32. CUDA's autocast
    does so by itself; the CPU's runs it in bf16, whose channels_last backward took 40% of a tiny
    preset training step (3x the float32 one)."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class ResBlock(nn.Module):
    """The authors' block, without normalisation: SiLU(conv2(SiLU(conv1(x) * (1 + scale) + shift)))
    + skip(x), skip a 1x1 conv if the width changes. preact=True: the pre-activation GroupNorm block
    of DDPM/ADM (conv biases included), skip(x) + conv2(SiLU(GN(conv1(SiLU(GN(x)))) * (1 + scale) +
    shift)). scale/shift = Linear(SiLU(t's embedding)): the step index tells the block how much
    noise is left in x (PAPER.md §8)."""

    def __init__(self, c_in, c_out, t_dim, preact=False):
        super().__init__()
        self.preact = preact
        self.time = nn.Linear(t_dim, 2 * c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=preact)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=preact)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=preact) if c_in != c_out else nn.Identity()
        if preact:  # up to 32 groups of >= 2 channels: statistics defined on a 1 x 1 bottleneck
            self.norm1, self.norm2 = (GroupNorm32(math.gcd(32, c // 2), c, eps=1e-6)
                                      for c in (c_in, c_out))

    def forward(self, x, emb):
        scale, shift = self.time(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        if self.preact:
            h = self.norm2(self.conv1(F.silu(self.norm1(x)))) * (1 + scale) + shift
            return self.skip(x) + self.conv2(F.silu(h))
        h = F.silu(self.conv1(x) * (1 + scale) + shift)
        return F.silu(self.conv2(h)) + self.skip(x)


class Attention(nn.Module):
    """x + out(attend(ChannelNorm(x))): self-attention over the pixels, 4 heads of 32 channels.
    linear=True: q softmax-normalised over its channels, k over the pixels: the context k v^T is
    32 x 32 per head, the cost linear in the pixels; out: 1x1 conv, ChannelNorm. linear=False:
    softmax(q^T k / sqrt(32)), quadratic (the denoising SDE's bottleneck); out: 1x1 conv."""

    def __init__(self, dim, linear=True, heads=4, dim_head=32):
        super().__init__()
        self.linear, self.heads, self.dim_head = linear, heads, dim_head
        self.norm = ChannelNorm(dim)
        self.qkv = nn.Conv2d(dim, 3 * heads * dim_head, 1, bias=False)
        out = nn.Conv2d(heads * dim_head, dim, 1)
        self.out = nn.Sequential(out, ChannelNorm(dim)) if linear else out

    def forward(self, x):
        b, _, h, w = x.shape
        qkv = self.qkv(self.norm(x)).chunk(3, dim=1)
        # reshape (not view): the chunks are strided, and x may be channels_last
        q, k, v = (z.reshape(b, self.heads, self.dim_head, h * w) for z in qkv)
        if self.linear:  # softmaxes in float32 under bf16 autocast (a no-op for float32)
            q = q.float().softmax(dim=-2) * self.dim_head ** -0.5
            k = k.float().softmax(dim=-1)
            context = k @ (v.float() / (h * w)).transpose(-1, -2)  # (d, d) per head
            z = context.transpose(-1, -2) @ q
        else:
            z = F.scaled_dot_product_attention(*(z.transpose(-1, -2) for z in (q, k, v)))
            z = z.transpose(-1, -2)
        return x + self.out(z.reshape(b, -1, h, w).to(x.dtype))


class DownLevel(nn.Module):
    """ResBlocks at c channels, attention, then `down` to c_next (stride 2 unless deepest)."""

    def __init__(self, c, c_next, blocks, attn, block, deepest):
        super().__init__()
        self.blocks = nn.ModuleList(block(c, c) for _ in range(blocks))
        self.attn = Attention(c) if attn else nn.Identity()
        self.down = (nn.Conv2d(c, c_next, 3, padding=1, bias=False) if deepest
                     else nn.Conv2d(c, c_next, 4, stride=2, padding=1))

    def forward(self, x, emb, skips):
        for block in self.blocks[:-1]:
            x = block(x, emb)
            skips.append(x)
        x = self.attn(self.blocks[-1](x, emb))
        skips.append(x)
        return self.down(x)


class UpLevel(nn.Module):
    """Mirror of DownLevel: ResBlocks on cat(x, skip) at c channels, attention, `up` to c_skip."""

    def __init__(self, c_skip, c, blocks, attn, block, top):
        super().__init__()
        self.blocks = nn.ModuleList(block(c + c_skip, c) for _ in range(blocks))
        self.attn = Attention(c) if attn else nn.Identity()
        if top:
            self.up = nn.Conv2d(c, c_skip, 3, padding=1, bias=False)
        else:  # nearest-neighbour x2 then a conv: no checkerboard artefacts
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                    nn.Conv2d(c, c_skip, 3, padding=1))

    def forward(self, x, emb, skips):
        for block in self.blocks:
            x = block(torch.cat([x, skips.pop()], dim=1), emb)
        return self.up(self.attn(x))


class UNet(nn.Module):
    """Noise network eps_phi(x, mu, t) of IR-SDE; the module docstring describes the layout and
    in_ch, out_ch, width, mults, blocks, cond, zero_out and preact. attn: linear attention at every
    level (a bool) or per level (one bool each); mid_attn: bottleneck attention, "linear",
    "softmax", "none" or "auto" (the authors' choice: linear if cond else softmax). The defaults
    are the paper network; `UNet(**net.config)` rebuilds the architecture."""

    def __init__(self, in_ch=3, out_ch=3, width=64, mults=(1, 2, 4, 8, 16), blocks=2, attn=True,
                 mid_attn="auto", cond=True, zero_out=True, preact=False):
        super().__init__()
        mults = [int(m) for m in mults]
        depth = len(mults) - 1
        attn = [bool(attn)] * depth if isinstance(attn, bool) else [bool(a) for a in attn]
        if mid_attn == "auto":
            mid_attn = "linear" if cond else "softmax"
        if len(mults) < 2 or min(mults) < 1:
            raise ValueError("unet.py: mults needs positive ints for at least one level and the "
                             f"bottleneck, got {mults}")
        if min(in_ch, out_ch, blocks) < 1:
            raise ValueError("unet.py: in_ch, out_ch and blocks must be >= 1")
        if width < 4 or width % 2:  # the time embedding has width/2 >= 2 frequencies
            raise ValueError(f"unet.py: width must be even and >= 4, got {width}")
        if len(attn) != depth:
            raise ValueError(f"unet.py: attn needs one flag per level ({depth}), got {attn}")
        if mid_attn not in MID_ATTN:
            raise ValueError(f"unet.py: mid_attn must be one of {MID_ATTN}, got {mid_attn!r}")
        self.config = dict(in_ch=in_ch, out_ch=out_ch, width=width, mults=mults, blocks=blocks,
                           attn=attn, mid_attn=mid_attn, cond=bool(cond), zero_out=bool(zero_out),
                           preact=bool(preact))
        self.in_ch, self.cond, self.depth = in_ch, bool(cond), depth
        chans = [width * m for m in mults]
        t_dim = 4 * width
        block = functools.partial(ResBlock, t_dim=t_dim, preact=preact)
        self.time_mlp = nn.Sequential(SinusoidalEmbedding(width), nn.Linear(width, t_dim),
                                      nn.GELU(), nn.Linear(t_dim, t_dim))
        self.init_conv = nn.Conv2d(in_ch * (2 if cond else 1), chans[0], 7, padding=3, bias=False)
        self.downs = nn.ModuleList(
            DownLevel(chans[i], chans[i + 1], blocks, attn[i], block, deepest=i == depth - 1)
            for i in range(depth))
        self.mid_block1 = block(chans[-1], chans[-1])
        self.mid_attn = (nn.Identity() if mid_attn == "none"
                         else Attention(chans[-1], linear=mid_attn == "linear"))
        self.mid_block2 = block(chans[-1], chans[-1])
        self.ups = nn.ModuleList(
            UpLevel(chans[i], chans[i + 1], blocks, attn[i], block, top=i == 0)
            for i in reversed(range(depth)))
        self.final_block = block(2 * chans[0], chans[0])
        self.final_conv = nn.Conv2d(chans[0], out_ch, 3, padding=1)
        if zero_out:  # gradients still reach the final conv: they depend on its input
            nn.init.zeros_(self.final_conv.weight)
            nn.init.zeros_(self.final_conv.bias)

    def forward(self, x, mu=None, t=None):
        """x (B, in_ch, H, W), mu like x (ignored if cond=False), t (B,) step index or None (0) ->
        the predicted noise (or residual), (B, out_ch, H, W), for any H x W."""
        h, w = x.shape[-2:]
        emb = self.time_mlp(self._steps(t, x))
        z = init = self.init_conv(pad_to_multiple(self._network_input(x, mu), 2 ** self.depth))
        skips = []
        for level in self.downs:
            z = level(z, emb, skips)
        z = self.mid_block2(self.mid_attn(self.mid_block1(z, emb)), emb)
        for level in self.ups:
            z = level(z, emb, skips)
        z = self.final_block(torch.cat([z, init], dim=1), emb)
        return self.final_conv(z)[..., :h, :w]

    def _network_input(self, x, mu):
        """cat(x - mu, mu) for the conditional model, x otherwise; validates shapes."""
        if x.ndim != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"unet.py: x must be (B, {self.in_ch}, H, W), got {tuple(x.shape)}")
        if not self.cond:
            return x
        if mu is None or mu.shape != x.shape:
            got = None if mu is None else tuple(mu.shape)
            raise ValueError(f"unet.py: cond=True needs mu of shape {tuple(x.shape)}, got {got}")
        return torch.cat([x - mu, mu], dim=1)

    @staticmethod
    def _steps(t, x):
        """Step indices as a (B,) tensor: None -> zeros, a scalar is broadcast to the batch."""
        b = x.shape[0]
        t = torch.as_tensor(0 if t is None else t, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t
        if t.shape != (b,):
            raise ValueError(f"unet.py: t must have shape ({b},), got {tuple(t.shape)}")
        return t


def build_unet(preset="tiny", **overrides):
    """UNet from PRESETS[preset], with keyword overrides (e.g. cond=False, in_ch=1)."""
    if preset not in PRESETS:
        raise ValueError(f"unet.py: unknown preset {preset!r}, choose from {sorted(PRESETS)}")
    return UNet(**{**PRESETS[preset], **overrides})


# Our weight names -> the authors': their ResBlock is mlp.1 (the Linear after SiLU), block1.proj,
# block2.proj, res_conv; a level is a ModuleList [block, block, attention, down/up]; attention is
# Residual(PreNorm(fn)): its norm is fn.norm, the attention fn.fn.to_*.
_TO_REFERENCE = [
    (r"^final_block\.", "final_res_block."),
    (r"\.time\.", ".mlp.1."), (r"\.conv1\.", ".block1.proj."), (r"\.conv2\.", ".block2.proj."),
    (r"\.skip\.", ".res_conv."),
    (r"attn\.norm\.", "attn.fn.norm."), (r"attn\.(qkv|out)\.", r"attn.fn.fn.to_\1."),
    (r"^(downs|ups)\.(\d+)\.blocks\.([01])\.", r"\1.\2.\3."),
    (r"^(downs|ups)\.(\d+)\.attn\.", r"\1.\2.2."),
    (r"^(downs|ups)\.(\d+)\.(down|up)\.", r"\1.\2.3."),
]


def reference_name(name):
    """The authors' name of one of our weights, for a network of their layout (2 blocks per level,
    attention everywhere): e.g. downs.0.attn.qkv.weight -> downs.0.2.fn.fn.to_qkv.weight.
    {reference_name(k): v for k, v in net.state_dict().items()} loads into their code."""
    for pattern, repl in _TO_REFERENCE:
        name = re.sub(pattern, repl, name)
    return name


def from_reference_state_dict(state_dict, variant="derain"):
    """A UNet holding the weights of the authors' ConditionalUNet (e.g. a released .pth): variant
    "derain", their conditional network (deraining, deblurring, SR, inpainting, ...), or "denoise",
    the denoising SDE's (input x only, softmax attention in the bottleneck). nf, depth and the image
    channels are read from the weight shapes; names may carry a `module.` prefix (DataParallel). A
    state_dict that does not fit raises a ValueError listing missing, unexpected and mis-shaped
    names."""
    if variant not in ("derain", "denoise"):
        raise ValueError(f"unet.py: variant must be 'derain' or 'denoise', got {variant!r}")
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state_dict.items()):
        what = f"a dict with keys {list(state_dict)[:3]}" if isinstance(state_dict, dict) else \
            type(state_dict).__name__
        raise TypeError("unet.py: expected the authors' state_dict (a dict of name -> tensor), "
                        f"got {what}; pass the state_dict itself, not a checkpoint holding it")
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    cond = variant == "derain"
    # infer the sizes; where a name is absent, fall back to the released nf = 64, depth = 4 and
    # let the comparison below report what is wrong
    init, final = state_dict.get("init_conv.weight"), state_dict.get("final_conv.weight")
    nf, in_ch = init.shape[:2] if init is not None and init.ndim == 4 else (64, 3 * (1 + cond))
    in_ch = max(1, in_ch // 2) if cond else in_ch  # the derain input is cat(x - mu, mu)
    out_ch = final.shape[0] if final is not None and final.ndim == 4 else 3
    levels = {int(m.group(1)) for m in map(re.compile(r"^downs\.(\d+)\.").match, state_dict) if m}
    depth = max(levels) + 1 if levels else 4
    net = UNet(in_ch, out_ch, nf, [2 ** i for i in range(depth + 1)], blocks=2, attn=True,
               cond=cond, zero_out=False)
    ours = {reference_name(k): (k, v.shape) for k, v in net.state_dict().items()}
    missing = [k for k in ours if k not in state_dict]
    unexpected = [k for k in state_dict if k not in ours]
    misshaped = [f"{k} {tuple(v.shape)} (expected {tuple(ours[k][1])})"
                 for k, v in state_dict.items() if k in ours and v.shape != ours[k][1]]
    if missing or unexpected or misshaped:
        problems = [f"{what} ({len(names)}): {', '.join(names[:4])}{', ...' * (len(names) > 4)}"
                    for what, names in [("missing", missing), ("unexpected", unexpected),
                                        ("mis-shaped", misshaped)] if names]
        raise ValueError(f"unet.py: not the authors' {variant} ConditionalUNet(in_nc={in_ch}, "
                         f"out_nc={out_ch}, nf={nf}, depth={depth}): " + "; ".join(problems))
    net.load_state_dict({ours[k][0]: v for k, v in state_dict.items()})
    return net
