"""Conditional U-Net eps_phi(x, mu, t) of IR-SDE (PAPER.md section 8).

Layout of the reference code's ConditionalUNet, generalised to any number of levels:

    input  cat(x - mu, mu)  (cond=True)   or   x  (cond=False: denoising model, CNN baseline)
    stem   7x7 conv -> c_0
    down   level i: `blocks` ResBlocks at c_i, optional attention, 4x4 stride-2 conv to c_{i+1}
           (the deepest level uses a 3x3 conv to the bottleneck width instead, so there are
           levels-1 downsamplings); every block output is kept as a skip connection
    mid    ResBlock, attention (linear or full softmax), ResBlock at the bottleneck width
    up     mirror of down: each block sees cat(x, skip); nearest-neighbour x2 + 3x3 conv
    out    cat(x, stem features) -> ResBlock -> 3x3 conv -> out_ch, zero-initialised
with c_i = width * mults[i] and bottleneck width * mid_mult (the reference doubles it: 1024).

Every ResBlock is modulated by scale/shift from an MLP of the sinusoidal embedding of the step
index t. Deliberate differences to the reference: pre-activation GroupNorm blocks (the reference
has no normalisation in its blocks), GroupNorm before attention instead of a channel LayerNorm,
biases in all convolutions, linear-attention head size min(32, channels/4) so that narrow presets
stay small, the bottleneck attention type is selectable, and the input is padded to a multiple of
2^(levels-1), the true downsampling factor (the reference pads to 2^levels).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

BOTTLENECK_ATTN = ("linear", "full", "none")

# Parameter counts (tests/test_unet.py::test_preset_parameter_counts checks them):
#   paper 137,187,395 (the reference reports 137 M)   small 5,110,147   tiny 1,419,011
PRESETS = {
    # reference widths 64-128-256-512, 1024-wide bottleneck, 2 blocks, attention everywhere
    "paper": dict(width=64, mults=(1, 2, 4, 8), blocks=2, attn=(True, True, True, True),
                  mid_mult=16, bottleneck_attn="full"),
    # CPU runs: ~0.18 s per forward+backward at batch 4, 64 x 64 on 2 threads
    "tiny": dict(width=32, mults=(1, 2, 2, 2), blocks=1, attn=(False, False, False, False),
                 mid_mult=2, bottleneck_attn="linear"),
    # in between: two blocks per level, linear attention at the two coarsest levels
    "small": dict(width=32, mults=(1, 2, 2, 4), blocks=2, attn=(False, False, True, True),
                  mid_mult=4, bottleneck_attn="linear"),
}


def _norm(ch):
    """GroupNorm with up to 32 groups of at least 2 channels (ch >= 2 since width >= 2).

    Two channels per group keep the statistics defined even when the bottleneck of a small padded
    input is 1 x 1 (one value per group is an error in training mode).
    """
    return nn.GroupNorm(math.gcd(32, ch // 2), ch, eps=1e-6)


def timestep_embedding(t, dim):
    """Sinusoidal embedding (B,) -> (B, 2 * (dim // 2)) of the step index, computed in float32."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32)
                      * (-math.log(10000.0) / half))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def pad_to_multiple(x, m):
    """Pad bottom/right so H and W are multiples of m.

    Reflect padding continues the image without an artificial edge; it requires pad < size, so
    images too small for it (e.g. 5 x 7 with m = 8 needs pad 3 < 5 and is fine, 2 x 2 is not) are
    replicate-padded instead.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % m, -w % m
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); out = skip(x) + conv(SiLU(GN(h) * (1 + scale) + shift)).

    scale and shift come from a linear map of SiLU(time embedding): the step index t tells the
    block how much noise is left in x (PAPER.md section 8, "modulated by scale/shift").
    """

    def __init__(self, c_in, c_out, t_dim):
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, 2 * c_out)
        self.norm2 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class Attention(nn.Module):
    """Residual multi-head self-attention over pixels: x + W_out attn(GN(x)).

    linear=True is the reference's linear attention: q is softmax-normalised over its channels
    and k over the pixels, so the context k v^T is (d x d) and the cost is linear in the number of
    pixels (usable at full resolution). linear=False is full softmax attention, quadratic in the
    number of pixels; the reference uses it in the bottleneck only.
    """

    def __init__(self, ch, linear=True, heads=4):
        super().__init__()
        self.linear, self.heads = linear, heads
        self.dim_head = min(32, max(1, ch // heads))
        hidden = heads * self.dim_head
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * hidden, 1, bias=False)
        self.out = nn.Conv2d(hidden, ch, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        qkv = self.qkv(self.norm(x)).chunk(3, dim=1)
        # reshape (not view): the chunks are strided, and x may be channels_last
        q, k, v = (z.reshape(b, self.heads, self.dim_head, h * w) for z in qkv)
        out = self._linear(q, k, v) if self.linear else self._full(q, k, v)
        return x + self.out(out.reshape(b, -1, h, w).to(x.dtype))

    def _linear(self, q, k, v):
        """(b, heads, d, n) -> (b, heads, d, n); softmaxes in float32 for bf16 autocast."""
        q = q.float().softmax(dim=-2) * self.dim_head ** -0.5
        k = k.float().softmax(dim=-1)
        v = v.float() / v.shape[-1]
        context = k @ v.transpose(-1, -2)
        return context.transpose(-1, -2) @ q

    def _full(self, q, k, v):
        """(b, heads, d, n) -> (b, heads, d, n) by softmax(q^T k / sqrt(d)) over pixels."""
        q, k, v = (z.transpose(-1, -2) for z in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v).transpose(-1, -2)


def _attention(ch, kind):
    """Attention module for a bool (linear attention or none) or a BOTTLENECK_ATTN name."""
    if kind is True or kind == "linear":
        return Attention(ch, linear=True)
    return Attention(ch, linear=False) if kind == "full" else nn.Identity()


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 conv (no checkerboard artefacts)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class DownLevel(nn.Module):
    """`blocks` ResBlocks at c channels (optional attention after the last), then move to c_next."""

    def __init__(self, c, c_next, blocks, attn, t_dim, deepest):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, c, t_dim) for _ in range(blocks))
        self.attn = _attention(c, attn)
        if deepest:
            self.move = nn.Conv2d(c, c_next, 3, padding=1)
        else:
            self.move = nn.Conv2d(c, c_next, 4, stride=2, padding=1)

    def forward(self, x, emb, skips):
        for block in self.blocks:
            x = block(x, emb)
            skips.append(x)
        skips[-1] = x = self.attn(x)
        return self.move(x)


