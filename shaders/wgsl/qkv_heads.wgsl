// VAR self-attention input: splits the fused projection qkv (R, 3, H, D) of R = B * T new tokens
// into per-head queries q (R, H, D) and appends keys and values to the KV caches (B, cap, H, D) at
// token `start`. With L2_NORM (every official VAR checkpoint), q and k are L2-normalised per head
// (F.normalize, eps 1e-12) and q is multiplied by the head's temperature exp(min(scale_mul, ln 100))
// (computed on the host): cosine attention run with softmax scale 1.
// One workgroup of REDUCE_WG threads per (token, head); head_dim is any size.
//
// qkv_attention does the same and the attention of the new tokens over the whole cache in one
// kernel, on the tile machinery of attention_tile.wgsl (one dispatch instead of two per block).
override L2_NORM: bool = true;

struct QkvParams {
    rows: u32,
    tokens: u32,
    heads: u32,
    dim: u32,
    cap: u32,
    start: u32,
    // qkv_attention: the softmax scale (1 for cosine attention).
    scale: f32,
}

@group(0) @binding(0) var<storage, read> qkv: array<store_t>;
@group(0) @binding(1) var<storage, read> head_scale: array<f32>;
// q (qkv_heads) or the attention output (qkv_attention), (R, H, D).
@group(0) @binding(2) var<storage, read_write> q: array<store_t>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<store_t>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<store_t>;
@group(0) @binding(5) var<uniform> p: QkvParams;

@compute @workgroup_size(REDUCE_WG)
fn qkv_heads(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, lane: Lane) {
    let item = grid_workgroup(wg, groups);
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    if item >= p.rows * p.heads {
        return;
    }
    let row = item / p.heads;
    let h = item % p.heads;
    let width = p.heads * p.dim;
    let q_base = row * 3u * width + h * p.dim;
    let k_base = q_base + width;
    let v_base = k_base + width;
    let b = row / p.tokens;
    let t = row % p.tokens;
    let cache_base = ((b * p.cap + p.start + t) * p.heads + h) * p.dim;
    let out_base = item * p.dim;

    var q_scale = 1.0;
    var k_scale = 1.0;
    if L2_NORM {
        var q_sq = 0.0;
        var k_sq = 0.0;
        for (var d = lane.index; d < p.dim; d += REDUCE_WG) {
            let qv = f32(qkv[q_base + d]);
            let kv = f32(qkv[k_base + d]);
            q_sq += qv * qv;
            k_sq += kv * kv;
        }
        let q_norm = sqrt(workgroup_sum(q_sq, lane));
        let k_norm = sqrt(workgroup_sum(k_sq, lane));
        q_scale = head_scale[h] / max(q_norm, 1e-12);
        k_scale = 1.0 / max(k_norm, 1e-12);
    }
    for (var d = lane.index; d < p.dim; d += REDUCE_WG) {
        q[out_base + d] = store_t(f32(qkv[q_base + d]) * q_scale);
        k_cache[cache_base + d] = store_t(f32(qkv[k_base + d]) * k_scale);
        v_cache[cache_base + d] = qkv[v_base + d];
    }
}

// ---- qkv_attention: the split above fused with the attention of the new tokens ----
//
// Workgroup = (block of BLOCK_Q new tokens, batch * head). Keys [0, start) are read from the caches
// (written, normalised, by earlier calls); keys [start, start + tokens) straight from qkv,
// normalised in the tile, so no workgroup waits for another's cache writes. Every new key passes
// through exactly one tile of every workgroup; the workgroup that owns it as a query writes it, and
// its value, into the caches for later calls. Normalised rows go through store_t, as qkv_heads
// stores them, so the fused kernel attends exactly what the cache holds. Here p.dim == HEAD_DIM.

fn qkv_width() -> u32 {
    return p.heads * HEAD_DIM;
}

fn attn_head(bh: u32) -> Head {
    let b = bh / p.heads;
    let h = bh % p.heads;
    let width = qkv_width();
    return Head(b * p.tokens * 3u * width + h * HEAD_DIM, b * p.cap * width + h * HEAD_DIM, b * p.tokens * width + h * HEAD_DIM, b, h);
}

