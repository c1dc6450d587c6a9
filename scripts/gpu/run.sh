#!/usr/bin/env bash
# The GPU run (issues 14 and 15), on the lent device, from the repository root with .gl and .devbin
# carried (scripts/gpu/build.sh made them): `bash scripts/gpu/run.sh PART`. Every step writes its
# log and JSON under $RUN and goes on when one fails; $RUN/summary.txt lists each step's exit status
# and time. After every step $RUN is packed into $OUT/gpu-run.tar.gz beside a copy of the summary:
# the device sends back at most 8 files from $OUT, and whatever a command that ran out of time left
# there. A task that draws a device gets 15 minutes
# of it in all, start-up included, and at most 10 per command, so the parts are sized for that and run
# as separate commands, most important first: `run.sh vulkan` (its steps' limits sum to 505 s; call it
# with timeout_s 560), then with what is left `run.sh check`, `run.sh vulkan-more`, `run.sh cuda`,
# `run.sh torch`. No argument runs all five.
#   vulkan: issue 15's rows through NVIDIA's Vulkan driver: the peak probes (FMA loop, copy
#     bandwidth, dispatch gap); VAR-d16 256px end to end twice, the first process filling the
#     pipeline cache and the second timing the first image with it warm; matmul on square sizes and
#     VAR-d16's Linear shapes against the measured FMA peak; dense and GRAT attention at the Flux
#     shape; the WGSL op tests (`wgpu_full`: every kernel against its float64 reference on this
#     driver); VAR-d16's KV-cache attention steps;
#   check: correctness of the CUDA backend: the NVRTC compile check, every op test's and the model
#     tests' `cuda` configuration;
#   vulkan-more: VAR-d16 with the cooperative matrices off (what the matrix units give end to end),
#     the selective scan and SSD's two forms at M-VAR d16's shape; the attention without subgroups
#     (what DX12 without DXC and GL run) with its four-row staged scores in two key slices and in one,
#     and with one row per thread;
#   cuda: the benchmarks above on the CUDA backend;
#   torch: the torch peers on the same GPU (cuBLAS GEMM, SDPA, FlexAttention with GRAT's block mask, a
#     torch selective scan, copy bandwidth).
set -uo pipefail
OUT="${OUT:-$(pwd)/gpu-out}"
RUN="${RUN:-/tmp/scalewise-gpu-run}"
mkdir -p "$OUT" "$RUN"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
# The WGSL kernels on NVIDIA's Vulkan driver, not its GL one.
export WGPU_BACKEND=vulkan
# NVRTC: the device's Python environment has it (torch's CUDA wheels).
if [[ -z "${SCALEWISE_NVRTC_DIR:-}" ]]; then
    sites="$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
    # shellcheck disable=SC2086
    lib="$(find $sites /usr/local/cuda* -name 'libnvrtc.so.13' 2>/dev/null | head -1)"
    [[ -n "$lib" ]] && export SCALEWISE_NVRTC_DIR="$(dirname "$lib")"
