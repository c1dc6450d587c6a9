#!/usr/bin/env python3
"""Golden fixtures for scalewise's M-VAR port: a tiny M-VAR reference in PyTorch (float64).

Written from the specification ../shared/spec/MVAR.md (with MAMBA.md for Mamba-2 and VAR.md for
everything outside the blocks) only; no code was copied from the official M-VAR or mamba_ssm
repositories. The modules use the official state_dict key names, so the Rust loader reads these
checkpoints exactly as it reads the real ones. Mamba-2 is plain PyTorch: in_proj split into z, xBC,
dt; causal depthwise conv (width 4) + SiLU; dt = softplus(dt + dt_bias); A = -exp(A_log); the
selective recurrence as a loop over tokens; D skip; gated RMSNorm rmsnorm(y * silu(z)) * weight
(eps 1e-5); out_proj.

The VQVAE is the one of the VAR fixtures (tests/fixtures/var/tiny_vae.pth, made by
scripts/var_reference.py: codebook 64 x 8, 4 Phi convs, schedule 1..6); this script loads it from there.

What it writes into --out (default tests/fixtures/mvar):
    tiny_mvar_cos.pth    torch.save(state_dict) of a depth-2, width-64 M-VAR (1 head of 64, cosine
                         attention with scale_mul_1H11; Mamba-2 d_inner 128, 2 heads of 64, d_state 64,
                         ngroups 1; 10 classes + null, vocabulary 64, Cvae 8, patch_nums 1..6, L = 91).
    tiny_mvar_plain.pth  the same architecture without scale_mul_1H11: plain attention, softmax scale
                         0.25 / sqrt(64) = 1/32 (the d16 / d20 form).
                         Learned tensors are float16; buffers as in the official checkpoints: lvl_1L
                         int64, attn_bias_for_masking (block-diagonal) float16, attn.zero_k_bias float16,
                         attn.patch_nums int32.
    golden.safetensors   float32 reference values computed in float64 from the float16-rounded weights:
                         a standalone Mamba-2 layer (cos.blocks.0.mamba) on a random sequence, and per
                         variant (prefix "cos." / "plain."): teacher-forced logits of the CFG-doubled
                         batch for every scale, and a greedy (top_k 1) CFG generation's tokens.

Each variant's weights come from the first seed (11 or 12, then in steps of 100) for which the fixture
is well-conditioned: its logits evaluated in float32 stay within 2e-6 of their range from float64.

Self-checks (always run; `--check` runs them without writing anything): the per-scale inference that
re-runs Mamba-2 over the whole prefix from a zero state (the official code) equals the one that
carries the Mamba state (SSM state + last 3 conv inputs) from scale to scale, and equals the
full-sequence forward with the block-diagonal attention mask (max abs diff < 1e-9); the token loop of
Mamba-2 equals its quadratic (attention-like) SSD form; a scale's logits depend on the tokens of
earlier scales only; and every greedy token wins by a relative margin >= 1e-3, so a float32
implementation reproduces it.

Run (deterministic):
    pip install torch numpy
    python scripts/mvar_reference.py --out tests/fixtures/mvar
"""

import argparse
import copy
import json
import math
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import var_reference as vr  # noqa: E402  (the VQVAE, CFG labels and the safetensors writer)

# ----------------------------------------------------------------------------------------------------
# Tiny configuration (head dim 64, d_state 64, headdim 64, expand 2 as in every M-VAR)
# ----------------------------------------------------------------------------------------------------
DEPTH = 2
C = 64
HEAD_DIM = 64
HEADS = C // HEAD_DIM
NUM_CLASSES = vr.NUM_CLASSES
VOCAB = vr.VOCAB
CVAE = vr.CVAE
PATCH_NUMS = vr.PATCH_NUMS
SN = len(PATCH_NUMS)
L = vr.L
BEGIN_ENDS = vr.BEGIN_ENDS
LN_EPS = 1e-6
MAX_SCALE_MUL = math.log(100.0)
PLAIN_SCALE = 0.25 / math.sqrt(HEAD_DIM)

