// f16 storage -> f32 (shaders/wgsl/cast_to_f32.wgsl; compiled with store_t = f16).
SW_KERNEL(cast_store_to_f32, THREADS_1D, 1, 1, (const store_t* src, float* dst, const CastParams p)) {
    const u32 idx = grid_block() * THREADS_1D + threadIdx.x;
    if (idx < p.n) dst[idx] = to_f32(src[idx]);
}
