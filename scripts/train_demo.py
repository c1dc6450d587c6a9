#!/usr/bin/env python3
"""Train the scalewise demo models on CPU: a multi-scale VQVAE + class-conditional VAR (official
architecture and key names) on the procedural dataset of scripts/demo_data.py, a tiny classifier for
the semantic end-to-end test, and float16 safetensors exports that the Rust loader reads.

One command (about 80 minutes on 2 CPU cores: VQVAE 20, decoder 6, VAR 34, the classifier about 18;
the stages can also be run one at a time or as a comma-separated list, and every stage after `vae`
resumes from the checkpoints in --work):

    /tmp/torchenv/bin/python scripts/train_demo.py --stage all \
        --vae-minutes 20 --dec-minutes 6 --var-minutes 34 --work /tmp/scalewise_demo --out assets/demo

The shipped assets/demo files were made in two steps. First a base run with exactly these settings,
run as `--stage vae,tokenize,var`, then `--stage classifier --threads 1` (concurrently, under nice),
then `--stage decoder,export,eval` (the decoder stage leaves the tokens unchanged, so its position
does not matter); the checkerboard squares were then 6-12 px (period 12-24), about one latent cell,
and the VAR learnt them poorly (12.5% recognised). Then, with today's 12-20 px squares (period
24-40 in demo_data.py; the VQVAE kept as it was, every other class's images unchanged):
`--stage tokenize`, `--stage classifier --threads 1 --cls-rounds 4` (concurrently, under nice) with
`--stage var --var-resume 1 --var-minutes 16 --var-lr 5e-4 --var-class-weights checkerboard=2`,
then `--stage export,eval`. A fresh `--stage all` run trains on the new squares from the start.
Then check the Rust generator against PyTorch with scripts/demo_parity.py.

Stages (in order):
    vae        train the VQVAE (encoder -> quant_conv -> residual quantization over patch_nums with
               Phi, straight-through estimator, codebook + 0.25 commitment losses, dead-code restarts;
               decoder(post_quant_conv(f_hat)); MSE + L1 reconstruction). The learning-rate schedule
               runs on wall-clock time (cosine over --vae-minutes), so a busy CPU only means fewer steps.
    decoder    decoder-only fine-tuning (encoder, codebook, Phi frozen: token maps unchanged).
    tokenize   encode --tokens images once with the frozen VQVAE (token maps of every scale).
    var        teacher-forced VAR training (block-causal mask, cross-entropy on all L tokens, 10% label
               dropout to the null class, AdamW with warmup, cosine over --var-minutes).
    classifier MLP 768 -> 512 (ReLU) -> classes on 16x16 area-downsampled RGB in [0, 1] (channel-major);
               the feature standardisation is folded into the first layer (--cls-hidden 0: logistic).
    export     assets/demo/{var,vae,classifier}.safetensors (float16 models, float32 classifier).
    eval       reload the exported f16 files, generate (cfg 3.5, top_k 100, top_p 0.9) a few seeds
               per class, classify them, write eval.json and a sample grid PNG.

Models (defaults): images 64x64, latent 8x8, patch_nums 1..8 (L = 204); VQVAE codebook 512 x 16,
decoder ch 32, ch_mult (1, 1, 2, 2), 2 ResBlocks per level; VAR depth 4, width 256, 4 heads.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_data import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES, grid, make_dataset, write_png  # noqa: E402
from demo_models import VAR, VQVAE, generate, read_safetensors, write_safetensors  # noqa: E402

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 7, 8)
FORMAT = "scalewise-demo-1"


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def to_tensor(imgs_u8):
    return torch.from_numpy(imgs_u8).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def build_vae(a):
    return VQVAE(a.vocab, a.cvae, a.vae_ch, tuple(a.ch_mult), a.dec_blocks, PATCH_NUMS)


def build_var(a):
    return VAR(a.depth, a.width, a.width // 64, NUM_CLASSES, a.vocab, a.cvae, PATCH_NUMS)


def set_lr(opt, lr):
    for gp in opt.param_groups:
        gp["lr"] = lr


def optimizer_step(opt, loss, params, tuner):
    """zero_grad, backward, gradient norm clipped at 2, step; then the thread tuner times the step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 2.0)
    opt.step()
    tuner.after()