class UpLevel(nn.Module):
    """Mirror of DownLevel: ResBlocks on cat(x, skip) at c channels, then move to c_skip."""

    def __init__(self, c_skip, c, blocks, attn, t_dim, top):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c + c_skip, c, t_dim) for _ in range(blocks))
        self.attn = _attention(c, attn)
        self.move = nn.Conv2d(c, c_skip, 3, padding=1) if top else Upsample(c, c_skip)

    def forward(self, x, emb, skips):
        for block in self.blocks:
            x = block(torch.cat([x, skips.pop()], dim=1), emb)
        return self.move(self.attn(x))


def _check_config(in_ch, out_ch, width, mults, blocks, attn, mid_mult, bottleneck_attn):
    """Raise ValueError naming the first invalid constructor argument."""
    if not mults or min(mults) < 1:
        raise ValueError(f"unet.py: mults must be a non-empty list of positive ints, got {mults}")
    if min(in_ch, out_ch, blocks, mid_mult) < 1 or width < 2:
        raise ValueError("unet.py: in_ch, out_ch, blocks, mid_mult must be >= 1 and width >= 2")
    if len(attn) != len(mults):
        raise ValueError(f"unet.py: attn needs one flag per level ({len(mults)}), got {attn}")
    if bottleneck_attn not in BOTTLENECK_ATTN:
        raise ValueError(f"unet.py: bottleneck_attn must be one of {BOTTLENECK_ATTN}, "
                         f"got {bottleneck_attn!r}")


