#!/usr/bin/env python3
"""Golden fixtures for scalewise's VAR port: tiny VAR + multi-scale VQVAE reference in PyTorch (float64).

Written from the specification ../shared/spec/VAR.md (sections 2-5) only; no code was copied from the
official VAR repository. The modules below use the official state_dict key names so that the Rust loader
can read the checkpoints exactly as it reads the real ones.

What it writes into --out (default tests/fixtures/var):
    tiny_var.pth        torch.save(state_dict) of a depth-2, width-64, 2-head VAR (10 classes + null,
                        vocabulary 64, Cvae 8, patch_nums 1..6, L = 91) with attn_l2_norm and per-block
                        AdaLN; learned tensors are float16, lvl_1L int64, attn_bias_for_masking float16.
    tiny_vae.pth        torch.save(state_dict) of the matching VQVAE parts: codebook 64 x 8, 4 Phi convs,
                        quant_conv, post_quant_conv, quantize.ema_vocab_hit_SV (float32) and an LDM-style
                        decoder (ch 32, ch_mult (2, 1), 2 ResBlocks per level, AttnBlocks on level 1 and
                        in the middle; latent 6x6 -> image 12x12). No encoder.
    golden.safetensors  float32 reference values (computed in float64 from the float16-rounded weights):
                        bicubic / area resampling, Phi tables, GroupNorm, a standalone AttnBlock,
                        teacher-forced logits of the CFG-doubled batch for every scale, f_hat and image,
                        and a greedy (top_k 1) CFG generation with its tokens and image.

Self-checks (always run; `--check` runs them without writing anything): the KV-cached per-scale forward
equals the full-sequence block-causal forward (max abs diff < 1e-9), bicubic / area / GroupNorm agree
with independent numpy implementations of the formulas in the spec, the Phi table for 10 scales is
[0,0,1,1,1,2,2,3,3,3], and every greedy token wins by a margin >= 1e-3 * max(1, |best|) so a float32
implementation reproduces it.

Run (deterministic; rerunning writes byte-identical files):
    pip install torch numpy
    python scripts/var_reference.py --out tests/fixtures/var
"""

import argparse
import json
import math
import os
import struct
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------
# Tiny configuration
# ----------------------------------------------------------------------------------------------------
DEPTH = 2
C = 64
HEADS = 2
HEAD_DIM = C // HEADS
NUM_CLASSES = 10  # class_emb has NUM_CLASSES + 1 rows; the last one is the null class
VOCAB = 64
CVAE = 8
PATCH_NUMS = (1, 2, 3, 4, 5, 6)
SN = len(PATCH_NUMS)
L = sum(pn * pn for pn in PATCH_NUMS)  # 91
BEGIN_ENDS = []
_cur = 0
for _pn in PATCH_NUMS:
    BEGIN_ENDS.append((_cur, _cur + _pn * _pn))
    _cur += _pn * _pn
LATENT = PATCH_NUMS[-1]
LN_EPS = 1e-6
GN_EPS = 1e-6
GN_GROUPS = 32
PHI_K = 4
MAX_SCALE_MUL = math.log(100.0)

# Decoder (LDM style, parametric)
DEC_CH = 32
DEC_CH_MULT = (2, 1)
DEC_NUM_RES_BLOCKS = 1  # the decoder has num_res_blocks + 1 ResBlocks per up level

# 256px schedule used for the resampling primitives
PN_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)

TF_LABELS = (3, 7)
GREEDY_CFG = 2.5
GREEDY_FIRST_LABELS = (1, 8)
MARGIN_REL = 1e-3


# ----------------------------------------------------------------------------------------------------
# Shared primitives (spec section 5)
# ----------------------------------------------------------------------------------------------------
def phi_index(si, sn, k=PHI_K):
    """Index of the Phi conv used for scale si of sn scales (argmin over float64 numpy ticks)."""
    ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
    return int(np.argmin(np.abs(ticks - si / (sn - 1))))


def bicubic_up(x, size):
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


def area_down(x, size):
    return F.interpolate(x, size=(size, size), mode="area")


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


