"""An independent, deliberately naive Wan DiT forward and Self Forcing rollout, for equivalence tests.

No cache object, no re-basing: every call assembles the key set explicitly from a per-layer list of past frames
(each with its own unrotated keys, values and an explicit absolute time position), applies full 3D RoPE with complex
numbers at absolute positions, and runs softmax attention written out by hand. The block math is re-derived from the
Wan2.1 description (SPEC section 2), not imported from the library.
"""
from __future__ import annotations

import math

import torch


def _ln(x, eps, weight=None, bias=None):
    xf = x.float()
    mu = xf.mean(-1, keepdim=True)
    var = ((xf - mu) ** 2).mean(-1, keepdim=True)
    y = (xf - mu) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight + bias
    return y.type_as(x)


def _rms(x, w, eps):
    xf = x.float()
    return (xf / torch.sqrt((xf ** 2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def _lin(x, sd, name):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _freqs(dim, pos):
    inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    return torch.polar(torch.ones(len(pos), len(inv), dtype=torch.float64),
                       torch.tensor(pos, dtype=torch.float64)[:, None] * inv[None])


def rope3d(x, t_pos, gh, gw):
    """x [B, n, H, D] with n = len(t_pos)*gh*gw tokens frame-major; t_pos: absolute time index per frame."""
    D = x.shape[-1]
    hw = 2 * (D // 6)
    td = D - 2 * hw
    ft = _freqs(td, t_pos)                      # [T, td/2]
    fh = _freqs(hw, list(range(gh)))
    fw = _freqs(hw, list(range(gw)))
    T = len(t_pos)
    f = torch.cat([ft[:, None, None].expand(T, gh, gw, -1), fh[None, :, None].expand(T, gh, gw, -1),
                   fw[None, None, :].expand(T, gh, gw, -1)], -1).reshape(T * gh * gw, 1, -1)
    xc = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * f).flatten(-2).to(x.dtype)


def _attn(q, k, v):
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)


def naive_forward(sd, cfg, x, t, text, context, start_frame):
    """One DiT call. x [B, T, C, H, W], t [B, T], text [B, Lt, text_dim].

    context: per layer a list of (k_unrotated [B, F, H, D], v [B, F, H, D], time_pos) frames to attend to besides the
    chunk. Returns (flow [B, T, C, H, W], per-layer list of the chunk's (k_unrotated [B, T*F, H, D], v)).
    """
    dim, nh = cfg["dim"], cfg["num_heads"]
    hd, eps = dim // nh, cfg["eps"]
    B, T, C, H, W = x.shape
    h = torch.nn.functional.conv3d(x.permute(0, 2, 1, 3, 4), sd["patch_embedding.weight"],
                                   sd["patch_embedding.bias"], stride=(1, 2, 2))
    gh, gw = h.shape[-2:]
    Fn = gh * gw
    h = h.flatten(2).transpose(1, 2)
    half = cfg["freq_dim"] // 2
    tt = t.flatten().to(torch.float64)
    ang = tt[:, None] * torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)[None]
    sin_emb = torch.cat([ang.cos(), ang.sin()], 1).float()
    e = _lin(torch.nn.functional.silu(_lin(sin_emb, sd, "time_embedding.0")), sd, "time_embedding.2")
    e6 = _lin(torch.nn.functional.silu(e), sd, "time_projection.1").view(B, T, 6, dim)
    ctx = _lin(_gelu_tanh(_lin(text, sd, "text_embedding.0")), sd, "text_embedding.2")
    own = []

    def per_frame(a, coef):  # a [B, T*F, dim], coef [B, T, dim]
        return (a.view(B, T, Fn, dim) * coef[:, :, None]).view(B, T * Fn, dim)

    for i in range(cfg["num_layers"]):
        p = f"blocks.{i}."
        mod = sd[p + "modulation"][:, None] + e6  # [B, T, 6, dim]
        sh1, sc1, g1, sh2, sc2, g2 = [mod[:, :, j] for j in range(6)]
        a = _ln(h, eps)
        a = per_frame(a, 1 + sc1) + sh1.repeat_interleave(Fn, 1)
        q = _rms(_lin(a, sd, p + "self_attn.q"), sd[p + "self_attn.norm_q.weight"], eps).view(B, -1, nh, hd)
        k = _rms(_lin(a, sd, p + "self_attn.k"), sd[p + "self_attn.norm_k.weight"], eps).view(B, -1, nh, hd)
        v = _lin(a, sd, p + "self_attn.v").view(B, -1, nh, hd)
        own.append((k, v))
        chunk_pos = list(range(start_frame, start_frame + T))
        keys = [rope3d(kc, [tp], gh, gw) for kc, _, tp in context[i]] + [rope3d(k, chunk_pos, gh, gw)]
        vals = [vc for _, vc, _ in context[i]] + [v]
        y = _attn(rope3d(q, chunk_pos, gh, gw), torch.cat(keys, 1), torch.cat(vals, 1))
        h = h + per_frame(_lin(y.flatten(2), sd, p + "self_attn.o"), g1)
        c = _ln(h, eps, sd[p + "norm3.weight"], sd[p + "norm3.bias"])
        cq = _rms(_lin(c, sd, p + "cross_attn.q"), sd[p + "cross_attn.norm_q.weight"], eps).view(B, -1, nh, hd)
        ck = _rms(_lin(ctx, sd, p + "cross_attn.k"), sd[p + "cross_attn.norm_k.weight"], eps).view(B, -1, nh, hd)
        cv = _lin(ctx, sd, p + "cross_attn.v").view(B, -1, nh, hd)
        h = h + _lin(_attn(cq, ck, cv).flatten(2), sd, p + "cross_attn.o")
        f = per_frame(_ln(h, eps), 1 + sc2) + sh2.repeat_interleave(Fn, 1)
        f = _lin(_gelu_tanh(_lin(f, sd, p + "ffn.0")), sd, p + "ffn.2")
        h = h + per_frame(f, g2)
    hm = sd["head.modulation"][:, None] + e.view(B, T, 1, dim)  # [B, T, 2, dim]
    o = per_frame(_ln(h, eps), 1 + hm[:, :, 1]) + hm[:, :, 0].repeat_interleave(Fn, 1)
    o = _lin(o, sd, "head.head")  # [B, T*F, C*4]
    o = o.view(B, T, gh, gw, 1, 2, 2, C).permute(0, 1, 7, 4, 2, 5, 3, 6).reshape(B, T, C, gh * 2, gw * 2)
    return o, own


def _sigma_table(shift=5.0):
    s = torch.linspace(1.0, 0.0, 1001)[:-1]
    s = shift * s / (1 + (shift - 1) * s)
    return s, s * 1000


def naive_rollout(sd, cfg, text, noise, renoise_gen, window, sink, chunk=3, steps=(1000, 750, 500, 250)):
    """Self Forcing rollout with explicit per-layer frame lists; window L frames (including the chunk), sink S."""
    sig, ts = _sigma_table()
    table = torch.cat([ts, torch.zeros(1)])
    warped = [table[1000 - s] for s in steps]

    def sigma(tv):
        return sig[torch.argmin((ts - tv).abs())]

    B, T = noise.shape[:2]
    history = [[] for _ in range(cfg["num_layers"])]  # per layer: list of (k, v, frame index)
    out = torch.zeros_like(noise)
    for f in range(0, T, chunk):
        ctx = []
        for layer in history:
            frames = layer
            if len(frames) + chunk > window:
                keep_tail = window - chunk - sink
                frames = frames[:sink] + frames[len(frames) - keep_tail:]
            ctx.append(frames)
        x = noise[:, f:f + chunk]
        for j, tv in enumerate(warped):
            tt = torch.full((B, chunk), float(tv))
            flow, _ = naive_forward(sd, cfg, x, tt, text, ctx, f)
            x0 = (x.double() - sigma(tv).double() * flow.double()).float()
            if j + 1 < len(warped):
                eps = torch.randn((B * chunk, *noise.shape[2:]), generator=renoise_gen)
                sn = sigma(warped[j + 1])
                x = ((1 - sn) * x0.flatten(0, 1) + sn * eps).view_as(x0)
        out[:, f:f + chunk] = x0
        _, own = naive_forward(sd, cfg, x0, torch.zeros(B, chunk), text, ctx, f)
        Fn = own[0][0].shape[1] // chunk
        for li, (k, v) in enumerate(own):
            for c in range(chunk):
                history[li].append((k[:, c * Fn:(c + 1) * Fn], v[:, c * Fn:(c + 1) * Fn], f + c))
    return out
