#!/usr/bin/env python3
"""Train the embedded M-VAR demo model on CPU: the demo data's token maps through the shipped demo
VQVAE (assets/demo/vae.safetensors), an M-VAR of the official architecture and key names
(scripts/demo_models.py: attention inside each scale, Mamba-2 across scales), and its float16 export
assets/demo/mvar.safetensors beside the VAR demo.

One command (about 80 minutes on 2 CPU cores):

    /tmp/torchenv/bin/python scripts/train_demo_mvar.py --stage all --work /tmp/scalewise_mvar

The shipped assets/demo/mvar.safetensors was made in two runs (PyTorch 2.15 CPU, 2026-12-02, with
cargo builds sharing the cores, so the wall-clock schedules gave fewer steps than an idle machine):
`--stage encoder,tokenize,mvar,export,eval --mvar-minutes 42` (624 steps, validation CE 2.281, 84.4%
of generated images recognised), then `--stage mvar,export,eval --mvar-resume 1 --mvar-minutes 30
--mvar-lr 4e-4 --class-weights checkerboard=2 sunset=2 plus_sign=1.5 two_dots=1.5` (312 more steps,
validation CE 2.222, 87.5% recognised).

Stages (in order):
    encoder   the shipped VQVAE has no encoder (the Rust side only decodes), so one is rebuilt against it:
              a fresh encoder + quant_conv trained for --enc-minutes through the frozen codebook, Phi,
              post_quant_conv and decoder (reconstruction MSE + L1 through the straight-through estimator,
              plus the 0.25 commitment loss). The token maps it makes decode with the shipped decoder.
    tokenize  encode --tokens procedural images (scripts/demo_data.py) into token maps of every scale.
    mvar      teacher-forced M-VAR training (block-diagonal attention inside a scale, Mamba-2 over the
              whole multi-scale sequence, cross-entropy on all L tokens, 10% label dropout to the null
              class, AdamW, cosine over --mvar-minutes). Depth 4, width 256, 4 heads of 64, Mamba-2 with
              d_state 64, headdim 64, expand 2, ngroups 1 (8 heads). The parts M-VAR shares with VAR
              (embeddings, attention, FFN, head) start from the shipped VAR demo; each block's Mamba-2
              layer starts from mamba_ssm's initialisation behind a small gate. VAR's attention sees
              every earlier scale and M-VAR's only its own, so what crosses scales must be learnt by the
              Mamba-2 layers.
    export    assets/demo/mvar.safetensors: the learned tensors in float16 (the official checkpoints'
              buffers are left out; the loader ignores them), with the demo's metadata.
    eval      reload the exported file, generate (cfg 3.5, top_k 100, top_p 0.9) --eval-seeds x
              --eval-per-seed images per class with the Mamba-2 state carried from scale to scale,
              classify them with assets/demo/classifier.safetensors, write eval.json and a sample grid.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_demo as td  # noqa: E402
from demo_data import CLASS_NAMES, NUM_CLASSES, grid, make_dataset, write_png  # noqa: E402
from demo_models import MVAR, generate, read_safetensors, write_safetensors  # noqa: E402

log = td.log
PATCH_NUMS = td.PATCH_NUMS


def build_mvar(a):
    return MVAR(a.depth, a.width, a.width // 64, NUM_CLASSES, a.vocab, a.cvae, PATCH_NUMS)


def shipped_vae(a):
    """The demo VQVAE as shipped (decoder, codebook, Phi, post_quant_conv); encoder + quant_conv fresh."""
    _, sd = read_safetensors(os.path.join(a.assets, "vae.safetensors"))
    vae = td.build_vae(a)
    missing, unexpected = vae.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    assert not unexpected and all(k.startswith(("encoder.", "quant_conv.")) for k in missing), (missing, unexpected)
    return vae


def train_encoder(a):
    torch.manual_seed(5)
    vae = shipped_vae(a)
    train_params = list(vae.encoder.parameters()) + list(vae.quant_conv.parameters())
    for p in vae.parameters():
        p.requires_grad_(False)
    for p in train_params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(train_params, lr=a.enc_lr, betas=(0.9, 0.95), weight_decay=0.0)
    budget = a.enc_minutes * 60
    t0 = time.time()
    step, ema = 0, None
    vae.train()
    tuner = td.ThreadTuner(a.threads)
    while (time.time() - t0) < budget:
        frac = (time.time() - t0) / budget
        lr = td.cosine_lr(frac, a.enc_lr, 0.03)
        td.set_lr(opt, lr)
        tuner.before()
        imgs, _ = make_dataset(a.vae_batch, seed=3_000_000 + step)
        x = td.to_tensor(imgs)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            f = vae.encode(x)
        f_st, vq_loss, _ = vae.quantize_ms(f.float())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            y = vae.decode(f_st)
        y = y.float()
        mse = F.mse_loss(y, x)
        l1 = (y - x).abs().mean()
        loss = mse + l1 + vq_loss
        td.optimizer_step(opt, loss, train_params, tuner)
        step += 1
        cur = dict(loss=loss.item(), mse=mse.item(), l1=l1.item(), vq=vq_loss.item())
        ema = cur if ema is None else {k: 0.98 * ema[k] + 0.02 * v for k, v in cur.items()}
        if step % 50 == 0:
            log(f"encoder step {step} t={time.time() - t0:.0f}s lr={lr:.2e} "
                + " ".join(f"{k}={v:.4f}" for k, v in ema.items()))
    wall = time.time() - t0
    # tokenize and the rest read the VQVAE from --work/vae.pt (train_demo's checkpoint format)
    td.save(dict(model=vae.state_dict(), step=step, ema=ema, wall=wall, args=vars(a)), os.path.join(a.work, "vae.pt"))
    log(f"encoder done: {step} steps in {wall:.0f}s, {ema}")


def train_mvar(a):
    torch.manual_seed(6)
    vae, _ = td.load_vae(a)
    for p in vae.parameters():
        p.requires_grad_(False)
    d = np.load(os.path.join(a.work, "tokens.npz"))
    toks = torch.from_numpy(d["tokens"].astype(np.int64))
    labels = torch.from_numpy(d["labels"])
    n_val = 1000
    val_t, val_l = toks[:n_val], labels[:n_val]
    tr_t, tr_l = toks[n_val:], labels[n_val:]
    model = build_mvar(a)
    prev = None
    if a.mvar_resume:  # continue from the last checkpoint (fresh optimizer, short warmup)
        prev = torch.load(os.path.join(a.work, "mvar.pt"), map_location="cpu", weights_only=False)
        model.load_state_dict(prev["model"])
        log(f"mvar: resuming from step {prev['step']}")
    else:
        _, var_sd = read_safetensors(os.path.join(a.assets, "var.safetensors"))
        var = td.build_var(a)
        var.load_state_dict({k: v.float() for k, v in var_sd.items()})
        model.init_from_var(var, seed=6)
    cw = td.class_weights(a.class_weights)
    opt = td.adamw(model, a.mvar_lr)
    budget = a.mvar_minutes * 60
    t0 = time.time()
    last_save = t0
    g = torch.Generator().manual_seed(7)
    step, ema, val = 0, None, None
    model.train()

    batch_loss = td.batch_loss_fn(a, vae, model, g)

    def validate(n=500, chunk=50):  # in chunks: SSD's quadratic form holds (B, L, L, heads) per block
        model.eval()
        with torch.no_grad():
            v = torch.cat([batch_loss(val_t[i:i + chunk], val_l[i:i + chunk], False) for i in range(0, n, chunk)])
        model.train()
        return v.mean().item()

    val = validate()
    log(f"mvar: val ce at the start {val:.4f}" + ("" if prev else " (VAR's shared weights, fresh Mamba-2)"))
    tuner = td.ThreadTuner(a.threads)
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1:
            break
        lr = td.cosine_lr(frac, a.mvar_lr, 0.03)
        td.set_lr(opt, lr)
        tuner.before()
        bi = torch.multinomial(cw[tr_l], a.mvar_batch, replacement=True, generator=g)
        ce = batch_loss(tr_t[bi], tr_l[bi], True)
        loss = ce.mean()
        td.optimizer_step(opt, loss, model.parameters(), tuner)
        step += 1
        b, _ = td._begin_ends()
        cur = dict(loss=loss.item(), ce_first4=ce[:, :b[4]].mean().item(), ce_last=ce[:, b[-1]:].mean().item())
        ema = cur if ema is None else {k: 0.98 * ema[k] + 0.02 * v for k, v in cur.items()}
        if step % 25 == 0:
            el = time.time() - t0
            gates = [round(blk.ada_lin[1].bias.view(9, -1)[1].mean().item(), 3) for blk in model.blocks]
            log(f"mvar step {step} t={el:.0f}s lr={lr:.2e} " + " ".join(f"{k}={v:.4f}" for k, v in ema.items())
                + f" mamba gate bias {gates} ({el / step:.3f}s/step)")
        if step % 300 == 0:
            val = validate()
            log(f"mvar step {step} val ce {val:.4f}")
        if time.time() - last_save > 120:
            td.save(dict(model=model.state_dict(), step=step, ema=ema, val=val, wall=time.time() - t0, args=vars(a)),
                    os.path.join(a.work, "mvar.pt"))
            last_save = time.time()
    wall = time.time() - t0
    val = validate(n_val)
    history = list(prev.get("history", [])) + [dict(steps=prev["step"], wall_s=round(prev["wall"]), lr=prev["args"]["mvar_lr"],
                                                    val_ce=round(prev["val"], 4))] if prev else []
    td.save(dict(model=model.state_dict(), step=step, ema=ema, val=val, wall=wall, args=vars(a), history=history),
            os.path.join(a.work, "mvar.pt"))
    log(f"mvar done: {step} steps in {wall:.0f}s, train {ema}, val ce {val:.4f}")


def export(a):
    ck = torch.load(os.path.join(a.work, "mvar.pt"), map_location="cpu", weights_only=False)
    vck = torch.load(os.path.join(a.work, "vae.pt"), map_location="cpu", weights_only=False)
    model = build_mvar(a)
    model.load_state_dict(ck["model"])
    params = dict(model.named_parameters())
    sd = {k: v for k, v in model.state_dict().items() if k in params}
    training = {
        "mvar": {"steps": ck["step"], "batch": a.mvar_batch, "wall_s": round(ck["wall"]),
                 "final_train_ce_ema": round(ck["ema"]["loss"], 4), "val_ce": round(ck["val"], 4),
                 "tokenized_images": a.tokens, "label_drop": a.label_drop,
                 "init": "embeddings, attention, FFN and head from the VAR demo; Mamba-2 fresh",
                 "earlier_runs": ck.get("history", []),
                 "class_weights": list(a.class_weights)},
        "encoder_rebuilt": {"steps": vck["step"], "wall_s": round(vck["wall"]),
                            "final_loss_ema": {k: round(v, 5) for k, v in vck["ema"].items()}},
        "device": "cpu (2 cores)",
    }
    meta = td.common_meta()
    meta["training"] = json.dumps(training, separators=(",", ":"))
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "mvar.safetensors")
    write_safetensors(path, sd, dict(meta, model="mvar", depth=str(a.depth), width=str(a.width),
                                     heads=str(a.width // 64), attention="cosine",
                                     mamba="d_state 64, d_conv 4, expand 2, headdim 64, ngroups 1"))
    log(f"wrote {path}: {os.path.getsize(path)} bytes, {sum(v.numel() for v in sd.values())} parameters")


@torch.no_grad()
def evaluate(a):
    torch.set_num_threads(a.threads)
    meta, sd = read_safetensors(os.path.join(a.out, "mvar.safetensors"))
    assert json.loads(meta["patch_nums"]) == list(PATCH_NUMS) and json.loads(meta["class_names"]) == CLASS_NAMES
    model = build_mvar(a)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    buffers = {k for k, _ in model.named_buffers()}
    assert not unexpected and set(missing) <= buffers, (missing, unexpected)
    model.eval()
    vae = shipped_vae(a).eval()
    _, cls = read_safetensors(os.path.join(a.assets, "classifier.safetensors"))
    clf = td.classifier_from_tensors({k: v.float() for k, v in cls.items()})

    def classify(imgs01):
        return clf(td.features(imgs01)).argmax(1)

    per_class, samples, total = {}, [], 0
    for c in range(NUM_CLASSES):
        ok, imgs_c = 0, []
        for s in range(a.eval_seeds):
            imgs, _ = generate(model, vae, [c] * a.eval_per_seed, cfg=a.cfg, top_k=a.top_k, top_p=a.top_p,
                               seed=1000 * c + s)
            ok += int((classify(imgs) == c).sum())
            imgs_c.append(imgs)
        n = a.eval_seeds * a.eval_per_seed
        per_class[CLASS_NAMES[c]] = round(ok / n, 3)
        total += ok
        samples.append(torch.cat(imgs_c)[:8])
    gen_acc = total / (NUM_CLASSES * a.eval_seeds * a.eval_per_seed)
    sheet = torch.cat(samples).permute(0, 2, 3, 1).mul(255).round().clamp(0, 255).byte().numpy()
    write_png(os.path.join(a.out, "mvar_samples.png"), grid(sheet, NUM_CLASSES, 8))
    res = {"generated_acc": round(gen_acc, 4), "generated_per_class": per_class,
           "sampling": {"cfg": a.cfg, "top_k": a.top_k, "top_p": a.top_p,
                        "images_per_class": a.eval_seeds * a.eval_per_seed}}
    log("eval " + json.dumps(res))
    with open(os.path.join(a.work, "eval_mvar.json"), "w") as f:
        json.dump(res, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--stage", default="all", help="all, or a comma-separated list of stages")
    ap.add_argument("--work", default="/tmp/scalewise_mvar")
    ap.add_argument("--assets", default="assets/demo", help="the shipped VAR demo (vae, var, classifier)")
    ap.add_argument("--out", default="assets/demo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", type=int, default=1, help="bfloat16 autocast for the matmuls and convs")
    # the demo VQVAE's shape (train_demo.py's defaults)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--cvae", type=int, default=16)
    ap.add_argument("--vae-ch", type=int, default=32)
    ap.add_argument("--ch-mult", type=int, nargs="+", default=[1, 1, 2, 2])
    ap.add_argument("--dec-blocks", type=int, default=2)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--enc-lr", type=float, default=2e-3)
    ap.add_argument("--enc-minutes", type=float, default=12)
    ap.add_argument("--tokens", type=int, default=20000)
    # M-VAR
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--mvar-batch", type=int, default=48)
    ap.add_argument("--mvar-lr", type=float, default=6e-4)
    ap.add_argument("--mvar-minutes", type=float, default=35)
    ap.add_argument("--label-drop", type=float, default=0.1)
    ap.add_argument("--mvar-resume", type=int, default=0, help="1: continue from --work/mvar.pt")
    ap.add_argument("--class-weights", nargs="*", default=["checkerboard=2"], help="name=weight for batch sampling")
    # eval
    ap.add_argument("--cfg", type=float, default=3.5)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--eval-seeds", type=int, default=4)
    ap.add_argument("--eval-per-seed", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    all_stages = ["encoder", "tokenize", "mvar", "export", "eval"]
    stages = all_stages if a.stage == "all" else a.stage.split(",")
    assert all(s in all_stages for s in stages), stages
    t0 = time.time()
    for st in stages:
        log(f"=== stage {st}")
        {"encoder": train_encoder, "tokenize": td.tokenize, "mvar": train_mvar, "export": export,
         "eval": evaluate}[st](a)
    log(f"all stages done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
