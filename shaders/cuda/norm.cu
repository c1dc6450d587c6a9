// Row-wise normalisations and softmax (shaders/wgsl/norm.wgsl): one block of REDUCE_WG threads per
// row (or per group), statistics in f32 with two passes (mean, then squared deviations).
// Every entry takes (x, weight, bias, out, params); absent operands are bound to x and switched off
// by the constants.
#ifndef HAS_WEIGHT
#define HAS_WEIGHT 0
#endif
#ifndef HAS_BIAS
#define HAS_BIAS 0
#endif
// AdaLN: multiply by (1 + weight) instead of weight.
#ifndef MODULATE
#define MODULATE 0
#endif

// weight/bias applied to a normalised value at affine row `arow`, channel `c`.
SW_DEVICE float norm_affine(float v, const store_t* weight, const store_t* bias, const NormParams& p, u32 arow,
                            u32 c) {
    float y = v;
    if (HAS_WEIGHT) {
        const float w = to_f32(weight[arow * p.cols + c]);
        if (MODULATE) {
            y = y * (1.0f + w);
        } else {
            y = y * w;
        }
    }
    if (HAS_BIAS) y += to_f32(bias[arow * p.cols + c]);
    return y;
}

SW_KERNEL(layer_norm, REDUCE_WG, 1, 1,
          (const store_t* x, const store_t* weight, const store_t* bias, store_t* out, const NormParams p)) {
    __shared__ float scratch[32];
    const u32 row = grid_block();
    // `row` is the same for the whole block, so this exit keeps the barriers uniform.
    if (row >= p.rows) return;
    const u32 base = row * p.cols;
    float sum = 0.0f;
    for (u32 c = threadIdx.x; c < p.cols; c += REDUCE_WG) sum += to_f32(x[base + c]);
    const float mean = block_sum(sum, scratch) / (float)p.cols;
    float dev = 0.0f;
    for (u32 c = threadIdx.x; c < p.cols; c += REDUCE_WG) {
        const float d = to_f32(x[base + c]) - mean;
        dev += d * d;
    }
    const float rstd = 1.0f / sqrtf(block_sum(dev, scratch) / (float)p.cols + p.eps);
    const u32 arow = row / p.rows_per_affine;
    for (u32 c = threadIdx.x; c < p.cols; c += REDUCE_WG)
        store_f32(out, base + c, norm_affine((to_f32(x[base + c]) - mean) * rstd, weight, bias, p, arow, c));
}

// Mamba-2's gated RMSNorm (shaders/wgsl/norm.wgsl) normalises x * silu(z), z in the bias slot; the
// gated value rounded to store_t twice, as the silu and mul kernels store it.
SW_DEVICE float norm_as_stored(float v) {
    store_t s;
    store_f32(&s, 0u, v);
    return to_f32(s);
}

SW_DEVICE float norm_rms_input(const store_t* x, const store_t* z, u32 i, bool gated) {
    if (!gated) return to_f32(x[i]);
    const float zf = to_f32(z[i]);
    const float gate = norm_as_stored(zf / (1.0f + expf(-zf)));
    return norm_as_stored(to_f32(x[i]) * gate);
}

// One row of rms_norm or gated_rms_norm; `gated` is the same for the whole block.
SW_DEVICE void norm_rms_row(const store_t* x, const store_t* weight, const store_t* bias, store_t* out,
                            const NormParams& p, u32 row, bool gated, float* scratch) {
    const u32 base = row * p.cols;
    float squares = 0.0f;
    for (u32 c = threadIdx.x; c < p.cols; c += REDUCE_WG) {
        const float v = norm_rms_input(x, bias, base + c, gated);
        squares += v * v;
    }
    const float rms = 1.0f / sqrtf(block_sum(squares, scratch) / (float)p.cols + p.eps);
    const u32 arow = row / p.rows_per_affine;
    for (u32 c = threadIdx.x; c < p.cols; c += REDUCE_WG)
        store_f32(out, base + c, norm_affine(norm_rms_input(x, bias, base + c, gated) * rms, weight, bias, p, arow, c));
}