def cosine_lr(frac, peak, warm_frac, floor=0.05):
    if frac < warm_frac:
        return peak * max(frac / warm_frac, 0.02)
    p = min((frac - warm_frac) / max(1 - warm_frac, 1e-9), 1.0)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


class ThreadTuner:
    """The CPU is shared with other jobs (cargo builds): with 2 busy cores, 2 torch threads can be many
    times slower than 1 (OpenMP barriers). Periodically time a few steps with 1 and with 2 threads and
    keep the faster setting."""

    def __init__(self, max_threads, probe=12, period=250):
        self.max, self.probe, self.period = max_threads, probe, period
        self.plan, self.times, self.choice = [], {}, max_threads
        self._schedule()

    def _schedule(self):
        self.plan = [self.max] * self.probe + [1] * self.probe if self.max > 1 else []
        self.times = {}

    def before(self):
        n = self.plan[0] if self.plan else self.choice
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        self._t = time.time()
        return n

    def after(self):
        dt = time.time() - self._t
        if self.plan:
            n = self.plan.pop(0)
            self.times.setdefault(n, []).append(dt)
            if not self.plan:
                med = {k: float(np.median(v[2:])) for k, v in self.times.items()}
                self.choice = min(med, key=med.get)
                log(f"threads: median step {med} -> {self.choice}")
                self.countdown = self.period
        else:
            self.countdown -= 1
            if self.countdown <= 0:
                self._schedule()


def save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# VQVAE
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def init_phi_identity(vae):
    for conv in vae.quantize.quant_resi.qresi_ls:
        conv.weight.normal_(0, 0.01)
        conv.weight[:, :, 1, 1] += torch.eye(vae.cvae)
        conv.bias.zero_()


