#!/usr/bin/env bash
# The GPU run (issues 14 and 15), on the lent device, from the repository root with .gl and .devbin
# carried (scripts/gpu/build.sh made them). Every step writes under $OUT and goes on when one fails;
# $OUT/summary.txt lists each step's exit status and time. About 8 minutes on an H200.
#   1. correctness on the GPU: every op test's `cuda` configuration (CUDA kernels against the float64
#      references, poisoned outputs) and `wgpu_full` (the WGSL kernels on NVIDIA's Vulkan driver);
#      the model tests on both; the NVRTC compile check for the device's own architecture;
#   2. benchmarks, both backends from this one run: matmul, dense and GRAT attention at the Flux shape,
#      the selective scan, VAR-d16 256px end to end;
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
    lib="$(find / -name 'libnvrtc.so.13' -path '*nvidia*' 2>/dev/null | head -1)"
    [[ -n "$lib" ]] && export SCALEWISE_NVRTC_DIR="$(dirname "$lib")"
fi
export SCALEWISE_CACHE_DIR="$OUT/cache"
B=.devbin
: >"$OUT/summary.txt"
step() {
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc ${SECONDS}s-${start}s" | tee -a "$OUT/summary.txt"
}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step info-cuda 60 $B/scalewise --backend cuda info
step info-vulkan 60 $B/scalewise --backend vulkan info
step nvrtc-compile 120 $B/test-cuda --nocapture
step ops-cuda 300 $B/test-ops --test-threads 4 ::cuda
step ops-wgpu 300 $B/test-ops --test-threads 4 ::wgpu_full
step models-cuda 300 $B/test-models --test-threads 2 ::cuda
for backend in cuda vulkan; do
    step "bench-matmul-$backend" 240 $B/scalewise --backend "$backend" bench matmul --sizes 1024,2048,4096 \
        --dtype f32,f16 --naive-max 0 --iters 10 --json "$OUT/matmul-$backend.json"
    step "bench-attention-$backend" 400 $B/scalewise --backend "$backend" bench attention --grids 64x64,128x128,512x512 \
        --text 512 --heads 24 --head-dim 128 --dtype f16 --iters 3 --dense-max-tokens 20000 --json "$OUT/attention-$backend.json"
    step "bench-scan-$backend" 240 $B/scalewise --backend "$backend" bench scan --shapes 8x2048x16x4096,1x1536x16x2048 \
        --dtype f32,f16 --naive-max-length 0 --iters 5 --json "$OUT/scan-$backend.json"
    step "bench-generate-$backend" 240 $B/scalewise --backend "$backend" bench generate --model var --depth 16 \
        --iters 5 --json "$OUT/generate-$backend.json"
done
step torch-peers 400 python3 $B/torch_peers.py --out "$OUT/torch.json"
cat "$OUT/summary.txt"