// Components [4c, 4c + 4) of `part` (0 q, 1 k, 2 v) of new token `token`, zero past HEAD_DIM.
fn qkv_vec(head: Head, part: u32, token: u32, c: u32) -> vec4<f32> {
    let base = head.q_base + token * 3u * qkv_width() + part * qkv_width();
    var out = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let d = c * 4u + i;
        if d < HEAD_DIM {
            out[i] = f32(qkv[base + d]);
        }
    }
    return out;
}

fn cache_vec(head: Head, is_key: bool, token: u32, c: u32) -> vec4<f32> {
    let base = head.kv_base + token * qkv_width();
    var out = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let d = c * 4u + i;
        if d < HEAD_DIM {
            if is_key {
                out[i] = f32(k_cache[base + d]);
            } else {
                out[i] = f32(v_cache[base + d]);
            }
        }
    }
    return out;
}

fn query_vec(head: Head, token: u32, c: u32) -> vec4<f32> {
    return qkv_vec(head, 0u, token, c);
}

// 1 / max(|row|, 1e-12), as F.normalize.
fn inverse_norm(sum_sq: f32) -> f32 {
    return 1.0 / max(sqrt(sum_sq), 1e-12);
}

// Rounds normalised components as the cache stores them.
fn as_stored(value: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(vec4<store_t>(value));
}

// Cosine queries: normalised, times the head's temperature, rounded as qkv_heads stores them.
fn finish_query(head: Head, x: vec4<f32>, sum_sq: f32) -> vec4<f32> {
    if L2_NORM {
        return as_stored(x * (head_scale[head.head] * inverse_norm(sum_sq))) * p.scale;
    }
    return x * p.scale;
}

fn key_vec(head: Head, token: u32, c: u32) -> vec4<f32> {
    if token < p.start {
        return cache_vec(head, true, token, c);
    }
    return qkv_vec(head, 1u, token - p.start, c);
}

fn value_vec(head: Head, token: u32, c: u32) -> vec4<f32> {
    if token < p.start {
        return cache_vec(head, false, token, c);
    }
    return qkv_vec(head, 2u, token - p.start, c);
}

fn store_out(head: Head, token: u32, d: u32, value: f32) {
    q[head.o_base + token * qkv_width() + d] = store_t(value);
}

// New keys arrive raw: one thread per key row normalises it in the tile (cached keys already are)
// and, when the key is one of this workgroup's own queries, writes it and its value to the caches.
fn prepare_key_tile(head: Head, t: u32) {
    let hv = head_vecs();
    for (var j = t; j < BLOCK_KV; j += THREADS) {
        let token = key_token[j];
        if token != NO_TOKEN && token >= p.start {
            if L2_NORM {
                var sum_sq = 0.0;
                for (var c = 0u; c < hv; c++) {
                    let x = k_tile[j * hv + c];
                    sum_sq += dot(x, x);
                }
                let inv = inverse_norm(sum_sq);
                for (var c = 0u; c < hv; c++) {
                    k_tile[j * hv + c] = as_stored(k_tile[j * hv + c] * inv);
                }
            }
            let own = token - p.start - query_token[0];
            if own < BLOCK_Q {
                let base = head.kv_base + token * qkv_width();
                for (var d = 0u; d < HEAD_DIM; d++) {
                    k_cache[base + d] = store_t(k_tile[j * hv + d / 4u][d % 4u]);
                    v_cache[base + d] = store_t(v_tile[j * hv + d / 4u][d % 4u]);
                }
            }
        }
    }
    if L2_NORM {
        workgroupBarrier();
    }
}

@compute @workgroup_size(THREADS)
fn qkv_attention(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    lane: Lane,
) {
    let t = lane.index;
    let first = grid_workgroup(wg, groups) * BLOCK_Q;
    // Uniform per workgroup: whole surplus workgroups leave before any barrier.
    if first >= p.tokens {
        return;
    }
    let head = attn_head(wg.z);
    if t < BLOCK_Q {
        query_token[t] = select(NO_TOKEN, first + t, first + t < p.tokens);
    }
    var state: RowState;
    begin_queries(head, t, &state);
    attend_range(head, t, 0u, p.start + p.tokens, &state);
    finish_queries(head, t, &state);
}
