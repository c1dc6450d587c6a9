// VAR self-attention input: splits the fused projection qkv (R, 3, H, D) of R = B * T new tokens
// into per-head queries q (R, H, D) and appends keys and values to the KV caches (B, cap, H, D) at
// token `start`, cosine-normalised with L2_NORM (qkv_io.wgsl). One workgroup of REDUCE_WG threads
// per (token, head); head_dim is any size.
//
// The family's module also holds qkv_attention (qkv_attention.wgsl on attention_tile.wgsl's
// machinery): the same split fused with the attention of the new tokens (one dispatch instead of two
// per block).

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