D_STATE = 64
D_CONV = 4
EXPAND = 2
D_INNER = EXPAND * C
M_HEADDIM = 64
M_HEADS = D_INNER // M_HEADDIM
NGROUPS = 1
CONV_CH = D_INNER + 2 * NGROUPS * D_STATE
IN_PROJ_ROWS = 2 * D_INNER + 2 * NGROUPS * D_STATE + M_HEADS
RMS_EPS = 1e-5

TF_LABELS = (3, 7)
GREEDY_CFG = 2.5
GREEDY_FIRST_LABELS = (1, 8)
MARGIN_REL = 1e-3
MAMBA_CHECK_LEN = 30
COND_REL = 2e-6
GAMMA_LIFT = 0.3


# ----------------------------------------------------------------------------------------------------
# Mamba-2 (MAMBA.md), official key names, plain PyTorch
# ----------------------------------------------------------------------------------------------------
class Mamba2(nn.Module):
    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(C, IN_PROJ_ROWS, bias=False)
        self.conv1d = nn.Conv1d(CONV_CH, CONV_CH, D_CONV, groups=CONV_CH, bias=True)
        self.dt_bias = nn.Parameter(torch.zeros(M_HEADS))
        self.A_log = nn.Parameter(torch.zeros(M_HEADS))
        self.D = nn.Parameter(torch.ones(M_HEADS))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(D_INNER))
        self.out_proj = nn.Linear(D_INNER, C, bias=False)

    def _split(self, u):
        zxbcdt = self.in_proj(u)
        z, xbc, dt = torch.split(zxbcdt, [D_INNER, CONV_CH, M_HEADS], dim=-1)
        return z, xbc, dt

    def _conv(self, xbc, conv_state):
        """Causal depthwise conv over (B, L, ch) with the previous D_CONV - 1 inputs, then SiLU."""
        b, n, _ = xbc.shape
        prev = conv_state if conv_state is not None else xbc.new_zeros(b, D_CONV - 1, CONV_CH)
        padded = torch.cat([prev, xbc], dim=1)  # (B, 3 + L, ch)
        w = self.conv1d.weight[:, 0, :]  # (ch, 4): tap k multiplies input t - 3 + k
        out = self.conv1d.bias.expand(b, n, CONV_CH).clone()
        for k in range(D_CONV):
            out = out + padded[:, k:k + n] * w[:, k]
        return F.silu(out), padded[:, -(D_CONV - 1):]

    def _gate_norm_out(self, y, z):
        g = y * F.silu(z)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + RMS_EPS) * self.norm.weight
        return self.out_proj(g)

    def forward(self, u, state=None):
        """u (B, L, C) -> (B, L, C) and the state after the last token. The token loop."""
        b, n, _ = u.shape
        z, xbc, dt = self._split(u)
        xbc, conv_state = self._conv(xbc, None if state is None else state[0])
        xs, bm, cm = torch.split(xbc, [D_INNER, D_STATE, D_STATE], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (B, L, H); no clamp
        a = -torch.exp(self.A_log)  # (H,)
        h = u.new_zeros(b, M_HEADS, M_HEADDIM, D_STATE) if state is None else state[1]
        xs = xs.view(b, n, M_HEADS, M_HEADDIM)
        ys = []
        for t in range(n):
            decay = torch.exp(dt[:, t] * a)  # (B, H)
            dbx = (dt[:, t, :, None] * xs[:, t])[..., None] * bm[:, t, None, None, :]  # (B, H, P, N)
            h = decay[:, :, None, None] * h + dbx
            y = torch.einsum("bhpn,bn->bhp", h, cm[:, t]) + self.D[:, None] * xs[:, t]
            ys.append(y.reshape(b, D_INNER))
        y = torch.stack(ys, dim=1)
        return self._gate_norm_out(y, z), (conv_state, h)

    def forward_quadratic(self, u):
        """The same layer from a zero state by SSD's matrix form: y = (C B^T masked by the decays) x."""
        b, n, _ = u.shape
        z, xbc, dt = self._split(u)
        xbc, _ = self._conv(xbc, None)
        xs, bm, cm = torch.split(xbc, [D_INNER, D_STATE, D_STATE], dim=-1)
        dt = F.softplus(dt + self.dt_bias)
        a = -torch.exp(self.A_log)
        seg = torch.cumsum(dt * a, dim=1)  # (B, L, H)
        decay = torch.exp(seg[:, :, None, :] - seg[:, None, :, :])  # [t, s]: exp(sum_{s < r <= t} dt_r A)
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
        decay = torch.where(causal[None, :, :, None], decay, torch.zeros_like(decay))
        cb = torch.einsum("btn,bsn->bts", cm, bm)
        xs = xs.view(b, n, M_HEADS, M_HEADDIM)
        y = torch.einsum("btsh,bts,bsh,bshp->bthp", decay, cb, dt, xs) + self.D[:, None] * xs
        return self._gate_norm_out(y.reshape(b, n, D_INNER), z)


# ----------------------------------------------------------------------------------------------------
# M-VAR block (MVAR.md), official key names
# ----------------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """VAR's attention module over one scale's tokens; cosine with the learned temperature or plain."""

    def __init__(self, cosine):
        super().__init__()
        self.cosine = cosine
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        if cosine:
            self.scale_mul_1H11 = nn.Parameter(torch.zeros(1, HEADS, 1, 1))
        self.register_buffer("patch_nums", torch.tensor(PATCH_NUMS, dtype=torch.int32))
        self.proj = nn.Linear(C, C)

    def forward(self, x, attn_bias=None):
        b, n, _ = x.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(b, n, 3, HEADS, HEAD_DIM)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, H, n, hd)
        if self.cosine:
            q = F.normalize(q, dim=-1, eps=1e-12) * self.scale_mul_1H11.clamp_max(MAX_SCALE_MUL).exp()
            k = F.normalize(k, dim=-1, eps=1e-12)
            scale = 1.0
        else:
            scale = PLAIN_SCALE
        att = (q @ k.transpose(-1, -2)) * scale
        if attn_bias is not None:
            att = att + attn_bias
        o = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, C)
        return self.proj(o)