# Independent numpy versions, used only to cross-check the torch calls against the spec formulas.
def np_bicubic_matrix(n_in, n_out, a=-0.75):
    def w(d):
        d = abs(d)
        if d <= 1:
            return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
        if d < 2:
            return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
        return 0.0

    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = (o + 0.5) * n_in / n_out - 0.5
        i0 = math.floor(src)
        t = src - i0
        for tap in range(-1, 3):
            idx = min(max(i0 + tap, 0), n_in - 1)
            m[o, idx] += w(t - tap)
    return m


def np_area_matrix(n_in, n_out):
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        s = (o * n_in) // n_out
        e = -((-(o + 1) * n_in) // n_out)  # ceil
        m[o, s:e] = 1.0 / (e - s)
    return m


def np_separable(x, m):
    # x: (..., H, W), same matrix on both axes
    return np.einsum("oh,...hw,pw->...op", m, x, m)


def np_group_norm(x, w, b, groups, eps):
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    mu = xg.mean(-1, keepdims=True)
    var = ((xg - mu) ** 2).mean(-1, keepdims=True)
    y = ((xg - mu) / np.sqrt(var + eps)).reshape(x.shape)
    shp = (1, c) + (1,) * (x.ndim - 2)
    return y * w.reshape(shp) + b.reshape(shp)


# ----------------------------------------------------------------------------------------------------
# VAR transformer (spec sections 2-4), official key names
# ----------------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.scale_mul_1H11 = nn.Parameter(torch.zeros(1, HEADS, 1, 1))
        self.proj = nn.Linear(C, C)

    def forward(self, x, attn_bias=None, cache=None):
        b, n, _ = x.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(b, n, 3, HEADS, HEAD_DIM)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, H, n, hd)
        temp = self.scale_mul_1H11.clamp_max(MAX_SCALE_MUL).exp()
        q = F.normalize(q, dim=-1, eps=1e-12) * temp
        k = F.normalize(k, dim=-1, eps=1e-12)
        if cache is not None:
            if cache.get("k") is not None:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        att = q @ k.transpose(-1, -2)  # softmax scale 1 (cosine attention)
        if attn_bias is not None:
            att = att + attn_bias
        att = att.softmax(dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b, n, C)
        return self.proj(o)


class FFN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(C, 4 * C)
        self.fc2 = nn.Linear(4 * C, C)

    def forward(self, x):
        return self.fc2(gelu_tanh(self.fc1(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = SelfAttention()
        self.ffn = FFN()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x, cond, attn_bias=None, cache=None):
        ada = self.ada_lin(cond).view(-1, 1, 6, C)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada.unbind(2)
        h = F.layer_norm(x, (C,), eps=LN_EPS) * (1 + scale1) + shift1
        x = x + self.attn(h, attn_bias, cache) * gamma1
        h = F.layer_norm(x, (C,), eps=LN_EPS) * (1 + scale2) + shift2
        x = x + self.ffn(h) * gamma2
        return x


class AdaLNBeforeHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x, cond):
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, C).unbind(2)
        return F.layer_norm(x, (C,), eps=LN_EPS) * (1 + scale) + shift


class TinyVAR(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embed = nn.Linear(CVAE, C)
        self.class_emb = nn.Embedding(NUM_CLASSES + 1, C)
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, L, C))
        self.lvl_embed = nn.Embedding(SN, C)
        self.blocks = nn.ModuleList([Block() for _ in range(DEPTH)])
        lvl = torch.cat([torch.full((pn * pn,), i, dtype=torch.int64) for i, pn in enumerate(PATCH_NUMS)])
        self.register_buffer("lvl_1L", lvl.view(1, L))
        allowed = lvl.view(1, L) <= lvl.view(L, 1)  # [query, key]: key scale <= query scale
        bias = torch.where(allowed, 0.0, -math.inf).view(1, 1, L, L)
        self.register_buffer("attn_bias_for_masking", bias)
        self.head_nm = AdaLNBeforeHead()
        self.head = nn.Linear(C, VOCAB)

    def lvl_pos(self):
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC  # (1, L, C)

    def sos(self, cond):
        return cond.unsqueeze(1) + self.pos_start + self.lvl_pos()[:, :1]

    def next_tokens(self, nxt_BlCv, si):
        """Input tokens of scale si (> 0) from the area-downsampled f_hat; duplicated for CFG."""
        b, e = BEGIN_ENDS[si]
        x = self.word_embed(nxt_BlCv) + self.lvl_pos()[:, b:e]
        return torch.cat([x, x], dim=0)

    def logits(self, x, cond):
        return self.head(self.head_nm(x, cond))

    def step_kv(self, x, cond, caches):
        for blk, cache in zip(self.blocks, caches):
            x = blk(x, cond, None, cache)
        return self.logits(x, cond)

    def forward_full(self, x_BLC, cond):
        for blk in self.blocks:
            x_BLC = blk(x_BLC, cond, self.attn_bias_for_masking, None)
        return self.logits(x_BLC, cond)


