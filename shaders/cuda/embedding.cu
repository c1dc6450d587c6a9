// Embedding gather (shaders/wgsl/embedding.wgsl): out[r, :] = table[ids[r], :]. An id outside the
// table yields a NaN row, so a bad id is visible downstream instead of silently reading another row.
// embedding_channels_first writes the same values as (B, dim, tokens).
SW_KERNEL(embedding, THREADS_1D, 1, 1, (const u32* ids, const store_t* table, store_t* out, const EmbeddingParams p)) {
    const u32 i = grid_block() * THREADS_1D + threadIdx.x;
    if (i >= p.n) return;
    const u32 row = i / p.dim;
    const u32 col = i % p.dim;
    const u32 id = ids[row];
    if (id < p.vocab) {
        out[i] = table[id * p.dim + col];
    } else {
        store_f32(out, i, __uint_as_float(0x7fc00000u));
    }
}

// out[b, c, t] = table[ids[b, t], c]; consecutive threads write consecutive tokens of one channel.
SW_KERNEL(embedding_channels_first, THREADS_1D, 1, 1,
          (const u32* ids, const store_t* table, store_t* out, const EmbeddingParams p)) {
    const u32 i = grid_block() * THREADS_1D + threadIdx.x;
    if (i >= p.n) return;
    const u32 t = i % p.tokens;
    const u32 c = (i / p.tokens) % p.dim;
    const u32 b = i / (p.tokens * p.dim);
    const u32 id = ids[b * p.tokens + t];
    if (id < p.vocab) {
        out[i] = table[id * p.dim + c];
    } else {
        store_f32(out, i, __uint_as_float(0x7fc00000u));
    }
}
