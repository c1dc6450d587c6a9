// Selective scan (Mamba-1) and, through the same recurrence, SSD (Mamba-2): the CUDA twin of
// shaders/wgsl/scan.wgsl (see there for the algorithm). Needs sequence.cuh (softplus, step_time)
// prepended by the composer.
//
// A thread owns one channel of one (batch, chunk); a block owns SCAN_WG channels of one group, so
// they share B and C, which are staged through shared memory STAGE_STEPS steps at a time.
// Steps are taken in processing order i; the time index is t = i, or L - 1 - i when REVERSE.

#ifndef N_STATE
#define N_STATE 16u
#endif
#ifndef CHANNELS_PER_HEAD
#define CHANNELS_PER_HEAD 1u
#endif
#ifndef A_PER_HEAD
#define A_PER_HEAD 0
#endif
#ifndef HAS_Z
#define HAS_Z 0
#endif
#ifndef HAS_D_SKIP
#define HAS_D_SKIP 0
#endif
#ifndef HAS_DELTA_BIAS
#define HAS_DELTA_BIAS 0
#endif
#ifndef DELTA_SOFTPLUS
#define DELTA_SOFTPLUS 0
#endif
#ifndef HAS_INITIAL_STATE
#define HAS_INITIAL_STATE 0
#endif
#ifndef REVERSE
#define REVERSE 0
#endif

#define STAGE_STEPS 16u

SW_DEVICE u32 scan_head_param(u32 channel) { return channel / CHANNELS_PER_HEAD; }

struct ScanChannel {
    u32 batch;
    u32 channel;
    u32 chunk;
    u32 group;
    bool live;
    u32 x_base;   // (batch, channel) offset into u, z and y
    u32 dt_base;  // (batch, head) offset into delta
};

// Block (x: channel block within the group, y: group * chunks + chunk, z: batch).
SW_DEVICE ScanChannel scan_channel_of(const ScanParams& p, u32 index) {
    const u32 per_group = p.channels / p.groups;
    const u32 group = blockIdx.y / p.chunks;
    const u32 chunk = blockIdx.y % p.chunks;
    const u32 local = blockIdx.x * SCAN_WG + index;
    ScanChannel ch;
    ch.batch = blockIdx.z;
    ch.channel = group * per_group + local;
    ch.chunk = chunk;
    ch.group = group;
    ch.live = local < per_group;
    ch.x_base = ch.batch * p.x_batch + ch.channel * p.x_channel;
    ch.dt_base = ch.batch * p.dt_batch + scan_head_param(ch.channel) * p.dt_channel;
    return ch;
}

SW_DEVICE u32 scan_time_at(const ScanParams& p, u32 i) { return step_time(i, p.length, REVERSE != 0); }

SW_DEVICE float scan_a_value(const float* a_log, u32 channel, u32 n) {
    if (A_PER_HEAD) return a_log[scan_head_param(channel)];
    return a_log[channel * N_STATE + n];
}

// SSD: one decay per step serves every state (A is a scalar per head); Mamba-1 needs one per state.
SW_DEVICE float scan_step_head_decay(const float* a_log, u32 channel, float dt) {
    if (A_PER_HEAD) return expf(dt * scan_a_value(a_log, channel, 0u));
    return 1.0f;
}

SW_DEVICE float scan_step_decay(const float* a_log, u32 channel, float dt, u32 n, float head_decay) {
    if (A_PER_HEAD) return head_decay;
    return expf(dt * scan_a_value(a_log, channel, n));
}

SW_DEVICE float scan_step_delta(const ScanParams& p, const store_t* delta, const float* delta_bias,
                                const ScanChannel& ch, u32 t) {
    float d = to_f32(delta[ch.dt_base + t * p.dt_time]);
    if (HAS_DELTA_BIAS) d += delta_bias[scan_head_param(ch.channel)];
    if (DELTA_SOFTPLUS) d = softplus(d);
    return d;
}

// Loads B (and C) for processing steps [i0, i0 + count) of this block's group. Called by the whole
// block (uniform control flow: the bounds depend on the block only).
SW_DEVICE void scan_stage(const ScanParams& p, const store_t* b_in, const store_t* c_in, u32 i0, u32 count, u32 index,
                          bool with_c, float* b_stage, float* c_stage) {
    // The block's (batch, group) offset into B and C, from the block indices (see scan_channel_of).
    const u32 group_base = blockIdx.z * p.bc_batch + (blockIdx.y / p.chunks) * p.bc_group;
    __syncthreads();
    // e = index + k * SCAN_WG over STAGE_STEPS * N_STATE entries: a loop of known length.
    SW_UNROLL
    for (u32 k = 0; k < (STAGE_STEPS * N_STATE + SCAN_WG - 1u) / SCAN_WG; k++) {
        const u32 e = index + k * SCAN_WG;
        if (e < STAGE_STEPS * N_STATE) {
            const u32 s = e / N_STATE;
            const u32 n = e % N_STATE;
            float bv = 0.0f;
            float cv = 0.0f;
            if (s < count) {
                const u32 at = group_base + n * p.bc_state + scan_time_at(p, i0 + s) * p.bc_time;
                bv = to_f32(b_in[at]);
                if (with_c) cv = to_f32(c_in[at]);
            }
            b_stage[e] = bv;
            c_stage[e] = cv;
        }
    }
    __syncthreads();
}

SW_DEVICE u32 scan_state_index(const ScanParams& p, const ScanChannel& ch, u32 n) {
    return ((ch.batch * p.channels + ch.channel) * p.chunks + ch.chunk) * N_STATE + n;
}