# ----------------------------------------------------------------------------------------------------
# Multi-scale VQVAE (spec section 5), official key names
# ----------------------------------------------------------------------------------------------------
def group_norm(ch):
    return nn.GroupNorm(GN_GROUPS, ch, eps=GN_EPS, affine=True)


class ResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        s = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return s + h


class AttnBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.norm = group_norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)
        self.ch = ch

    def forward(self, x):
        b, c, hh, ww = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, 3, c, hh * ww).unbind(1)  # channel thirds
        w = torch.einsum("bci,bcj->bij", q, k) * (c ** -0.5)  # [query i, key j]
        w = w.softmax(dim=-1)
        h = torch.einsum("bij,bcj->bci", w, v).view(b, c, hh, ww)
        return x + self.proj_out(h)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.block_1 = ResBlock(ch, ch)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResBlock(ch, ch)


class UpLevel(nn.Module):
    def __init__(self, cin, cout, with_attn, with_upsample):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        for j in range(DEC_NUM_RES_BLOCKS + 1):
            self.block.append(ResBlock(cin if j == 0 else cout, cout))
            if with_attn:
                self.attn.append(AttnBlock(cout))
        if with_upsample:
            self.upsample = Upsample(cout)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        nlev = len(DEC_CH_MULT)
        block_in = DEC_CH * DEC_CH_MULT[-1]
        self.conv_in = nn.Conv2d(CVAE, block_in, 3, 1, 1)
        self.mid = Mid(block_in)
        levels = [None] * nlev
        for i in reversed(range(nlev)):
            block_out = DEC_CH * DEC_CH_MULT[i]
            levels[i] = UpLevel(block_in, block_out, with_attn=(i == nlev - 1), with_upsample=(i != 0))
            block_in = block_out
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i in reversed(range(len(self.up))):
            lvl = self.up[i]
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn) > 0:
                    h = lvl.attn[j](h)
            if i != 0:
                h = lvl.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class QuantResi(nn.Module):
    def __init__(self):
        super().__init__()
        self.qresi_ls = nn.ModuleList([nn.Conv2d(CVAE, CVAE, 3, 1, 1) for _ in range(PHI_K)])

    def phi(self, si, sn, h):
        return 0.5 * h + 0.5 * self.qresi_ls[phi_index(si, sn)](h)


class Quantize(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, CVAE)
        self.quant_resi = QuantResi()
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(SN, VOCAB))


class TinyVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = Decoder()
        self.quant_conv = nn.Conv2d(CVAE, CVAE, 3, 1, 1)
        self.quantize = Quantize()
        self.post_quant_conv = nn.Conv2d(CVAE, CVAE, 3, 1, 1)

    def embed(self, idx_Bl, pn):
        b = idx_Bl.shape[0]
        return self.quantize.embedding.weight[idx_Bl].transpose(1, 2).reshape(b, CVAE, pn, pn)

    def accumulate(self, f_hat, h, si):
        """Spec 2f: returns (new f_hat, next input as B x pn'^2 x Cvae or None at the last scale)."""
        if si < SN - 1:
            f_hat = f_hat + self.quantize.quant_resi.phi(si, SN, bicubic_up(h, LATENT))
            nxt = area_down(f_hat, PATCH_NUMS[si + 1])
            return f_hat, nxt.flatten(2).transpose(1, 2)
        return f_hat + self.quantize.quant_resi.phi(si, SN, h), None

    def decode_image(self, f_hat):
        img = self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)
        return (img + 1) / 2