fi
# build.sh gzipped the executables.
for f in .devbin/*.gz; do
    gunzip -c "$f" >"${f%.gz}" && chmod +x "${f%.gz}"
done
# The tests read their fixtures under the folder they were built in (build.sh wrote it down).
built_in="$(cat .devbin/built-in 2>/dev/null)"
if [[ -n "$built_in" && ! -e "$built_in" ]]; then
    mkdir -p "$(dirname "$built_in")" && ln -s "$(pwd)" "$built_in"
fi
# Compiled kernels stay on the device (not packed with $RUN).
export SCALEWISE_CACHE_DIR=/tmp/scalewise-cache
B=.devbin
PARTS="${1:-vulkan check vulkan-more cuda torch}"
touch "$RUN/summary.txt"
step() {
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$RUN/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$RUN/summary.txt"
    pack
}
pack() {
    tar -czf "$OUT/gpu-run.tar.gz.part" -C "$RUN" . && mv "$OUT/gpu-run.tar.gz.part" "$OUT/gpu-run.tar.gz"
    cp "$RUN/summary.txt" "$OUT/summary.txt"
}
PEAK_ARGS=()
# The device's own limits (FMA loop, copy, dispatch gap); matmul is then quoted against the measured
# FMA peak.
peaks() {
    step "bench-peaks-$1" 40 $B/scalewise --backend "$1" bench peaks --json "$RUN/peaks-$1.json"
    local gflops
    gflops="$(python3 -c 'import json,sys; print([p["value"] * 1000 for p in json.load(open(sys.argv[1]))["peaks"] if p["probe"] == "fma"][0])' "$RUN/peaks-$1.json" 2>/dev/null)"
    [[ -n "$gflops" ]] && PEAK_ARGS=(--peak-gflops "$gflops")
}
# VAR-d16 256px, batch 1 with CFG (issue 15: under 50 ms; the first image under 150 ms with a warm
# pipeline cache). The first process compiles and caches the pipelines (SCALEWISE_CACHE_DIR above);
# the second's first image is the one with the cache warm.
generate() {
    step "bench-generate-$1-cold" 70 $B/scalewise --backend "$1" bench generate --model var --depth 16 \
        --iters 3 --json "$RUN/generate-$1-cold.json"
    step "bench-generate-$1" 60 $B/scalewise --backend "$1" bench generate --model var --depth 16 \
        --iters 5 --json "$RUN/generate-$1.json"
}
# Square sizes, then VAR-d16's Linear shapes at batch 1 with CFG: the conditioning (2 rows), the
# last scale's QKV, fc1 and fc2 (512 rows); every kernel and what Auto picks.
matmul() {
    step "bench-matmul-$1" 80 $B/scalewise --backend "$1" bench matmul --sizes 1024,2048,4096 \
        --linear 2x1024x6144,512x1024x3072,512x1024x4096,512x4096x1024 \
        --dtype f32,f16 --naive-max 0 --iters 10 "${PEAK_ARGS[@]}" --json "$RUN/matmul-$1.json"
}
attention() {
    step "bench-attention-$1" 100 $B/scalewise --backend "$1" bench attention --grids 64x64,128x128,512x512 \
        --text 512 --heads 24 --head-dim 128 --dtype f16 --iters 3 --dense-max-tokens 20000 --json "$RUN/attention-$1.json"
}
# VAR-d16's KV-cache steps with CFG (32 heads of 64): each scale's rows over the 680 keys of the last
# scale, the blocks splitting their keys beside a device whose blocks do not.
kv_steps() {
    step "bench-kv-steps-$1" 40 $B/scalewise --backend "$1" bench attention \
        --kv-steps 1x680,4x680,16x680,64x680,256x680 --heads 32 --head-dim 64 --dtype f32,f16 --iters 10 \
        --json "$RUN/kv-steps-$1.json"
}
# The scalar attention without subgroups, f32 at head_dim 64: four rows per thread with staged scores
# in two key slices (the default there on a GPU), in one (SCALEWISE_DISABLE=key-split), then one row
# per thread (SCALEWISE_DISABLE=staged-scores).
no_subgroups_attention() {
    step "bench-attention-staged-$1" 40 env SCALEWISE_DISABLE=subgroups $B/scalewise --backend "$1" bench attention \
        --grids 64x64 --heads 16 --head-dim 64 --dtype f32 --iters 5 --json "$RUN/attention-staged-$1.json"
    step "bench-attention-staged-one-slice-$1" 40 env SCALEWISE_DISABLE=subgroups,key-split $B/scalewise \
        --backend "$1" bench attention --grids 64x64 --heads 16 --head-dim 64 --dtype f32 --iters 5 \
        --json "$RUN/attention-staged-one-slice-$1.json"
    step "bench-attention-one-row-$1" 40 env SCALEWISE_DISABLE=subgroups,staged-scores $B/scalewise --backend "$1" \
        bench attention --grids 64x64 --heads 16 --head-dim 64 --dtype f32 --iters 5 \
        --json "$RUN/attention-one-row-$1.json"
}
scan() {
    step "bench-scan-$1" 90 $B/scalewise --backend "$1" bench scan --shapes 8x2048x16x4096,1x1536x16x2048 \
        --dtype f32,f16 --naive-max-length 0 --iters 5 --ssd-forms --json "$RUN/scan-$1.json"
}
for part in $PARTS; do
    case "$part" in
    vulkan)
        nvidia-smi >"$RUN/nvidia-smi.txt" 2>&1
        step info-vulkan 15 $B/scalewise --backend vulkan info
        peaks vulkan
        generate vulkan
        matmul vulkan
        attention vulkan
        step ops-wgpu 100 $B/test-ops --test-threads 8 ::wgpu_full
        kv_steps vulkan
        ;;
    check)
        step info-cuda 30 $B/scalewise --backend cuda info
        step nvrtc-compile 120 $B/test-cuda --nocapture
        step ops-cuda 150 $B/test-ops --test-threads 8 ::cuda --skip cuda_cpu
        step models-cuda 120 $B/test-models --test-threads 4 ::cuda --skip cuda_cpu
        ;;
    vulkan-more)
        # The same generation with the cooperative matrices off (matmul and attention, qkv_attention
        # included, on the scalar kernels).
        step bench-generate-vulkan-no-coop 90 env SCALEWISE_DISABLE=coop $B/scalewise --backend vulkan \
            bench generate --model var --depth 16 --iters 5 --json "$RUN/generate-vulkan-no-coop.json"
        scan vulkan
        no_subgroups_attention vulkan
        ;;
    cuda)
        generate cuda
        matmul cuda
        attention cuda
        scan cuda
        ;;
    torch) step torch-peers 500 python3 scripts/gpu/torch_peers.py --out "$RUN/torch.json" ;;
    *) echo "run.sh: unknown part $part (vulkan, check, vulkan-more, cuda, torch)" >&2 ;;
    esac
done
pack
cat "$RUN/summary.txt"
