#!/usr/bin/env python3
"""Configurable PyTorch VAR + multi-scale VQVAE for the scalewise demo (training and export).

Same architecture and official state_dict key names as scripts/var_reference.py (which is a fixed-size
float64 fixture generator), with the sizes as constructor arguments, a trainable encoder and residual
quantizer, batched KV-cached sampling and a float16 safetensors writer. Written from
shared/spec/VAR.md; nothing is copied from the official repository.
"""

import json
import math
import struct
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# The constants, the Phi table and the VQVAE decoder's building blocks (sized by their arguments)
# are the fixture generator's; this file adds what it sizes by constructor arguments.
import var_reference
from var_reference import (
    LN_EPS,
    MAX_SCALE_MUL,
    PHI_K,
    AttnBlock,
    ResBlock,
    Upsample,
    group_norm,
    phi_index,
)


def bicubic_up(x, size):
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


def area_down(x, size):
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="area")


# ----------------------------------------------------------------------------------------------------
# VAR transformer
# ----------------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.c, self.heads, self.hd = c, heads, c // heads
        self.mat_qkv = nn.Linear(c, 3 * c, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(c))
        self.v_bias = nn.Parameter(torch.zeros(c))
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), math.log(4.0)))
        self.proj = nn.Linear(c, c)

    def forward(self, x, attn_bias=None, cache=None):
        b, n, _ = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(b, n, 3, self.heads, self.hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (b, H, n, hd)
        temp = self.scale_mul_1H11.clamp_max(MAX_SCALE_MUL).exp()
        q = F.normalize(q, dim=-1, eps=1e-12) * temp
        k = F.normalize(k, dim=-1, eps=1e-12)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=1.0)
        return self.proj(o.transpose(1, 2).reshape(b, n, self.c))


class FFN(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.fc1 = nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, c, heads, mlp_ratio=4.0):
        super().__init__()
        self.c = c
        self.attn = SelfAttention(c, heads)
        self.ffn = FFN(c, int(round(c * mlp_ratio)))
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))

    def forward(self, x, cond, attn_bias=None, cache=None):
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(cond).view(-1, 1, 6, self.c).unbind(2)
        h = F.layer_norm(x, (self.c,), eps=LN_EPS) * (1 + scale1) + shift1
        x = x + self.attn(h, attn_bias, cache) * gamma1
        h = F.layer_norm(x, (self.c,), eps=LN_EPS) * (1 + scale2) + shift2
        return x + self.ffn(h) * gamma2


class AdaLNBeforeHead(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 2 * c))

    def forward(self, x, cond):
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.c).unbind(2)
        return F.layer_norm(x, (self.c,), eps=LN_EPS) * (1 + scale) + shift


class NextScaleModel(nn.Module):
    """What VAR and M-VAR share (official key names): class, word, level and position embeddings, the
    blocks (made by `block`), the AdaLN head, and the scale layout of the token sequence."""

    def __init__(self, depth, width, heads, num_classes, vocab, cvae, patch_nums, block, lvl_persistent):
        super().__init__()
        self.depth, self.c, self.heads = depth, width, heads
        self.num_classes, self.vocab, self.cvae = num_classes, vocab, cvae
        self.patch_nums = tuple(patch_nums)
        self.sn = len(self.patch_nums)
        self.L = sum(p * p for p in self.patch_nums)
        self.begin_ends, cur = [], 0
        for p in self.patch_nums:
            self.begin_ends.append((cur, cur + p * p))
            cur += p * p
        c = width
        self.word_embed = nn.Linear(cvae, c)
        self.class_emb = nn.Embedding(num_classes + 1, c)
        self.pos_start = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.L, c))
        self.lvl_embed = nn.Embedding(self.sn, c)
        self.blocks = nn.ModuleList([block() for _ in range(depth)])
        self.head_nm = AdaLNBeforeHead(c)
        self.head = nn.Linear(c, vocab)
        lvl = torch.cat([torch.full((p * p,), i, dtype=torch.int64) for i, p in enumerate(self.patch_nums)])
        self.register_buffer("lvl_1L", lvl.view(1, self.L), persistent=lvl_persistent)

    def lvl_pos(self):
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC  # (1, L, C)

    def train_inputs(self, labels, x_BLCv):
        """Teacher forcing: the class conditions and the whole sequence's block inputs (B, L, C)."""
        cond = self.class_emb(labels)
        sos = cond.unsqueeze(1) + self.pos_start
        return torch.cat([sos, self.word_embed(x_BLCv)], dim=1) + self.lvl_pos(), cond