class Block(nn.Module):
    def __init__(self, cosine):
        super().__init__()
        self.attn = SelfAttention(cosine)
        self.mamba = Mamba2()
        self.ffn = vr.FFN()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 9 * C))

    def ada(self, cond):
        # gamma1, gamma2, gamma3, scale1, scale2, scale3, shift1, shift2, shift3
        return self.ada_lin(cond).view(-1, 1, 9, C).unbind(2)

    @staticmethod
    def ln(x, scale, shift):
        return F.layer_norm(x, (C,), eps=LN_EPS) * (1 + scale) + shift

    def forward_scale(self, x, cond, mode, memory):
        """One scale's tokens. mode 'recompute': memory is the list of earlier post-attention x and
        Mamba-2 reruns over all of them from a zero state (the official inference); mode 'carry':
        memory holds the Mamba state after the previous scale."""
        g1, g2, g3, s1, s2, s3, h1, h2, h3 = self.ada(cond)
        x = x + self.attn(self.ln(x, s1, h1)) * g1
        n = x.shape[1]
        if mode == "recompute":
            memory["seq"].append(x)
            m, _ = self.mamba(self.ln(torch.cat(memory["seq"], dim=1), s2, h2))
            m = m[:, -n:]
        else:
            m, memory["state"] = self.mamba(self.ln(x, s2, h2), memory.get("state"))
        x = x + m * g2
        return x + self.ffn(self.ln(x, s3, h3)) * g3

    def forward_full(self, x, cond, attn_bias):
        """The whole sequence at once (training form): block-diagonal attention, Mamba-2 over all."""
        g1, g2, g3, s1, s2, s3, h1, h2, h3 = self.ada(cond)
        x = x + self.attn(self.ln(x, s1, h1), attn_bias) * g1
        m, _ = self.mamba(self.ln(x, s2, h2))
        x = x + m * g2
        return x + self.ffn(self.ln(x, s3, h3)) * g3