def train_vae(a):
    torch.manual_seed(0)
    vae = build_vae(a)
    init_phi_identity(vae)
    opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, betas=(0.9, 0.95), weight_decay=0.0)
    budget = a.vae_minutes * 60
    t0 = time.time()
    last_save = t0
    hits = torch.zeros(a.vocab)
    step, data_seed = 0, 10_000
    ema = None
    vae.train()
    tuner = ThreadTuner(a.threads)
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1 or step >= a.vae_max_steps:
            break
        lr = cosine_lr(frac, a.vae_lr, 0.02)
        set_lr(opt, lr)
        tuner.before()
        imgs, _ = make_dataset(a.vae_batch, seed=data_seed + step)
        x = to_tensor(imgs)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            f = vae.encode(x)
        f = f.float()
        f_st, vq_loss, idx_list, resid = vae.quantize_ms(f, with_residuals=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            y = vae.decode(f_st)
        y = y.float()
        mse = F.mse_loss(y, x)
        l1 = (y - x).abs().mean()
        loss = mse + l1 + vq_loss
        optimizer_step(opt, loss, vae.parameters(), tuner)
        step += 1
        for idx in idx_list:
            hits += torch.bincount(idx.flatten(), minlength=a.vocab).float()
        # dead-code restarts: codes unused over the last window get residual vectors of this batch
        if step % a.restart_every == 0 or step == 20:
            dead = (hits == 0).nonzero().flatten()
            used = int((hits > 0).sum())
            if len(dead) > 0 and frac < 0.85:
                pool = torch.cat(resid, 0)
                pick = pool[torch.randint(0, pool.shape[0], (len(dead),))]
                with torch.no_grad():
                    emb = vae.quantize.embedding.weight
                    emb[dead] = pick + 0.01 * torch.randn_like(pick)
                    st = opt.state.get(emb)
                    if st:
                        st["exp_avg"][dead] = 0
                        st["exp_avg_sq"][dead] = 0
            log(f"vae step {step} codes used {used}/{a.vocab}, restarted {len(dead) if frac < 0.85 else 0}")
            hits.zero_()
        cur = dict(loss=loss.item(), mse=mse.item(), l1=l1.item(), vq=vq_loss.item())
        ema = cur if ema is None else {k: 0.98 * ema[k] + 0.02 * v for k, v in cur.items()}
        if step % 50 == 0:
            el = time.time() - t0
            log(f"vae step {step} t={el:.0f}s lr={lr:.2e} " + " ".join(f"{k}={v:.4f}" for k, v in ema.items())
                + f" ({el / step:.3f}s/step)")
        if time.time() - last_save > 120:
            save(dict(model=vae.state_dict(), step=step, ema=ema, wall=time.time() - t0, args=vars(a)),
                 os.path.join(a.work, "vae.pt"))
            last_save = time.time()
    wall = time.time() - t0
    save(dict(model=vae.state_dict(), step=step, ema=ema, wall=wall, args=vars(a)), os.path.join(a.work, "vae.pt"))
    log(f"vae done: {step} steps in {wall:.0f}s, {ema}")


def finetune_decoder(a):
    """Decoder-only fine-tuning: encoder, quant_conv, codebook and Phi stay frozen, so the token maps
    (and a VAR trained on them) are unchanged; only post_quant_conv + decoder learn to sharpen."""
    torch.manual_seed(4)
    vae, ck = load_vae(a)
    train_params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    for p in vae.parameters():
        p.requires_grad_(False)
    for p in train_params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(train_params, lr=a.dec_lr, betas=(0.9, 0.95), weight_decay=0.0)
    budget = a.dec_minutes * 60
    t0 = time.time()
    step, ema = 0, None
    vae.eval()  # quantize_ms without the straight-through path
    vae.decoder.train()
    tuner = ThreadTuner(a.threads)
    while (time.time() - t0) < budget:
        frac = (time.time() - t0) / budget
        lr = cosine_lr(frac, a.dec_lr, 0.03)
        set_lr(opt, lr)
        tuner.before()
        imgs, _ = make_dataset(a.vae_batch, seed=2_000_000 + step)
        x = to_tensor(imgs)
        with torch.no_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
                f = vae.encode(x)
            f_hat, _, _ = vae.quantize_ms(f.float())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            y = vae.decode(f_hat)
        y = y.float()
        mse = F.mse_loss(y, x)
        l1 = (y - x).abs().mean()
        loss = mse + l1
        optimizer_step(opt, loss, train_params, tuner)
        step += 1
        cur = dict(loss=loss.item(), mse=mse.item(), l1=l1.item())
        ema = cur if ema is None else {k: 0.98 * ema[k] + 0.02 * v for k, v in cur.items()}
        if step % 50 == 0:
            log(f"decoder step {step} t={time.time() - t0:.0f}s lr={lr:.2e} "
                + " ".join(f"{k}={v:.4f}" for k, v in ema.items()))
    wall = time.time() - t0
    ck_ema = dict(ck["ema"])
    ck_ema.update({"dec_ft_" + k: v for k, v in ema.items()})
    save(dict(model=vae.state_dict(), step=ck["step"], dec_steps=step, ema=ck_ema, wall=ck["wall"], dec_wall=wall,
              args=vars(a)), os.path.join(a.work, "vae.pt"))
    log(f"decoder fine-tuning done: {step} steps in {wall:.0f}s, {ema}")


def load_vae(a):
    ck = torch.load(os.path.join(a.work, "vae.pt"), map_location="cpu", weights_only=False)
    vae = build_vae(a)
    vae.load_state_dict(ck["model"])
    return vae.eval(), ck


@torch.no_grad()
def tokenize(a):
    vae, _ = load_vae(a)
    n, bs = a.tokens, 250
    t0 = time.time()
    toks = np.empty((n, sum(p * p for p in PATCH_NUMS)), dtype=np.int16)
    labels = np.empty(n, dtype=np.int64)
    mse_sum = 0.0
    tuner = ThreadTuner(a.threads, probe=4, period=40)
    for i in range(0, n, bs):
        imgs, lab = make_dataset(bs, seed=500_000 + i)
        x = to_tensor(imgs)
        tuner.before()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            f = vae.encode(x)  # as in training
        _, _, idx_list = vae.quantize_ms(f.float())
        tuner.after()
        toks[i:i + bs] = torch.cat(idx_list, 1).numpy()
        labels[i:i + bs] = lab
        if i < 2000:
            _, f_hat = vae.tokens_to_inputs(idx_list)
            mse_sum += F.mse_loss(vae.decode(f_hat).clamp(-1, 1), x).item() * bs
        if (i // bs) % 40 == 0:
            log(f"tokenize {i + bs}/{n} ({time.time() - t0:.0f}s)")
    usage = [len(np.unique(toks[:, b:e])) for b, e in zip(*_begin_ends())]
    log(f"tokenized {n} images in {time.time() - t0:.0f}s; recon mse (first 2000, [-1,1]) "
        f"{mse_sum / 2000:.4f}; distinct codes per scale {usage}")
    np.savez(os.path.join(a.work, "tokens.npz"), tokens=toks, labels=labels)


def _begin_ends():
    b, e, cur = [], [], 0
    for p in PATCH_NUMS:
        b.append(cur)
        cur += p * p
        e.append(cur)
    return b, e


def split_tokens(t):
    b, e = _begin_ends()
    return [t[:, bb:ee] for bb, ee in zip(b, e)]


# ----------------------------------------------------------------------------------------------------
# VAR (and, through these helpers, train_demo_mvar.py's M-VAR)
# ----------------------------------------------------------------------------------------------------
def class_weights(items):
    """Per-class weights for sampling the batches from name=weight strings (1 for the rest)."""
    cw = torch.ones(NUM_CLASSES)
    for item in items:
        name, w = item.split("=")
        cw[CLASS_NAMES.index(name)] = float(w)
    return cw


def adamw(model, lr):
    """AdamW with weight decay 0.05 on the matrices, none on embeddings, positions, biases, gains."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "pos_" not in name and "embed" not in name and "class_emb" not in name
         else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def batch_loss_fn(a, vae, model, g):
    """batch_loss(tokens, labels, drop): teacher-forced per-token cross-entropy (B, L); `drop` swaps
    a.label_drop of the labels for the null class (drawn from `g`)."""

    def batch_loss(t, lab, drop):
        x_in, _ = vae.tokens_to_inputs(split_tokens(t))
        if drop:
            lab = torch.where(torch.rand(lab.shape, generator=g) < a.label_drop, torch.full_like(lab, NUM_CLASSES), lab)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            logits = model.forward_train(lab, x_in)
        logits = logits.float()
        return F.cross_entropy(logits.reshape(-1, a.vocab), t.reshape(-1), reduction="none").view(t.shape)

    return batch_loss


def train_var(a):
    torch.manual_seed(1)
    vae, _ = load_vae(a)
    for p in vae.parameters():
        p.requires_grad_(False)
    d = np.load(os.path.join(a.work, "tokens.npz"))
    toks = torch.from_numpy(d["tokens"].astype(np.int64))
    labels = torch.from_numpy(d["labels"])
    n_val = 1000
    val_t, val_l = toks[:n_val], labels[:n_val]
    tr_t, tr_l = toks[n_val:], labels[n_val:]
    var = build_var(a)
    var.init_weights(seed=1)
    prev = None
    if a.var_resume:  # continue from the last checkpoint (fresh optimizer, short warmup)
        prev = torch.load(os.path.join(a.work, "var.pt"), map_location="cpu", weights_only=False)
        var.load_state_dict(prev["model"])
        log(f"var: resuming from step {prev['step']}")
    # optional class weights for sampling the batches (e.g. to give hard classes more steps)
    cw = class_weights(a.var_class_weights)
    opt = adamw(var, a.var_lr)
    budget = a.var_minutes * 60
    t0 = time.time()
    last_save = t0
    g = torch.Generator().manual_seed(2)
    step, ema, val = 0, None, None
    var.train()

    batch_loss = batch_loss_fn(a, vae, var, g)

    perm = torch.randperm(len(tr_t), generator=g)
    pos = 0
    tuner = ThreadTuner(a.threads)
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1 or step >= a.var_max_steps:
            break
        lr = cosine_lr(frac, a.var_lr, 0.03)
        set_lr(opt, lr)
        tuner.before()
        if bool((cw != 1).any()):
            bi = torch.multinomial(cw[tr_l], a.var_batch, replacement=True, generator=g)
        else:
            if pos + a.var_batch > len(perm):
                perm, pos = torch.randperm(len(tr_t), generator=g), 0
            bi = perm[pos:pos + a.var_batch]
            pos += a.var_batch
        ce = batch_loss(tr_t[bi], tr_l[bi], True)
        loss = ce.mean()
        optimizer_step(opt, loss, var.parameters(), tuner)
        step += 1
        b, e = _begin_ends()
        cur = dict(loss=loss.item(), ce_first4=ce[:, :b[4]].mean().item(), ce_last=ce[:, b[-1]:].mean().item())
        ema = cur if ema is None else {k: 0.98 * ema[k] + 0.02 * v for k, v in cur.items()}
        if step % 25 == 0:
            el = time.time() - t0
            log(f"var step {step} t={el:.0f}s lr={lr:.2e} " + " ".join(f"{k}={v:.4f}" for k, v in ema.items())
                + f" ({el / step:.3f}s/step)")
        if step % 500 == 0:
            var.eval()
            with torch.no_grad():
                val = batch_loss(val_t[:500], val_l[:500], False).mean().item()
            var.train()
            log(f"var step {step} val ce {val:.4f}")
        if time.time() - last_save > 120:
            save(dict(model=var.state_dict(), step=step, ema=ema, val=val, wall=time.time() - t0, args=vars(a)),
                 os.path.join(a.work, "var.pt"))
            last_save = time.time()
    wall = time.time() - t0
    var.eval()
    with torch.no_grad():
        val = batch_loss(val_t, val_l, False).mean().item()
    extra = {}
    if prev is not None:  # record the whole history: base run + fine-tuning
        extra = dict(base_step=prev.get("base_step", prev["step"]), base_wall=prev.get("base_wall", prev["wall"]),
                     base_ema=prev.get("base_ema", prev["ema"]), base_val=prev.get("base_val", prev["val"]),
                     ft_class_weights=list(a.var_class_weights))
    save(dict(model=var.state_dict(), step=step, ema=ema, val=val, wall=wall, args=vars(a), **extra),
         os.path.join(a.work, "var.pt"))
    log(f"var done: {step} steps in {wall:.0f}s, train {ema}, val ce {val:.4f}")


def load_var(a):
    ck = torch.load(os.path.join(a.work, "var.pt"), map_location="cpu", weights_only=False)
    var = build_var(a)
    var.load_state_dict(ck["model"])
    return var.eval(), ck


# ----------------------------------------------------------------------------------------------------
# Classifier (features: 16x16 area-downsampled RGB in [0, 1], channel-major)
# ----------------------------------------------------------------------------------------------------
def features(imgs01):
    """imgs01: (N, 3, H, W) float in [0, 1] -> (N, 768)."""
    return F.adaptive_avg_pool2d(imgs01, 16).reshape(imgs01.shape[0], -1)


def _feats_u8(imgs_u8):
    return features(torch.from_numpy(imgs_u8).permute(0, 3, 1, 2).float() / 255.0)


class Classifier(torch.nn.Module):
    """features (768) -> Linear(hidden) -> ReLU -> Linear(num_classes); hidden = 0 is logistic regression."""

    def __init__(self, hidden):
        super().__init__()
        self.hidden = torch.nn.Linear(768, hidden) if hidden > 0 else None
        self.out = torch.nn.Linear(hidden if hidden > 0 else 768, NUM_CLASSES)

    def forward(self, f):
        return self.out(F.relu(self.hidden(f)) if self.hidden is not None else f)


def classifier_from_tensors(t):
    hidden = t["hidden.weight"].shape[0] if "hidden.weight" in t else 0
    m = Classifier(hidden)
    sd = {"out.weight": t["weight"], "out.bias": t["bias"]}
    if hidden:
        sd.update({"hidden.weight": t["hidden.weight"], "hidden.bias": t["hidden.bias"]})
    m.load_state_dict(sd)
    return m.eval()


def train_classifier(a):
    torch.manual_seed(3)
    t0 = time.time()
    tx, ty = (torch.as_tensor(v) for v in make_dataset(2000, seed=950_000))
    tx = _feats_u8(tx.numpy())
    m = Classifier(a.cls_hidden)
    # standardise the features with statistics of a first sample; folded into the first layer at the end
    mu_x = _feats_u8(make_dataset(5000, seed=899_999)[0])
    mu, sd = mu_x.mean(0), mu_x.std(0).clamp_min(1e-3)
    norm = lambda f: (f - mu) / sd  # noqa: E731
    tx = norm(tx)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    # fresh procedural data for each "epoch" chunk (the model sees cls_train * cls_rounds images)
    for r in range(a.cls_rounds):
        imgs, lab = make_dataset(a.cls_train, seed=900_000 + r)
        x, y = norm(_feats_u8(imgs)), torch.from_numpy(lab)
        for ep in range(a.cls_epochs):
            frac = (r * a.cls_epochs + ep) / (a.cls_rounds * a.cls_epochs)
            set_lr(opt, 2e-3 * (1 - frac) + 1e-5)
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 128):
                bi = perm[i:i + 128]
                loss = F.cross_entropy(m(x[bi]), y[bi])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            acc = (m(tx).argmax(1) == ty).float().mean().item()
        log(f"classifier round {r}: held-out acc {acc:.4f} ({time.time() - t0:.0f}s)")
    with torch.no_grad():
        acc_tr = (m(x).argmax(1) == y).float().mean().item()
        pred = m(tx).argmax(1)
        acc = (pred == ty).float().mean().item()
        per = {CLASS_NAMES[c]: round((pred[ty == c] == c).float().mean().item(), 4) for c in range(NUM_CLASSES)}
    log(f"classifier: train acc {acc_tr:.4f}, held-out acc {acc:.4f}, per class {per}")
    first = m.hidden if m.hidden is not None else m.out
    w = first.weight.detach() / sd  # fold the standardisation: W (f - mu) / sd + b
    b = first.bias.detach() - w @ mu
    if m.hidden is not None:
        t = {"weight": m.out.weight.detach().clone(), "bias": m.out.bias.detach().clone(),
             "hidden.weight": w.clone(), "hidden.bias": b.clone()}
    else:
        t = {"weight": w.clone(), "bias": b.clone()}
    with torch.no_grad():  # the folded tensors give the same predictions on raw features
        chk = classifier_from_tensors(t)(_feats_u8(make_dataset(2000, seed=950_000)[0])).argmax(1)
    log(f"classifier folded: agreement with the trained model {(chk == pred).float().mean().item():.4f}")
    save(dict(tensors=t, acc=acc, per=per, acc_train=acc_tr), os.path.join(a.work, "classifier.pt"))


# ----------------------------------------------------------------------------------------------------
# Export / eval
# ----------------------------------------------------------------------------------------------------
def common_meta():
    return {
        "patch_nums": json.dumps(list(PATCH_NUMS)),
        "class_names": json.dumps(CLASS_NAMES),
        "image_size": str(IMAGE_SIZE),
        "format": FORMAT,
    }


def export(a):
    os.makedirs(a.out, exist_ok=True)
    vae, vck = load_vae(a)
    var, ack = load_var(a)
    cls = torch.load(os.path.join(a.work, "classifier.pt"), map_location="cpu", weights_only=False)
    training = {
        "vae": {"steps": vck["step"], "batch": a.vae_batch, "wall_s": round(vck["wall"]),
                "decoder_finetune_steps": vck.get("dec_steps", 0), "decoder_finetune_wall_s": round(vck.get("dec_wall", 0)),
                "final_loss_ema": {k: round(v, 5) for k, v in vck["ema"].items()}},
        "var": {"steps": ack["step"], "batch": a.var_batch, "wall_s": round(ack["wall"]),
                **({"base_steps": ack["base_step"], "base_wall_s": round(ack["base_wall"]),
                    "base_val_ce": round(ack["base_val"], 4), "finetune_steps": ack["step"],
                    "finetune_class_weights": ack["ft_class_weights"]} if "base_step" in ack else {}),
                "final_train_ce_ema": round(ack["ema"]["loss"], 4), "val_ce": round(ack["val"], 4),
                "tokenized_images": a.tokens, "label_drop": a.label_drop},
        "device": "cpu (2 cores)",
    }
    meta = common_meta()
    meta["training"] = json.dumps(training, separators=(",", ":"))
    var_sd = {k: v for k, v in var.state_dict().items()}
    vae_sd = {k: v for k, v in vae.state_dict().items()
              if k.startswith(("decoder.", "post_quant_conv.", "quantize."))}
    p_var, p_vae, p_cls = (os.path.join(a.out, f) for f in ("var.safetensors", "vae.safetensors", "classifier.safetensors"))
    write_safetensors(p_var, var_sd, dict(meta, model="var", depth=str(a.depth), width=str(a.width),
                                          heads=str(a.width // 64)))
    write_safetensors(p_vae, vae_sd, dict(meta, model="vqvae", vocab=str(a.vocab), cvae=str(a.cvae),
                                          ch=str(a.vae_ch), ch_mult=json.dumps(list(a.ch_mult)),
                                          blocks_per_level=str(a.dec_blocks)))
    cmeta = common_meta()
    ct = cls["tensors"]
    arch = ("logistic regression: logits = weight @ f + bias" if "hidden.weight" not in ct else
            "MLP: logits = weight @ relu(hidden.weight @ f + hidden.bias) + bias")
    cmeta.update({
        "model": "classifier",
        "architecture": arch + "; f = the RGB image (values in [0,1]) area-downsampled to 16x16 "
                        "(mean of 4x4 pixel blocks for 64x64), flattened channel-major (index c*256+y*16+x)",
        "feature_size": "16",
        "held_out_accuracy": f"{cls['acc']:.4f}",
    })
    write_safetensors(p_cls, {k: (v, "F32") for k, v in ct.items()}, cmeta)
    nvar = sum(v.numel() for v in var_sd.values())
    nvae = sum(v.numel() for v in vae_sd.values())
    for p, n in ((p_var, nvar), (p_vae, nvae), (p_cls, sum(v.numel() for v in ct.values()))):
        log(f"wrote {p}: {os.path.getsize(p)} bytes, {n} parameters")


def load_exported(a):
    mv, sv = read_safetensors(os.path.join(a.out, "var.safetensors"))
    me, se = read_safetensors(os.path.join(a.out, "vae.safetensors"))
    mc, sc = read_safetensors(os.path.join(a.out, "classifier.safetensors"))
    assert json.loads(mv["patch_nums"]) == list(PATCH_NUMS) and json.loads(mv["class_names"]) == CLASS_NAMES
    var = build_var(a)
    var.load_state_dict(sv, strict=True)
    vae = build_vae(a)
    missing, unexpected = vae.load_state_dict(se, strict=False)
    assert not unexpected and all(k.startswith(("encoder.", "quant_conv.")) for k in missing), (missing, unexpected)
    return var.eval(), vae.eval(), sc


@torch.no_grad()
def evaluate(a):
    torch.set_num_threads(a.threads)
    var, vae, cls = load_exported(a)

    clf = classifier_from_tensors(cls)

    def classify(imgs01):
        return clf(features(imgs01)).argmax(1)

    ri, rl = make_dataset(2000, seed=950_000)
    pr = classify(torch.from_numpy(ri).permute(0, 3, 1, 2).float() / 255.0)
    real_acc = (pr == torch.from_numpy(rl)).float().mean().item()
    # VQVAE reconstructions of real images (classifier on reconstructions)
    # the export has no encoder: take encoder + quant_conv from the training checkpoint for this check
    full, _ = load_vae(a)
    vae.encoder.load_state_dict(full.encoder.state_dict())
    vae.quant_conv.load_state_dict(full.quant_conv.state_dict())
    x = to_tensor(ri[:500])
    f_hat, _, _ = vae.quantize_ms(vae.encode(x))
    rec = vae.to_image(f_hat)
    rec_acc = (classify(rec) == torch.from_numpy(rl[:500])).float().mean().item()
    per_class, samples = {}, []
    total = 0
    for c in range(NUM_CLASSES):
        ok = 0
        imgs_c = []
        for s in range(a.eval_seeds):
            imgs, _ = generate(var, vae, [c] * a.eval_per_seed, cfg=a.cfg, top_k=a.top_k, top_p=a.top_p,
                               seed=1000 * c + s)
            ok += int((classify(imgs) == c).sum())
            imgs_c.append(imgs)
        n = a.eval_seeds * a.eval_per_seed
        per_class[CLASS_NAMES[c]] = round(ok / n, 3)
        total += ok
        samples.append(torch.cat(imgs_c)[:8])
    gen_acc = total / (NUM_CLASSES * a.eval_seeds * a.eval_per_seed)
    sheet = torch.cat(samples).permute(0, 2, 3, 1).mul(255).round().clamp(0, 255).byte().numpy()
    write_png(os.path.join(a.out, "samples.png"), grid(sheet, NUM_CLASSES, 8))
    res = {"classifier_real_acc": round(real_acc, 4), "classifier_vqvae_recon_acc": round(rec_acc, 4),
           "generated_acc": round(gen_acc, 4), "generated_per_class": per_class,
           "sampling": {"cfg": a.cfg, "top_k": a.top_k, "top_p": a.top_p,
                        "images_per_class": a.eval_seeds * a.eval_per_seed},
           "recon_mse_01": round(F.mse_loss(rec, (x + 1) / 2).item(), 5)}
    log("eval " + json.dumps(res))
    with open(os.path.join(a.work, "eval.json"), "w") as f:
        json.dump(res, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--stage", default="all", help="all, or a comma-separated list of stages")
    ap.add_argument("--work", default="/tmp/scalewise_demo")
    ap.add_argument("--out", default="assets/demo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", type=int, default=1, help="bfloat16 autocast for training matmuls/convs")
    # VQVAE
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--cvae", type=int, default=16)
    ap.add_argument("--vae-ch", type=int, default=32)
    ap.add_argument("--ch-mult", type=int, nargs="+", default=[1, 1, 2, 2])
    ap.add_argument("--dec-blocks", type=int, default=2)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--vae-minutes", type=float, default=20)
    ap.add_argument("--vae-max-steps", type=int, default=10**9)
    ap.add_argument("--restart-every", type=int, default=100)
    ap.add_argument("--dec-minutes", type=float, default=6)
    ap.add_argument("--dec-lr", type=float, default=5e-4)
    # tokens
    ap.add_argument("--tokens", type=int, default=40000)
    # VAR
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--var-batch", type=int, default=48)
    ap.add_argument("--var-lr", type=float, default=1e-3)
    ap.add_argument("--var-minutes", type=float, default=34)
    ap.add_argument("--var-max-steps", type=int, default=10**9)
    ap.add_argument("--label-drop", type=float, default=0.1)
    ap.add_argument("--var-resume", type=int, default=0, help="1: continue from --work/var.pt")
    ap.add_argument("--var-class-weights", nargs="*", default=[], help="name=weight for batch sampling")
    # classifier / eval
    ap.add_argument("--cls-train", type=int, default=30000, help="fresh images per classifier round")
    ap.add_argument("--cls-rounds", type=int, default=6)
    ap.add_argument("--cls-epochs", type=int, default=10, help="epochs per round")
    ap.add_argument("--cls-hidden", type=int, default=512, help="0 = logistic regression")
    ap.add_argument("--cfg", type=float, default=3.5)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--eval-seeds", type=int, default=4)
    ap.add_argument("--eval-per-seed", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    all_stages = ["vae", "decoder", "tokenize", "var", "classifier", "export", "eval"]
    stages = all_stages if a.stage == "all" else a.stage.split(",")
    assert all(s in all_stages for s in stages), stages
    t0 = time.time()
    for st in stages:
        log(f"=== stage {st}")
        {"vae": train_vae, "decoder": finetune_decoder, "tokenize": tokenize, "var": train_var, "classifier": train_classifier,
         "export": export, "eval": evaluate}[st](a)
    log(f"all stages done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