class VAR(NextScaleModel):
    def __init__(self, depth, width, heads, num_classes, vocab, cvae, patch_nums):
        super().__init__(depth, width, heads, num_classes, vocab, cvae, patch_nums, lambda: Block(width, heads), False)
        lvl = self.lvl_1L.view(-1)
        allowed = lvl.view(1, -1) <= lvl.view(-1, 1)  # [query, key]
        self.register_buffer(
            "attn_bias", torch.where(allowed, 0.0, -math.inf).view(1, 1, self.L, self.L), persistent=False
        )

    @torch.no_grad()
    def init_weights(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("scale_mul_1H11"):
                p.fill_(math.log(4.0))
            elif p.dim() >= 2 or name in ("pos_start", "pos_1LC"):
                s = std
                if name.endswith("attn.proj.weight") or name.endswith("ffn.fc2.weight"):
                    s = std / math.sqrt(2 * self.depth)
                if "ada_lin" in name:
                    s = std * 0.5
                p.copy_(torch.randn(p.shape, generator=g) * s)
            else:
                p.zero_()
        # AdaLN biases: start as a plain pre-LN residual block (gamma = 1, scale = shift = 0)
        for blk in self.blocks:
            blk.ada_lin[1].bias.zero_()
            blk.ada_lin[1].bias[: 2 * self.c].fill_(1.0)

    def forward_train(self, labels, x_BLCv):
        """Teacher forcing: labels (B,), x_BLCv (B, L-1, Cvae) next-scale inputs -> logits (B, L, V)."""
        x, cond = self.train_inputs(labels, x_BLCv)
        for blk in self.blocks:
            x = blk(x, cond, self.attn_bias, None)
        return self.head(self.head_nm(x, cond))

    def step_kv(self, x, cond, caches):
        for blk, cache in zip(self.blocks, caches):
            x = blk(x, cond, None, cache)
        return self.head(self.head_nm(x, cond)).float()


# ----------------------------------------------------------------------------------------------------
# M-VAR transformer (shared/spec/MVAR.md): attention inside the current scale, Mamba-2 across scales
# ----------------------------------------------------------------------------------------------------
class Mamba2(nn.Module):
    """Mamba-2 with the mamba_ssm defaults M-VAR uses (d_state 64, d_conv 4, expand 2, headdim 64,
    ngroups 1) and the official key names. The selective recurrence runs in SSD's quadratic (masked
    attention-like) form, exact and fast for the demo's 204-token sequences; `state` continues a
    sequence (the last d_conv - 1 conv inputs and the SSM state), as the Rust inference carries it."""

    def __init__(self, c, d_state=64, d_conv=4, expand=2, headdim=64):
        super().__init__()
        self.c, self.d_state, self.d_conv = c, d_state, d_conv
        self.d_inner = expand * c
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        self.conv_ch = self.d_inner + 2 * d_state
        self.in_proj = nn.Linear(c, 2 * self.d_inner + 2 * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_ch, self.conv_ch, d_conv, groups=self.conv_ch, bias=True)
        self.dt_bias = nn.Parameter(torch.zeros(self.nheads))
        self.A_log = nn.Parameter(torch.zeros(self.nheads))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, c, bias=False)

    @torch.no_grad()
    def init_mamba(self, g, dt_min=0.001, dt_max=0.1):
        """mamba_ssm's initialisation of the SSM parameters: dt log-uniform in [dt_min, dt_max] through
        the inverse softplus, A uniform in [1, 16], D = 1, the norm's weight 1."""
        dt = torch.exp(torch.rand(self.nheads, generator=g) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(1 + 15 * torch.rand(self.nheads, generator=g)))
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)

    def forward(self, u, state=None):
        b, n, _ = u.shape
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_ch, self.nheads], dim=-1)
        prev = state[0] if state is not None else xbc.new_zeros(b, self.d_conv - 1, self.conv_ch)
        padded = torch.cat([prev, xbc], dim=1)
        conv = F.conv1d(padded.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, groups=self.conv_ch)
        xbc = F.silu(conv.transpose(1, 2))
        new_conv = padded[:, -(self.d_conv - 1):]
        acc = torch.float64 if u.dtype == torch.float64 else torch.float32  # never bf16 in the scan
        with torch.autocast("cpu", enabled=False):
            xs, bm, cm = torch.split(xbc.to(acc), [self.d_inner, self.d_state, self.d_state], dim=-1)
            dt = F.softplus(dt.to(acc) + self.dt_bias)  # (B, n, H)
            a = -torch.exp(self.A_log.to(acc))
            seg = torch.cumsum(dt * a, dim=1).transpose(1, 2)  # (B, H, n): the decay exponent to token t
            diff = seg[:, :, :, None] - seg[:, :, None, :]  # (B, H, t, s)
            causal = torch.ones(n, n, dtype=torch.bool, device=u.device).tril()
            decay = torch.exp(diff.masked_fill(~causal, -math.inf))
            m = decay * torch.einsum("btn,bsn->bts", cm, bm)[:, None]  # (B, H, t, s)
            xh = xs.view(b, n, self.nheads, self.headdim).transpose(1, 2)  # (B, H, n, P)
            xdt = xh * dt.transpose(1, 2)[..., None]
            y = m @ xdt + self.D[:, None, None] * xh  # (B, H, t, P)
            h0 = state[1] if state is not None else None
            if h0 is not None:  # the carried state's contribution: C_t (exp(seg_t) h0)
                y = y + torch.exp(seg)[..., None] * torch.einsum("bhpn,btn->bhtp", h0, cm)
            # the state after the last token: sum over s of exp(seg_n - seg_s) dt_s x_s B_s^T
            w_last = torch.exp(seg[:, :, -1:] - seg)  # (B, H, n)
            h = torch.einsum("bhsp,bsn->bhpn", xdt * w_last[..., None], bm)
            if h0 is not None:
                h = h + torch.exp(seg[:, :, -1])[:, :, None, None] * h0
            y = y.transpose(1, 2)
            y = y.reshape(b, n, self.d_inner)
            g = y * F.silu(z.to(acc))
            g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5) * self.norm.weight
        return self.out_proj(g), (new_conv, h)


