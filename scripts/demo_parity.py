#!/usr/bin/env python3
"""Cross-check the Rust generator against PyTorch on the exported demo models (assets/demo).

For each class it runs `scalewise generate --top-k 1 --dump-tokens` (greedy: no RNG involved), runs the
same greedy generation in PyTorch (float32, from the float16 safetensors), compares the token maps scale
by scale and the images, and classifies the Rust PNG with assets/demo/classifier.safetensors.

    /tmp/torchenv/bin/python scripts/demo_parity.py --bin target/release/scalewise --cfg 3.5
(run from the repository root; set WGPU_BACKEND / XDG_RUNTIME_DIR as the binary needs)
"""

import argparse
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_data import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from demo_models import VAR, VQVAE, generate, read_safetensors  # noqa: E402


def read_png(path):
    """Minimal 8-bit PNG reader (grey/RGB/RGBA, non-interlaced) -> uint8 (H, W, C)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        tag = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if tag == b"IHDR":
            ihdr = body
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    w, h = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    depth, ctype, interlace = ihdr[8], ihdr[9], ihdr[12]
    assert depth == 8 and interlace == 0 and ctype in (0, 2, 6), (depth, ctype, interlace)
    ch = {0: 1, 2: 3, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = w * ch
    out = np.zeros((h, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)], dtype=np.uint8).astype(np.int32)
        cur = np.zeros(stride, dtype=np.int32)
        for x in range(stride):
            a = cur[x - ch] if x >= ch else 0
            b = prev[x]
            c = prev[x - ch] if x >= ch else 0
            if f == 0:
                p = 0
            elif f == 1:
                p = a
            elif f == 2:
                p = b
            elif f == 3:
                p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[x] = (line[x] + p) & 255
        out[y] = cur
        prev = cur
    return out.reshape(h, w, ch).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/scalewise")
    ap.add_argument("--assets", default="assets/demo")
    ap.add_argument("--cfg", type=float, default=3.5)
    ap.add_argument("--classes", default=",".join(str(c) for c in range(NUM_CLASSES)))
    ap.add_argument("--tmp", default="/tmp/scalewise_parity")
    a = ap.parse_args()
    torch.set_num_threads(2)
    os.makedirs(a.tmp, exist_ok=True)
    mv, sv = read_safetensors(os.path.join(a.assets, "var.safetensors"))
    me, se = read_safetensors(os.path.join(a.assets, "vae.safetensors"))
    _, sc = read_safetensors(os.path.join(a.assets, "classifier.safetensors"))
    pn = json.loads(mv["patch_nums"])
    width = sv["class_emb.weight"].shape[1]
    depth = sum(1 for k in sv if k.endswith("attn.mat_qkv.weight"))
    heads = sv["blocks.0.attn.scale_mul_1H11"].shape[1]
    vocab, cvae = se["quantize.embedding.weight"].shape
    var = VAR(depth, width, heads, sv["class_emb.weight"].shape[0] - 1, vocab, cvae, pn)
    var.load_state_dict(sv)
    ch_mult = json.loads(me["ch_mult"])
    vae = VQVAE(vocab, cvae, int(me["ch"]), ch_mult, int(me["blocks_per_level"]), pn)
    vae.load_state_dict(se, strict=False)
    var.eval()
    vae.eval()

    def classify(img01):  # (N, 3, H, W)
        f = torch.nn.functional.adaptive_avg_pool2d(img01, 16).reshape(img01.shape[0], -1)
        if "hidden.weight" in sc:
            f = torch.relu(f @ sc["hidden.weight"].t() + sc["hidden.bias"])
        return (f @ sc["weight"].t() + sc["bias"]).argmax(1)

    env = dict(os.environ)
    env.setdefault("WGPU_BACKEND", "vulkan")
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")
    results = []
    for c in [int(x) for x in a.classes.split(",")]:
        png = os.path.join(a.tmp, f"class{c}.png")
        tok = os.path.join(a.tmp, f"class{c}.json")
        cmd = [a.bin, "generate", "--var", os.path.join(a.assets, "var.safetensors"), "--vae",
               os.path.join(a.assets, "vae.safetensors"), "--class", str(c), "--cfg", str(a.cfg), "--top-k", "1",
               "--out", png, "--dump-tokens", tok, "--quiet"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print("FAILED:", " ".join(cmd), r.stderr[-2000:])
            sys.exit(1)
        rust_toks = json.load(open(tok))["tokens"]
        with torch.no_grad():
            img, toks = generate(var, vae, [c], cfg=a.cfg, top_k=1, top_p=0.0, seed=0)
        py_toks = [t[0].tolist() for t in toks]
        per_scale = [int(sum(x != y for x, y in zip(rt, pt))) for rt, pt in zip(rust_toks, py_toks)]
        first_diff = next((si for si, d in enumerate(per_scale) if d), None)
        rimg = read_png(png)[..., :3].astype(np.float32) / 255.0
        rimg_t = torch.from_numpy(rimg).permute(2, 0, 1)[None]
        pimg = (img[0].permute(1, 2, 0).numpy() * 255).round() / 255
        img_diff = float(np.abs(rimg - pimg).max()) if first_diff is None else None
        pred = int(classify(rimg_t)[0])
        results.append(dict(cls=CLASS_NAMES[c], token_mismatches_per_scale=per_scale, first_diff_scale=first_diff,
                            max_abs_pixel_diff=img_diff, rust_png_classified_as=CLASS_NAMES[pred]))
        print(json.dumps(results[-1]), flush=True)
    ok = sum(r["first_diff_scale"] is None for r in results)
    rec = sum(r["rust_png_classified_as"] == r["cls"] for r in results)
    print(f"identical greedy token maps: {ok}/{len(results)}; Rust images classified correctly: {rec}/{len(results)}")


if __name__ == "__main__":
    main()
