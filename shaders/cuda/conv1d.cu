// Depthwise causal conv1d (width up to 4) with carried state, as in Mamba blocks: the CUDA twin of
// shaders/wgsl/conv1d.wgsl.
//   y[b, c, t] = bias[c] + sum_k w[c, k] * x'[b, c, t + k - (W - 1)],  optionally SiLU
// where x' is the previous piece's last W - 1 inputs (`state_in`) followed by x. conv1d_state writes
// the last W - 1 entries of x' (the state for the next piece). x and y use explicit (batch, channel,
// time) strides.

#ifndef WIDTH
#define WIDTH 4u
#endif
#ifndef HAS_BIAS
#define HAS_BIAS 1
#endif
#ifndef APPLY_SILU
#define APPLY_SILU 0
#endif
#ifndef HAS_STATE
#define HAS_STATE 0
#endif

// Input at time t of the extended sequence x' (t < 0 reads the carried state, zeros without one).
SW_DEVICE float conv1d_extended(const Conv1dParams& p, const store_t* x, const store_t* state_in, u32 b, u32 c,
                                int t) {
    if (t >= 0) return to_f32(x[b * p.batch_stride + c * p.channel_stride + (u32)t * p.time_stride]);
    if (HAS_STATE) return to_f32(state_in[(b * p.channels + c) * (WIDTH - 1u) + (u32)((int)(WIDTH - 1u) + t)]);
    (void)state_in;
    return 0.0f;
}

// One thread per output element, consecutive threads on consecutive channels of one time step.
SW_KERNEL(conv1d, THREADS_1D, 1, 1,
          (const store_t* x, const store_t* weight, const store_t* bias, const store_t* state_in, store_t* y,
           store_t* state_out, const Conv1dParams p)) {
    (void)state_out;
    const u32 i = grid_block() * THREADS_1D + threadIdx.x;
    if (i >= p.batch * p.channels * p.length) return;
    const u32 c = i % p.channels;
    const u32 t = (i / p.channels) % p.length;
    const u32 b = i / (p.channels * p.length);
    float acc = 0.0f;
    if (HAS_BIAS) acc = to_f32(bias[c]);
    for (u32 k = 0; k < WIDTH; k++) {
        acc += to_f32(weight[c * WIDTH + k]) * conv1d_extended(p, x, state_in, b, c, (int)(t + k) - (int)(WIDTH - 1u));
    }
    if (APPLY_SILU) acc = acc / (1.0f + expf(-acc));
    store_f32(y, b * p.batch_stride + c * p.channel_stride + t * p.time_stride, acc);
}

SW_KERNEL(conv1d_state, THREADS_1D, 1, 1,
          (const store_t* x, const store_t* weight, const store_t* bias, const store_t* state_in, store_t* y,
           store_t* state_out, const Conv1dParams p)) {
    (void)weight;
    (void)bias;
    (void)y;
    const u32 keep = WIDTH - 1u;
    const u32 i = grid_block() * THREADS_1D + threadIdx.x;
    if (keep == 0u || i >= p.batch * p.channels * keep) return;
    const u32 divisor = max(keep, 1u);  // keep; never 0 here (spares WIDTH = 1 a division by zero)
    const u32 j = i % divisor;
    const u32 bc = i / divisor;
    const u32 c = bc % p.channels;
    const u32 b = bc / p.channels;
    // Entry j of the new state is x'[length - keep + j].
    store_f32(state_out, i, conv1d_extended(p, x, state_in, b, c, (int)p.length - (int)keep + (int)j));
}
