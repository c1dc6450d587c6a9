// Flash attention (dense) and GRAT grouped attention, one tile machinery for both: the CUDA port of
// shaders/wgsl/attention.wgsl (same entries, block shapes, grids and algorithm).
//
// A block owns BLOCK_Q query rows of one (batch, head) and streams BLOCK_KV keys at a time through
// shared memory with an online softmax, so no L x L matrix ever exists. The dense kernel streams keys
// [0, kv_len); the grouped kernel enumerates, from its query group's coordinates, the key groups its
// pattern attends (whole groups, no per-element mask), then the valid text tokens. Tokens are
// addressed in raster order through per-row token tables: the group-major permutation is fused into
// the loads and stores.
//
// Q, K, V, O are addressed with explicit (batch, head, token) strides and a contiguous head_dim, so
// (B, H, L, D) and (B, L, H, D) tensors both work without copies; K and V share strides.
//
// Row statistics: thread t owns row t / BLOCK_KV and key t % BLOCK_KV, so a row's BLOCK_KV threads are
// consecutive lanes of one warp when BLOCK_KV is a power of two <= 32 and the block is whole warps;
// they then combine their scores with xor shuffles over BLOCK_KV lanes (an order fixed by BLOCK_KV,
// not by any hardware width). Otherwise each row is reduced by one thread through shared memory (the
// WGSL workgroup variant). Both are exact up to f32 rounding.

#ifndef HEAD_DIM
#define HEAD_DIM 64u
#endif
#ifndef BLOCK_Q
#define BLOCK_Q 16u
#endif
#ifndef BLOCK_KV
#define BLOCK_KV 16u
#endif
#ifndef THREADS
#define THREADS 256u  // BLOCK_Q * BLOCK_KV
#endif
// Tile sizes in vec4s: BLOCK_Q * ceil(HEAD_DIM / 4) and BLOCK_KV * ceil(HEAD_DIM / 4).
#ifndef Q_TILE_VECS
#define Q_TILE_VECS 256u
#endif
#ifndef KV_TILE_VECS
#define KV_TILE_VECS 256u
#endif
// The WGSL kernels' key slices; these kernels split keys among warps themselves (the _tc entries),
// so the host always passes 1.
#ifndef KV_SPLIT
#define KV_SPLIT 1u
#endif
static_assert(KV_SPLIT == 1u, "the CUDA attention kernels take no key slices");
// Image tokens arrive group-major (each group's tokens contiguous, groups in raster order) instead of
// raster-major; text tokens stay after them either way.
#ifndef GROUP_MAJOR
#define GROUP_MAJOR 0
#endif
// permute_tokens: raster -> group-major when 1, group-major -> raster when 0.
#ifndef TO_GROUP_MAJOR
#define TO_GROUP_MAJOR 1
#endif

#define ATTN_MAX_BLOCK_Q 16u
#define ATTN_MAX_BLOCK_KV 32u
// vec4s per head row, and the output vec4s each thread accumulates: ceil(HEAD_VECS / BLOCK_KV) (the
// WGSL sizes this array with its upper bound, 16).
#define ATTN_HEAD_VECS ((HEAD_DIM + 3u) / 4u)
#define ATTN_OUT_VECS ((ATTN_HEAD_VECS + BLOCK_KV - 1u) / BLOCK_KV)
#define ATTN_NO_TOKEN 0xffffffffu
// Finite "minus infinity": exp(NEG_BIG - m) is 0 and NEG_BIG - NEG_BIG is 0, never NaN.
#define ATTN_NEG_BIG (-3.0e38f)

#define ATTN_PATTERN_BLOCK_SHIFTED 0u
#define ATTN_PATTERN_BLOCK_TRUNCATED 1u
#define ATTN_PATTERN_CRISS_CROSS 2u
#define ATTN_PATTERN_ALL 3u

// Row statistics through warp shuffles when a row's threads are an aligned power-of-two run of lanes
// inside whole warps.
#if ((BLOCK_KV & (BLOCK_KV - 1u)) == 0u) && (BLOCK_KV <= 32u) && (THREADS % 32u == 0u)
#define ATTN_SHUFFLE_ROWS 1
#else
#define ATTN_SHUFFLE_ROWS 0
#endif

struct alignas(16) attn_vec4 {
    float x, y, z, w;
};

SW_DEVICE attn_vec4 attn_zero4() {
    attn_vec4 r;
    r.x = 0.0f;
    r.y = 0.0f;
    r.z = 0.0f;
    r.w = 0.0f;
    return r;
}

struct attn_uvec3 {
    u32 x, y, z;
};

SW_DEVICE attn_uvec3 attn_u3(u32 x, u32 y, u32 z) {
    attn_uvec3 r;
    r.x = x;
    r.y = y;
    r.z = z;
    return r;
}

__shared__ attn_vec4 attn_q_tile[Q_TILE_VECS];
__shared__ attn_vec4 attn_k_tile[KV_TILE_VECS];
__shared__ attn_vec4 attn_v_tile[KV_TILE_VECS];
__shared__ float attn_p_tile[ATTN_MAX_BLOCK_Q * ATTN_MAX_BLOCK_KV];  // scores, then probabilities
__shared__ float attn_row_max[ATTN_MAX_BLOCK_Q];
__shared__ float attn_row_sum[ATTN_MAX_BLOCK_Q];
__shared__ float attn_row_rescale[ATTN_MAX_BLOCK_Q];
__shared__ u32 attn_query_token[ATTN_MAX_BLOCK_Q];
__shared__ u32 attn_key_token[ATTN_MAX_BLOCK_KV];

// Components [4c, 4c + 4) of the row at `base`, zero past HEAD_DIM.
SW_DEVICE attn_vec4 attn_load_vec(const store_t* src, u32 base, u32 c) {
    attn_vec4 out = attn_zero4();
    const u32 d = c * 4u;
    if (d < HEAD_DIM) out.x = to_f32(src[base + d]);
    if (d + 1u < HEAD_DIM) out.y = to_f32(src[base + d + 1u]);
    if (d + 2u < HEAD_DIM) out.z = to_f32(src[base + d + 2u]);
    if (d + 3u < HEAD_DIM) out.w = to_f32(src[base + d + 3u]);
    return out;
}

struct attn_head {
    u32 q_base;
    u32 kv_base;
    u32 o_base;
};

SW_DEVICE attn_head attn_head_of(u32 bh, const AttentionParams& p) {
    const u32 b = bh / p.heads;
    const u32 h = bh % p.heads;
    attn_head r;
    r.q_base = b * p.q_batch_stride + h * p.q_head_stride;
    r.kv_base = b * p.kv_batch_stride + h * p.kv_head_stride;
    r.o_base = b * p.o_batch_stride + h * p.o_head_stride;
    return r;
}