# ----------------------------------------------------------------------------------------------------
# Initialisation (deterministic, spread-out values; not the official init) and float16 rounding
# ----------------------------------------------------------------------------------------------------
def _randn(g, shape, std):
    return torch.randn(shape, generator=g, dtype=torch.float32) * std


def _fan_in(w):
    return int(np.prod(w.shape[1:]))


@torch.no_grad()
def round_to_f16_(model):
    for p in model.parameters():
        p.copy_(p.half().float())


@torch.no_grad()
def init_var(model, seed):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("scale_mul_1H11"):
            continue
        if name in ("class_emb.weight", "pos_start", "pos_1LC", "lvl_embed.weight"):
            p.copy_(_randn(g, p.shape, 0.5))
        elif name.endswith("ada_lin.1.weight"):
            p.copy_(_randn(g, p.shape, 0.3 / math.sqrt(C)))
        elif name == "head.weight":
            p.copy_(_randn(g, p.shape, 3.0 / math.sqrt(C)))
        elif name.endswith("weight"):
            p.copy_(_randn(g, p.shape, 1.0 / math.sqrt(_fan_in(p))))
        else:  # biases, q_bias, v_bias
            p.copy_(_randn(g, p.shape, 0.1))
    model.blocks[0].attn.scale_mul_1H11.copy_(torch.tensor([math.log(4.0), 5.0]).view(1, HEADS, 1, 1))
    model.blocks[1].attn.scale_mul_1H11.copy_(torch.tensor([math.log(10.0), math.log(2.0)]).view(1, HEADS, 1, 1))
    round_to_f16_(model)


@torch.no_grad()
def init_conv_family(model, g, conv_gain=None):
    """GroupNorm: 1 + N(0, 0.1) / N(0, 0.1); Conv: N(0, 1/sqrt(fan_in)) / N(0, 0.1)."""
    conv_gain = conv_gain or {}
    for name, m in model.named_modules():
        if isinstance(m, nn.GroupNorm):
            m.weight.copy_(1.0 + _randn(g, m.weight.shape, 0.1))
            m.bias.copy_(_randn(g, m.bias.shape, 0.1))
        elif isinstance(m, nn.Conv2d):
            gain = conv_gain.get(name, 1.0)
            m.weight.copy_(_randn(g, m.weight.shape, gain / math.sqrt(_fan_in(m.weight))))
            m.bias.copy_(_randn(g, m.bias.shape, 0.1))


@torch.no_grad()
def init_vae(model, seed):
    g = torch.Generator().manual_seed(seed)
    # conv_out at 0.75 gain: about 97% of pixels stay inside the clamp range [-1, 1], the rest exercise it
    init_conv_family(model, g, conv_gain={"decoder.conv_out": 0.75})
    model.quantize.embedding.weight.copy_(_randn(g, model.quantize.embedding.weight.shape, 1.0))
    round_to_f16_(model)


def to_saved_state_dict(model, keep_f32=()):
    """state_dict as saved: floating tensors in float16 (exact: values were rounded), except keep_f32."""
    sd = model.state_dict()  # OrderedDict with _metadata, like a real checkpoint
    for k in list(sd.keys()):
        v = sd[k].detach().clone().contiguous()
        if v.is_floating_point() and k not in keep_f32:
            h = v.half()
            assert torch.equal(h.float(), v), k
            v = h
        sd[k] = v
    return sd


# ----------------------------------------------------------------------------------------------------
# Generation / teacher forcing
# ----------------------------------------------------------------------------------------------------
def cfg_labels(labels):
    lab = torch.tensor(labels, dtype=torch.int64)
    return torch.cat([lab, torch.full_like(lab, NUM_CLASSES)])


