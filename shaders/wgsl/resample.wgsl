// Spatial resampling of NCHW planes (the multi-scale VQVAE of VAR), one thread per output element;
// `planes` = B * C, each plane in_h x in_w in and out_h x out_w out.
// - upsample_bicubic: PyTorch F.interpolate(mode='bicubic', align_corners=False), no antialias:
//   src = scale * (dst + 0.5) - 0.5 with scale = in / out rounded to f32 on the host, t = src - floor(src),
//   Keys cubic with A = -0.75 on the taps floor(src) - 1 ..= floor(src) + 2 clamped to the border,
//   interpolated along x in each of the 4 rows, then along y (PyTorch's order).
// - downsample_area: adaptive average pooling, cell i covers [floor(i in / out), ceil((i + 1) in / out)).
// - upsample_nearest2x: out[y][x] = in[y / 2][x / 2] (out_h = 2 in_h, out_w = 2 in_w).

struct ResampleParams {
    planes: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    scale_h: f32, // bicubic only
    scale_w: f32,
}

@group(0) @binding(0) var<storage, read> x: array<store_t>;
@group(0) @binding(1) var<storage, read_write> y: array<store_t>;
@group(0) @binding(2) var<uniform> p: ResampleParams;

const CUBIC_A: f32 = -0.75;

// Keys' kernel for |x| <= 1 and for 1 < |x| < 2 (PyTorch's cubic_convolution1 / 2).
fn cubic1(v: f32) -> f32 {
    return ((CUBIC_A + 2.0) * v - (CUBIC_A + 3.0)) * v * v + 1.0;
}

fn cubic2(v: f32) -> f32 {
    return ((CUBIC_A * v - 5.0 * CUBIC_A) * v + 8.0 * CUBIC_A) * v - 4.0 * CUBIC_A;
}

// Weights of the taps floor(src) - 1, floor(src), floor(src) + 1, floor(src) + 2 for t = src - floor(src).
fn cubic_weights(t: f32) -> vec4<f32> {
    let u = 1.0 - t;
    return vec4<f32>(cubic2(t + 1.0), cubic1(t), cubic1(u), cubic2(u + 1.0));
}

fn clamp_tap(i: i32, n: u32) -> u32 {
    return u32(clamp(i, 0, i32(n) - 1));
}

fn at(plane: u32, row: u32, col: u32) -> f32 {
    return f32(x[(plane * p.in_h + row) * p.in_w + col]);
}

@compute @workgroup_size(THREADS_1D)
fn upsample_bicubic(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) index: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + index;
    if i >= p.planes * p.out_h * p.out_w {
        return;
    }
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    let src_x = p.scale_w * (f32(ox) + 0.5) - 0.5;
    let src_y = p.scale_h * (f32(oy) + 0.5) - 0.5;
    let fx = floor(src_x);
    let fy = floor(src_y);
    let wx = cubic_weights(src_x - fx);
    let wy = cubic_weights(src_y - fy);
    let cols = vec4<u32>(
        clamp_tap(i32(fx) - 1, p.in_w),
        clamp_tap(i32(fx), p.in_w),
        clamp_tap(i32(fx) + 1, p.in_w),
        clamp_tap(i32(fx) + 2, p.in_w),
    );
    var rows = vec4<f32>(0.0);
    for (var r = 0u; r < 4u; r++) {
        let row = clamp_tap(i32(fy) - 1 + i32(r), p.in_h);
        let v = vec4<f32>(at(plane, row, cols.x), at(plane, row, cols.y), at(plane, row, cols.z), at(plane, row, cols.w));
        rows[r] = v.x * wx.x + v.y * wx.y + v.z * wx.z + v.w * wx.w;
    }
    y[i] = store_t(rows.x * wy.x + rows.y * wy.y + rows.z * wy.z + rows.w * wy.w);
}

@compute @workgroup_size(THREADS_1D)
fn downsample_area(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) index: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + index;
    if i >= p.planes * p.out_h * p.out_w {
        return;
    }
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    let y0 = (oy * p.in_h) / p.out_h;
    let y1 = ((oy + 1u) * p.in_h + p.out_h - 1u) / p.out_h;
    let x0 = (ox * p.in_w) / p.out_w;
    let x1 = ((ox + 1u) * p.in_w + p.out_w - 1u) / p.out_w;
    var sum = 0.0;
    for (var row = y0; row < y1; row++) {
        for (var col = x0; col < x1; col++) {
            sum += at(plane, row, col);
        }
    }
    y[i] = store_t(sum / f32((y1 - y0) * (x1 - x0)));
}

@compute @workgroup_size(THREADS_1D)
fn upsample_nearest2x(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) index: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + index;
    if i >= p.planes * p.out_h * p.out_w {
        return;
    }
    let ox = i % p.out_w;
    let oy = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_w * p.out_h);
    y[i] = x[(plane * p.in_h + oy / 2u) * p.in_w + ox / 2u];
}
