// SSD (Mamba-2) in the chunked matrix form: the CUDA twin of shaders/wgsl/ssd.wgsl (see there for
// the math). Per head h (A scalar), chunk of Q steps, positions in processing order:
//   ssd_cumsum        dt_s (softplus(dt_raw + dt_bias)) and a_s = cumsum dt_s A within the chunk
//   ssd_chunk_states  chunk total: decay exp(a_end), state sum_s exp(a_end - a_s) dt_s B_s x_s^T
//   scan_carry        carried initial state of every chunk (scan_carry.cu)
//   ssd_chunk_outputs y_t = sum_{s <= t} (C_t . B_s) exp(a_t - a_s) dt_s x_s + exp(a_t) C_t S_init + D x_t
// Needs sequence.cuh (softplus, step_time) prepended by the composer.

#ifndef N_STATE
#define N_STATE 64u
#endif
#ifndef HAS_D_SKIP
#define HAS_D_SKIP 0
#endif
#ifndef HAS_DT_BIAS
#define HAS_DT_BIAS 0
#endif
#ifndef DT_SOFTPLUS
#define DT_SOFTPLUS 1
#endif
#ifndef REVERSE
#define REVERSE 0
#endif

// SSD_ROWS: output rows (time steps) per block, and keys per tile; SSD_COLS: threads per row.
#define SSD_THREADS (SSD_ROWS * SSD_COLS)
// Steps per stage in ssd_chunk_states.
#define SSD_STAGE 8u
// Outputs per thread of ssd_chunk_states and columns per thread of ssd_chunk_outputs.
#define SSD_STATE_ACC (MAX_STATE * SSD_MAX_HEAD_DIM / SSD_THREADS)
#define SSD_OUTPUT_ACC (SSD_MAX_HEAD_DIM / SSD_COLS)

SW_DEVICE u32 ssd_time_at(const SsdParams& p, u32 i) { return step_time(i, p.length, REVERSE != 0); }

SW_DEVICE u32 ssd_work_dt(const SsdParams& p, u32 b, u32 h, u32 i) { return (b * p.heads + h) * p.length + i; }

SW_DEVICE u32 ssd_work_cum(const SsdParams& p, u32 b, u32 h, u32 i) {
    return p.batch * p.heads * p.length + ssd_work_dt(p, b, h, i);
}

SW_DEVICE u32 ssd_x_index(const SsdParams& p, u32 b, u32 channel, u32 i) {
    return b * p.x_batch + channel * p.x_channel + ssd_time_at(p, i) * p.x_time;
}

SW_DEVICE u32 ssd_bc_index(const SsdParams& p, u32 b, u32 h, u32 n, u32 i) {
    const u32 group = h / (p.heads / p.groups);
    return b * p.bc_batch + group * p.bc_group + n * p.bc_state + ssd_time_at(p, i) * p.bc_time;
}

// Every entry shares one binding layout (ssd.wgsl); each uses part of it.
#define SSD_BINDINGS const store_t* x, const store_t* dt_raw, const float* a_head, const store_t* b_in, const store_t* c_in, \
           const float* d_skip, const float* dt_bias, const float* chunk_initial, float* work, float* totals, \
           store_t* y, const SsdParams p

// One thread per (batch, head, chunk): processed dt and its running sum times A.
SW_KERNEL(ssd_cumsum, SCAN_WG, 1, 1,
          (SSD_BINDINGS)) {
    const u32 task = blockIdx.x * SCAN_WG + threadIdx.x;
    if (task >= p.batch * p.heads * p.chunks) return;
    const u32 chunk = task % p.chunks;
    const u32 h = (task / p.chunks) % p.heads;
    const u32 b = task / (p.chunks * p.heads);
    const u32 start = chunk * p.chunk_len;
    const u32 end = min(start + p.chunk_len, p.length);
    float sum = 0.0f;
    for (u32 i = start; i < end; i++) {
        float dt = to_f32(dt_raw[b * p.dt_batch + h * p.dt_channel + ssd_time_at(p, i) * p.dt_time]);
        if (HAS_DT_BIAS) dt += dt_bias[h];
        if (DT_SOFTPLUS) dt = softplus(dt);
        sum += dt * a_head[h];
        work[ssd_work_dt(p, b, h, i)] = dt;
        work[ssd_work_cum(p, b, h, i)] = sum;
    }
}

