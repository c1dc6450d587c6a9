// f32 -> f16 storage (compiled with store_t = f16).
struct CastParams {
    n: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<store_t>;
@group(0) @binding(2) var<uniform> p: CastParams;

@compute @workgroup_size(THREADS_1D)
fn cast_f32_to_store(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = grid_workgroup(wg, groups) * THREADS_1D + lid;
    if idx < p.n {
        dst[idx] = store_t(src[idx]);
    }
}