@torch.no_grad()
def teacher_forcing(var, vae, labels, tokens):
    """Returns (kv logits per scale, full-sequence logits per scale, f_hat, image)."""
    b = len(labels)
    cond = var.class_emb(cfg_labels(labels))
    f_hat = torch.zeros(b, CVAE, LATENT, LATENT, dtype=torch.float64)
    xs = [var.sos(cond)]
    for si, pn in enumerate(PATCH_NUMS):
        f_hat, nxt = vae.accumulate(f_hat, vae.embed(tokens[si], pn), si)
        if nxt is not None:
            xs.append(var.next_tokens(nxt, si + 1))
    caches = [dict() for _ in range(DEPTH)]
    kv = [var.step_kv(x, cond, caches) for x in xs]
    full_all = var.forward_full(torch.cat(xs, dim=1), cond)
    full = [full_all[:, bb:ee] for (bb, ee) in BEGIN_ENDS]
    return kv, full, f_hat, vae.decode_image(f_hat)


@torch.no_grad()
def greedy_generate(var, vae, labels, cfg):
    """top_k = 1 generation; returns tokens, kv logits, min relative margin, f_hat, image."""
    b = len(labels)
    cond = var.class_emb(cfg_labels(labels))
    f_hat = torch.zeros(b, CVAE, LATENT, LATENT, dtype=torch.float64)
    caches = [dict() for _ in range(DEPTH)]
    x = var.sos(cond)
    tokens, raw, worst = [], [], math.inf
    for si, pn in enumerate(PATCH_NUMS):
        logits = var.step_kv(x, cond, caches)
        raw.append(logits)
        t = cfg * si / (SN - 1)
        guided = (1 + t) * logits[:b] - t * logits[b:]
        idx = guided.argmax(dim=-1)  # first index on exact ties
        top2 = guided.topk(2, dim=-1).values
        rel = (top2[..., 0] - top2[..., 1]) / top2[..., 0].abs().clamp_min(1.0)
        worst = min(worst, rel.min().item())
        tokens.append(idx)
        f_hat, nxt = vae.accumulate(f_hat, vae.embed(idx, pn), si)
        if nxt is not None:
            x = var.next_tokens(nxt, si + 1)
    return tokens, raw, worst, f_hat, vae.decode_image(f_hat)


# ----------------------------------------------------------------------------------------------------
# safetensors writer (no dependency)
# ----------------------------------------------------------------------------------------------------
def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, off = [], 0
    for name, arr in tensors.items():
        a = np.ascontiguousarray(np.asarray(arr, dtype="<f4"))
        raw = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for raw in blobs:
            f.write(raw)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + e], dtype="<f4").reshape(info["shape"])
    return header, out


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------
def f32(t):
    return t.detach().to(torch.float32).cpu().numpy()


def randn64(g, shape):
    """N(0, 1) values that are exact float32, as float64."""
    return torch.randn(shape, generator=g, dtype=torch.float32).double()


def maxdiff(a, b):
    return (a - b).abs().max().item() if torch.is_tensor(a) else float(np.abs(a - b).max())


