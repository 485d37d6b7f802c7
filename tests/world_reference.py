"""An independent, naive reference of the Matrix-Game 2.0 causal rollout, used as ground truth in tests.

Written from the fact sheets (notes/mg2_model.md, notes/mg2_pipeline.md section 4, shared/family/matrix_game2.md and
shared/SPEC.md), not from the project's packages: nothing here imports ``wan``, ``pipeline``, ``methods`` or ``app``.
It follows the released code's structure on purpose:

- three frame-window caches per layer (self-attention in tokens, mouse and keyboard in frames), each a fixed-size
  buffer with ``global_end_index`` / ``local_end_index`` that is rolled in place (slots copied to the left on
  eviction) exactly as in the released arithmetic;
- keys are stored already rotated at their absolute latent frame (Wan 3-axis RoPE for self-attention, the action RoPE
  on the first ``mouse_qk_dim_list[0]`` dims for mouse and keyboard);
- every attention is one full-sequence softmax written out with einsum over the slots
  ``[max(0, local_end - span), local_end)``.

All tensors are float32 on the CPU; the Wan sinusoid, the Wan RoPE and the x0 conversion run in float64 as released.
Batch size is 1 throughout (the released keyboard cache requires it).

Public API: ``warp_steps``, ``reference_rollout``, ``random_state``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["warp_steps", "scheduler_tables", "reference_rollout", "random_state", "action_defaults"]

FRAMES_PER_BLOCK = 3  # num_frame_per_block of every released inference YAML


# ----------------------------------------------------------------------------------------------------------------
# configuration helpers


def action_defaults(config: dict) -> dict:
    """``action_config`` with the ActionModule defaults filled in for absent keys."""
    a = dict(config.get("action_config") or {})
    d = dict(mouse_dim_in=2, keyboard_dim_in=6, hidden_size=128, img_hidden_size=config["dim"],
             keyboard_hidden_dim=1024, mouse_hidden_dim=1024, vae_time_compression_ratio=4, windows_size=3,
             heads_num=16, patch_size=[1, 2, 2], qk_norm=True, qkv_bias=False, rope_dim_list=[8, 28, 28],
             mouse_qk_dim_list=[8, 28, 28], rope_theta=256, enable_mouse=True, enable_keyboard=True, blocks=[])
    d.update(a)
    return d


# ----------------------------------------------------------------------------------------------------------------
# scheduler


def scheduler_tables(shift: float = 5.0, num_train: int = 1000):
    """FlowMatch (sigma_min 0, extra_one_step): float32 ``(sigmas, timesteps)``, each [num_train]."""
    sig = torch.linspace(1.0, 0.0, num_train + 1, dtype=torch.float32)[:-1]
    sig = shift * sig / (1 + (shift - 1) * sig)
    return sig, sig * num_train


def warp_steps(steps, shift: float = 5.0, num_train: int = 1000) -> torch.Tensor:
    """The YAML step list warped onto the shifted schedule: ``cat(timesteps, [0])[num_train - s]`` (float32)."""
    _, ts = scheduler_tables(shift, num_train)
    ts = torch.cat([ts, torch.zeros(1, dtype=torch.float32)])
    return ts[num_train - torch.tensor(list(steps), dtype=torch.long)]


def _sigma_index(timesteps: torch.Tensor, t) -> int:
    t = torch.as_tensor(t, dtype=timesteps.dtype)
    return int(torch.argmin((timesteps - t).abs()))


# ----------------------------------------------------------------------------------------------------------------
# elementary ops


def _lin(sd, name, x):
    y = x @ sd[name + ".weight"].T
    b = sd.get(name + ".bias")
    return y if b is None else y + b


def _layer_norm(x, eps, weight=None, bias=None):
    xf = x.float()
    mu = xf.mean(-1, keepdim=True)
    var = ((xf - mu) ** 2).mean(-1, keepdim=True)
    y = (xf - mu) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight + bias
    return y.type_as(x)


def _wan_rms(x, weight, eps):
    """WanRMSNorm: float32 inside, cast back, then times the weight."""
    xf = x.float()
    return (xf * torch.rsqrt((xf * xf).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def _plain_rms(x, eps=1e-6):
    """The action module's RMS norm: weight never applied, computed in the tensor's own dtype."""
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _silu(x):
    return x * torch.sigmoid(x)


def _attention(q, k, v):
    """q [n, H, D], k/v [m, H, D] -> [n, H, D]; softmax(q k^T / sqrt(D)) v, non-causal."""
    s = torch.einsum("nhd,mhd->hnm", q, k) / math.sqrt(q.shape[-1])
    p = torch.softmax(s, dim=-1)
    return torch.einsum("hnm,mhd->nhd", p, v)


def _attention_rows(q, k, v):
    """Batched over rows: q [R, n, H, D], k/v [R, m, H, D] -> [R, n, H, D]."""
    s = torch.einsum("rnhd,rmhd->rhnm", q, k) / math.sqrt(q.shape[-1])
    p = torch.softmax(s, dim=-1)
    return torch.einsum("rhnm,rmhd->rnhd", p, v)


# ----------------------------------------------------------------------------------------------------------------
# RoPEs


def _wan_axis_freqs(axis_dim: int, positions) -> torch.Tensor:
    """complex128 [len(positions), axis_dim/2]: exp(i * pos / 10000^(2j/axis_dim))."""
    inv = 1.0 / torch.pow(torch.tensor(10000.0, dtype=torch.float64),
                          torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)
    pos = torch.as_tensor(positions, dtype=torch.float64)
    ang = pos[:, None] * inv[None, :]
    return torch.polar(torch.ones_like(ang), ang)


def wan_rope(x, frame_positions, gh, gw):
    """Wan 3-axis RoPE. x [n, H, D] float32, tokens frame-major then h then w; adjacent pairs, float64."""
    d = x.shape[-1]
    dh = 2 * (d // 6)
    dt = d - 2 * dh
    nf = len(frame_positions)
    ft = _wan_axis_freqs(dt, frame_positions)           # [nf, dt/2]
    fh = _wan_axis_freqs(dh, range(gh))                 # [gh, dh/2]
    fw = _wan_axis_freqs(dh, range(gw))                 # [gw, dh/2]
    f = torch.cat([ft[:, None, None, :].expand(nf, gh, gw, -1),
                   fh[None, :, None, :].expand(nf, gh, gw, -1),
                   fw[None, None, :, :].expand(nf, gh, gw, -1)], dim=-1).reshape(nf * gh * gw, 1, d // 2)
    xc = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(xc * f).reshape(x.shape).to(x.dtype)


def action_rope(x, positions, time_dim: int, theta: float):
    """The action RoPE: x [..., T, H, D]; only dims [0, time_dim) rotate, adjacent pairs, float32.

    cos/sin: pos * theta^(-2j/time_dim) for j < time_dim/2, each repeated twice; the remaining dims are the h/w axes
    at position 0 (cos 1, sin 0), i.e. untouched.
    """
    d = x.shape[-1]
    omega = 1.0 / (theta ** (torch.arange(0, time_dim, 2, dtype=torch.float32)[: time_dim // 2] / time_dim))
    pos = torch.as_tensor(positions, dtype=torch.float32)
    ang = pos[:, None] * omega[None, :]                                    # [T, time_dim/2] float32
    cos = torch.ones(len(positions), d, dtype=torch.float32)
    sin = torch.zeros(len(positions), d, dtype=torch.float32)
    cos[:, :time_dim] = torch.cos(ang).repeat_interleave(2, dim=-1)
    sin[:, :time_dim] = torch.sin(ang).repeat_interleave(2, dim=-1)
    cos = cos[:, None, :]                                                  # [T, 1, D], broadcast over heads
    sin = sin[:, None, :]
    xf = x.float()
    pairs = xf.reshape(*xf.shape[:-1], d // 2, 2)
    rot = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).reshape(xf.shape)  # (x0,x1) -> (-x1, x0)
    return (xf * cos + rot * sin).type_as(x)


# ----------------------------------------------------------------------------------------------------------------
# the released FIFO cache


class WindowCache:
    """k/v buffers of ``size`` slots along ``axis`` with the released global/local end-index arithmetic.

    ``labels`` tracks the absolute latent frame held in every slot (-1 = never written); it is rolled with the
    buffers and exists only for the record.
    """

    def __init__(self, k_shape, axis, sink, span):
        self.axis = axis
        self.size = k_shape[axis]
        self.sink = sink
        self.span = span
        self.k = torch.zeros(k_shape, dtype=torch.float32)
        self.v = torch.zeros(k_shape, dtype=torch.float32)
        self.labels = torch.full((self.size,), -1, dtype=torch.long)
        self.global_end_index = 0
        self.local_end_index = 0

    def _slots(self, t, start, length):
        return t.narrow(self.axis, start, length)

    def update(self, k_new, v_new, labels_new, current_start, current_end):
        """Write the new entries, return the attended (k, v) slice."""
        n = k_new.shape[self.axis]
        assert current_end - current_start == n
        g, l = self.global_end_index, self.local_end_index
        if current_end > g and n + l > self.size:
            evicted = n + l - self.size
            rolled = l - evicted - self.sink
            assert rolled >= 0, "the window is smaller than one chunk"
            for buf in (self.k, self.v):
                src = self._slots(buf, self.sink + evicted, rolled).clone()
                self._slots(buf, self.sink, rolled).copy_(src)
            src = self.labels[self.sink + evicted: self.sink + evicted + rolled].clone()
            self.labels[self.sink: self.sink + rolled] = src
            l_new = l + current_end - g - evicted
        else:
            l_new = l + current_end - g
        start = l_new - n
        assert 0 <= start and l_new <= self.size
        self._slots(self.k, start, n).copy_(k_new)
        self._slots(self.v, start, n).copy_(v_new)
        self.labels[start:l_new] = labels_new
        self.global_end_index = current_end
        self.local_end_index = l_new
        lo = max(0, l_new - self.span)
        return self._slots(self.k, lo, l_new - lo), self._slots(self.v, lo, l_new - lo)

    def attended(self):
        """(labels, k) of the slots the last call attended to, in slot order."""
        lo = max(0, self.local_end_index - self.span)
        n = self.local_end_index - lo
        return self.labels[lo:self.local_end_index].clone(), self._slots(self.k, lo, n).clone()


# ----------------------------------------------------------------------------------------------------------------
# network pieces


def _img_emb(sd, tokens):
    h = _layer_norm(tokens, 1e-5, sd["img_emb.proj.0.weight"], sd["img_emb.proj.0.bias"])
    h = _lin(sd, "img_emb.proj.1", h)
    h = _gelu_erf(h)
    h = _lin(sd, "img_emb.proj.3", h)
    return _layer_norm(h, 1e-5, sd["img_emb.proj.4.weight"], sd["img_emb.proj.4.bias"])


def _sinusoid(freq_dim, t):
    half = freq_dim // 2
    pos = t.to(torch.float64)
    ang = pos[:, None] * torch.pow(torch.tensor(10000.0, dtype=torch.float64),
                                   -torch.arange(half, dtype=torch.float64) / half)[None, :]
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)


def _self_attention(sd, p, cfg, x, f0, nf, gh, gw, cache):
    dim, nh = cfg["dim"], cfg["num_heads"]
    hd = dim // nh
    eps = cfg["eps"]
    S = gh * gw
    q = _wan_rms(_lin(sd, p + "q", x), sd[p + "norm_q.weight"], eps).reshape(-1, nh, hd)
    k = _wan_rms(_lin(sd, p + "k", x), sd[p + "norm_k.weight"], eps).reshape(-1, nh, hd)
    v = _lin(sd, p + "v", x).reshape(-1, nh, hd)
    frames = list(range(f0, f0 + nf))
    q = wan_rope(q, frames, gh, gw)
    k = wan_rope(k, frames, gh, gw)
    labels = torch.tensor(frames, dtype=torch.long).repeat_interleave(S)
    kk, vv = cache.update(k, v, labels, f0 * S, (f0 + nf) * S)
    out = _attention(q, kk, vv).reshape(-1, dim)
    return _lin(sd, p + "o", out)


def _cross_attention(sd, p, cfg, x, ctx):
    dim, nh = cfg["dim"], cfg["num_heads"]
    hd = dim // nh
    eps = cfg["eps"]
    q = _wan_rms(_lin(sd, p + "q", x), sd[p + "norm_q.weight"], eps).reshape(-1, nh, hd)
    k = _wan_rms(_lin(sd, p + "k", ctx), sd[p + "norm_k.weight"], eps).reshape(-1, nh, hd)
    v = _lin(sd, p + "v", ctx).reshape(-1, nh, hd)
    return _lin(sd, p + "o", _attention(q, k, v).reshape(-1, dim))


def _windows(cond, f0, nf, ratio, wsize):
    """The per-latent-frame action windows: [nf, ratio*wsize, c].

    Front-pad ``ratio*wsize`` copies of pixel frame 0, keep the tail from padded index ratio*f0, then latent frame
    f0+i takes [ratio*i, ratio*i + ratio*wsize) of it (original pixel frames ratio*(f-wsize) .. ratio*f-1, clamped).
    """
    pad = ratio * wsize
    padded = torch.cat([cond[:1].expand(pad, -1), cond], dim=0)
    tail = padded[ratio * f0:]
    return torch.stack([tail[ratio * i: ratio * i + pad] for i in range(nf)], dim=0)


def _action_module(sd, p, cfg, x, f0, nf, S, mouse, keyboard, mcache, kcache):
    """x [nf*S, dim] (frame-major); mouse [N, 2] or None; keyboard [N, K]. Returns the new hidden state."""
    a = action_defaults(cfg)
    ratio, wsize = a["vae_time_compression_ratio"], a["windows_size"]
    nh = a["heads_num"]
    time_dim = list(a["mouse_qk_dim_list"])[0]
    theta = float(a["rope_theta"])
    frames = list(range(f0, f0 + nf))
    n_hist = keyboard.shape[0] if keyboard is not None else mouse.shape[0]
    assert (n_hist - 1) % ratio == 0 and (n_hist - 1) // ratio + 1 == f0 + nf, "action history length"
    dim = x.shape[-1]
    hidden = x

    if a["enable_mouse"] and mouse is not None:
        cm = sd[p + "t_qkv.weight"].shape[0] // 3
        hdm = cm // nh
        rows = hidden.reshape(nf, S, dim).transpose(0, 1)                 # [S, nf, dim], row = spatial position
        win = _windows(mouse, f0, nf, ratio, wsize).reshape(nf, -1)        # [nf, 24], index t*2 + c
        win = win[None].expand(S, nf, win.shape[-1])
        h = torch.cat([rows, win], dim=-1)
        h = _lin(sd, p + "mouse_mlp.0", h)
        h = _gelu_tanh(h)
        h = _lin(sd, p + "mouse_mlp.2", h)
        h = _layer_norm(h, 1e-5, sd[p + "mouse_mlp.3.weight"], sd[p + "mouse_mlp.3.bias"])
        qkv = _lin(sd, p + "t_qkv", h).reshape(S, nf, 3, nh, hdm)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = _plain_rms(q)
        k = _plain_rms(k)
        q = action_rope(q, frames, time_dim, theta)
        k = action_rope(k, frames, time_dim, theta)
        kk, vv = mcache.update(k, v, torch.tensor(frames, dtype=torch.long), f0, f0 + nf)
        out = _attention_rows(q, kk, vv)                                    # [S, nf, nh, hdm]
        out = out.transpose(0, 1).reshape(nf * S, cm)
        hidden = hidden + _lin(sd, p + "proj_mouse", out)

    if a["enable_keyboard"] and keyboard is not None:
        ck = sd[p + "mouse_attn_q.weight"].shape[0]
        hdk = ck // nh
        win = _windows(keyboard, f0, nf, ratio, wsize)                     # [nf, 12, K]
        e = _lin(sd, p + "keyboard_embed.0", win)
        e = _silu(e)
        e = _lin(sd, p + "keyboard_embed.2", e)                             # [nf, 12, Hk]
        e = e.reshape(nf, -1)                                               # index t*Hk + c
        kv = _lin(sd, p + "keyboard_attn_kv", e).reshape(nf, 2, nh, hdk)
        k, v = kv[:, 0], kv[:, 1]                                           # [nf, nh, hdk]
        q = _lin(sd, p + "mouse_attn_q", hidden).reshape(nf, S, nh, hdk)
        q = _plain_rms(q)
        k = _plain_rms(k)
        q = q.transpose(0, 1)                                               # [S, nf, nh, hdk]
        q = action_rope(q, frames, time_dim, theta)
        k = action_rope(k, frames, time_dim, theta)
        kk, vv = kcache.update(k, v, torch.tensor(frames, dtype=torch.long), f0, f0 + nf)
        m = kk.shape[0]
        out = _attention_rows(q, kk[None].expand(S, m, nh, hdk), vv[None].expand(S, m, nh, hdk))
        out = out.transpose(0, 1).reshape(nf * S, ck)
        hidden = hidden + _lin(sd, p + "proj_keyboard", out)
    return hidden


def _dit_call(sd, cfg, x, cond, t, ctx, f0, mouse, keyboard, caches):
    """One DiT call on a chunk. x [1, 16, nf, h, w], cond [1, 20, nf, h, w], t float -> flow [1, 16, nf, h, w]."""
    dim = cfg["dim"]
    eps = cfg["eps"]
    a = action_defaults(cfg)
    action_blocks = set(a["blocks"])
    inp = torch.cat([x, cond], dim=1)
    pw = sd["patch_embedding.weight"]
    pt, ph, pw_ = pw.shape[2:]
    tok = torch.nn.functional.conv3d(inp, pw, sd["patch_embedding.bias"], stride=(pt, ph, pw_))
    _, _, nf, gh, gw = tok.shape
    S = gh * gw
    h = tok.flatten(2).transpose(1, 2)[0]                                   # [nf*S, dim], frame-major, h, w

    tt = torch.full((nf,), float(t), dtype=torch.float32)
    sin = _sinusoid(cfg["freq_dim"], tt).to(torch.float32)
    e = _lin(sd, "time_embedding.2", _silu(_lin(sd, "time_embedding.0", sin)))   # [nf, dim]
    e0 = _lin(sd, "time_projection.1", _silu(e)).reshape(nf, 6, dim)

    for i in range(cfg["num_layers"]):
        p = f"blocks.{i}."
        m = sd[p + "modulation"][0] + e0                                    # [nf, 6, dim]
        m = m[:, None]                                                      # [nf, 1, 6, dim]
        m0, m1, m2, m3, m4, m5 = (m[:, :, j] for j in range(6))            # each [nf, 1, dim]
        hv = h.reshape(nf, S, dim)
        y = _layer_norm(hv, eps) * (1 + m1) + m0
        y = _self_attention(sd, p + "self_attn.", cfg, y.reshape(nf * S, dim), f0, nf, gh, gw, caches["self"][i])
        hv = hv + y.reshape(nf, S, dim) * m2
        h = hv.reshape(nf * S, dim)
        y = _layer_norm(h, eps, sd[p + "norm3.weight"], sd[p + "norm3.bias"])
        h = h + _cross_attention(sd, p + "cross_attn.", cfg, y, ctx)
        if i in action_blocks:
            h = _action_module(sd, p + "action_model.", cfg, h, f0, nf, S, mouse, keyboard,
                               caches["mouse"][i], caches["keyboard"][i])
        hv = h.reshape(nf, S, dim)
        y = _layer_norm(hv, eps) * (1 + m4) + m3
        y = _lin(sd, p + "ffn.2", _gelu_tanh(_lin(sd, p + "ffn.0", y)))
        hv = hv + y * m5
        h = hv.reshape(nf * S, dim)

    hm = sd["head.modulation"][0][None] + e[:, None, :]                     # [nf, 2, dim]
    shift, scale = hm[:, 0:1], hm[:, 1:2]
    y = _layer_norm(h.reshape(nf, S, dim), eps) * (1 + scale) + shift
    y = _lin(sd, "head.head", y)                                            # [nf, S, prod(patch)*out]
    out_dim = cfg["out_dim"]
    y = y.reshape(nf, gh, gw, pt, ph, pw_, out_dim)
    y = torch.einsum("fhwpqrc->cfphqwr", y).reshape(out_dim, nf * pt, gh * ph, gw * pw_)
    return y[None]


def _new_caches(cfg, state, S, mouse_rows):
    L = int(cfg["local_attn_size"])
    assert L != -1, "the released pipeline refuses global attention"
    assert L >= FRAMES_PER_BLOCK
    sink = int(cfg.get("sink_size", 0) or 0)
    nh = cfg["num_heads"]
    hd = cfg["dim"] // nh
    a = action_defaults(cfg)
    caches = {"self": [], "mouse": {}, "keyboard": {}}
    for i in range(cfg["num_layers"]):
        caches["self"].append(WindowCache((L * S, nh, hd), 0, sink * S, L * S))
    for i in a["blocks"]:
        p = f"blocks.{i}.action_model."
        anh = a["heads_num"]
        if p + "t_qkv.weight" in state:
            hdm = state[p + "t_qkv.weight"].shape[0] // 3 // anh
            caches["mouse"][i] = WindowCache((mouse_rows, L, anh, hdm), 1, 0, L)
        else:
            caches["mouse"][i] = None
        hdk = state[p + "mouse_attn_q.weight"].shape[0] // anh
        caches["keyboard"][i] = WindowCache((L, anh, hdk), 0, 0, L)
    return caches


def _snapshot(caches, cfg, S):
    a = action_defaults(cfg)
    layers = {}
    for i in range(cfg["num_layers"]):
        labels, k = caches["self"][i].attended()
        assert labels.numel() % S == 0
        per_frame = labels.reshape(-1, S)
        assert bool((per_frame == per_frame[:, :1]).all()), "a frame's tokens are split across slots"
        entry = {"self_frames": per_frame[:, 0].tolist(), "self_k": k}
        if i in set(a["blocks"]):
            mc = caches["mouse"][i]
            if mc is not None and mc.local_end_index > 0:
                ml, mk = mc.attended()
                entry["mouse_frames"], entry["mouse_k"] = ml.tolist(), mk
            else:
                entry["mouse_frames"], entry["mouse_k"] = [], None
            kl, kk = caches["keyboard"][i].attended()
            entry["keyboard_frames"], entry["keyboard_k"] = kl.tolist(), kk
        layers[i] = entry
    return layers


# ----------------------------------------------------------------------------------------------------------------
# the rollout


@torch.no_grad()
def reference_rollout(state, config, image_tokens, cond_frames, keyboard, mouse, noise, renoise, steps,
                      context_noise=0.0, shift=5.0, record=None):
    """The Matrix-Game 2.0 causal rollout (batch 1, chunks of 3 latent frames). Returns latents [1, 16, T, h, w].

    state: generator state dict, released names without ``model.``; config: the released config.json dict;
    image_tokens [1, n_img, clip_dim]; cond_frames [1, 20, T, h, w] (mask 4 then latent 16); keyboard [1, N, K];
    mouse [1, N, 2] or None (N = 4(T-1)+1); noise [1, 16, T, h, w]; renoise(): the next standard normal
    [3, 16, h, w] (frame-major), called after every denoising step but the last; steps: the YAML step list.
    record: optional list; one dict per DiT call (see the module docs of the tests).
    """
    sd = {(k[len("model."):] if k.startswith("model.") else k): v.float() for k, v in state.items()}
    cfg = config
    a = action_defaults(cfg)
    B = FRAMES_PER_BLOCK
    assert noise.shape[0] == 1 and noise.shape[1] == cfg["out_dim"]
    T = noise.shape[2]
    assert T % B == 0
    ratio = a["vae_time_compression_ratio"]
    kb = keyboard[0].float() if keyboard is not None else None
    ms = mouse[0].float() if mouse is not None else None
    if kb is not None:
        assert kb.shape[0] == ratio * (T - 1) + 1
    ph, pw = sd["patch_embedding.weight"].shape[3:]
    S = (noise.shape[3] // ph) * (noise.shape[4] // pw)

    sigmas, timesteps = scheduler_tables(shift)
    warped = warp_steps(steps, shift)
    ctx = _img_emb(sd, image_tokens[0].float())          # the cross-attention cache: computed once per rollout
    caches = _new_caches(cfg, sd, S, S)
    out = torch.zeros_like(noise, dtype=torch.float32)

    for f0 in range(0, T, B):
        hist = 1 + ratio * (f0 + B - 1)
        kb_c = kb[:hist] if kb is not None else None
        ms_c = ms[:hist] if ms is not None else None
        cond = cond_frames[:, :, f0:f0 + B].float()
        x = noise[:, :, f0:f0 + B].float()
        x0 = None
        for j in range(len(warped)):
            t = warped[j]
            flow = _dit_call(sd, cfg, x, cond, t, ctx, f0, ms_c, kb_c, caches)
            if record is not None:
                record.append({"chunk_start": f0, "call": j, "layers": _snapshot(caches, cfg, S)})
            sig = sigmas[_sigma_index(timesteps, t)].to(torch.float64)
            x0 = (x.to(torch.float64) - sig * flow.to(torch.float64)).to(torch.float32)
            if j < len(warped) - 1:
                eps = renoise()
                eps = eps.float().permute(1, 0, 2, 3)[None]                 # [3,16,h,w] -> [1,16,3,h,w]
                s_next = sigmas[_sigma_index(timesteps, warped[j + 1])]
                x = (1 - s_next) * x0 + s_next * eps
        out[:, :, f0:f0 + B] = x0
        _dit_call(sd, cfg, x0, cond, torch.tensor(float(context_noise), dtype=torch.float32), ctx, f0,
                  ms_c, kb_c, caches)
        if record is not None:
            record.append({"chunk_start": f0, "call": len(warped), "layers": _snapshot(caches, cfg, S)})
    return out


# ----------------------------------------------------------------------------------------------------------------
# random weights


def random_state(config, clip_dim, seed=0):
    """Random float32 weights under every released key name (no ``model.`` prefix), sized from ``config``.

    Linear weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm weights 1 + N(0, 0.1^2), modulations N(0, 0.1^2),
    so every tensor (including the never-applied action RMS weights) is present and non-trivial.
    """
    g = torch.Generator().manual_seed(seed)
    cfg = config
    dim, ffn, fd = cfg["dim"], cfg["ffn_dim"], cfg["freq_dim"]
    in_dim, out_dim = cfg.get("in_dim", 36), cfg["out_dim"]
    patch = tuple(cfg.get("patch_size", (1, 2, 2)))
    a = action_defaults(cfg)
    sd = {}

    def lin(name, o, i, bias=True):
        sd[name + ".weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
        if bias:
            sd[name + ".bias"] = 0.1 * torch.randn(o, generator=g)

    def norm(name, n, bias=False):
        sd[name + ".weight"] = 1 + 0.1 * torch.randn(n, generator=g)
        if bias:
            sd[name + ".bias"] = 0.1 * torch.randn(n, generator=g)

    fan = in_dim * patch[0] * patch[1] * patch[2]
    sd["patch_embedding.weight"] = torch.randn(dim, in_dim, *patch, generator=g) / math.sqrt(fan)
    sd["patch_embedding.bias"] = 0.1 * torch.randn(dim, generator=g)
    lin("time_embedding.0", dim, fd)
    lin("time_embedding.2", dim, dim)
    lin("time_projection.1", 6 * dim, dim)
    norm("img_emb.proj.0", clip_dim, bias=True)
    lin("img_emb.proj.1", clip_dim, clip_dim)
    lin("img_emb.proj.3", dim, clip_dim)
    norm("img_emb.proj.4", dim, bias=True)
    qb = bool(a["qkv_bias"])
    ratio, wsize = a["vae_time_compression_ratio"], a["windows_size"]
    win = ratio * wsize
    for i in range(cfg["num_layers"]):
        p = f"blocks.{i}."
        sd[p + "modulation"] = 0.1 * torch.randn(1, 6, dim, generator=g)
        for n in "qkvo":
            lin(p + "self_attn." + n, dim, dim)
        norm(p + "self_attn.norm_q", dim)
        norm(p + "self_attn.norm_k", dim)
        norm(p + "norm3", dim, bias=True)
        for n in "qkvo":
            lin(p + "cross_attn." + n, dim, dim)
        norm(p + "cross_attn.norm_q", dim)
        norm(p + "cross_attn.norm_k", dim)
        lin(p + "ffn.0", ffn, dim)
        lin(p + "ffn.2", dim, ffn)
        if i in set(a["blocks"]):
            q = p + "action_model."
            hk, K = a["hidden_size"], a["keyboard_dim_in"]
            ck, cm = a["keyboard_hidden_dim"], a["mouse_hidden_dim"]
            anh = a["heads_num"]
            lin(q + "keyboard_embed.0", hk, K)
            lin(q + "keyboard_embed.2", hk, hk)
            if a["enable_mouse"]:
                lin(q + "mouse_mlp.0", cm, dim + a["mouse_dim_in"] * win)
                lin(q + "mouse_mlp.2", cm, cm)
                norm(q + "mouse_mlp.3", cm, bias=True)
                lin(q + "t_qkv", 3 * cm, cm, bias=qb)
                norm(q + "img_attn_q_norm", cm // anh)
                norm(q + "img_attn_k_norm", cm // anh)
                lin(q + "proj_mouse", dim, cm, bias=qb)
            norm(q + "key_attn_q_norm", ck // anh)
            norm(q + "key_attn_k_norm", ck // anh)
            lin(q + "mouse_attn_q", ck, dim, bias=qb)
            lin(q + "keyboard_attn_kv", 2 * ck, hk * win, bias=qb)
            lin(q + "proj_keyboard", dim, ck, bias=qb)
    lin("head.head", out_dim * patch[0] * patch[1] * patch[2], dim)
    sd["head.modulation"] = 0.1 * torch.randn(1, 2, dim, generator=g)
    return sd