// Once query_token is filled: load the scaled query rows, reset the softmax state.
SW_DEVICE void attn_begin_queries(const store_t* q, attn_head head, u32 t, const AttentionParams& p) {
    __syncthreads();
    const u32 hv = ATTN_HEAD_VECS;
    for (u32 e = t; e < BLOCK_Q * hv; e += THREADS) {
        const u32 token = attn_query_token[e / hv];
        attn_vec4 value = attn_zero4();
        if (token != ATTN_NO_TOKEN) {
            value = attn_load_vec(q, head.q_base + token * p.q_token_stride, e % hv);
            value.x *= p.scale;
            value.y *= p.scale;
            value.z *= p.scale;
            value.w *= p.scale;
        }
        attn_q_tile[e] = value;
    }
    if (t < BLOCK_Q) {
        attn_row_max[t] = ATTN_NEG_BIG;
        attn_row_sum[t] = 0.0f;
    }
}

#if ATTN_SHUFFLE_ROWS
// Max and sum over the BLOCK_KV consecutive lanes of a row (every lane of the warp takes part).
SW_DEVICE float attn_team_max(float v) {
    for (u32 offset = BLOCK_KV / 2u; offset > 0u; offset /= 2u) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}
SW_DEVICE float attn_team_sum(float v) {
    for (u32 offset = BLOCK_KV / 2u; offset > 0u; offset /= 2u) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
#endif

// Once key_token is filled: one online-softmax step over this tile of keys. Thread t owns row
// t / BLOCK_KV: its score against key t % BLOCK_KV, and the output columns t % BLOCK_KV + i * BLOCK_KV.
SW_DEVICE void attn_attend_tile(const store_t* k, const store_t* v, attn_head head, u32 t, const AttentionParams& p,
                                attn_vec4* out) {
    __syncthreads();
    const u32 hv = ATTN_HEAD_VECS;
    for (u32 e = t; e < BLOCK_KV * hv; e += THREADS) {
        const u32 token = attn_key_token[e / hv];
        attn_vec4 kv = attn_zero4();
        attn_vec4 vv = attn_zero4();
        if (token != ATTN_NO_TOKEN) {
            const u32 base = head.kv_base + token * p.kv_token_stride;
            kv = attn_load_vec(k, base, e % hv);
            vv = attn_load_vec(v, base, e % hv);
        }
        attn_k_tile[e] = kv;
        attn_v_tile[e] = vv;
    }
    __syncthreads();

    const u32 r = t / BLOCK_KV;
    const u32 j = t % BLOCK_KV;
    float score = ATTN_NEG_BIG;
    if (attn_key_token[j] != ATTN_NO_TOKEN) {
        attn_vec4 acc = attn_zero4();
        for (u32 c = 0u; c < hv; c++) {
            const attn_vec4 a = attn_q_tile[r * hv + c];
            const attn_vec4 b = attn_k_tile[j * hv + c];
            acc.x += a.x * b.x;
            acc.y += a.y * b.y;
            acc.z += a.z * b.z;
            acc.w += a.w * b.w;
        }
        score = acc.x + acc.y + acc.z + acc.w;
    }

#if ATTN_SHUFFLE_ROWS
    // The row's team is its BLOCK_KV lanes; the old maximum enters the shuffled value, so every lane
    // has read it before lane j == 0 replaces it.
    const float new_max = attn_team_max(fmaxf(score, attn_row_max[r]));
    const float e = expf(score - new_max);
    attn_p_tile[r * BLOCK_KV + j] = e;
    const float tile_sum = attn_team_sum(e);
    if (j == 0u) {
        const float rescale = expf(attn_row_max[r] - new_max);
        attn_row_rescale[r] = rescale;
        attn_row_sum[r] = attn_row_sum[r] * rescale + tile_sum;
        attn_row_max[r] = new_max;
    }
#else
    attn_p_tile[r * BLOCK_KV + j] = score;
    __syncthreads();
    // Every thread a team of one: thread `row` walks its row alone.
    for (u32 row = t; row < BLOCK_Q; row += THREADS) {
        float local_max = ATTN_NEG_BIG;
        for (u32 key = 0u; key < BLOCK_KV; key++) local_max = fmaxf(local_max, attn_p_tile[row * BLOCK_KV + key]);
        const float new_max = fmaxf(attn_row_max[row], local_max);
        float local_sum = 0.0f;
        for (u32 key = 0u; key < BLOCK_KV; key++) {
            const float e = expf(attn_p_tile[row * BLOCK_KV + key] - new_max);
            attn_p_tile[row * BLOCK_KV + key] = e;
            local_sum += e;
        }
        const float rescale = expf(attn_row_max[row] - new_max);
        attn_row_rescale[row] = rescale;
        attn_row_sum[row] = attn_row_sum[row] * rescale + local_sum;
        attn_row_max[row] = new_max;
    }
#endif
    __syncthreads();

    const float rescale = attn_row_rescale[r];
    for (u32 i = 0u; i < ATTN_OUT_VECS; i++) {
        const u32 c = j + i * BLOCK_KV;
        if (c < hv) {
            attn_vec4 acc = out[i];
            acc.x *= rescale;
            acc.y *= rescale;
            acc.z *= rescale;
            acc.w *= rescale;
            for (u32 key = 0u; key < BLOCK_KV; key++) {
                const float w = attn_p_tile[r * BLOCK_KV + key];
                const attn_vec4 b = attn_v_tile[key * hv + c];
                acc.x += w * b.x;
                acc.y += w * b.y;
                acc.z += w * b.z;
                acc.w += w * b.w;
            }
            out[i] = acc;
        }
    }
}

SW_DEVICE void attn_finish_queries(store_t* o, attn_head head, u32 t, const AttentionParams& p, const attn_vec4* out) {
    const u32 r = t / BLOCK_KV;
    const u32 j = t % BLOCK_KV;
    const u32 token = attn_query_token[r];
    if (token == ATTN_NO_TOKEN) return;
    const float inv_sum = 1.0f / attn_row_sum[r];
    const u32 base = head.o_base + token * p.o_token_stride;
    const u32 hv = ATTN_HEAD_VECS;
    for (u32 i = 0u; i < ATTN_OUT_VECS; i++) {
        const u32 c = j + i * BLOCK_KV;
        if (c < hv) {
            const attn_vec4 value = out[i];
            const u32 d = c * 4u;
            if (d < HEAD_DIM) store_f32(o, base + d, value.x * inv_sum);
            if (d + 1u < HEAD_DIM) store_f32(o, base + d + 1u, value.y * inv_sum);
            if (d + 2u < HEAD_DIM) store_f32(o, base + d + 2u, value.z * inv_sum);
            if (d + 3u < HEAD_DIM) store_f32(o, base + d + 3u, value.w * inv_sum);
        }
    }
}

// Streams keys [start, start + count) (contiguous tokens) through attend_tile.
SW_DEVICE void attn_attend_range(const store_t* k, const store_t* v, attn_head head, u32 t, const AttentionParams& p,
                                 u32 start, u32 count, attn_vec4* out) {
    for (u32 k0 = 0u; k0 < count; k0 += BLOCK_KV) {
        __syncthreads();
        if (t < BLOCK_KV) attn_key_token[t] = k0 + t < count ? start + k0 + t : ATTN_NO_TOKEN;
        attn_attend_tile(k, v, head, t, p, out);
    }
}

// The kernel bodies are device functions so that a tensor-core variant can fall back to them.
SW_DEVICE void attn_flash_body(const store_t* q, const store_t* k, const store_t* v, store_t* o,
                               const AttentionParams& p) {
    const u32 t = threadIdx.x;
    const u32 block = grid_block();
    const u32 first = block * BLOCK_Q;
    // Uniform per block: whole surplus blocks leave before any barrier.
    if (first >= p.q_count) return;
    const attn_head head = attn_head_of(blockIdx.z, p);
    if (t < BLOCK_Q) attn_query_token[t] = first + t < p.q_count ? p.q_start + first + t : ATTN_NO_TOKEN;
    attn_begin_queries(q, head, t, p);
    attn_vec4 out[ATTN_OUT_VECS];
    for (u32 i = 0u; i < ATTN_OUT_VECS; i++) out[i] = attn_zero4();
    attn_attend_range(k, v, head, t, p, 0u, p.kv_len, out);
    attn_finish_queries(o, head, t, p, out);
}

SW_KERNEL(flash_attention, THREADS, 1, 1,
          (const store_t* q, const store_t* k, const store_t* v, store_t* o, const AttentionParams p)) {
    attn_flash_body(q, k, v, o, p);
}

// ---- GRAT ----

struct attn_group {
    attn_uvec3 origin;  // first token coordinate (t, h, w)
    attn_uvec3 extent;  // tokens per axis; border groups of ragged grids are smaller
};

SW_DEVICE attn_group attn_group_at(attn_uvec3 g, const AttentionParams& p) {
    attn_group r;
    r.origin = attn_u3(g.x * p.group_t, g.y * p.group_h, g.z * p.group_w);
    r.extent = attn_u3(min(p.group_t, p.grid_t - r.origin.x), min(p.group_h, p.grid_h - r.origin.y),
                       min(p.group_w, p.grid_w - r.origin.z));
    return r;
}

SW_DEVICE u32 attn_group_size(attn_group group) { return group.extent.x * group.extent.y * group.extent.z; }

// Where a group starts in the group-major order: every group before it along each axis is full-size.
SW_DEVICE u32 attn_group_major_start(attn_group group, const AttentionParams& p) {
    const attn_uvec3 o = group.origin;
    const attn_uvec3 e = group.extent;
    return o.x * p.grid_h * p.grid_w + e.x * o.y * p.grid_w + e.x * e.y * o.z;
}

// Token index of the i-th token of a group (group-local raster order).
SW_DEVICE u32 attn_group_token(attn_group group, u32 i, const AttentionParams& p) {
#if GROUP_MAJOR
    return attn_group_major_start(group, p) + i;
#else
    const u32 plane = group.extent.y * group.extent.z;
    const u32 lt = i / plane;
    const u32 lh = (i % plane) / group.extent.z;
    const u32 lw = i % group.extent.z;
    const attn_uvec3 c = attn_u3(group.origin.x + lt, group.origin.y + lh, group.origin.z + lw);
    return (c.x * p.grid_h + c.y) * p.grid_w + c.z;
#endif
}

// Attended groups along one axis for GRAT-B: [lo, hi).
struct attn_range {
    u32 lo, hi;
};

SW_DEVICE attn_range attn_block_axis(u32 qc, u32 n, const AttentionParams& p) {
    const u32 r = p.radius;
    attn_range out;
    if (p.pattern == ATTN_PATTERN_BLOCK_TRUNCATED) {
        out.lo = qc >= r ? qc - r : 0u;
        out.hi = min(qc + r + 1u, n);
        return out;
    }
    // Shifted inward at the border, never shrunk (the whole axis when it has fewer than 2r+1 groups).
    if (n <= 2u * r) {
        out.lo = 0u;
        out.hi = n;
        return out;
    }
    const u32 c = min(max(qc, r), n - 1u - r);
    out.lo = c - r;
    out.hi = c + r + 1u;
    return out;
}

// x-th value of 0..n without `skip`.
SW_DEVICE u32 attn_skipping(u32 x, u32 skip) { return x + (x >= skip ? 1u : 0u); }

SW_DEVICE u32 attn_attended_count(attn_uvec3 qg, const AttentionParams& p) {
    const attn_uvec3 n = attn_u3(p.groups_t, p.groups_h, p.groups_w);
    switch (p.pattern) {
        case ATTN_PATTERN_CRISS_CROSS:
            if (p.axes == 2u) return n.y + n.z - 1u;
            return n.y * n.z + (n.x - 1u) * n.z + (n.x - 1u) * (n.y - 1u);
        case ATTN_PATTERN_ALL:
            return n.x * n.y * n.z;
        default: {
            const attn_range rt = attn_block_axis(qg.x, n.x, p);
            const attn_range rh = attn_block_axis(qg.y, n.y, p);
            const attn_range rw = attn_block_axis(qg.z, n.z, p);
            return (rt.hi - rt.lo) * (rh.hi - rh.lo) * (rw.hi - rw.lo);
        }
    }
}

SW_DEVICE attn_uvec3 attn_attended_group(attn_uvec3 qg, u32 i, const AttentionParams& p) {
    const attn_uvec3 n = attn_u3(p.groups_t, p.groups_h, p.groups_w);
    switch (p.pattern) {
        case ATTN_PATTERN_CRISS_CROSS: {
            if (p.axes == 2u) {
                // The group row, then the group column without the query's own group.
                if (i < n.z) return attn_u3(0u, qg.y, i);
                return attn_u3(0u, attn_skipping(i - n.z, qg.y), qg.z);
            }
            // Three planes: t = qt; then h = qh (t != qt); then w = qw (t != qt, h != qh).
            const u32 plane = n.y * n.z;
            if (i < plane) return attn_u3(qg.x, i / n.z, i % n.z);
            const u32 j = i - plane;
            if (j < (n.x - 1u) * n.z) return attn_u3(attn_skipping(j / n.z, qg.x), qg.y, j % n.z);
            const u32 l = j - (n.x - 1u) * n.z;
            return attn_u3(attn_skipping(l / (n.y - 1u), qg.x), attn_skipping(l % (n.y - 1u), qg.y), qg.z);
        }
        case ATTN_PATTERN_ALL:
            return attn_u3(i / (n.y * n.z), (i / n.z) % n.y, i % n.z);
        default: {
            const attn_range rt = attn_block_axis(qg.x, n.x, p);
            const attn_range rh = attn_block_axis(qg.y, n.y, p);
            const attn_range rw = attn_block_axis(qg.z, n.z, p);
            const u32 sh = rh.hi - rh.lo;
            const u32 sw = rw.hi - rw.lo;
            return attn_u3(rt.lo + i / (sh * sw), rh.lo + (i / sw) % sh, rw.lo + i % sw);
        }
    }
}

// Image queries only (text queries attend everything valid: flash_attention serves them).
// Block = (query group, block of BLOCK_Q of its tokens, batch * head).
SW_DEVICE void attn_grouped_body(const store_t* q, const store_t* k, const store_t* v, store_t* o,
                                 const AttentionParams& p) {
    const u32 t = threadIdx.x;
    const u32 block = grid_block();
    const u32 g = block / p.blocks_per_group;
    const u32 first = (block % p.blocks_per_group) * BLOCK_Q;
    if (g >= p.groups_t * p.groups_h * p.groups_w) return;
    const attn_uvec3 qg = attn_u3(g / (p.groups_h * p.groups_w), (g / p.groups_w) % p.groups_h, g % p.groups_w);
    const attn_group query_group = attn_group_at(qg, p);
    const u32 query_count = attn_group_size(query_group);
    if (first >= query_count) return;
    const attn_head head = attn_head_of(blockIdx.z, p);
    if (t < BLOCK_Q)
        attn_query_token[t] = first + t < query_count ? attn_group_token(query_group, first + t, p) : ATTN_NO_TOKEN;
    attn_begin_queries(q, head, t, p);
    attn_vec4 out[ATTN_OUT_VECS];
    for (u32 i = 0u; i < ATTN_OUT_VECS; i++) out[i] = attn_zero4();
    const u32 attended = attn_attended_count(qg, p);
    for (u32 i = 0u; i < attended; i++) {
        const attn_group key_group = attn_group_at(attn_attended_group(qg, i, p), p);
        const u32 key_count = attn_group_size(key_group);
        for (u32 k0 = 0u; k0 < key_count; k0 += BLOCK_KV) {
            __syncthreads();
            if (t < BLOCK_KV)
                attn_key_token[t] = k0 + t < key_count ? attn_group_token(key_group, k0 + t, p) : ATTN_NO_TOKEN;
            attn_attend_tile(k, v, head, t, p, out);
        }
    }
    attn_attend_range(k, v, head, t, p, p.text_start, p.text_valid, out);
    attn_finish_queries(o, head, t, p, out);
}

SW_KERNEL(grouped_attention, THREADS, 1, 1,
          (const store_t* q, const store_t* k, const store_t* v, store_t* o, const AttentionParams p)) {
    attn_grouped_body(q, k, v, o, p);
}

// ---- The separate group-major permutation (the alternative to the fused addressing above) ----

// Group-major position of a raster image token.
SW_DEVICE u32 attn_group_major_index(u32 raster, const AttentionParams& p) {
    const attn_uvec3 c = attn_u3(raster / (p.grid_h * p.grid_w), (raster / p.grid_w) % p.grid_h, raster % p.grid_w);
    const attn_group group = attn_group_at(attn_u3(c.x / p.group_t, c.y / p.group_h, c.z / p.group_w), p);
    const attn_uvec3 l = attn_u3(c.x - group.origin.x, c.y - group.origin.y, c.z - group.origin.z);
    return attn_group_major_start(group, p) + (l.x * group.extent.y + l.y) * group.extent.z + l.z;
}

// o = q with the image tokens of every (batch, head) moved from raster to group-major order or back
// (TO_GROUP_MAJOR). One thread per element; text tokens are copied in place. Here p.heads counts
// batch * heads, and the tensors are contiguous (B, H, L, D).
SW_KERNEL(permute_tokens, THREADS_1D, 1, 1,
          (const store_t* q, const store_t* k, const store_t* v, store_t* o, const AttentionParams p)) {
    (void)k;
    (void)v;
    const u32 idx = grid_block() * THREADS_1D + threadIdx.x;
    const u32 len = p.text_start + p.text_valid;
    if (idx >= p.heads * len * HEAD_DIM) return;
    const u32 d = idx % HEAD_DIM;
    const u32 token = (idx / HEAD_DIM) % len;
    const u32 bh = idx / (HEAD_DIM * len);
    u32 moved = token;
    if (token < p.text_start) moved = attn_group_major_index(token, p);
    const u32 raster_side = bh * p.q_head_stride + token * p.q_token_stride + d;
    const u32 grouped_side = bh * p.q_head_stride + moved * p.q_token_stride + d;
#if TO_GROUP_MAJOR
    o[grouped_side] = q[raster_side];
#else
    o[raster_side] = q[grouped_side];
#endif
}

#ifdef SW_STORE_F16
// ---- Tensor-core variants (f16 storage; launched instead of the entries above for f16) ----
//
// FlashAttention-2 on mma.m16n8k16 (f16 operands, f32 accumulation) inside the scalar kernels'
// launch: the same parameters, block of THREADS threads and grid, a block owning BLOCK_Q (<= 16)
// queries of one (batch, head), padded to the 16 rows of an mma tile.
//
// Flash-decoding inside the block: its warps split the keys. The block stages the keys a chunk of
// ATTN_TC_CH = 16 * ATTN_TC_KSPLIT at a time in shared memory as f16 (K row-major [key][d pair], V
// transposed [d][key pair], so every fragment register is one aligned 32-bit word), and warp w takes
// the 16 keys (w % ATTN_TC_KSPLIT) * 16.. of every chunk: S = Q K^T on mma (head_dim zero-padded
// to a multiple of 16), masked to -inf past the chunk's valid keys, scaled into the log2 domain; its
// own running max and sum per row in registers (a row lives in the 4 lanes of a quad); P rounded to
// f16 and used as the A fragment of O += P V directly (the accumulator layout of two n8 tiles of S is
// the A layout of one k16 step). At the end the warps' partial (max, sum, O) are merged through
// shared memory (the staging memory reused) and written by the whole block.
//
// A warp's O is 16 rows x ATTN_TC_COLS columns in registers. Past head_dim 64 the warps also split
// the output columns into ATTN_TC_CSPLIT slices of at most 64 (the staging of a chunk must fit the
// static shared memory, which bounds ATTN_TC_CH * head_dim): the warps of one key slice compute the
// same S (so the same statistics), each its own columns of P V. The grouped kernel fills each chunk
// with the keys of consecutive attended groups (crossing group boundaries, then the valid text), so
// small groups do not pad a tile each.
//
// Where the constants leave no room (fewer than 32 threads, the staging over the static shared
// memory budget, more than 128 columns per warp) the _tc entries compile to the scalar code path.

#define ATTN_TC_DK (((HEAD_DIM + 15u) / 16u) * 16u)  // head_dim padded for the k16 steps of Q K^T
#define ATTN_TC_WARPS (THREADS / 32u)
#define ATTN_TC_SLICES64 ((HEAD_DIM + 63u) / 64u)
// Column slices: a power of two (a divisor of the warp count), at most the warp count.
#define ATTN_TC_CSPLIT_WANT \
    (ATTN_TC_SLICES64 <= 1u ? 1u : ATTN_TC_SLICES64 <= 2u ? 2u : ATTN_TC_SLICES64 <= 4u ? 4u : 8u)
#define ATTN_TC_CSPLIT \
    (ATTN_TC_WARPS == 0u ? 1u : ATTN_TC_CSPLIT_WANT < ATTN_TC_WARPS ? ATTN_TC_CSPLIT_WANT : ATTN_TC_WARPS)
#define ATTN_TC_COLS ((((HEAD_DIM + ATTN_TC_CSPLIT - 1u) / ATTN_TC_CSPLIT) + 7u) / 8u * 8u)  // per warp
#define ATTN_TC_DV (ATTN_TC_CSPLIT * ATTN_TC_COLS)                                          // V rows staged
#define ATTN_TC_KSPLIT (ATTN_TC_WARPS / ATTN_TC_CSPLIT)
#define ATTN_TC_CH (16u * ATTN_TC_KSPLIT)  // keys per chunk
// Row strides in 32-bit words, padded so that the 8 rows x 4 words of a fragment read hit 32 banks.
#define ATTN_TC_KS (ATTN_TC_DK / 2u + 4u)
#define ATTN_TC_VS (ATTN_TC_CH / 2u + 4u)
#define ATTN_TC_OS (ATTN_TC_DV + 8u)
#define ATTN_TC_V_OFFSET (ATTN_TC_CH * ATTN_TC_KS)
#define ATTN_TC_KV_WORDS (ATTN_TC_V_OFFSET + ATTN_TC_DV * ATTN_TC_VS)
#define ATTN_TC_SLAB_WORDS (ATTN_TC_KSPLIT * 16u * ATTN_TC_OS)
#define ATTN_TC_STAGE_WORDS (ATTN_TC_KV_WORDS > ATTN_TC_SLAB_WORDS ? ATTN_TC_KV_WORDS : ATTN_TC_SLAB_WORDS)
#define ATTN_TC_Q_WORDS (16u * ATTN_TC_KS)
// Every __shared__ array below, with room for the grouped kernel's params copy and descriptors.
#define ATTN_TC_SHARED_BYTES \
    (4u * (ATTN_TC_STAGE_WORDS + ATTN_TC_Q_WORDS + 2u * 16u * ATTN_TC_KSPLIT + ATTN_TC_CH + 16u + 192u))

#if (THREADS % 32u == 0u) && (THREADS >= 32u) && (THREADS <= 1024u) && (BLOCK_Q <= 16u) && (BLOCK_Q >= 1u) && \
    (ATTN_TC_WARPS % ATTN_TC_CSPLIT == 0u) && (ATTN_TC_COLS <= 128u) && (ATTN_TC_SHARED_BYTES <= 48u * 1024u)
#define ATTN_TC 1
#else
#define ATTN_TC 0
#endif

#if ATTN_TC

#ifdef SW_CPU
#define ATTN_UNROLL
#define ATTN_NO_UNROLL
#else
#define ATTN_UNROLL _Pragma("unroll")
#define ATTN_NO_UNROLL _Pragma("unroll 1")
#endif

// Q fragments live in registers up to head_dim 64 (16 registers); past that they are read from
// shared memory at each use, which keeps larger head dims under 128 registers without spills.
#define ATTN_TC_Q_IN_REGS (ATTN_TC_DK <= 64u)
#define ATTN_TC_LOG2E 1.4426950408889634f

__shared__ u32 attn_tc_q[ATTN_TC_Q_WORDS];        // [row][d pair], f16x2
__shared__ u32 attn_tc_stage[ATTN_TC_STAGE_WORDS];  // K [key][d pair], Vt [d][key pair]; then f32 slabs
__shared__ float attn_tc_stat_m[16u * ATTN_TC_KSPLIT];
__shared__ float attn_tc_stat_l[16u * ATTN_TC_KSPLIT];
__shared__ u32 attn_tc_query_token[16];
__shared__ u32 attn_tc_key_token[ATTN_TC_CH];
__shared__ AttentionParams attn_tc_params;  // grouped: the enumeration's copies (see grouped_attention_tc)
__shared__ attn_uvec3 attn_tc_query_group;

// An attended group as runs of consecutive tokens: rows_t x rows_h runs of `run` tokens, run (lt, lh)
// starting at token start + (lt * grid_h + lh) * grid_w (raster order), or one run from its
// group-major start.
struct attn_tc_run_group {
    u32 start, rows_t, rows_h, run;
};
#define ATTN_TC_GROUPS 32u
__shared__ attn_tc_run_group attn_tc_groups[ATTN_TC_GROUPS];

// The i-th group attended by the block's query group (from the shared copies of the params).
SW_DEVICE attn_tc_run_group attn_tc_describe(u32 i) {
    const AttentionParams& p = attn_tc_params;
    const attn_group g = attn_group_at(attn_attended_group(attn_tc_query_group, i, p), p);
    attn_tc_run_group d;
#if GROUP_MAJOR
    d.start = attn_group_major_start(g, p);
    d.rows_t = 1u;
    d.rows_h = 1u;
    d.run = attn_group_size(g);
#else
    d.start = (g.origin.x * p.grid_h + g.origin.y) * p.grid_w + g.origin.z;
    d.rows_t = g.extent.x;
    d.rows_h = g.extent.y;
    d.run = g.extent.z;
#endif
    return d;
}

// One warp's state: its Q fragments, its 16 x ATTN_TC_COLS output accumulator (mma C layout) and
// the running max (log2 domain) and partial sum of its rows g and g + 8.
struct attn_tc_warp {
#if ATTN_TC_Q_IN_REGS
    u32 qf[ATTN_TC_DK / 16u][4];
#endif
    float o[ATTN_TC_COLS / 8u][4];
    float m[2];
    float l[2];
};

// Elements d and d + 1 of the row starting at element `row`, as an f16x2 word (zero past HEAD_DIM).
// `even`: the row starts at an even element, so with an even HEAD_DIM the pair is one aligned word.
SW_DEVICE u32 attn_tc_pair(const half_t* src, u32 row, u32 d, bool even) {
    if (d >= HEAD_DIM) return 0u;
#if HEAD_DIM % 2u == 0u
    if (even) return reinterpret_cast<const u32*>(src)[(row + d) / 2u];
#else
    (void)even;
#endif
    const u32 lo = src[row + d].bits;
    const u32 hi = d + 1u < HEAD_DIM ? (u32)src[row + d + 1u].bits : 0u;
    return lo | (hi << 16);
}

SW_DEVICE u32 attn_tc_pack(float lo, float hi) { return pack_half2(f32_to_half(lo), f32_to_half(hi)); }

// Once attn_tc_query_token is filled: stage the query rows (unscaled f16; the scale is applied to
// the f32 scores), reset the warp's state.
SW_DEVICE void attn_tc_begin(const half_t* q, attn_head head, const AttentionParams& p, attn_tc_warp& w) {
    const u32 t = threadIdx.x;
    __syncthreads();
    const bool even = ((head.q_base | p.q_token_stride) & 1u) == 0u;
    const u32 words = ATTN_TC_DK / 2u;
    for (u32 e = t; e < 16u * words; e += THREADS) {
        const u32 r = e / words, c = e % words;
        const u32 token = attn_tc_query_token[r];
        attn_tc_q[r * ATTN_TC_KS + c] =
            token != ATTN_NO_TOKEN ? attn_tc_pair(q, head.q_base + token * p.q_token_stride, 2u * c, even) : 0u;
    }
    __syncthreads();
#if ATTN_TC_Q_IN_REGS
    const u32 lane = t % 32u, g = lane >> 2, tq = lane & 3u;
    ATTN_UNROLL
    for (u32 kk = 0u; kk < ATTN_TC_DK / 16u; kk++) {
        w.qf[kk][0] = attn_tc_q[g * ATTN_TC_KS + kk * 8u + tq];
        w.qf[kk][1] = attn_tc_q[(g + 8u) * ATTN_TC_KS + kk * 8u + tq];
        w.qf[kk][2] = attn_tc_q[g * ATTN_TC_KS + kk * 8u + tq + 4u];
        w.qf[kk][3] = attn_tc_q[(g + 8u) * ATTN_TC_KS + kk * 8u + tq + 4u];
    }
#endif
    ATTN_UNROLL
    for (u32 n = 0u; n < ATTN_TC_COLS / 8u; n++) {
        ATTN_UNROLL
        for (u32 i = 0u; i < 4u; i++) w.o[n][i] = 0.0f;
    }
    w.m[0] = ATTN_NEG_BIG;
    w.m[1] = ATTN_NEG_BIG;
    w.l[0] = 0.0f;
    w.l[1] = 0.0f;
}

// Stages the chunk's keys [0, fill) (K rows and transposed V, zeros past `fill` and HEAD_DIM): key
// j is token attn_tc_key_token[j] when `table`, else start + j. Called between barriers. Each thread
// issues ATTN_TC_BATCH elements' loads before it stores them, so that their global latencies overlap
// (more in flight pushes ptxas into spilling at some head dims).
#define ATTN_TC_BATCH 2u
#define ATTN_TC_K_ELEMS (ATTN_TC_CH * (ATTN_TC_DK / 2u))
#define ATTN_TC_V_ELEMS ((ATTN_TC_DV / 2u) * (ATTN_TC_CH / 2u))
SW_DEVICE u32 attn_tc_key_row(attn_head head, const AttentionParams& p, u32 key, u32 start, bool table) {
    return head.kv_base + (table ? attn_tc_key_token[key] : start + key) * p.kv_token_stride;
}

SW_DEVICE void attn_tc_stage_keys(const half_t* k, const half_t* v, attn_head head, const AttentionParams& p,
                                  u32 fill, u32 start, bool table) {
    const u32 t = threadIdx.x;
    const bool even = ((head.kv_base | p.kv_token_stride) & 1u) == 0u;
    const u32 words = ATTN_TC_DK / 2u;
    // K: element e is word c = e % words of key e / words (consecutive threads, consecutive words).
    ATTN_NO_UNROLL
    for (u32 e0 = 0u; e0 < ATTN_TC_K_ELEMS; e0 += ATTN_TC_BATCH * THREADS) {
        u32 word[ATTN_TC_BATCH];
        ATTN_UNROLL
        for (u32 b = 0u; b < ATTN_TC_BATCH; b++) {
            const u32 e = e0 + b * THREADS + t;
            const u32 key = e / words;
            word[b] = e < ATTN_TC_K_ELEMS && key < fill
                          ? attn_tc_pair(k, attn_tc_key_row(head, p, key, start, table), 2u * (e % words), even)
                          : 0u;
        }
        ATTN_UNROLL
        for (u32 b = 0u; b < ATTN_TC_BATCH; b++) {
            const u32 e = e0 + b * THREADS + t;
            if (e < ATTN_TC_K_ELEMS) attn_tc_stage[(e / words) * ATTN_TC_KS + e % words] = word[b];
        }
    }
    // V: element e reads d pair c of keys 2 kp and 2 kp + 1 and writes rows 2c and 2c + 1 of Vt. Four
    // consecutive d pairs by eight key pairs per warp: 16-byte runs of each key row, and the 32
    // stores hit 32 banks (ATTN_TC_VS is 4 times an odd number).
    const u32 pairs = ATTN_TC_CH / 2u;
    ATTN_NO_UNROLL
    for (u32 e0 = 0u; e0 < ATTN_TC_V_ELEMS; e0 += ATTN_TC_BATCH * THREADS) {
        u32 w0[ATTN_TC_BATCH], w1[ATTN_TC_BATCH];
        ATTN_UNROLL
        for (u32 b = 0u; b < ATTN_TC_BATCH; b++) {
            const u32 e = e0 + b * THREADS + t;
            const u32 rest = e / 4u;
            const u32 kp = rest % pairs, c = (rest / pairs) * 4u + e % 4u;
            const bool in = e < ATTN_TC_V_ELEMS;
            w0[b] = in && 2u * kp < fill ? attn_tc_pair(v, attn_tc_key_row(head, p, 2u * kp, start, table), 2u * c, even)
                                         : 0u;
            w1[b] = in && 2u * kp + 1u < fill
                        ? attn_tc_pair(v, attn_tc_key_row(head, p, 2u * kp + 1u, start, table), 2u * c, even)
                        : 0u;
        }
        ATTN_UNROLL
        for (u32 b = 0u; b < ATTN_TC_BATCH; b++) {
            const u32 e = e0 + b * THREADS + t;
            const u32 rest = e / 4u;
            const u32 kp = rest % pairs, c = (rest / pairs) * 4u + e % 4u;
            if (e < ATTN_TC_V_ELEMS) {
                attn_tc_stage[ATTN_TC_V_OFFSET + 2u * c * ATTN_TC_VS + kp] = (w0[b] & 0xffffu) | (w1[b] << 16);
                attn_tc_stage[ATTN_TC_V_OFFSET + (2u * c + 1u) * ATTN_TC_VS + kp] =
                    (w0[b] >> 16) | (w1[b] & 0xffff0000u);
            }
        }
    }
}

// One online-softmax step of this warp over its 16 keys of the staged chunk (fill valid keys).
SW_DEVICE void attn_tc_attend(attn_tc_warp& w, u32 fill, float scale_log2) {
    const u32 lane = threadIdx.x % 32u, warp = threadIdx.x / 32u;
    const u32 g = lane >> 2, tq = lane & 3u;
    const u32 ks = warp % ATTN_TC_KSPLIT, cs = warp / ATTN_TC_KSPLIT;
    const u32 key0 = ks * 16u;
    if (key0 >= fill) return;  // warp-uniform: nothing of this warp's slice in the chunk

    // S = Q K^T: two n8 tiles of keys key0 + [0, 8) and key0 + [8, 16).
    float s[2][4];
    ATTN_UNROLL
    for (u32 n = 0u; n < 2u; n++) {
        ATTN_UNROLL
        for (u32 i = 0u; i < 4u; i++) s[n][i] = 0.0f;
    }
    ATTN_UNROLL
    for (u32 kk = 0u; kk < ATTN_TC_DK / 16u; kk++) {
#if ATTN_TC_Q_IN_REGS
        const u32* a = w.qf[kk];
#else
        u32 a[4];
        a[0] = attn_tc_q[g * ATTN_TC_KS + kk * 8u + tq];
        a[1] = attn_tc_q[(g + 8u) * ATTN_TC_KS + kk * 8u + tq];
        a[2] = attn_tc_q[g * ATTN_TC_KS + kk * 8u + tq + 4u];
        a[3] = attn_tc_q[(g + 8u) * ATTN_TC_KS + kk * 8u + tq + 4u];
#endif
        ATTN_UNROLL
        for (u32 n = 0u; n < 2u; n++) {
            const u32 row = (key0 + n * 8u + g) * ATTN_TC_KS + kk * 8u + tq;
            u32 b[2];
            b[0] = attn_tc_stage[row];
            b[1] = attn_tc_stage[row + 4u];
            mma_m16n8k16_f16_f32(s[n], a, b, s[n]);
        }
    }

    // Scale into the log2 domain, mask keys past the chunk's end, row maxima over the quad.
    float mx[2] = {ATTN_NEG_BIG, ATTN_NEG_BIG};
    ATTN_UNROLL
    for (u32 n = 0u; n < 2u; n++) {
        ATTN_UNROLL
        for (u32 i = 0u; i < 4u; i++) {
            const u32 key = key0 + n * 8u + 2u * tq + (i & 1u);
            s[n][i] = key < fill ? s[n][i] * scale_log2 : -SW_INFINITY;
            mx[i / 2u] = fmaxf(mx[i / 2u], s[n][i]);
        }
    }
    float rescale[2];
    ATTN_UNROLL
    for (u32 h = 0u; h < 2u; h++) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        const float new_max = fmaxf(w.m[h], mx[h]);
        rescale[h] = exp2f(w.m[h] - new_max);
        w.m[h] = new_max;
    }
    float sum[2] = {0.0f, 0.0f};
    ATTN_UNROLL
    for (u32 n = 0u; n < 2u; n++) {
        ATTN_UNROLL
        for (u32 i = 0u; i < 4u; i++) {
            s[n][i] = exp2f(s[n][i] - w.m[i / 2u]);  // masked keys: exp2(-inf) = 0
            sum[i / 2u] += s[n][i];
        }
    }
    w.l[0] = w.l[0] * rescale[0] + sum[0];
    w.l[1] = w.l[1] * rescale[1] + sum[1];

    // O = O * rescale + P V over this warp's columns; P (f16) is the A fragment of one k16 step.
    u32 a[4];
    a[0] = attn_tc_pack(s[0][0], s[0][1]);
    a[1] = attn_tc_pack(s[0][2], s[0][3]);
    a[2] = attn_tc_pack(s[1][0], s[1][1]);
    a[3] = attn_tc_pack(s[1][2], s[1][3]);
    ATTN_UNROLL
    for (u32 n = 0u; n < ATTN_TC_COLS / 8u; n++) {
        w.o[n][0] *= rescale[0];
        w.o[n][1] *= rescale[0];
        w.o[n][2] *= rescale[1];
        w.o[n][3] *= rescale[1];
        const u32 col = cs * ATTN_TC_COLS + n * 8u + g;
        const u32 at = ATTN_TC_V_OFFSET + col * ATTN_TC_VS + ks * 8u + tq;
        u32 b[2];
        b[0] = attn_tc_stage[at];
        b[1] = attn_tc_stage[at + 4u];
        mma_m16n8k16_f16_f32(w.o[n], a, b, w.o[n]);
    }
}

