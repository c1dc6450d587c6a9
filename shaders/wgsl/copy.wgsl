// Block copy between two tensors viewed as (outer, dim, inner): the one kernel behind slice, concat
// and in-place writes into a preallocated KV cache.
struct CopyParams {
    total: u32,
    count: u32,
    inner: u32,
    src_len: u32,
    src_start: u32,
    dst_len: u32,
    dst_start: u32,
}

@group(0) @binding(0) var<storage, read> src: array<store_t>;
@group(0) @binding(1) var<storage, read_write> dst: array<store_t>;
@group(0) @binding(2) var<uniform> p: CopyParams;

@compute @workgroup_size(THREADS_1D)
fn copy_block(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = grid_workgroup(wg, groups) * THREADS_1D + lid;
    if idx >= p.total {
        return;
    }
    let i = idx % p.inner;
    let rest = idx / p.inner;
    let j = rest % p.count;
    let o = rest / p.count;
    dst[(o * p.dst_len + p.dst_start + j) * p.inner + i] = src[(o * p.src_len + p.src_start + j) * p.inner + i];
}

// (outer, count, inner) -> (outer, inner, count): the token-map <-> NCHW transposes of the VQVAE.
// Reuses CopyParams: total elements, count and inner.
@compute @workgroup_size(THREADS_1D)
fn transpose_last2(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = grid_workgroup(wg, groups) * THREADS_1D + lid;
    if idx >= p.total {
        return;
    }
    // idx walks the output (o, i, j) so writes are contiguous.
    let j = idx % p.count;
    let rest = idx / p.count;
    let i = rest % p.inner;
    let o = rest / p.inner;
    dst[idx] = src[(o * p.count + j) * p.inner + i];
}