// Block per (batch * head, chunk): the chunk's own end state (N x P) and its decay.
SW_KERNEL(ssd_chunk_states, SSD_THREADS, 1, 1,
          (SSD_BINDINGS)) {
    __shared__ float keys_b[SSD_ROWS * MAX_STATE];  // SSD_STAGE x N_STATE used here
    __shared__ float keys_x[SSD_ROWS * SSD_MAX_HEAD_DIM];
    const u32 index = threadIdx.x;
    const u32 b = blockIdx.x / p.heads;
    const u32 h = blockIdx.x % p.heads;
    const u32 chunk = blockIdx.y;
    const u32 start = chunk * p.chunk_len;
    const u32 end = min(start + p.chunk_len, p.length);
    const float end_cum = work[ssd_work_cum(p, b, h, end - 1u)];
    const u32 outputs = N_STATE * p.head_dim;
    float acc[SSD_STATE_ACC];
    SW_UNROLL
    for (u32 k = 0; k < SSD_STATE_ACC; k++) acc[k] = 0.0f;
    for (u32 s0 = start; s0 < end; s0 += SSD_STAGE) {
        const u32 count = min(SSD_STAGE, end - s0);
        __syncthreads();
        for (u32 e = index; e < SSD_STAGE * N_STATE; e += SSD_THREADS) {
            const u32 s = e / N_STATE;
            float v = 0.0f;
            if (s < count) v = to_f32(b_in[ssd_bc_index(p, b, h, e % N_STATE, s0 + s)]);
            keys_b[e] = v;
        }
        for (u32 e = index; e < SSD_STAGE * p.head_dim; e += SSD_THREADS) {
            const u32 s = e / p.head_dim;
            float v = 0.0f;
            if (s < count) {
                const u32 i = s0 + s;
                const float weight = expf(end_cum - work[ssd_work_cum(p, b, h, i)]) * work[ssd_work_dt(p, b, h, i)];
                v = weight * to_f32(x[ssd_x_index(p, b, h * p.head_dim + e % p.head_dim, i)]);
            }
            keys_x[e] = v;
        }
        __syncthreads();
        // Output o = k * SSD_THREADS + index while o < outputs (an unrolled loop with a guard, so acc
        // stays in registers).
        SW_UNROLL
        for (u32 k = 0; k < SSD_STATE_ACC; k++) {
            const u32 o = k * SSD_THREADS + index;
            if (o < outputs) {
                const u32 n = o / p.head_dim;
                const u32 col = o % p.head_dim;
                float sum = acc[k];
                for (u32 s = 0; s < count; s++) sum += keys_b[s * N_STATE + n] * keys_x[s * p.head_dim + col];
                acc[k] = sum;
            }
        }
    }
    const float decay = expf(end_cum);
    SW_UNROLL
    for (u32 k = 0; k < SSD_STATE_ACC; k++) {
        const u32 o = k * SSD_THREADS + index;
        if (o < outputs) {
            const u32 n = o / p.head_dim;
            const u32 channel = h * p.head_dim + o % p.head_dim;
            const u32 base = ((b * p.heads * p.head_dim + channel) * p.chunks + chunk) * 2u * N_STATE;
            totals[base + n] = decay;
            totals[base + N_STATE + n] = acc[k];
        }
    }
}