// Merges the warps' partial (max, sum, O) and writes the block's valid query rows.
SW_DEVICE void attn_tc_finish(half_t* o, attn_head head, const AttentionParams& p, attn_tc_warp& w) {
    const u32 t = threadIdx.x, lane = t % 32u, warp = t / 32u;
    const u32 g = lane >> 2, tq = lane & 3u;
    const u32 ks = warp % ATTN_TC_KSPLIT, cs = warp / ATTN_TC_KSPLIT;
    ATTN_UNROLL
    for (u32 h = 0u; h < 2u; h++) {
        w.l[h] += __shfl_xor_sync(0xffffffffu, w.l[h], 1);
        w.l[h] += __shfl_xor_sync(0xffffffffu, w.l[h], 2);
    }
    __syncthreads();  // every warp is done with the staged keys: the stage becomes the O slabs
    if (cs == 0u && tq == 0u) {
        attn_tc_stat_m[ks * 16u + g] = w.m[0];
        attn_tc_stat_m[ks * 16u + g + 8u] = w.m[1];
        attn_tc_stat_l[ks * 16u + g] = w.l[0];
        attn_tc_stat_l[ks * 16u + g + 8u] = w.l[1];
    }
    __syncthreads();
    float factor[2];
    ATTN_UNROLL
    for (u32 h = 0u; h < 2u; h++) {
        const u32 row = g + 8u * h;
        float m = ATTN_NEG_BIG;
        for (u32 j = 0u; j < ATTN_TC_KSPLIT; j++) m = fmaxf(m, attn_tc_stat_m[j * 16u + row]);
        float l = 0.0f;
        for (u32 j = 0u; j < ATTN_TC_KSPLIT; j++)
            l += attn_tc_stat_l[j * 16u + row] * exp2f(attn_tc_stat_m[j * 16u + row] - m);
        factor[h] = l > 0.0f ? exp2f(w.m[h] - m) / l : 0.0f;
    }
    ATTN_UNROLL
    for (u32 n = 0u; n < ATTN_TC_COLS / 8u; n++) {
        const u32 col = cs * ATTN_TC_COLS + n * 8u + 2u * tq;
        const u32 at = (ks * 16u + g) * ATTN_TC_OS + col;
        attn_tc_stage[at] = __float_as_uint(w.o[n][0] * factor[0]);
        attn_tc_stage[at + 1u] = __float_as_uint(w.o[n][1] * factor[0]);
        attn_tc_stage[at + 8u * ATTN_TC_OS] = __float_as_uint(w.o[n][2] * factor[1]);
        attn_tc_stage[at + 8u * ATTN_TC_OS + 1u] = __float_as_uint(w.o[n][3] * factor[1]);
    }
    __syncthreads();
    for (u32 e = t; e < BLOCK_Q * HEAD_DIM; e += THREADS) {
        const u32 r = e / HEAD_DIM, d = e % HEAD_DIM;
        const u32 token = attn_tc_query_token[r];
        if (token == ATTN_NO_TOKEN) continue;
        float value = 0.0f;
        for (u32 j = 0u; j < ATTN_TC_KSPLIT; j++) value += __uint_as_float(attn_tc_stage[(j * 16u + r) * ATTN_TC_OS + d]);
        store_f32(o, head.o_base + token * p.o_token_stride + d, value);
    }
}