// Both entries share one binding layout (scan.wgsl); each uses part of it.
#define SCAN_BINDINGS const store_t* u, const store_t* delta, const store_t* z, const float* a_log, const store_t* b_in, \
           const store_t* c_in, const float* d_skip, const float* delta_bias, const float* state_in, store_t* y, \
           float* state_out, const ScanParams p

SW_KERNEL(scan_chunk_totals, SCAN_WG, 1, 1,
          (SCAN_BINDINGS)) {
    __shared__ float b_stage[STAGE_STEPS * MAX_STATE];
    __shared__ float c_stage[STAGE_STEPS * MAX_STATE];
    const u32 index = threadIdx.x;
    const ScanChannel ch = scan_channel_of(p, index);
    const u32 start = ch.chunk * p.chunk_len;
    const u32 end = min(start + p.chunk_len, p.length);
    // Per-state A of this channel, read once (Mamba-1). With A per head every state decays by the
    // same factor, so one running product stands for all N of them (the same products, in the same
    // order, as N copies).
    float a_row[N_STATE];
    float decay[N_STATE];
    float head_total = 1.0f;
    float acc[N_STATE];
    SW_UNROLL
    for (u32 n = 0; n < N_STATE; n++) {
        a_row[n] = (!A_PER_HEAD && ch.live) ? scan_a_value(a_log, ch.channel, n) : 0.0f;
        decay[n] = 1.0f;
        acc[n] = 0.0f;
    }
    for (u32 i0 = start; i0 < end; i0 += STAGE_STEPS) {
        const u32 count = min(STAGE_STEPS, end - i0);
        scan_stage(p, b_in, c_in, i0, count, index, false, b_stage, c_stage);
        if (ch.live) {
            for (u32 s = 0; s < count; s++) {
                const u32 t = scan_time_at(p, i0 + s);
                const float dt = scan_step_delta(p, delta, delta_bias, ch, t);
                const float du = dt * to_f32(u[ch.x_base + t * p.x_time]);
                const float head_decay = scan_step_head_decay(a_log, ch.channel, dt);
                if (A_PER_HEAD) head_total *= head_decay;
                SW_UNROLL
                for (u32 n = 0; n < N_STATE; n++) {
                    const float a = A_PER_HEAD ? head_decay : expf(dt * a_row[n]);
                    if (!A_PER_HEAD) decay[n] *= a;
                    acc[n] = a * acc[n] + du * b_stage[s * N_STATE + n];
                }
            }
        }
    }
    if (ch.live) {
        const u32 base = scan_state_index(p, ch, 0u) * 2u;
        SW_UNROLL
        for (u32 n = 0; n < N_STATE; n++) {
            state_out[base + n] = A_PER_HEAD ? head_total : decay[n];
            state_out[base + N_STATE + n] = acc[n];
        }
    }
}

SW_KERNEL(scan_chunk_outputs, SCAN_WG, 1, 1,
          (SCAN_BINDINGS)) {
    __shared__ float b_stage[STAGE_STEPS * MAX_STATE];
    __shared__ float c_stage[STAGE_STEPS * MAX_STATE];
    const u32 index = threadIdx.x;
    const ScanChannel ch = scan_channel_of(p, index);
    const u32 start = ch.chunk * p.chunk_len;
    const u32 end = min(start + p.chunk_len, p.length);
    float h[N_STATE];
    SW_UNROLL
    for (u32 n = 0; n < N_STATE; n++) h[n] = 0.0f;
    if (ch.live && (HAS_INITIAL_STATE || p.chunks > 1u)) {
        SW_UNROLL
        for (u32 n = 0; n < N_STATE; n++) h[n] = state_in[scan_state_index(p, ch, n)];
    }
    float skip = 0.0f;
    if (HAS_D_SKIP && ch.live) skip = d_skip[scan_head_param(ch.channel)];
    for (u32 i0 = start; i0 < end; i0 += STAGE_STEPS) {
        const u32 count = min(STAGE_STEPS, end - i0);
        scan_stage(p, b_in, c_in, i0, count, index, true, b_stage, c_stage);
        if (ch.live) {
            for (u32 s = 0; s < count; s++) {
                const u32 t = scan_time_at(p, i0 + s);
                const float dt = scan_step_delta(p, delta, delta_bias, ch, t);
                const u32 x_at = ch.x_base + t * p.x_time;
                const float x = to_f32(u[x_at]);
                const float du = dt * x;
                float out = 0.0f;
                const float head_decay = scan_step_head_decay(a_log, ch.channel, dt);
                SW_UNROLL
                for (u32 n = 0; n < N_STATE; n++) {
                    const float a = scan_step_decay(a_log, ch.channel, dt, n, head_decay);
                    h[n] = a * h[n] + du * b_stage[s * N_STATE + n];
                    out += c_stage[s * N_STATE + n] * h[n];
                }
                out += skip * x;
                if (HAS_Z) {
                    const float g = to_f32(z[x_at]);
                    out *= g / (1.0f + expf(-g));
                }
                store_f32(y, x_at, out);
            }
        }
    }
    // With one chunk this pass saw the whole sequence: its state is the final state.
    if (ch.live && p.chunks == 1u) {
        const u32 base = (ch.batch * p.channels + ch.channel) * N_STATE;
        SW_UNROLL
        for (u32 n = 0; n < N_STATE; n++) state_out[base + n] = h[n];
    }
}