def build_primitives(out, meta):
    g = torch.Generator().manual_seed(1000)
    # bicubic upsample to 16x16
    for pn in PN_256:
        x = randn64(g, (2, 4, pn, pn))
        y = bicubic_up(x, 16)
        ref = np_separable(x.numpy(), np_bicubic_matrix(pn, 16))
        assert maxdiff(y.numpy(), ref) < 1e-12, f"bicubic {pn}: {maxdiff(y.numpy(), ref)}"
        if pn == 1:
            assert maxdiff(y, x.expand_as(y)) == 0.0
        out[f"bicubic.in.{pn}"] = f32(x)
        out[f"bicubic.out.{pn}"] = f32(y)
    # area downsample from 16x16
    x = randn64(g, (2, 4, 16, 16))
    out["area.in"] = f32(x)
    for pn in PN_256:
        y = area_down(x, pn)
        ref = np_separable(x.numpy(), np_area_matrix(16, pn))
        assert maxdiff(y.numpy(), ref) < 1e-12, f"area {pn}"
        assert maxdiff(y, F.adaptive_avg_pool2d(x, pn)) < 1e-14
        out[f"area.out.{pn}"] = f32(y)
    # Phi tables
    t10 = [phi_index(si, 10) for si in range(10)]
    assert t10 == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3], t10
    t6 = [phi_index(si, SN) for si in range(SN)]
    out["phi_table.10"] = np.array(t10, dtype=np.float32)
    out[f"phi_table.{SN}"] = np.array(t6, dtype=np.float32)
    meta["phi_table_10"] = json.dumps(t10)
    meta[f"phi_table_{SN}"] = json.dumps(t6)
    # GroupNorm
    x = randn64(g, (2, 64, 5, 7))
    w = (1.0 + 0.1 * randn64(g, (64,))).half().double()
    b = (0.1 * randn64(g, (64,))).half().double()
    y = F.group_norm(x, GN_GROUPS, w, b, eps=GN_EPS)
    ref = np_group_norm(x.numpy(), w.numpy(), b.numpy(), GN_GROUPS, GN_EPS)
    assert maxdiff(y.numpy(), ref) < 1e-12
    out["group_norm.in"], out["group_norm.weight"], out["group_norm.bias"] = f32(x), f32(w), f32(b)
    out["group_norm.out"] = f32(y)
    # standalone AttnBlock
    blk = AttnBlock(64)
    init_conv_family(blk, torch.Generator().manual_seed(1001))
    round_to_f16_(blk)
    blk = blk.double()
    x = randn64(g, (2, 64, 5, 6))
    with torch.no_grad():
        y = blk(x)
        # independent check: explicit loops-free numpy version
        xn = x.numpy()
        hn = np_group_norm(xn, blk.norm.weight.numpy(), blk.norm.bias.numpy(), GN_GROUPS, GN_EPS)
        qkv = np.einsum("oc,bchw->bohw", blk.qkv.weight.numpy()[:, :, 0, 0], hn) + blk.qkv.bias.numpy()[None, :, None, None]
        q, k, v = (qkv[:, i * 64:(i + 1) * 64].reshape(2, 64, -1) for i in range(3))
        s = np.einsum("bci,bcj->bij", q, k) / 8.0
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        h = np.einsum("bij,bcj->bci", s, v)
        ref = xn + (np.einsum("oc,bci->boi", blk.proj_out.weight.numpy()[:, :, 0, 0], h)
                    + blk.proj_out.bias.numpy()[None, :, None]).reshape(xn.shape)
        assert maxdiff(y.numpy(), ref) < 1e-11
    out["attn_block.in"] = f32(x)
    for k_, v_ in blk.state_dict().items():
        out[f"attn_block.{k_}"] = f32(v_)
    out["attn_block.out"] = f32(y)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/var", help="output directory")
    ap.add_argument("--check", action="store_true", help="run the self-checks only; write nothing")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)

    var = TinyVAR()
    init_var(var, seed=1)
    vae = TinyVAE()
    init_vae(vae, seed=2)
    var_sd = to_saved_state_dict(var)
    vae_sd = to_saved_state_dict(vae, keep_f32=("quantize.ema_vocab_hit_SV",))
    assert len(var_sd) == 13 * DEPTH + 12, len(var_sd)
    var = var.double().eval()
    vae = vae.double().eval()

    out, meta = OrderedDict(), OrderedDict()
    meta["format"] = "scalewise VAR golden fixtures v1 (scripts/var_reference.py)"
    meta["patch_nums"] = json.dumps(list(PATCH_NUMS))
    meta["num_classes"] = json.dumps(NUM_CLASSES)
    meta["vocab"] = json.dumps(VOCAB)
    meta["primitive_patch_nums"] = json.dumps(list(PN_256))

    build_primitives(out, meta)

    # ---- teacher forcing ----
    g = torch.Generator().manual_seed(2000)
    b = len(TF_LABELS)
    tokens = [torch.randint(0, VOCAB, (b, pn * pn), generator=g) for pn in PATCH_NUMS]
    kv, full, f_hat, image = teacher_forcing(var, vae, TF_LABELS, tokens)
    worst = max(maxdiff(a, c) for a, c in zip(kv, full))
    print(f"teacher forcing: KV-cached vs full-sequence masked logits max abs diff = {worst:.3e}")
    assert worst < 1e-9, worst
    out["tf.labels"] = np.array(TF_LABELS, dtype=np.float32)
    meta["tf_labels"] = json.dumps(list(TF_LABELS))
    meta["tf_cfg_batch_labels"] = json.dumps(cfg_labels(TF_LABELS).tolist())
    for si in range(SN):
        out[f"tf.tokens.{si}"] = f32(tokens[si])
    for si in range(SN):
        out[f"tf.logits.{si}"] = f32(kv[si])
    out["tf.fhat"] = f32(f_hat)
    out["tf.image"] = f32(image)
    allz = torch.cat([l.flatten() for l in kv])
    print(f"  logits std {allz.std().item():.3f}, range [{allz.min().item():.2f}, {allz.max().item():.2f}]; "
          f"f_hat std {f_hat.std().item():.3f}; image clamped fraction "
          f"{((image <= 0) | (image >= 1)).double().mean().item():.3f}")
    # sanity: scale si's logits depend on the tokens of scales < si only (causality of the inputs)
    tokens2 = [t.clone() for t in tokens]
    tokens2[2] = (tokens2[2] + 1) % VOCAB
    kv2, _, _, _ = teacher_forcing(var, vae, TF_LABELS, tokens2)
    assert all(torch.equal(a, c) for a, c in zip(kv[:3], kv2[:3]))
    assert all(not torch.equal(a, c) for a, c in zip(kv[3:], kv2[3:]))

    # ---- greedy generation ----
    candidates = [GREEDY_FIRST_LABELS] + [(a, c) for a in range(NUM_CLASSES) for c in range(NUM_CLASSES)
                                          if a != c and (a, c) != GREEDY_FIRST_LABELS]
    for labels in candidates:
        gtok, graw, margin, g_fhat, g_image = greedy_generate(var, vae, labels, GREEDY_CFG)
        print(f"greedy labels {list(labels)}: min relative top-2 margin {margin:.3e}")
        if margin >= MARGIN_REL:
            break
    else:
        raise SystemExit("no label pair gives greedy margins >= 1e-3")
    # cross-check: teacher forcing on the greedy tokens reproduces the KV logits (full-sequence path too)
    kv_g, full_g, fh_g, img_g = teacher_forcing(var, vae, labels, gtok)
    d = max(max(maxdiff(a, c) for a, c in zip(kv_g, graw)), max(maxdiff(a, c) for a, c in zip(full_g, graw)))
    assert d < 1e-9, d
    assert maxdiff(fh_g, g_fhat) == 0.0 and maxdiff(img_g, g_image) == 0.0
    out["greedy.labels"] = np.array(labels, dtype=np.float32)
    for si in range(SN):
        out[f"greedy.tokens.{si}"] = f32(gtok[si])
    out["greedy.image"] = f32(g_image)
    meta["greedy_cfg"] = json.dumps(GREEDY_CFG)
    meta["greedy_labels"] = json.dumps(list(labels))
    meta["greedy_top_k"] = json.dumps(1)
    meta["greedy_min_rel_margin"] = json.dumps(round(margin, 6))

    if args.check:
        print("all checks passed (--check: nothing written)")
        return

    os.makedirs(args.out, exist_ok=True)
    p_var = os.path.join(args.out, "tiny_var.pth")
    p_vae = os.path.join(args.out, "tiny_vae.pth")
    p_gold = os.path.join(args.out, "golden.safetensors")
    torch.save(var_sd, p_var)
    torch.save(vae_sd, p_vae)
    write_safetensors(p_gold, out, meta)

    # read back
    sd = torch.load(p_var, map_location="cpu", weights_only=True)
    assert list(sd.keys()) == list(var_sd.keys()) and all(torch.equal(sd[k], var_sd[k]) for k in sd)
    sd = torch.load(p_vae, map_location="cpu", weights_only=True)
    assert list(sd.keys()) == list(vae_sd.keys()) and all(torch.equal(sd[k], vae_sd[k]) for k in sd)
    _, back = read_safetensors(p_gold)
    assert list(back.keys()) == list(out.keys())
    assert all(np.array_equal(back[k], np.asarray(out[k], dtype=np.float32)) for k in out)
    for p in (p_var, p_vae, p_gold):
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")


if __name__ == "__main__":
    main()
