#!/usr/bin/env bash
# The GPU run (issues 14 and 15), on the lent device, from the repository root with .gl and .devbin
# carried (scripts/gpu/build.sh made them). Every step writes under $OUT and goes on when one fails;
# $OUT/summary.txt lists each step's exit status and time. Parts, in priority order (the device
# lends 10 minutes per command and 15 in all, so run them as separate commands, most important
# first): `run.sh check`, `run.sh cuda`, `run.sh torch`, `run.sh vulkan`; no argument runs all four.
#   1. correctness on the GPU: every op test's `cuda` configuration (CUDA kernels against the float64
#      references, poisoned outputs) and `wgpu_full` (the WGSL kernels on NVIDIA's Vulkan driver);
#      the model tests' `cuda` configuration; the NVRTC compile check;
#   2. benchmarks, both backends from this one run: (Vulkan) the peak probes, then matmul, dense and
#      GRAT attention at the Flux shape, (Vulkan) KV-cache attention steps with and without key slices,
#      the selective scan and SSD's two forms at M-VAR d16's shape, VAR-d16 256px end to end;
#   3. the torch peers on the same GPU (cuBLAS GEMM, SDPA, FlexAttention with GRAT's block mask, a
#      torch selective scan, copy bandwidth).
set -uo pipefail
OUT="${OUT:-$(pwd)/gpu-out}"
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
# NVRTC: the device's Python environment has it (torch's CUDA wheels).
if [[ -z "${SCALEWISE_NVRTC_DIR:-}" ]]; then
    sites="$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
    # shellcheck disable=SC2086
    lib="$(find $sites /usr/local/cuda* -name 'libnvrtc.so.13' 2>/dev/null | head -1)"
    [[ -n "$lib" ]] && export SCALEWISE_NVRTC_DIR="$(dirname "$lib")"
fi
# Compiled kernels stay on the device (not copied back with $OUT).
export SCALEWISE_CACHE_DIR=/tmp/scalewise-cache
B=.devbin
PARTS="${1:-check cuda torch vulkan}"
touch "$OUT/summary.txt"
step() {
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/summary.txt"
}
bench() {
    local backend="$1"
    local peak_args=()
    if [[ "$backend" == vulkan ]]; then
        # The device's own limits first (FMA loop, copy, dispatch gap); matmul is then quoted against
        # the measured FMA peak.
        step "bench-peaks-$backend" 60 $B/scalewise --backend "$backend" bench peaks --json "$OUT/peaks-$backend.json"
        local gflops
        gflops="$(python3 -c 'import json,sys; print([p["value"] * 1000 for p in json.load(open(sys.argv[1]))["peaks"] if p["probe"] == "fma"][0])' "$OUT/peaks-$backend.json" 2>/dev/null)"
        [[ -n "$gflops" ]] && peak_args=(--peak-gflops "$gflops")
    fi
    # Square sizes, then VAR-d16's Linear shapes at batch 1 with CFG: the conditioning (2 rows), the
    # last scale's QKV, fc1 and fc2 (512 rows); every kernel and what Auto picks.
    step "bench-matmul-$backend" 120 $B/scalewise --backend "$backend" bench matmul --sizes 1024,2048,4096 \
        --linear 2x1024x6144,512x1024x3072,512x1024x4096,512x4096x1024 \
        --dtype f32,f16 --naive-max 0 --iters 10 "${peak_args[@]}" --json "$OUT/matmul-$backend.json"
    step "bench-attention-$backend" 200 $B/scalewise --backend "$backend" bench attention --grids 64x64,128x128,512x512 \
        --text 512 --heads 24 --head-dim 128 --dtype f16 --iters 3 --dense-max-tokens 20000 --json "$OUT/attention-$backend.json"
    if [[ "$backend" == vulkan ]]; then
        # VAR-d16's KV-cache steps with CFG (32 heads of 64): each scale's rows over the 680 keys of
        # the last scale, the blocks splitting their keys beside a device whose blocks do not.
        step "bench-kv-steps-$backend" 60 $B/scalewise --backend "$backend" bench attention \
            --kv-steps 1x680,4x680,16x680,64x680,256x680 --heads 32 --head-dim 64 --dtype f32,f16 --iters 10 \
            --json "$OUT/kv-steps-$backend.json"
    fi
    step "bench-scan-$backend" 90 $B/scalewise --backend "$backend" bench scan --shapes 8x2048x16x4096,1x1536x16x2048 \
        --dtype f32,f16 --naive-max-length 0 --iters 5 --ssd-forms --json "$OUT/scan-$backend.json"
    step "bench-generate-$backend" 120 $B/scalewise --backend "$backend" bench generate --model var --depth 16 \
        --iters 5 --json "$OUT/generate-$backend.json"
    if [[ "$backend" == vulkan ]]; then
        # The same generation with the cooperative matrices off (matmul and attention, qkv_attention
        # included, on the scalar kernels): what the matrix units give VAR-d16 end to end.
        step "bench-generate-$backend-no-coop" 120 env SCALEWISE_DISABLE=coop $B/scalewise --backend "$backend" \
            bench generate --model var --depth 16 --iters 5 --json "$OUT/generate-$backend-no-coop.json"
    fi
}
for part in $PARTS; do
    case "$part" in
    check)
        nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
        step info-cuda 30 $B/scalewise --backend cuda info
        step info-vulkan 30 $B/scalewise --backend vulkan info
        step nvrtc-compile 120 $B/test-cuda --nocapture
        step ops-cuda 150 $B/test-ops --test-threads 8 ::cuda --skip cuda_cpu
        step ops-wgpu 120 $B/test-ops --test-threads 8 ::wgpu_full
        step models-cuda 120 $B/test-models --test-threads 4 ::cuda --skip cuda_cpu
        ;;
    cuda | vulkan) bench "$part" ;;
    torch) step torch-peers 500 python3 $B/torch_peers.py --out "$OUT/torch.json" ;;
    *) echo "run.sh: unknown part $part (check, cuda, torch, vulkan)" >&2 ;;
    esac
done
cat "$OUT/summary.txt"