class MvarAttention(SelfAttention):
    """VAR's cosine attention over one scale's tokens (no KV cache); zero_k_bias and patch_nums are the
    official checkpoints' buffers (the loader ignores them)."""

    def __init__(self, c, heads, patch_nums):
        super().__init__(c, heads)
        self.register_buffer("zero_k_bias", torch.zeros(c))
        self.register_buffer("patch_nums", torch.tensor(patch_nums, dtype=torch.int32))


class MvarBlock(nn.Module):
    def __init__(self, c, heads, patch_nums, mlp_ratio=4.0):
        super().__init__()
        self.c = c
        self.attn = MvarAttention(c, heads, patch_nums)
        self.mamba = Mamba2(c)
        self.ffn = FFN(c, int(round(c * mlp_ratio)))
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 9 * c))

    def ln(self, x, scale, shift):
        return F.layer_norm(x, (self.c,), eps=LN_EPS) * (1 + scale) + shift

    def forward(self, x, cond, attn_bias=None, state=None):
        """attn_bias: the block-diagonal mask of a whole teacher-forced sequence, or None for one scale.
        Returns x and the Mamba-2 state after x's last token."""
        g1, g2, g3, s1, s2, s3, h1, h2, h3 = self.ada_lin(cond).view(-1, 1, 9, self.c).unbind(2)
        x = x + self.attn(self.ln(x, s1, h1), attn_bias) * g1
        m, state = self.mamba(self.ln(x, s2, h2), state)
        x = x + m * g2
        return x + self.ffn(self.ln(x, s3, h3)) * g3, state


