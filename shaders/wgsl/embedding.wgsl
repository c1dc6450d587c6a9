// Embedding gather: out[r, :] = table[ids[r], :]. An id outside the table yields a NaN row, so a bad
// id is visible downstream instead of silently reading another row. embedding_channels_first writes
// the same values as (B, dim, tokens): the VQVAE's token map, without a transpose after it.
struct EmbeddingParams {
    n: u32,
    dim: u32,
    vocab: u32,
    tokens: u32,
}

@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> table: array<store_t>;
@group(0) @binding(2) var<storage, read_write> out: array<store_t>;
@group(0) @binding(3) var<uniform> p: EmbeddingParams;

@compute @workgroup_size(THREADS_1D)
fn embedding(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + lid;
    if i >= p.n {
        return;
    }
    let row = i / p.dim;
    let col = i % p.dim;
    let id = ids[row];
    if id < p.vocab {
        out[i] = table[id * p.dim + col];
    } else {
        out[i] = store_t(bitcast<f32>(0x7fc00000u));
    }
}

// out[b, c, t] = table[ids[b, t], c]; consecutive threads write consecutive tokens of one channel.
@compute @workgroup_size(THREADS_1D)
fn embedding_channels_first(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + lid;
    if i >= p.n {
        return;
    }
    let t = i % p.tokens;
    let c = (i / p.tokens) % p.dim;
    let b = i / (p.tokens * p.dim);
    let id = ids[b * p.tokens + t];
    if id < p.vocab {
        out[i] = table[id * p.dim + c];
    } else {
        out[i] = store_t(bitcast<f32>(0x7fc00000u));
    }
}
