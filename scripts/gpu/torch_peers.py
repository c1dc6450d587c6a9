#!/usr/bin/env python3
"""The torch side of the GPU run (scripts/gpu/run.sh): what a user would otherwise pick, measured on
the same GPU in the same run as scalewise's kernels. Writes one JSON file.

- GEMM: torch.matmul at 1024..4096 cubed in f32 (TF32 off), f16 and bf16 (cuBLAS);
- dense attention: scaled_dot_product_attention, d 128, 24 heads, 4096..16384 tokens, f16;
- GRAT at the Flux 8192^2 shape (512x512 latent tokens in 16x16 groups + 512 text tokens, 24 heads,
  d 128) as FlexAttention block masks (GRAT-B: own group; GRAT-X: own row and column of groups),
  against SDPA over all tokens;
- selective scan (8, 2048, 16, 4096): a torch reference scan (chunked over time, as users write it);
- copy bandwidth (a 4 GiB device-to-device copy), the bandwidth the scan is measured against.
Times are medians of CUDA-event-timed runs after warm-up.
"""
import argparse
import json
import statistics

import torch


def timed(fn, iters=10, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def gemm(results):
    torch.backends.cuda.matmul.allow_tf32 = False
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n in (1024, 2048, 4096):
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            s = timed(lambda: a @ b)
            results.append({"bench": "gemm", "dtype": str(dtype), "n": n, "seconds": s, "tflops": 2 * n**3 / s / 1e12})


def sdpa(results):
    import torch.nn.functional as F

    for tokens in (4096, 8192, 16384):
        q, k, v = (torch.randn(1, 24, tokens, 128, device="cuda", dtype=torch.float16) for _ in range(3))
        s = timed(lambda: F.scaled_dot_product_attention(q, k, v), iters=5)
        results.append({"bench": "sdpa", "tokens": tokens, "seconds": s, "tflops": 4 * 24 * tokens**2 * 128 / s / 1e12})


def grat(results):
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    side, group, text = 512, 16, 512
    image = side * side
    tokens = image + text
    groups_per_row = side // group

    def group_of(idx):
        row, col = idx // side, idx % side
        return (row // group) * groups_per_row + col // group

    def grat_b(b, h, q, kv):
        is_text = (q >= image) | (kv >= image)
        return is_text | (group_of(q) == group_of(kv))

    def grat_x(b, h, q, kv):
        is_text = (q >= image) | (kv >= image)
        gq, gk = group_of(q), group_of(kv)
        return is_text | (gq // groups_per_row == gk // groups_per_row) | (gq % groups_per_row == gk % groups_per_row)

    q, k, v = (torch.randn(1, 24, tokens, 128, device="cuda", dtype=torch.float16) for _ in range(3))
    flex = torch.compile(flex_attention)
    dense = timed(lambda: F.scaled_dot_product_attention(q, k, v), iters=3, warmup=1)
    results.append({"bench": "grat", "pattern": "dense-sdpa", "tokens": tokens, "seconds": dense})
    for name, mask_fn in (("grat-b", grat_b), ("grat-x", grat_x)):
        mask = create_block_mask(mask_fn, None, None, tokens, tokens, device="cuda", BLOCK_SIZE=128)
        s = timed(lambda: flex(q, k, v, block_mask=mask), iters=3, warmup=2)
        results.append({"bench": "grat", "pattern": name + "-flex", "tokens": tokens, "seconds": s, "vs_dense_sdpa": dense / s})


def scan(results):
    b, d, n, length = 8, 2048, 16, 4096
    for dtype in (torch.float32, torch.float16):
        u = torch.randn(b, d, length, device="cuda", dtype=dtype)
        delta = torch.rand(b, d, length, device="cuda", dtype=dtype) * 0.1
        a = -torch.rand(d, n, device="cuda")
        bm = torch.randn(b, n, length, device="cuda", dtype=dtype)
        cm = torch.randn(b, n, length, device="cuda", dtype=dtype)

        def run():
            x = torch.zeros(b, d, n, device="cuda")
            ys = []
            for t in range(length):
                dt = delta[:, :, t].float()
                x = torch.exp(dt[..., None] * a) * x + (dt * u[:, :, t].float())[..., None] * bm[:, None, :, t].float()
                ys.append((x * cm[:, None, :, t].float()).sum(-1))
            return torch.stack(ys, -1)

        s = timed(run, iters=2, warmup=1)
        moved = (3 * b * d * length + 2 * b * n * length) * u.element_size()
        results.append({"bench": "scan-torch-loop", "dtype": str(dtype), "seconds": s, "gbps": moved / s / 1e9})


def copy(results):
    x = torch.empty(1 << 30, device="cuda", dtype=torch.float32)
    y = torch.empty_like(x)
    s = timed(lambda: y.copy_(x))
    results.append({"bench": "copy", "bytes": 2 * x.numel() * 4, "seconds": s, "gbps": 2 * x.numel() * 4 / s / 1e9})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = [{"device": torch.cuda.get_device_name(), "torch": torch.__version__}]
    for bench in (copy, gemm, sdpa, scan, grat):
        try:
            bench(results)
        except Exception as e:  # one peer failing must not lose the others
            results.append({"bench": bench.__name__, "error": repr(e)})
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