class MVAR(NextScaleModel):
    """M-VAR with the official key names, sized by its arguments (heads = width / 64)."""

    def __init__(self, depth, width, heads, num_classes, vocab, cvae, patch_nums):
        block = lambda: MvarBlock(width, heads, tuple(patch_nums))  # noqa: E731
        super().__init__(depth, width, heads, num_classes, vocab, cvae, patch_nums, block, True)
        lvl = self.lvl_1L.view(-1)
        same = lvl.view(1, -1) == lvl.view(-1, 1)  # attention inside a scale only
        self.register_buffer("attn_bias_for_masking", torch.where(same, 0.0, -math.inf).view(1, 1, self.L, self.L))

    @torch.no_grad()
    def init_from_var(self, var, seed=0):
        """Everything M-VAR shares with VAR (embeddings, attention, FFN, head) from a trained VAR of the
        same width; each block's Mamba-2 layer fresh (mamba_ssm's initialisation) behind a gate that
        starts small, so training begins from VAR's features and learns the cross-scale path."""
        g = torch.Generator().manual_seed(seed)
        own = self.state_dict()
        for k, v in var.state_dict().items():
            if k in own and own[k].shape == v.shape and "ada_lin" not in k or k.startswith("head_nm."):
                own[k].copy_(v)
        c = self.c
        for blk, vblk in zip(self.blocks, var.blocks):
            w6, b6 = vblk.ada_lin[1].weight.view(6, c, c), vblk.ada_lin[1].bias.view(6, c)
            w9, b9 = blk.ada_lin[1].weight.view(9, c, c), blk.ada_lin[1].bias.view(9, c)
            # VAR: gamma1, gamma2, scale1, scale2, shift1, shift2 (attention, FFN)
            # M-VAR: gamma1..3, scale1..3, shift1..3 (attention, Mamba, FFN)
            for dst, src in ((0, 0), (2, 1), (3, 2), (5, 3), (6, 4), (8, 5)):
                w9[dst].copy_(w6[src])
                b9[dst].copy_(b6[src])
            w9[1].copy_(torch.randn(c, c, generator=g) * 0.01)
            b9[1].fill_(0.1)  # the Mamba gate
            w9[4].zero_()
            b9[4].zero_()
            w9[7].zero_()
            b9[7].zero_()
            m = blk.mamba
            nn.init.normal_(m.in_proj.weight, std=0.02, generator=g)
            nn.init.normal_(m.out_proj.weight, std=0.02 / math.sqrt(2 * self.depth), generator=g)
            bound = 1 / math.sqrt(m.d_conv)
            m.conv1d.weight.uniform_(-bound, bound, generator=g)
            m.conv1d.bias.uniform_(-bound, bound, generator=g)
            m.init_mamba(g)

    def forward_train(self, labels, x_BLCv):
        """Teacher forcing: labels (B,), x_BLCv (B, L-1, Cvae) next-scale inputs -> logits (B, L, V)."""
        x, cond = self.train_inputs(labels, x_BLCv)
        bias = self.attn_bias_for_masking.to(x.dtype)
        for blk in self.blocks:
            x, _ = blk(x, cond, bias, None)
        return self.head(self.head_nm(x, cond))

    def step_state(self, x, cond, states):
        """One scale's tokens with each block's Mamba-2 state carried from the previous scale."""
        for i, blk in enumerate(self.blocks):
            x, states[i] = blk(x, cond, None, states[i])
        return self.head(self.head_nm(x, cond)).float()

    # generate() drives VAR and M-VAR alike through `step`
    def new_memory(self):
        return [None] * self.depth

    def step(self, x, cond, memory):
        return self.step_state(x, cond, memory)


# ----------------------------------------------------------------------------------------------------
# Multi-scale VQVAE
# ----------------------------------------------------------------------------------------------------
class Mid(var_reference.Mid):
    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class UpLevel(nn.Module):
    def __init__(self, cin, cout, blocks, with_attn, with_upsample):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        for j in range(blocks):
            self.block.append(ResBlock(cin if j == 0 else cout, cout))
            if with_attn:
                self.attn.append(AttnBlock(cout))
        if with_upsample:
            self.upsample = Upsample(cout)


