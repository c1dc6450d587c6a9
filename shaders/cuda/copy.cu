// Block copy between two tensors viewed as (outer, dim, inner) (shaders/wgsl/copy.wgsl): the one
// kernel behind slice, concat and in-place writes into a preallocated KV cache; and the last-two-axes
// transpose. Elements are moved as store_t bits (f32, f16 or u32), never converted.
SW_KERNEL(copy_block, THREADS_1D, 1, 1, (const store_t* src, store_t* dst, const CopyParams p)) {
    const u32 idx = grid_block() * THREADS_1D + threadIdx.x;
    if (idx >= p.total) return;
    const u32 i = idx % p.inner;
    const u32 rest = idx / p.inner;
    const u32 j = rest % p.count;
    const u32 o = rest / p.count;
    dst[(o * p.dst_len + p.dst_start + j) * p.inner + i] = src[(o * p.src_len + p.src_start + j) * p.inner + i];
}

// (outer, count, inner) -> (outer, inner, count): the token-map <-> NCHW transposes of the VQVAE.
// Reuses CopyParams: total elements, count and inner.
SW_KERNEL(transpose_last2, THREADS_1D, 1, 1, (const store_t* src, store_t* dst, const CopyParams p)) {
    const u32 idx = grid_block() * THREADS_1D + threadIdx.x;
    if (idx >= p.total) return;
    // idx walks the output (o, i, j) so writes are contiguous.
    const u32 j = idx % p.count;
    const u32 rest = idx / p.count;
    const u32 i = rest % p.inner;
    const u32 o = rest / p.inner;
    dst[idx] = src[(o * p.count + j) * p.inner + i];
}
