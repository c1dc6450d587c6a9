// f32 -> f16 storage (shaders/wgsl/cast_to_f16.wgsl; compiled with store_t = f16), round to nearest even.
SW_KERNEL(cast_f32_to_store, THREADS_1D, 1, 1, (const float* src, store_t* dst, const CastParams p)) {
    const u32 idx = grid_block() * THREADS_1D + threadIdx.x;
    if (idx < p.n) store_f32(dst, idx, src[idx]);
}
