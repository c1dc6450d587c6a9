// Spatial resampling of NCHW planes (shaders/wgsl/resample.wgsl), one thread per output element;
// `planes` = B * C, each plane in_h x in_w in and out_h x out_w out. Every entry takes (x, y, params).
// - upsample_bicubic: PyTorch F.interpolate(mode='bicubic', align_corners=False), no antialias:
//   src = scale * (dst + 0.5) - 0.5 with scale = in / out rounded to f32 on the host,
//   t = src - floor(src), Keys cubic with A = -0.75 on the taps floor(src) - 1 ..= floor(src) + 2
//   clamped to the border, interpolated along x in each of the 4 rows, then along y (PyTorch's order).
// - downsample_area: adaptive average pooling, cell i covers [floor(i in / out), ceil((i + 1) in / out)).
// - upsample_nearest2x: out[y][x] = in[y / 2][x / 2] (out_h = 2 in_h, out_w = 2 in_w).

#define RESAMPLE_CUBIC_A (-0.75f)

// Keys' kernel for |x| <= 1 and for 1 < |x| < 2 (PyTorch's cubic_convolution1 / 2).
SW_DEVICE float resample_cubic1(float v) {
    return ((RESAMPLE_CUBIC_A + 2.0f) * v - (RESAMPLE_CUBIC_A + 3.0f)) * v * v + 1.0f;
}
SW_DEVICE float resample_cubic2(float v) {
    return ((RESAMPLE_CUBIC_A * v - 5.0f * RESAMPLE_CUBIC_A) * v + 8.0f * RESAMPLE_CUBIC_A) * v - 4.0f * RESAMPLE_CUBIC_A;
}

// Weights of the taps floor(src) - 1, floor(src), floor(src) + 1, floor(src) + 2 for t = src - floor(src).
SW_DEVICE void resample_cubic_weights(float t, float w[4]) {
    const float u = 1.0f - t;
    w[0] = resample_cubic2(t + 1.0f);
    w[1] = resample_cubic1(t);
    w[2] = resample_cubic1(u);
    w[3] = resample_cubic2(u + 1.0f);
}

SW_DEVICE u32 resample_clamp_tap(i32 i, u32 n) { return (u32)min(max(i, 0), (i32)n - 1); }

SW_DEVICE float resample_at(const store_t* x, const ResampleParams p, u32 plane, u32 row, u32 col) {
    return to_f32(x[(plane * p.in_h + row) * p.in_w + col]);
}

SW_KERNEL(upsample_bicubic, THREADS_1D, 1, 1, (const store_t* x, store_t* y, const ResampleParams p)) {
    const u32 i = grid_block() * THREADS_1D + threadIdx.x;
    if (i >= p.planes * p.out_h * p.out_w) return;
    const u32 ox = i % p.out_w;
    const u32 oy = (i / p.out_w) % p.out_h;
    const u32 plane = i / (p.out_w * p.out_h);
    const float src_x = p.scale_w * ((float)ox + 0.5f) - 0.5f;
    const float src_y = p.scale_h * ((float)oy + 0.5f) - 0.5f;
    const float fx = floorf(src_x);
    const float fy = floorf(src_y);
    float wx[4], wy[4];
    resample_cubic_weights(src_x - fx, wx);
    resample_cubic_weights(src_y - fy, wy);
    u32 cols[4];
    for (i32 k = 0; k < 4; ++k) cols[k] = resample_clamp_tap((i32)fx - 1 + k, p.in_w);
    float rows[4];
    for (u32 r = 0; r < 4u; ++r) {
        const u32 row = resample_clamp_tap((i32)fy - 1 + (i32)r, p.in_h);
        float v[4];
        for (u32 k = 0; k < 4; ++k) v[k] = resample_at(x, p, plane, row, cols[k]);
        rows[r] = v[0] * wx[0] + v[1] * wx[1] + v[2] * wx[2] + v[3] * wx[3];
    }
    store_f32(y, i, rows[0] * wy[0] + rows[1] * wy[1] + rows[2] * wy[2] + rows[3] * wy[3]);
}

SW_KERNEL(downsample_area, THREADS_1D, 1, 1, (const store_t* x, store_t* y, const ResampleParams p)) {
    const u32 i = grid_block() * THREADS_1D + threadIdx.x;
    if (i >= p.planes * p.out_h * p.out_w) return;
    const u32 ox = i % p.out_w;
    const u32 oy = (i / p.out_w) % p.out_h;
    const u32 plane = i / (p.out_w * p.out_h);
    const u32 y0 = (oy * p.in_h) / p.out_h;
    const u32 y1 = ((oy + 1u) * p.in_h + p.out_h - 1u) / p.out_h;
    const u32 x0 = (ox * p.in_w) / p.out_w;
    const u32 x1 = ((ox + 1u) * p.in_w + p.out_w - 1u) / p.out_w;
    float sum = 0.0f;
    for (u32 row = y0; row < y1; ++row)
        for (u32 col = x0; col < x1; ++col) sum += resample_at(x, p, plane, row, col);
    store_f32(y, i, sum / (float)((y1 - y0) * (x1 - x0)));
}

SW_KERNEL(upsample_nearest2x, THREADS_1D, 1, 1, (const store_t* x, store_t* y, const ResampleParams p)) {
    const u32 i = grid_block() * THREADS_1D + threadIdx.x;
    if (i >= p.planes * p.out_h * p.out_w) return;
    const u32 ox = i % p.out_w;
    const u32 oy = (i / p.out_w) % p.out_h;
    const u32 plane = i / (p.out_w * p.out_h);
    y[i] = x[(plane * p.in_h + oy / 2u) * p.in_w + ox / 2u];
}
