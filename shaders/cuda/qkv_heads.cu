// VAR self-attention input (shaders/wgsl/qkv_heads.wgsl): splits the fused projection qkv (R, 3, H, D)
// of R = B * T new tokens into per-head queries q (R, H, D) and appends keys and values to the KV
// caches (B, cap, H, D) at token `start`. With L2_NORM, q and k are L2-normalised per head (eps 1e-12)
// and q is multiplied by the head's temperature head_scale[h] (computed on the host).
// One block of REDUCE_WG threads per (token, head); head_dim is any size.
#ifndef L2_NORM
#define L2_NORM 1
#endif

SW_KERNEL(qkv_heads, REDUCE_WG, 1, 1,
          (const store_t* qkv, const float* head_scale, store_t* q, store_t* k_cache, store_t* v_cache,
           const QkvParams p)) {
    __shared__ float scratch[32];
    const u32 item = grid_block();
    // Uniform per block, so the barriers below stay in uniform control flow.
    if (item >= p.rows * p.heads) return;
    const u32 row = item / p.heads;
    const u32 h = item % p.heads;
    const u32 width = p.heads * p.dim;
    const u32 q_base = row * 3u * width + h * p.dim;
    const u32 k_base = q_base + width;
    const u32 v_base = k_base + width;
    const u32 b = row / p.tokens;
    const u32 t = row % p.tokens;
    const u32 cache_base = ((b * p.cap + p.start + t) * p.heads + h) * p.dim;
    const u32 out_base = item * p.dim;

    float q_scale = 1.0f;
    float k_scale = 1.0f;
    if (L2_NORM) {
        float q_sq = 0.0f;
        float k_sq = 0.0f;
        for (u32 d = threadIdx.x; d < p.dim; d += REDUCE_WG) {
            const float qv = to_f32(qkv[q_base + d]);
            const float kv = to_f32(qkv[k_base + d]);
            q_sq += qv * qv;
            k_sq += kv * kv;
        }
        const float q_norm = sqrtf(block_sum(q_sq, scratch));
        const float k_norm = sqrtf(block_sum(k_sq, scratch));
        q_scale = head_scale[h] / fmaxf(q_norm, 1e-12f);
        k_scale = 1.0f / fmaxf(k_norm, 1e-12f);
    }
    for (u32 d = threadIdx.x; d < p.dim; d += REDUCE_WG) {
        store_f32(q, out_base + d, to_f32(qkv[q_base + d]) * q_scale);
        store_f32(k_cache, cache_base + d, to_f32(qkv[k_base + d]) * k_scale);
        v_cache[cache_base + d] = qkv[v_base + d];
    }
}