class TinyMVAR(nn.Module):
    def __init__(self, cosine):
        super().__init__()
        self.word_embed = nn.Linear(CVAE, C)
        self.class_emb = nn.Embedding(NUM_CLASSES + 1, C)
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, L, C))
        self.lvl_embed = nn.Embedding(SN, C)
        self.blocks = nn.ModuleList([Block(cosine) for _ in range(DEPTH)])
        lvl = torch.cat([torch.full((pn * pn,), i, dtype=torch.int64) for i, pn in enumerate(PATCH_NUMS)])
        self.register_buffer("lvl_1L", lvl.view(1, L))
        same_scale = lvl.view(1, L) == lvl.view(L, 1)  # block-diagonal: attention inside a scale only
        self.register_buffer("attn_bias_for_masking", torch.where(same_scale, 0.0, -math.inf).view(1, 1, L, L))
        self.head_nm = vr.AdaLNBeforeHead()
        self.head = nn.Linear(C, VOCAB)

    def lvl_pos(self):
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def sos(self, cond):
        return cond.unsqueeze(1) + self.pos_start + self.lvl_pos()[:, :1]

    def next_tokens(self, nxt_BlCv, si):
        b, e = BEGIN_ENDS[si]
        x = self.word_embed(nxt_BlCv) + self.lvl_pos()[:, b:e]
        return torch.cat([x, x], dim=0)

    def logits(self, x, cond):
        return self.head(self.head_nm(x, cond))

    def new_memories(self):
        return [{"seq": []} for _ in range(DEPTH)]

    def step(self, x, cond, mode, memories):
        for blk, memory in zip(self.blocks, memories):
            x = blk.forward_scale(x, cond, mode, memory)
        return self.logits(x, cond)

    def forward_full(self, x, cond):
        for blk in self.blocks:
            x = blk.forward_full(x, cond, self.attn_bias_for_masking)
        return self.logits(x, cond)


# The module-level constants of var_reference's FFN / AdaLNBeforeHead are its own C = 64: the same.
assert vr.C == C


# ----------------------------------------------------------------------------------------------------
# Initialisation (deterministic, spread-out values; not the official init), float16 rounding
# ----------------------------------------------------------------------------------------------------
def inv_softplus(y):
    return y + torch.log(-torch.expm1(-y))


@torch.no_grad()
def init_mvar(model, seed):
    g = torch.Generator().manual_seed(seed)
    rand = vr._randn
    for name, p in model.named_parameters():
        if name in ("class_emb.weight", "pos_start", "pos_1LC", "lvl_embed.weight"):
            p.copy_(rand(g, p.shape, 0.5))
        elif name.endswith("ada_lin.1.weight"):
            p.copy_(rand(g, p.shape, 0.3 / math.sqrt(C)))
        elif name.endswith("ada_lin.1.bias"):
            b = rand(g, p.shape, 0.1).view(-1, C)
            if b.shape[0] == 9:
                b[:3] += GAMMA_LIFT  # the gammas: every branch (attention, Mamba, FFN) weighs in the logits
            p.copy_(b.view(-1))
        elif name == "head.weight":
            p.copy_(rand(g, p.shape, 3.0 / math.sqrt(C)))
        elif name.endswith("scale_mul_1H11"):
            p.copy_(torch.log(torch.tensor(4.0)) + rand(g, p.shape, 0.5))
        elif name.endswith("mamba.conv1d.weight"):
            p.copy_(rand(g, p.shape, 0.5))
        elif name.endswith("mamba.dt_bias"):
            # dt between 0.05 and 0.8: states decay noticeably over the 91 tokens but do not vanish
            dt = torch.exp(torch.rand(p.shape, generator=g) * math.log(0.8 / 0.05)) * 0.05
            p.copy_(inv_softplus(dt))
        elif name.endswith("mamba.A_log"):
            p.copy_(torch.log(1.0 + 3.0 * torch.rand(p.shape, generator=g)))
        elif name.endswith("mamba.D"):
            p.copy_(1.0 + rand(g, p.shape, 0.3))
        elif name.endswith("mamba.norm.weight"):
            p.copy_(1.0 + rand(g, p.shape, 0.2))
        elif name.endswith("weight"):
            p.copy_(rand(g, p.shape, 1.0 / math.sqrt(vr._fan_in(p))))
        else:  # biases, q_bias, v_bias
            p.copy_(rand(g, p.shape, 0.1))
    vr.round_to_f16_(model)