class Decoder(nn.Module):
    """LDM-style decoder: conv_in, mid (Res, Attn, Res), up levels from the highest index down to 0
    (AttnBlocks only on the highest level), Upsample on every level but 0, norm_out, SiLU, conv_out."""

    def __init__(self, cvae, ch, ch_mult, blocks):
        super().__init__()
        nlev = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(cvae, block_in, 3, 1, 1)
        self.mid = Mid(block_in)
        levels = [None] * nlev
        for i in reversed(range(nlev)):
            block_out = ch * ch_mult[i]
            levels[i] = UpLevel(block_in, block_out, blocks, with_attn=(i == nlev - 1), with_upsample=(i != 0))
            block_in = block_out
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, 1, 1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            lvl = self.up[i]
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn) > 0:
                    h = lvl.attn[j](h)
            if i != 0:
                h = lvl.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Encoder(nn.Module):
    """A light encoder (not exported, so its layout is ours): conv_in, then per level a stride-2 conv and
    one ResBlock, then a mid ResBlock + AttnBlock, norm, SiLU, conv_out to Cvae."""

    def __init__(self, cvae, ch, ch_mult, blocks=1):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch * ch_mult[0], 3, 1, 1)
        layers = []
        cin = ch * ch_mult[0]
        for i in range(1, len(ch_mult)):
            cout = ch * ch_mult[i]
            layers.append(nn.Conv2d(cin, cout, 3, 2, 1))
            for _ in range(blocks):
                layers.append(ResBlock(cout, cout))
            cin = cout
        self.down = nn.Sequential(*layers)
        self.mid_block = ResBlock(cin, cin)
        self.mid_attn = AttnBlock(cin)
        self.norm_out = group_norm(cin)
        self.conv_out = nn.Conv2d(cin, cvae, 3, 1, 1)

    def forward(self, x):
        h = self.down(self.conv_in(x))
        h = self.mid_attn(self.mid_block(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class QuantResi(nn.Module):
    def __init__(self, cvae):
        super().__init__()
        self.qresi_ls = nn.ModuleList([nn.Conv2d(cvae, cvae, 3, 1, 1) for _ in range(PHI_K)])

    def phi(self, k, h):
        return 0.5 * h + 0.5 * self.qresi_ls[k](h)


class Quantize(nn.Module):
    def __init__(self, vocab, cvae):
        super().__init__()
        self.embedding = nn.Embedding(vocab, cvae)
        self.quant_resi = QuantResi(cvae)


class VQVAE(nn.Module):
    def __init__(self, vocab, cvae, ch, ch_mult, dec_blocks, patch_nums, beta=0.25):
        super().__init__()
        self.vocab, self.cvae = vocab, cvae
        self.patch_nums = tuple(patch_nums)
        self.sn = len(self.patch_nums)
        self.latent = self.patch_nums[-1]
        self.beta = beta
        self.phi_table = [phi_index(si, self.sn) for si in range(self.sn)]
        self.encoder = Encoder(cvae, ch, ch_mult)
        self.quant_conv = nn.Conv2d(cvae, cvae, 3, 1, 1)
        self.quantize = Quantize(vocab, cvae)
        self.post_quant_conv = nn.Conv2d(cvae, cvae, 3, 1, 1)
        self.decoder = Decoder(cvae, ch, ch_mult, dec_blocks)

    def encode(self, img):
        return self.quant_conv(self.encoder(img))

    def phi(self, si, h):
        return self.quantize.quant_resi.phi(self.phi_table[si], h)

    def quantize_ms(self, f, with_residuals=False):
        """Residual multi-scale quantization. Returns (f_hat with straight-through gradient, vq loss,
        token index list [(B, pn*pn)], and optionally the per-scale residual vectors before lookup)."""
        b = f.shape[0]
        emb = self.quantize.embedding.weight
        f_rest = f.detach()
        f_hat = torch.zeros_like(f)
        loss = 0.0
        idx_list, resid = [], []
        e2 = (emb * emb).sum(1)
        for si, pn in enumerate(self.patch_nums):
            r = area_down(f_rest, pn)
            flat = r.permute(0, 2, 3, 1).reshape(-1, self.cvae)
            with torch.no_grad():
                d = e2.unsqueeze(0) - 2 * flat @ emb.t()
                idx = d.argmin(1)
            if with_residuals:
                resid.append(flat.detach())
            h = emb[idx].view(b, pn, pn, self.cvae).permute(0, 3, 1, 2)
            h = self.phi(si, bicubic_up(h, self.latent))
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            loss = loss + F.mse_loss(f_hat, f.detach()) + self.beta * F.mse_loss(f_hat.detach(), f)
            idx_list.append(idx.view(b, pn * pn))
        f_st = f + (f_hat - f).detach() if self.training else f_hat
        # gradient for the codebook / Phi comes from the loss; the decoder gets straight-through f
        out = (f_st, loss / self.sn, idx_list)
        return out + (resid,) if with_residuals else out

    def decode(self, f_hat):
        return self.decoder(self.post_quant_conv(f_hat))

    @torch.no_grad()
    def tokens_to_inputs(self, idx_list):
        """Teacher-forcing inputs (B, L-1, Cvae): area-downsampled running f_hat for scales 1.., and f_hat."""
        b = idx_list[0].shape[0]
        emb = self.quantize.embedding.weight
        f_hat = torch.zeros(b, self.cvae, self.latent, self.latent, dtype=emb.dtype)
        xs = []
        for si, pn in enumerate(self.patch_nums):
            h = emb[idx_list[si]].view(b, pn, pn, self.cvae).permute(0, 3, 1, 2)
            f_hat = f_hat + self.phi(si, bicubic_up(h, self.latent))
            if si < self.sn - 1:
                xs.append(area_down(f_hat, self.patch_nums[si + 1]).flatten(2).transpose(1, 2))
        return torch.cat(xs, dim=1), f_hat

    def to_image(self, f_hat):
        return (self.decode(f_hat).clamp(-1, 1) + 1) / 2


# ----------------------------------------------------------------------------------------------------
# Sampling (spec section 2)
# ----------------------------------------------------------------------------------------------------
def filter_top_k_top_p(logits, top_k, top_p):
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if 0 < top_p < 1:
        sl, si = logits.sort(dim=-1, descending=False)
        cum = sl.softmax(dim=-1).cumsum(dim=-1)
        remove = cum <= (1 - top_p)
        remove[..., -1] = False  # never the largest
        logits = logits.masked_fill(remove.scatter(-1, si, remove), -math.inf)
    return logits


@torch.no_grad()
def generate(var, vae, labels, cfg=3.0, top_k=100, top_p=0.9, seed=0):
    """KV-cached next-scale generation; returns images (B, 3, H, W) in [0, 1] and token lists."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    b = labels.shape[0]
    cond = var.class_emb(torch.cat([labels, torch.full_like(labels, var.num_classes)]))
    lvl_pos = var.lvl_pos()
    x = cond.unsqueeze(1) + var.pos_start + lvl_pos[:, :1]
    caches = var.new_memory() if hasattr(var, "new_memory") else [dict() for _ in var.blocks]
    emb = vae.quantize.embedding.weight
    f_hat = torch.zeros(b, vae.cvae, vae.latent, vae.latent)
    toks = []
    for si, pn in enumerate(var.patch_nums):
        logits = var.step(x, cond, caches) if hasattr(var, "step") else var.step_kv(x, cond, caches)
        t = cfg * si / (var.sn - 1)
        logits = (1 + t) * logits[:b] - t * logits[b:]
        logits = filter_top_k_top_p(logits, top_k, top_p)
        probs = logits.softmax(-1).view(-1, logits.shape[-1])
        idx = torch.multinomial(probs, 1, generator=g).view(b, pn * pn)
        toks.append(idx)
        h = emb[idx].view(b, pn, pn, vae.cvae).permute(0, 3, 1, 2)
        f_hat = f_hat + vae.phi(si, bicubic_up(h, vae.latent))
        if si < var.sn - 1:
            nxt = area_down(f_hat, var.patch_nums[si + 1]).flatten(2).transpose(1, 2)
            bb, ee = var.begin_ends[si + 1]
            x = var.word_embed(nxt) + lvl_pos[:, bb:ee]
            x = torch.cat([x, x], dim=0)
    return vae.to_image(f_hat), toks


# ----------------------------------------------------------------------------------------------------
# safetensors (float16 / float32), no dependency
# ----------------------------------------------------------------------------------------------------
_DT = {"F16": ("<f2", 2), "F32": ("<f4", 4)}


def write_safetensors(path, tensors, metadata, dtype="F16"):
    header = OrderedDict()
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    blobs, off = [], 0
    for name, t in tensors.items():
        dt = dtype if not isinstance(t, tuple) else t[1]
        arr = t if not isinstance(t, tuple) else t[0]
        if torch.is_tensor(arr):
            arr = arr.detach().float().cpu().numpy()
        a = np.ascontiguousarray(np.asarray(arr, dtype=_DT[dt][0]))
        if dt == "F16":
            assert np.isfinite(a).all(), f"{name} overflows float16"
        raw = a.tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
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
    out = OrderedDict()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        a = np.frombuffer(data[8 + n + b:8 + n + e], dtype=_DT[info["dtype"]][0]).reshape(info["shape"])
        out[name] = torch.from_numpy(a.astype(np.float32))
    return header.get("__metadata__", {}), out
