// qkv_attention: the split of qkv_heads.wgsl fused with the attention of the new tokens over the
// whole cache, on either tile machinery: attention_tile.wgsl (scalar cores; the qkv_heads family) or
// attention_coop.wgsl (16 x 16 f16 matrix units; the qkv_attention_coop family). The bindings and
// params are in qkv_io.wgsl.
//
// Workgroup = (block of BLOCK_Q new tokens, batch * head). Keys [0, start) are read from the caches
// (written, normalised, by earlier calls); keys [start, start + tokens) straight from qkv,
// normalised in the machinery's staged key tile, so no workgroup waits for another's cache writes.
// Every new key passes through exactly one tile of every workgroup; the workgroup that owns it as a
// query writes it, and its value, into the caches for later calls. Normalised rows go through
// store_t, as qkv_heads stores them, so the fused kernel attends exactly what the cache holds. Here
// p.dim == HEAD_DIM.

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
        return as_stored(x * (head_scale[head.head] * inverse_norm(sum_sq)));
    }
    return x;
}

fn softmax_scale() -> f32 {
    return p.scale;
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

// Whether key `token` arrives raw and is normalised in the staged tile: the new keys under L2_NORM
// (cached keys already are). The matrix-unit machinery asks as it stages the tile.
fn key_needs_norm(token: u32) -> bool {
    return L2_NORM && token >= p.start;
}

// Components of such a key as attended and cached, given its row's sum of squares.
fn normalised_key(x: vec4<f32>, sum_sq: f32) -> vec4<f32> {
    return as_stored(x * inverse_norm(sum_sq));
}

// For a machinery that normalises keys as it stages them (STAGED_KEYS_NORMALISED): new key `token`
// into row j of the staged tile, normalised, by one thread, with prepare_key_tile's sums and
// roundings (the staged values' squares in order, then the staged values scaled), so the tile is
// the same. The row is read in rounds of KEY_ROUND_VECS vec4s whose loads issue together (2 rounds
// at head_dim 64, each a wait on memory). Mesa 25's RADV, navi31, shader-stats' launch: the whole
// row in one unrolled loop took 168 VGPRs (was 84); rounds of 4 or 8, 84; of 16, 84 but with the
// round left rolled (ACO's estimate 26653, against 24828 for 8 and 24715 for 4, which waits twice as
// often). The rounds run to p.dim, which is HEAD_DIM but not a constant, so that they stay rounds.
const KEY_ROUND_VECS: u32 = 8u;

fn stage_normalised_key(head: Head, j: u32, token: u32) {
    let row_vecs = (p.dim + 3u) / 4u;
    var sum_sq = 0.0;
    for (var c0 = 0u; c0 < row_vecs; c0 += KEY_ROUND_VECS) {
        for (var i = 0u; i < KEY_ROUND_VECS; i++) {
            if c0 + i < row_vecs {
                restage_key(j, c0 + i, key_vec(head, token, c0 + i));
            }
        }
        for (var i = 0u; i < KEY_ROUND_VECS; i++) {
            if c0 + i < row_vecs {
                let x = staged_key(j, c0 + i);
                sum_sq += dot(x, x);
            }
        }
    }
    for (var c = 0u; c < row_vecs; c++) {
        restage_key(j, c, normalised_key(staged_key(j, c), sum_sq));
    }
}

// Called by the scalar machinery's release_key_table: prepare_key_tile reads the key table after the
// tiles' load barrier. Under L2_NORM its normalisation's barrier follows those reads; otherwise the
// next tile's table waits here. (A function, not a derived override: the host sets the overrides.)
fn release_prepared_key_table() {
    if !L2_NORM {
        workgroupBarrier();
    }
}

// New keys arrive raw: unless the machinery normalised them as it staged them
// (STAGED_KEYS_NORMALISED), one thread per key row normalises it in the staged tile, and a barrier
// publishes the tile. When a new key is one of this workgroup's own queries, its thread writes it
// and its value to the caches for later calls. staged_key, restage_key and staged_value are the
// machinery's.
fn prepare_key_tile(head: Head, t: u32) {
    let hv = head_vecs();
    for (var j = t; j < BLOCK_KV; j += THREADS) {
        let token = key_token[j];
        if token != NO_TOKEN && token >= p.start {
            if L2_NORM {
                if !STAGED_KEYS_NORMALISED {
                    var sum_sq = 0.0;
                    for (var c = 0u; c < hv; c++) {
                        let x = staged_key(j, c);
                        sum_sq += dot(x, x);
                    }
                    // The same loop as stage_normalised_key's last, not shared: through a helper
                    // taking the count, RADV left this one rolled (ACO's estimate +7-30%, 2026-12-04).
                    for (var c = 0u; c < hv; c++) {
                        restage_key(j, c, normalised_key(staged_key(j, c), sum_sq));
                    }
                }
            }
            let own = token - p.start - query_token[0];
            if own < BLOCK_Q {
                let base = head.kv_base + token * qkv_width();
                for (var d = 0u; d < HEAD_DIM; d++) {
                    k_cache[base + d] = store_t(staged_key(j, d / 4u)[d % 4u]);
                    v_cache[base + d] = store_t(staged_value(j, d / 4u)[d % 4u]);
                }
            }
        }
    }
    if L2_NORM {
        if !STAGED_KEYS_NORMALISED {
            workgroupBarrier();
        }
    }
}

@compute @workgroup_size(THREADS)
fn qkv_attention(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    tile: TileInvocation,
) {
    let t = tile_thread(tile);
    let block = grid_workgroup(wg, groups);
    enter_tile(tile, block);
    let first = block * BLOCK_Q;
    // Uniform per workgroup: whole surplus workgroups leave before any barrier.
    if first >= p.tokens {
        return;
    }
    attend_rows(attn_head(wg.z), t, first, p.tokens, 0u, p.start + p.tokens);
}