SW_KERNEL(rms_norm, REDUCE_WG, 1, 1,
          (const store_t* x, const store_t* weight, const store_t* bias, store_t* out, const NormParams p)) {
    __shared__ float scratch[32];
    const u32 row = grid_block();
    if (row >= p.rows) return;
    norm_rms_row(x, weight, bias, out, p, row, false, scratch);
}

SW_KERNEL(gated_rms_norm, REDUCE_WG, 1, 1,
          (const store_t* x, const store_t* weight, const store_t* bias, store_t* out, const NormParams p)) {
    __shared__ float scratch[32];
    const u32 row = grid_block();
    if (row >= p.rows) return;
    norm_rms_row(x, weight, bias, out, p, row, true, scratch);
}

// x: (N, C, spatial) with C = groups * channels_per_group; one block per (n, group), whose elements
// are contiguous. p.rows = N * groups, p.cols = C (for the per-channel affine).
SW_KERNEL(group_norm, REDUCE_WG, 1, 1,
          (const store_t* x, const store_t* weight, const store_t* bias, store_t* out, const NormParams p)) {
    __shared__ float scratch[32];
    const u32 group_row = grid_block();
    if (group_row >= p.rows) return;
    const u32 count = p.channels_per_group * p.spatial;
    const u32 base = group_row * count;
    const u32 groups_per_sample = p.cols / p.channels_per_group;
    const u32 first_channel = (group_row % groups_per_sample) * p.channels_per_group;
    float sum = 0.0f;
    for (u32 i = threadIdx.x; i < count; i += REDUCE_WG) sum += to_f32(x[base + i]);
    const float mean = block_sum(sum, scratch) / (float)count;
    float dev = 0.0f;
    for (u32 i = threadIdx.x; i < count; i += REDUCE_WG) {
        const float d = to_f32(x[base + i]) - mean;
        dev += d * d;
    }
    const float rstd = 1.0f / sqrtf(block_sum(dev, scratch) / (float)count + p.eps);
    for (u32 i = threadIdx.x; i < count; i += REDUCE_WG) {
        const u32 channel = first_channel + i / p.spatial;
        store_f32(out, base + i, norm_affine((to_f32(x[base + i]) - mean) * rstd, weight, bias, p, 0u, channel));
    }
}

// softmax(scale * x) along each row.
SW_KERNEL(softmax, REDUCE_WG, 1, 1,
          (const store_t* x, const store_t* weight, const store_t* bias, store_t* out, const NormParams p)) {
    __shared__ float scratch[32];
    (void)weight;
    (void)bias;
    const u32 row = grid_block();
    if (row >= p.rows) return;
    const u32 base = row * p.cols;
    float local_max = -3.4028234e38f;
    for (u32 c = threadIdx.x; c < p.cols; c += REDUCE_WG) local_max = fmaxf(local_max, p.scale * to_f32(x[base + c]));
    const float row_max = block_max(local_max, scratch);
    float sum = 0.0f;
    for (u32 c = threadIdx.x; c < p.cols; c += REDUCE_WG) sum += expf(p.scale * to_f32(x[base + c]) - row_max);
    const float inv_sum = 1.0f / block_sum(sum, scratch);
    for (u32 c = threadIdx.x; c < p.cols; c += REDUCE_WG)
        store_f32(out, base + c, expf(p.scale * to_f32(x[base + c]) - row_max) * inv_sum);
}

// AdaLN modulation without normalisation: out = x * (1 + scale[b]) + shift[b] for x: (B, L, C),
// scale/shift: (B, C) bound as weight/bias. One thread per element.
SW_KERNEL(modulate, THREADS_1D, 1, 1,
          (const store_t* x, const store_t* weight, const store_t* bias, store_t* out, const NormParams p)) {
    const u32 i = grid_block() * THREADS_1D + threadIdx.x;
    if (i >= p.rows * p.cols) return;
    const u32 row = i / p.cols;
    const u32 c = i % p.cols;
    store_f32(out, i, norm_affine(to_f32(x[i]), weight, bias, p, row / p.rows_per_affine, c));
}