def saved_state_dict(model):
    """state_dict as saved: floating tensors as float16 (exact: the values were rounded), integer
    buffers (lvl_1L int64, attn.patch_nums int32) as they are."""
    sd = model.state_dict()
    for k in list(sd.keys()):
        v = sd[k].detach().clone().contiguous()
        if v.is_floating_point():
            h = v.half()
            assert torch.equal(h.float(), v.float()), k
            v = h
        sd[k] = v
    return sd


# ----------------------------------------------------------------------------------------------------
# Teacher forcing and greedy generation
# ----------------------------------------------------------------------------------------------------
def maxdiff(a, b):
    return (a - b).abs().max().item()


@torch.no_grad()
def teacher_forcing(model, vae, labels, tokens, modes=("recompute", "carry")):
    """Logits per scale by the given per-scale forms, then by the full-sequence form."""
    b = len(labels)
    cond = model.class_emb(vr.cfg_labels(labels))
    f_hat = torch.zeros(b, CVAE, vr.LATENT, vr.LATENT, dtype=model.pos_1LC.dtype)
    xs = [model.sos(cond)]
    for si, pn in enumerate(PATCH_NUMS):
        f_hat, nxt = vae.accumulate(f_hat, vae.embed(tokens[si], pn), si)
        if nxt is not None:
            xs.append(model.next_tokens(nxt, si + 1))
    by_mode = []
    for mode in modes:
        memories = model.new_memories()
        by_mode.append([model.step(x, cond, mode, memories) for x in xs])
    full_all = model.forward_full(torch.cat(xs, dim=1), cond)
    return (*by_mode, [full_all[:, bb:ee] for (bb, ee) in BEGIN_ENDS])


@torch.no_grad()
def greedy_generate(model, vae, labels, cfg, mode):
    b = len(labels)
    cond = model.class_emb(vr.cfg_labels(labels))
    f_hat = torch.zeros(b, CVAE, vr.LATENT, vr.LATENT, dtype=torch.float64)
    memories = model.new_memories()
    x = model.sos(cond)
    tokens, raw, worst = [], [], math.inf
    for si, pn in enumerate(PATCH_NUMS):
        logits = model.step(x, cond, mode, memories)
        raw.append(logits)
        t = cfg * si / (SN - 1)
        guided = (1 + t) * logits[:b] - t * logits[b:]
        idx = guided.argmax(dim=-1)
        top2 = guided.topk(2, dim=-1).values
        rel = (top2[..., 0] - top2[..., 1]) / top2[..., 0].abs().clamp_min(1.0)
        worst = min(worst, rel.min().item())
        tokens.append(idx)
        f_hat, nxt = vae.accumulate(f_hat, vae.embed(idx, pn), si)
        if nxt is not None:
            x = model.next_tokens(nxt, si + 1)
    return tokens, raw, worst


def load_vae(path):
    vae = vr.TinyVAE()
    sd = torch.load(path, map_location="cpu", weights_only=True)
    vae.load_state_dict({k: v.float() for k, v in sd.items()})
    return vae.double().eval()


def float32_error(model, vae32, tf_tokens, reference):
    """Max over scales of |float32 logits - float64 logits| / max |float64 logit| (teacher forced)."""
    model32 = copy.deepcopy(model).float()
    rec32, _ = teacher_forcing(model32, vae32, TF_LABELS, tf_tokens, modes=("recompute",))
    return max(maxdiff(a.double(), c) / c.abs().max().item() for a, c in zip(rec32, reference))