SW_KERNEL(flash_attention_tc, THREADS, 1, 1,
          (const store_t* q, const store_t* k, const store_t* v, store_t* o, const AttentionParams p)) {
    const u32 t = threadIdx.x;
    const u32 first = grid_block() * BLOCK_Q;
    if (first >= p.q_count) return;  // uniform per block
    const attn_head head = attn_head_of(blockIdx.z, p);
    if (t < 16u) attn_tc_query_token[t] = t < BLOCK_Q && first + t < p.q_count ? p.q_start + first + t : ATTN_NO_TOKEN;
    attn_tc_warp w;
    attn_tc_begin(q, head, p, w);
    const float scale_log2 = p.scale * ATTN_TC_LOG2E;
    for (u32 k0 = 0u; k0 < p.kv_len; k0 += ATTN_TC_CH) {
        const u32 fill = min(ATTN_TC_CH, p.kv_len - k0);
        __syncthreads();  // the previous chunk is consumed
        attn_tc_stage_keys(k, v, head, p, fill, k0, false);
        __syncthreads();
        attn_tc_attend(w, fill, scale_log2);
    }
    attn_tc_finish(o, head, p, w);
}

SW_KERNEL(grouped_attention_tc, THREADS, 1, 1,
          (const store_t* q, const store_t* k, const store_t* v, store_t* o, const AttentionParams p)) {
    const u32 t = threadIdx.x;
    const u32 block = grid_block();
    const u32 g = block / p.blocks_per_group;
    const u32 first = (block % p.blocks_per_group) * BLOCK_Q;
    if (g >= p.groups_t * p.groups_h * p.groups_w) return;
    const attn_uvec3 qg = attn_u3(g / (p.groups_h * p.groups_w), (g / p.groups_w) % p.groups_h, g % p.groups_w);
    const attn_group query_group = attn_group_at(qg, p);
    const u32 query_count = attn_group_size(query_group);
    if (first >= query_count) return;
    const attn_head head = attn_head_of(blockIdx.z, p);
    if (t < 16u)
        attn_tc_query_token[t] = t < BLOCK_Q && first + t < query_count ? attn_group_token(query_group, first + t, p)
                                                                        : ATTN_NO_TOKEN;
    attn_tc_warp w;
    attn_tc_begin(q, head, p, w);
    const float scale_log2 = p.scale * ATTN_TC_LOG2E;
    // The keys as one sequence of runs of consecutive tokens: each attended group's rows along w
    // (the whole group when GROUP_MAJOR), then the valid text tokens; cut into chunks of ATTN_TC_CH.
    // ATTN_TC_GROUPS groups at a time are described in shared memory (one thread each: first
    // token and extent); the cursor (group, run (lt, lh), offset in the run) is uniform across the
    // block and advances without divisions. The description reads the params and the query group
    // from shared copies, reloaded after each barrier, which keeps the compiler from hoisting the
    // pattern arithmetic into registers that would stay live beside the accumulators.
    if (t == 0u) {
        attn_tc_params = p;
        attn_tc_query_group = qg;
    }
    const u32 attended = attn_attended_count(qg, p);
    u32 group_index = 0u, lt = 0u, lh = 0u, offset = 0u, described = 0u;
    for (;;) {
        __syncthreads();  // the previous chunk (its key table and staged keys) is consumed
        u32 fill = 0u;
        while (fill < ATTN_TC_CH && group_index <= attended) {
            attn_tc_run_group d;  // the text: one run
            d.start = p.text_start;
            d.rows_t = 1u;
            d.rows_h = 1u;
            d.run = p.text_valid;
            if (group_index < attended) {
                if (group_index == described) {
                    __syncthreads();  // every thread is done with the previous descriptions
                    if (t < ATTN_TC_GROUPS && described + t < attended)
                        attn_tc_groups[t] = attn_tc_describe(described + t);
                    __syncthreads();
                    described += ATTN_TC_GROUPS;
                }
                d = attn_tc_groups[group_index % ATTN_TC_GROUPS];
            }
            const u32 run_start = d.start + (lt * p.grid_h + lh) * p.grid_w;
            const u32 take = min(d.run - offset, ATTN_TC_CH - fill);
            ATTN_NO_UNROLL
            for (u32 j = t; j < take; j += THREADS) attn_tc_key_token[fill + j] = run_start + offset + j;
            fill += take;
            offset += take;
            if (offset == d.run) {
                offset = 0u;
                if (++lh == d.rows_h) {
                    lh = 0u;
                    if (++lt == d.rows_t) {
                        lt = 0u;
                        group_index++;
                    }
                }
            }
        }
        if (fill == 0u) break;
        __syncthreads();
        attn_tc_stage_keys(k, v, head, p, fill, 0u, true);
        __syncthreads();
        attn_tc_attend(w, fill, scale_log2);
    }
    attn_tc_finish(o, head, p, w);
}

#else  // the tensor-core path does not fit these constants: the scalar code under the _tc names

SW_KERNEL(flash_attention_tc, THREADS, 1, 1,
          (const store_t* q, const store_t* k, const store_t* v, store_t* o, const AttentionParams p)) {
    attn_flash_body(q, k, v, o, p);
}

SW_KERNEL(grouped_attention_tc, THREADS, 1, 1,
          (const store_t* q, const store_t* k, const store_t* v, store_t* o, const AttentionParams p)) {
    attn_grouped_body(q, k, v, o, p);
}

#endif  // ATTN_TC
#endif  // SW_STORE_F16
