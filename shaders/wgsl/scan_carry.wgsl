// The serial middle pass of the chunked scan: for each (batch, channel, state) walk the chunk totals
// (decay, accumulated input) in order, writing every chunk's true initial state and the final state.
// chunks is small (L / chunk_len), so one thread per state is enough.
struct CarryParams {
    states: u32, // batch * channels * N
    chunks: u32,
    n_state: u32,
    has_initial: u32,
}

@group(0) @binding(0) var<storage, read> totals: array<f32>; // (batch, channel, chunk, 2N)
@group(0) @binding(1) var<storage, read> initial: array<f32>; // (batch, channel, N)
@group(0) @binding(2) var<storage, read_write> chunk_initial: array<f32>; // (batch, channel, chunk, N)
@group(0) @binding(3) var<storage, read_write> final_state: array<f32>; // (batch, channel, N)
@group(0) @binding(4) var<uniform> p: CarryParams;

@compute @workgroup_size(SCAN_WG)
fn scan_carry(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) index: u32) {
    let s = grid_workgroup(wg, groups) * SCAN_WG + index;
    if s >= p.states {
        return;
    }
    let channel = s / p.n_state;
    let n = s % p.n_state;
    var h = 0.0;
    if p.has_initial != 0u {
        h = initial[s];
    }
    for (var c = 0u; c < p.chunks; c++) {
        let at = (channel * p.chunks + c) * p.n_state;
        chunk_initial[at + n] = h;
        h = totals[2u * at + n] * h + totals[2u * at + p.n_state + n];
    }
    final_state[s] = h;
}
