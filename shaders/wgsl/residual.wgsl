// The AdaLN-gated residual of a VAR block: out = x + y * gate[b], with x and y (B, T, C) and one
// gate row (B, C) per batch entry (gamma1 or gamma2 of the block's AdaLN).
struct ResidualParams {
    n: u32,
    // Elements per batch entry (T * C) and channels C.
    per_batch: u32,
    channels: u32,
}

@group(0) @binding(0) var<storage, read> x: array<store_t>;
@group(0) @binding(1) var<storage, read> y: array<store_t>;
@group(0) @binding(2) var<storage, read> gate: array<store_t>;
@group(0) @binding(3) var<storage, read_write> out: array<store_t>;
@group(0) @binding(4) var<uniform> p: ResidualParams;

@compute @workgroup_size(THREADS_1D)
fn gated_residual(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + lid;
    if i < p.n {
        let g = gate[(i / p.per_batch) * p.channels + i % p.channels];
        out[i] = store_t(f32(x[i]) + f32(y[i]) * f32(g));
    }
}