// Block per (batch * head, chunk, block of SSD_ROWS steps): thread (r, j) owns step r of the block
// and the output columns j, j + SSD_COLS, ...
SW_KERNEL(ssd_chunk_outputs, SSD_THREADS, 1, 1,
          (SSD_BINDINGS)) {
    __shared__ float rows_c[SSD_ROWS * MAX_STATE];
    __shared__ float keys_b[SSD_ROWS * MAX_STATE];
    __shared__ float keys_x[SSD_ROWS * SSD_MAX_HEAD_DIM];  // dt_s * x_s
    __shared__ float scores[SSD_ROWS * SSD_ROWS];
    const u32 index = threadIdx.x;
    const u32 b = blockIdx.x / p.heads;
    const u32 h = blockIdx.x % p.heads;
    const u32 chunk = blockIdx.y;
    const u32 start = chunk * p.chunk_len;
    const u32 end = min(start + p.chunk_len, p.length);
    const u32 first = start + blockIdx.z * SSD_ROWS;
    if (first >= end) return;  // uniform over the block
    const u32 r = index / SSD_COLS;
    const u32 j = index % SSD_COLS;
    const u32 i = first + r;
    const bool live = i < end;
    SW_UNROLL
    for (u32 k = 0; k < (SSD_ROWS * N_STATE + SSD_THREADS - 1u) / SSD_THREADS; k++) {
        const u32 e = index + k * SSD_THREADS;
        if (e < SSD_ROWS * N_STATE) {
            const u32 row = first + e / N_STATE;
            float v = 0.0f;
            if (row < end) v = to_f32(c_in[ssd_bc_index(p, b, h, e % N_STATE, row)]);
            rows_c[e] = v;
        }
    }
    __syncthreads();
    float cum_i = 0.0f;
    if (live) cum_i = work[ssd_work_cum(p, b, h, i)];
    // The carried-in state, decayed to step i: exp(a_i) C_i . S_init. Thread (r, j) owns columns
    // j + k * SSD_COLS below head_dim (an unrolled loop with a guard, so acc stays in registers); the
    // state loop is outside the column loop so C_i[n] is read once, and each column still sums over n
    // in order.
    float acc[SSD_OUTPUT_ACC];
    SW_UNROLL
    for (u32 k = 0; k < SSD_OUTPUT_ACC; k++) acc[k] = 0.0f;
    if (live) {
        const u32 base = ((b * p.heads * p.head_dim + h * p.head_dim + j) * p.chunks + chunk) * N_STATE;
        const u32 column_step = SSD_COLS * p.chunks * N_STATE;
        for (u32 n = 0; n < N_STATE; n++) {
            const float cn = rows_c[r * N_STATE + n];
            SW_UNROLL
            for (u32 k = 0; k < SSD_OUTPUT_ACC; k++) {
                if (j + k * SSD_COLS < p.head_dim) acc[k] += cn * chunk_initial[base + k * column_step + n];
            }
        }
        const float carry = expf(cum_i);
        SW_UNROLL
        for (u32 k = 0; k < SSD_OUTPUT_ACC; k++) acc[k] = carry * acc[k];
    }
    // Within the chunk: keys up to the block's last step (causal).
    const u32 last = min(first + SSD_ROWS, end);
    for (u32 s0 = start; s0 < last; s0 += SSD_ROWS) {
        __syncthreads();
        SW_UNROLL
        for (u32 k = 0; k < (SSD_ROWS * N_STATE + SSD_THREADS - 1u) / SSD_THREADS; k++) {
            const u32 e = index + k * SSD_THREADS;
            if (e < SSD_ROWS * N_STATE) {
                const u32 s = s0 + e / N_STATE;
                float v = 0.0f;
                if (s < end) v = to_f32(b_in[ssd_bc_index(p, b, h, e % N_STATE, s)]);
                keys_b[e] = v;
            }
        }
        for (u32 e = index; e < SSD_ROWS * p.head_dim; e += SSD_THREADS) {
            const u32 s = s0 + e / p.head_dim;
            float v = 0.0f;
            if (s < end) v = work[ssd_work_dt(p, b, h, s)] * to_f32(x[ssd_x_index(p, b, h * p.head_dim + e % p.head_dim, s)]);
            keys_x[e] = v;
        }
        __syncthreads();
        // Score of step i against key s0 + j: (C_i . B_s) exp(a_i - a_s), zero above the diagonal.
        const u32 s = s0 + j;
        float score = 0.0f;
        if (live && s <= i) {
            float dot = 0.0f;
            for (u32 n = 0; n < N_STATE; n++) dot += rows_c[r * N_STATE + n] * keys_b[j * N_STATE + n];
            score = dot * expf(cum_i - work[ssd_work_cum(p, b, h, s)]);
        }
        scores[r * SSD_ROWS + j] = score;
        __syncthreads();
        if (live) {
            // Key outside the column loop (each score read once); each column sums over keys in order.
            for (u32 key = 0; key < SSD_ROWS; key++) {
                const float score_key = scores[r * SSD_ROWS + key];
                SW_UNROLL
                for (u32 k = 0; k < SSD_OUTPUT_ACC; k++) {
                    const u32 col = j + k * SSD_COLS;
                    if (col < p.head_dim) acc[k] += score_key * keys_x[key * p.head_dim + col];
                }
            }
        }
    }
    if (live) {
        float skip = 0.0f;
        if (HAS_D_SKIP) skip = d_skip[h];
        SW_UNROLL
        for (u32 k = 0; k < SSD_OUTPUT_ACC; k++) {
            if (j + k * SSD_COLS < p.head_dim) {
                const u32 at = ssd_x_index(p, b, h * p.head_dim + j + k * SSD_COLS, i);
                store_f32(y, at, acc[k] + skip * to_f32(x[at]));
            }
        }
    }
}