def build_variant(name, cosine, seed, vae, tf_tokens, out, meta):
    """Draws weights from `seed`, or the next seed while the fixture is ill-conditioned (float32
    evaluation further than COND_REL of the logits' range from float64: a tolerance would then measure
    the fixture, not the implementation)."""
    vae32 = copy.deepcopy(vae).float()
    for seed in range(seed, seed + 50 * 100, 100):
        model = TinyMVAR(cosine)
        init_mvar(model, seed)
        sd = saved_state_dict(model)
        model = model.double().eval()
        rec, car, full = teacher_forcing(model, vae, TF_LABELS, tf_tokens)
        cond = float32_error(model, vae32, tf_tokens, rec)
        print(f"{name}: seed {seed}: float32 logits within {cond:.2e} of the range")
        if cond <= COND_REL:
            break
    else:
        raise SystemExit(f"{name}: no seed gives a float32 error <= {COND_REL} of the range")
    meta[f"{name}_seed"] = json.dumps(seed)
    meta[f"{name}_float32_rel_error"] = json.dumps(float(f"{cond:.3g}"))
    per_block = 22 if cosine else 21  # learned tensors + zero_k_bias + patch_nums, as MVAR.md counts
    assert len(sd) == per_block * DEPTH + 12, len(sd)

    # the Mamba layer alone: token loop vs the quadratic SSD form
    g = torch.Generator().manual_seed(seed + 100)
    u = vr.randn64(g, (2, MAMBA_CHECK_LEN, C))
    with torch.no_grad():
        m_loop, _ = model.blocks[0].mamba(u)
        m_quad = model.blocks[0].mamba.forward_quadratic(u)
    d = maxdiff(m_loop, m_quad)
    print(f"{name}: Mamba-2 token loop vs quadratic SSD form max abs diff = {d:.3e}")
    assert d < 1e-10, d
    # the causal conv loop is nn.Conv1d with padding d_conv - 1, cut to the input length
    with torch.no_grad():
        xbc = model.blocks[0].mamba._split(u)[1]
        conv = model.blocks[0].mamba.conv1d
        want = F.silu(F.conv1d(xbc.transpose(1, 2), conv.weight, conv.bias, padding=D_CONV - 1, groups=CONV_CH))
        d = maxdiff(model.blocks[0].mamba._conv(xbc, None)[0], want[..., :MAMBA_CHECK_LEN].transpose(1, 2))
    assert d < 1e-12, d
    if cosine:
        out["mamba.in"] = vr.f32(u)
        out["mamba.out"] = vr.f32(m_loop)

    d_car = max(maxdiff(a, c) for a, c in zip(rec, car))
    d_full = max(maxdiff(a, c) for a, c in zip(rec, full))
    print(f"{name}: teacher forcing: recompute vs carried state {d_car:.3e}, vs full sequence {d_full:.3e}")
    assert d_car < 1e-9 and d_full < 1e-9, (d_car, d_full)
    for si in range(SN):
        out[f"{name}.tf.logits.{si}"] = vr.f32(rec[si])
    allz = torch.cat([l.flatten() for l in rec])
    print(f"  logits std {allz.std().item():.3f}, range [{allz.min().item():.2f}, {allz.max().item():.2f}]")
    # a scale's logits depend on the tokens of earlier scales only
    tokens2 = [t.clone() for t in tf_tokens]
    tokens2[2] = (tokens2[2] + 1) % VOCAB
    rec2, _, _ = teacher_forcing(model, vae, TF_LABELS, tokens2)
    assert all(torch.equal(a, c) for a, c in zip(rec[:3], rec2[:3]))
    assert all(not torch.equal(a, c) for a, c in zip(rec[3:], rec2[3:]))
    # the Mamba branch matters: with gamma2 = 0 the logits move by far more than any tolerance
    ablated = TinyMVAR(cosine)
    init_mvar(ablated, seed)
    ablated = ablated.double().eval()
    with torch.no_grad():
        for blk in ablated.blocks:
            blk.ada_lin[1].weight[C:2 * C] = 0.0
            blk.ada_lin[1].bias[C:2 * C] = 0.0
    rec3, _, _ = teacher_forcing(ablated, vae, TF_LABELS, tf_tokens)
    effect = max(maxdiff(a, c) for a, c in zip(rec, rec3))
    print(f"  logits move by up to {effect:.3f} without the Mamba branch")
    assert effect > 0.5, effect

    candidates = [GREEDY_FIRST_LABELS] + [(a, c) for a in range(NUM_CLASSES) for c in range(NUM_CLASSES)
                                          if a != c and (a, c) != GREEDY_FIRST_LABELS]
    for labels in candidates:
        gtok, graw, margin = greedy_generate(model, vae, labels, GREEDY_CFG, "recompute")
        if margin >= MARGIN_REL:
            break
    else:
        raise SystemExit(f"{name}: no label pair gives greedy margins >= {MARGIN_REL}")
    print(f"{name}: greedy labels {list(labels)}: min relative top-2 margin {margin:.3e}")
    ctok, craw, _ = greedy_generate(model, vae, labels, GREEDY_CFG, "carry")
    assert all(torch.equal(a, c) for a, c in zip(gtok, ctok))
    assert max(maxdiff(a, c) for a, c in zip(graw, craw)) < 1e-9
    out[f"{name}.greedy.labels"] = np.array(labels, dtype=np.float32)
    for si in range(SN):
        out[f"{name}.greedy.tokens.{si}"] = vr.f32(gtok[si])
    meta[f"{name}_greedy_labels"] = json.dumps(list(labels))
    meta[f"{name}_greedy_min_rel_margin"] = json.dumps(round(margin, 6))
    return sd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/mvar", help="output directory")
    ap.add_argument("--vae", default="tests/fixtures/var/tiny_vae.pth", help="the VAR fixtures' tiny VQVAE")
    ap.add_argument("--check", action="store_true", help="run the self-checks only; write nothing")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    vae = load_vae(args.vae)

    out, meta = OrderedDict(), OrderedDict()
    meta["format"] = "scalewise M-VAR golden fixtures v1 (scripts/mvar_reference.py)"
    meta["patch_nums"] = json.dumps(list(PATCH_NUMS))
    meta["greedy_cfg"] = json.dumps(GREEDY_CFG)
    meta["tf_labels"] = json.dumps(list(TF_LABELS))

    g = torch.Generator().manual_seed(3000)
    tf_tokens = [torch.randint(0, VOCAB, (len(TF_LABELS), pn * pn), generator=g) for pn in PATCH_NUMS]
    out["tf.labels"] = np.array(TF_LABELS, dtype=np.float32)
    for si in range(SN):
        out[f"tf.tokens.{si}"] = vr.f32(tf_tokens[si])

    sds = OrderedDict()
    sds["cos"] = build_variant("cos", True, 11, vae, tf_tokens, out, meta)
    sds["plain"] = build_variant("plain", False, 12, vae, tf_tokens, out, meta)

    if args.check:
        print("all checks passed (--check: nothing written)")
        return

    os.makedirs(args.out, exist_ok=True)
    paths = []
    for name, sd in sds.items():
        path = os.path.join(args.out, f"tiny_mvar_{name}.pth")
        torch.save(sd, path)
        back = torch.load(path, map_location="cpu", weights_only=True)
        assert list(back.keys()) == list(sd.keys()) and all(torch.equal(back[k], sd[k]) for k in sd)
        paths.append(path)
    p_gold = os.path.join(args.out, "golden.safetensors")
    vr.write_safetensors(p_gold, out, meta)
    _, back = vr.read_safetensors(p_gold)
    assert list(back.keys()) == list(out.keys())
    assert all(np.array_equal(back[k], np.asarray(out[k], dtype=np.float32)) for k in out)
    paths.append(p_gold)
    for p in paths:
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")


if __name__ == "__main__":
    main()
