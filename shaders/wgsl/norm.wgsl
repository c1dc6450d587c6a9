// Row-wise normalisations and softmax: one workgroup of REDUCE_WG threads per row (or per group),
// statistics in f32 with two passes (mean, then squared deviations) for accuracy.
// All entry points share the layout (x, weight, bias, out, params); absent operands are bound to x
// and switched off by the override constants.
override HAS_WEIGHT: bool = false;
override HAS_BIAS: bool = false;
// AdaLN: multiply by (1 + weight) instead of weight.
override MODULATE: bool = false;

struct NormParams {
    rows: u32,
    cols: u32,
    // weight/bias row used by row r: r / rows_per_affine (per-channel affine: rows_per_affine = rows).
    rows_per_affine: u32,
    eps: f32,
    // group_norm: channels per group and spatial size; softmax: scale applied to the inputs.
    channels_per_group: u32,
    spatial: u32,
    scale: f32,
}

@group(0) @binding(0) var<storage, read> x: array<store_t>;
@group(0) @binding(1) var<storage, read> weight: array<store_t>;
@group(0) @binding(2) var<storage, read> bias: array<store_t>;
@group(0) @binding(3) var<storage, read_write> out: array<store_t>;
@group(0) @binding(4) var<uniform> p: NormParams;

// weight/bias applied to a normalised value at affine row `arow`, channel `c`.
fn affine(v: f32, arow: u32, c: u32) -> f32 {
    var y = v;
    if HAS_WEIGHT {
        let w = f32(weight[arow * p.cols + c]);
        if MODULATE {
            y = y * (1.0 + w);
        } else {
            y = y * w;
        }
    }
    if HAS_BIAS {
        y += f32(bias[arow * p.cols + c]);
    }
    return y;
}

@compute @workgroup_size(REDUCE_WG)
fn layer_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, lane: Lane) {
    let row = grid_workgroup(wg, groups);
    // `row` is the same for the whole workgroup, so this exit keeps the barriers uniform.
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var sum = 0.0;
    for (var c = lane.index; c < p.cols; c += REDUCE_WG) {
        sum += f32(x[base + c]);
    }
    let mean = workgroup_sum(sum, lane) / f32(p.cols);
    var dev = 0.0;
    for (var c = lane.index; c < p.cols; c += REDUCE_WG) {
        let d = f32(x[base + c]) - mean;
        dev += d * d;
    }
    let rstd = inverseSqrt(workgroup_sum(dev, lane) / f32(p.cols) + p.eps);
    let arow = row / p.rows_per_affine;
    for (var c = lane.index; c < p.cols; c += REDUCE_WG) {
        out[base + c] = store_t(affine((f32(x[base + c]) - mean) * rstd, arow, c));
    }
}

// Mamba-2's gated RMSNorm normalises x * silu(z), z bound in the bias slot (HAS_BIAS stays off).
// The gated value is rounded to store_t twice, as the silu and mul kernels store it, so the fusion
// equals those two kernels followed by rms_norm.
fn rms_input(i: u32, gated: bool) -> f32 {
    if !gated {
        return f32(x[i]);
    }
    let z = f32(bias[i]);
    let gate = f32(store_t(z / (1.0 + exp(-z))));
    return f32(store_t(f32(x[i]) * gate));
}

// One row of rms_norm or gated_rms_norm; `gated` is the same for the whole workgroup.
fn rms_norm_row(row: u32, lane: Lane, gated: bool) {
    let base = row * p.cols;
    var squares = 0.0;
    for (var c = lane.index; c < p.cols; c += REDUCE_WG) {
        let v = rms_input(base + c, gated);
        squares += v * v;
    }
    let rms = inverseSqrt(workgroup_sum(squares, lane) / f32(p.cols) + p.eps);
    let arow = row / p.rows_per_affine;
    for (var c = lane.index; c < p.cols; c += REDUCE_WG) {
        out[base + c] = store_t(affine(rms_input(base + c, gated) * rms, arow, c));
    }
}

@compute @workgroup_size(REDUCE_WG)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, lane: Lane) {
    let row = grid_workgroup(wg, groups);
    if row >= p.rows {
        return;
    }
    rms_norm_row(row, lane, false);
}

@compute @workgroup_size(REDUCE_WG)
fn gated_rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, lane: Lane) {
    let row = grid_workgroup(wg, groups);
    if row >= p.rows {
        return;
    }
    rms_norm_row(row, lane, true);
}

// x: (N, C, spatial) with C = groups * channels_per_group; one workgroup per (n, group), whose
// elements are contiguous. p.rows = N * groups, p.cols = C (for the per-channel affine).
@compute @workgroup_size(REDUCE_WG)
fn group_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, lane: Lane) {
    let group_row = grid_workgroup(wg, groups);
    if group_row >= p.rows {
        return;
    }
    let count = p.channels_per_group * p.spatial;
    let base = group_row * count;
    let groups_per_sample = p.cols / p.channels_per_group;
    let first_channel = (group_row % groups_per_sample) * p.channels_per_group;
    var sum = 0.0;
    for (var i = lane.index; i < count; i += REDUCE_WG) {
        sum += f32(x[base + i]);
    }
    let mean = workgroup_sum(sum, lane) / f32(count);
    var dev = 0.0;
    for (var i = lane.index; i < count; i += REDUCE_WG) {
        let d = f32(x[base + i]) - mean;
        dev += d * d;
    }
    let rstd = inverseSqrt(workgroup_sum(dev, lane) / f32(count) + p.eps);
    for (var i = lane.index; i < count; i += REDUCE_WG) {
        let channel = first_channel + i / p.spatial;
        out[base + i] = store_t(affine((f32(x[base + i]) - mean) * rstd, 0u, channel));
    }
}

// softmax(scale * x) along each row.
@compute @workgroup_size(REDUCE_WG)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, lane: Lane) {
    let row = grid_workgroup(wg, groups);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var local_max = -3.4028234e38;
    for (var c = lane.index; c < p.cols; c += REDUCE_WG) {
        local_max = max(local_max, p.scale * f32(x[base + c]));
    }
    let row_max = workgroup_max(local_max, lane);
    var sum = 0.0;
    for (var c = lane.index; c < p.cols; c += REDUCE_WG) {
        sum += exp(p.scale * f32(x[base + c]) - row_max);
    }
    let inv_sum = 1.0 / workgroup_sum(sum, lane);
    for (var c = lane.index; c < p.cols; c += REDUCE_WG) {
        out[base + c] = store_t(exp(p.scale * f32(x[base + c]) - row_max) * inv_sum);
    }
}

// AdaLN modulation without normalisation: out = x * (1 + scale[b]) + shift[b] for x: (B, L, C),
// scale/shift: (B, C) bound as weight/bias. One thread per element.
@compute @workgroup_size(THREADS_1D)
fn modulate(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + lid;
    if i >= p.rows * p.cols {
        return;
    }
    let row = i / p.cols;
    let c = i % p.cols;
    out[i] = store_t(affine(f32(x[i]), row / p.rows_per_affine, c));
}
