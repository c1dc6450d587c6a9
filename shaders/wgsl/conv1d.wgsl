// Depthwise causal conv1d (width up to 4) with carried state, as in Mamba blocks:
//   y[b, c, t] = bias[c] + sum_k w[c, k] * x'[b, c, t + k - (W - 1)],  optionally SiLU
// where x' is the previous piece's last W - 1 inputs (`state_in`) followed by x. conv1d_state writes
// the last W - 1 entries of x' (the state for the next piece), so a sequence can be fed in pieces.
// x and y use explicit (batch, channel, time) strides: (B, C, L) or (B, L, C) without copies.
override WIDTH: u32 = 4u;
override HAS_BIAS: bool = true;
override APPLY_SILU: bool = false;
override HAS_STATE: bool = false;

struct Conv1dParams {
    batch: u32,
    channels: u32,
    length: u32,
    batch_stride: u32,
    channel_stride: u32,
    time_stride: u32,
}

@group(0) @binding(0) var<storage, read> x: array<store_t>;
@group(0) @binding(1) var<storage, read> weight: array<store_t>; // (C, WIDTH)
@group(0) @binding(2) var<storage, read> bias: array<store_t>;
@group(0) @binding(3) var<storage, read> state_in: array<store_t>; // (B, C, WIDTH - 1)
@group(0) @binding(4) var<storage, read_write> y: array<store_t>;
@group(0) @binding(5) var<storage, read_write> state_out: array<store_t>; // (B, C, WIDTH - 1)
@group(0) @binding(6) var<uniform> p: Conv1dParams;

// Input at time t of the extended sequence x' (t < 0 reads the carried state, zeros without one).
fn extended(b: u32, c: u32, t: i32) -> f32 {
    if t >= 0 {
        return f32(x[b * p.batch_stride + c * p.channel_stride + u32(t) * p.time_stride]);
    }
    if HAS_STATE {
        return f32(state_in[(b * p.channels + c) * (WIDTH - 1u) + u32(i32(WIDTH - 1u) + t)]);
    }
    return 0.0;
}

// One thread per output element, consecutive threads on consecutive channels of one time step when
// the layout is tokens-major (the channel stride is 1 there).
@compute @workgroup_size(THREADS_1D)
fn conv1d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) index: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + index;
    if i >= p.batch * p.channels * p.length {
        return;
    }
    let c = i % p.channels;
    let t = (i / p.channels) % p.length;
    let b = i / (p.channels * p.length);
    var acc = 0.0;
    if HAS_BIAS {
        acc = f32(bias[c]);
    }
    for (var k = 0u; k < WIDTH; k++) {
        acc += f32(weight[c * WIDTH + k]) * extended(b, c, i32(t + k) - i32(WIDTH - 1u));
    }
    if APPLY_SILU {
        acc = acc / (1.0 + exp(-acc));
    }
    y[b * p.batch_stride + c * p.channel_stride + t * p.time_stride] = store_t(acc);
}

@compute @workgroup_size(THREADS_1D)
fn conv1d_state(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) index: u32) {
    let keep = WIDTH - 1u;
    let i = grid_workgroup(wg, groups) * THREADS_1D + index;
    if keep == 0u || i >= p.batch * p.channels * keep {
        return;
    }
    let j = i % keep;
    let bc = i / keep;
    let c = bc % p.channels;
    let b = bc / p.channels;
    // Entry j of the new state is x'[length - keep + j].
    state_out[i] = store_t(extended(b, c, i32(p.length) - i32(keep) + i32(j)));
}