class UNet(nn.Module):
    """Noise network eps_phi(x, mu, t) of IR-SDE; see the module docstring for the layout.

    in_ch/out_ch: image channels; width: channels of the first level; mults: per-level channel
    multipliers (levels = len(mults), the image is downsampled levels-1 times); blocks: ResBlocks
    per level; attn: per-level linear attention flags (default none); cond: feed cat(x - mu, mu)
    instead of x; mid_mult: bottleneck multiplier (default 2 * mults[-1] as in the reference);
    bottleneck_attn: "linear", "full" or "none". `UNet(**net.config)` rebuilds the architecture.
    """

    def __init__(self, in_ch=3, out_ch=3, width=64, mults=(1, 2, 4, 8), blocks=2, attn=None,
                 cond=True, mid_mult=None, bottleneck_attn="linear"):
        super().__init__()
        mults = [int(m) for m in mults]
        attn = [False] * len(mults) if attn is None else [bool(a) for a in attn]
        if mid_mult is None:
            mid_mult = 2 * mults[-1] if mults else 0
        _check_config(in_ch, out_ch, width, mults, blocks, attn, mid_mult, bottleneck_attn)
        self.config = dict(in_ch=in_ch, out_ch=out_ch, width=width, mults=mults, blocks=blocks,
                           attn=attn, cond=bool(cond), mid_mult=mid_mult,
                           bottleneck_attn=bottleneck_attn)
        self.in_ch, self.cond, self.levels = in_ch, bool(cond), len(mults)
        chans = [width * m for m in mults] + [width * mid_mult]
        self.fourier_dim, t_dim = width, 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(2 * (width // 2), t_dim), nn.GELU(),
                                      nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv2d(in_ch * (2 if cond else 1), chans[0], 7, padding=3)
        self.downs = nn.ModuleList(
            DownLevel(chans[i], chans[i + 1], blocks, attn[i], t_dim, deepest=i == self.levels - 1)
            for i in range(self.levels))
        self.mid1 = ResBlock(chans[-1], chans[-1], t_dim)
        self.mid_attn = _attention(chans[-1], bottleneck_attn)
        self.mid2 = ResBlock(chans[-1], chans[-1], t_dim)
        self.ups = nn.ModuleList(
            UpLevel(chans[i], chans[i + 1], blocks, attn[i], t_dim, top=i == 0)
            for i in reversed(range(self.levels)))
        self.final_block = ResBlock(2 * chans[0], chans[0], t_dim)
        self.final_conv = nn.Conv2d(chans[0], out_ch, 3, padding=1)
        # Zero output at initialisation: the noise head starts at the mean of its target (eps has
        # mean 0) and the CNN baseline's residual mu + net(mu) starts as the identity, so early
        # training is stable. Gradients still reach the final conv (they depend on its input).
        nn.init.zeros_(self.final_conv.weight)
        nn.init.zeros_(self.final_conv.bias)

    def forward(self, x, mu=None, t=None):
        """x (B, in_ch, H, W), mu like x (ignored if cond=False), t (B,) step index or None (0).

        Returns the predicted noise (or residual), shape (B, out_ch, H, W), for any H x W.
        """
        inp = self._network_input(x, mu)
        emb = timestep_embedding(self._steps(t, x), self.fourier_dim)
        emb = self.time_mlp(emb.to(self.time_mlp[0].weight.dtype))
        h, w = x.shape[-2:]
        z = stem = self.stem(pad_to_multiple(inp, 2 ** (self.levels - 1)))
        skips = []
        for level in self.downs:
            z = level(z, emb, skips)
        z = self.mid2(self.mid_attn(self.mid1(z, emb)), emb)
        for level in self.ups:
            z = level(z, emb, skips)
        z = self.final_block(torch.cat([z, stem], dim=1), emb)
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
        if t is None:
            return torch.zeros(b, device=x.device)
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"unet.py: t must have shape ({b},), got {tuple(t.shape)}")
        return t


def build_unet(preset="tiny", **overrides):
    """UNet from PRESETS[preset], with keyword overrides (e.g. cond=False, in_ch=1)."""
    if preset not in PRESETS:
        raise ValueError(f"unet.py: unknown preset {preset!r}, choose from {sorted(PRESETS)}")
    return UNet(**{**PRESETS[preset], **overrides})
