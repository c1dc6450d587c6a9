// Elementwise ops. All entry points share one binding layout (a, b, out, params) so one module
// serves unary and binary ops; unary launchers bind their input as `b` too.
struct ElementwiseParams {
    n: u32,
    // Binary ops: b has rhs_n elements and repeats over the output (b's shape is a trailing part of a's).
    rhs_n: u32,
    // a has lhs_n elements and repeats over the output (n but for add_repeat's copies).
    lhs_n: u32,
}

@group(0) @binding(0) var<storage, read> a: array<store_t>;
@group(0) @binding(1) var<storage, read> b: array<store_t>;
@group(0) @binding(2) var<storage, read_write> out: array<store_t>;
@group(0) @binding(3) var<uniform> p: ElementwiseParams;

@compute @workgroup_size(THREADS_1D)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + lid;
    if i < p.n {
        out[i] = store_t(f32(a[i % p.lhs_n]) + f32(b[i % p.rhs_n]));
    }
}

@compute @workgroup_size(THREADS_1D)
fn mul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + lid;
    if i < p.n {
        out[i] = store_t(f32(a[i % p.lhs_n]) * f32(b[i % p.rhs_n]));
    }
}

// GELU, tanh approximation (PyTorch approximate="tanh").
@compute @workgroup_size(THREADS_1D)
fn gelu_tanh(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + lid;
    if i < p.n {
        out[i] = store_t(gelu_tanh_f32(f32(a[i])));
    }
}

@compute @workgroup_size(THREADS_1D)
fn silu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + lid;
    if i < p.n {
        let x = f32(a[i]);
        out[i] = store_t(x / (1.0 + exp(-x)));
    }
}
