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

// Block per (batch * head, chunk, group of 64 columns): that block of the chunk's own end state (N x P)
// and its decay, a GEMM over the chunk's steps (B^T (w x)), as ssd.wgsl's ssd_chunk_states: thread
// (tn, tc) of a team's 8 x 8 grid holds states 4tn..+3 and 32 + 4tn..+3 x columns 4tc..+3 and
// 32 + 4tc..+3 of the group, so a step reads 4 float4 words for 64 FMAs. The teams take every fourth
// step of a stage (split-K) and exchange quarters of their blocks through the stage. States past
// N_STATE and columns past head_dim are staged as 0 and not stored.
#define SSD_STATES_THREADS (64u * BLOCK_TEAMS)
// Quads per staged step: 64 states of B, then (at SSD_STATES_X) 64 columns of the weighted x.
#define SSD_STATES_X (SSD_STAGE * 16u)
SW_KERNEL(ssd_chunk_states, SSD_STATES_THREADS, 1, 1,
          (SSD_BINDINGS)) {
    __shared__ float4 stage4[2u * SSD_STAGE * 16u];
    float* stage = reinterpret_cast<float*>(stage4);
    const u32 index = threadIdx.x;
    const u32 b = blockIdx.x / p.heads;
    const u32 h = blockIdx.x % p.heads;
    const u32 chunk = blockIdx.y;
    const u32 col0 = 64u * blockIdx.z;
    const u32 start = chunk * p.chunk_len;
    const u32 end = min(start + p.chunk_len, p.length);
    const u32 hd = p.head_dim;
    const float end_cum = work[ssd_work_cum(p, b, h, end - 1u)];
    const u32 team = index / 64u;
    const u32 lane = index % 64u;
    const u32 tn = lane / 8u;
    const u32 tc = lane % 8u;
    // acc[i][c]: state (i < 4 ? 4tn + i : 32 + 4tn + i - 4), column (c < 4 ? 4tc + c : 32 + 4tc + c - 4).
    float acc[8][8] = {};
    for (u32 s0 = start; s0 < end; s0 += SSD_STAGE) {
        const u32 count = min(SSD_STAGE, end - s0);
        __syncthreads();
        for (u32 e = index; e < SSD_STAGE * 64u; e += SSD_STATES_THREADS) {
            const u32 s = e / 64u;
            const u32 n = e % 64u;
            float v = 0.0f;
            if (s < count && n < N_STATE) v = to_f32(b_in[ssd_bc_index(p, b, h, n, s0 + s)]);
            stage[e] = v;
        }
        for (u32 e = index; e < SSD_STAGE * 64u; e += SSD_STATES_THREADS) {
            const u32 s = e / 64u;
            const u32 col = col0 + e % 64u;
            float v = 0.0f;
            if (s < count && col < hd) {
                const u32 i = s0 + s;
                const float weight = expf(end_cum - work[ssd_work_cum(p, b, h, i)]) * work[ssd_work_dt(p, b, h, i)];
                v = weight * to_f32(x[ssd_x_index(p, b, h * hd + col, i)]);
            }
            stage[4u * SSD_STATES_X + e] = v;
        }
        __syncthreads();
        for (u32 s = team; s < count; s += BLOCK_TEAMS) {
            const float4 b_lo = stage4[16u * s + tn], b_hi = stage4[16u * s + 8u + tn];
            const float4 x_lo = stage4[SSD_STATES_X + 16u * s + tc], x_hi = stage4[SSD_STATES_X + 16u * s + 8u + tc];
            const float bv[8] = {b_lo.x, b_lo.y, b_lo.z, b_lo.w, b_hi.x, b_hi.y, b_hi.z, b_hi.w};
            const float xv[8] = {x_lo.x, x_lo.y, x_lo.z, x_lo.w, x_hi.x, x_hi.y, x_hi.z, x_hi.w};
            SW_UNROLL
            for (u32 i = 0; i < 8u; i++)
                SW_UNROLL
                for (u32 c = 0; c < 8u; c++) acc[i][c] += bv[i] * xv[c];
        }
    }
    // The teams add their blocks up (block_exchange.cuh): team t owns states i = 2t and 2t + 1 of
    // each thread's 8.
    float own[2][8];
    block_exchange(acc, own, stage4, team, lane, 64u);
    // Each team lays its quarter out column by column (state n of column c at 64c + n), so that every
    // thread then stores consecutive states of a column, as totals holds them.
    __syncthreads();
    SW_UNROLL
    for (u32 i = 0; i < 2u; i++) {
        const u32 n = 4u * tn + 2u * (team % 2u) + i + 32u * (team / 2u);
        SW_UNROLL
        for (u32 c = 0; c < 8u; c++) {
            const u32 col = (c < 4u ? 0u : 28u) + 4u * tc + c;
            stage[64u * col + n] = own[i][c];
        }
    }
    __syncthreads();
    const float decay = expf(end_cum);
    for (u32 e = index; e < 64u * N_STATE; e += SSD_STATES_THREADS) {
        const u32 col = col0 + e / N_STATE;
        const u32 n = e % N_STATE;
        if (col < hd) {
            const u32 channel = h * hd + col;
            const u32 base = ((b * p.heads * hd + channel) * p.chunks + chunk) * 2u * N_STATE;
            totals[base + n] = decay;
            totals[base + N_STATE + n] = stage[64u * (col - col0) + n];
        }
    }
}

// The thread's 8 x 8 output block += rows[k * SSD_OUT_ROWS / 4 + tr and + 4] (its 8 rows) x
// stage[k * stride + 4tc..+3 and + 32..] (its 8 columns) over k = team, team + 4, ... < count.
SW_DEVICE void ssd_accumulate_block(float (&acc)[8][8], const float4* rows, const float* stage, u32 count, u32 stride,
                                    u32 team, u32 tr, u32 tc) {
    for (u32 k = team; k < count; k += BLOCK_TEAMS) {
        const float4 lo = rows[k * (SSD_OUT_ROWS / 4u) + tr], hi = rows[k * (SSD_OUT_ROWS / 4u) + 4u + tr];
        const float r[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
        const float* cols = &stage[k * stride + 4u * tc];
        float c[8];
        SW_UNROLL
        for (u32 j = 0; j < 4u; j++) {
            c[j] = cols[j];
            c[4u + j] = cols[32u + j];
        }
        SW_UNROLL
        for (u32 i = 0; i < 8u; i++)
            SW_UNROLL
            for (u32 j = 0; j < 8u; j++) acc[i][j] += r[i] * c[j];
    }
}

// Block per (batch * head, chunk, block of SSD_OUT_ROWS steps x group of 64 columns): that block of
// the outputs, as ssd.wgsl's ssd_chunk_outputs (see there): for the carried-in state and G (dt x)
// the 128 threads are four teams of 32 that split K, thread (tr, tc) of a team holding rows 4tr..+3
// and 16 + 4tr..+3 x columns 4tc..+3 and 32 + 4tc..+3; the scores are shared out over all 128
// threads ((sr, sc): rows 4sr..+3 x keys 2sc, 2sc + 1 of a tile). The teams exchange quarters of
// their blocks at the end. C stays staged, transposed; B^T, a slice of S_init and dt x take turns in
// one stage.
SW_KERNEL(ssd_chunk_outputs, SSD_OUT_THREADS, 1, 1,
          (SSD_BINDINGS)) {
    static_assert(SSD_OUT_THREADS == 128u && SSD_OUT_ROWS == 32u, "four teams of 32, 8 rows each");
    __shared__ float4 out_c[MAX_STATE * SSD_OUT_ROWS / 4u];         // [n][row / 4]: C^T
    __shared__ float4 out_scores[SSD_OUT_KEYS * SSD_OUT_ROWS / 4u];  // [key][row / 4]
    __shared__ float out_stage[SSD_OUT_STAGE];
    const u32 row_vecs = SSD_OUT_ROWS / 4u;
    const u32 index = threadIdx.x;
    const u32 b = blockIdx.x / p.heads;
    const u32 h = blockIdx.x % p.heads;
    const u32 chunk = blockIdx.y;
    const u32 hd = p.head_dim;
    const u32 column_groups = (hd + 63u) / 64u;
    const u32 col0 = 64u * (blockIdx.z % column_groups);
    const u32 start = chunk * p.chunk_len;
    const u32 end = min(start + p.chunk_len, p.length);
    const u32 first = start + (blockIdx.z / column_groups) * SSD_OUT_ROWS;
    if (first >= end) return;
    const u32 team = index / 32u;
    const u32 lane = index % 32u;
    const u32 tr = lane / 8u;
    const u32 tc = lane % 8u;
    for (u32 e = index; e < N_STATE * SSD_OUT_ROWS; e += SSD_OUT_THREADS) {
        const u32 row = first + e % SSD_OUT_ROWS;
        reinterpret_cast<float*>(out_c)[e] = row < end ? to_f32(c_in[ssd_bc_index(p, b, h, e / SSD_OUT_ROWS, row)]) : 0.0f;
    }
    // acc[i][j]: row (i < 4 ? 4tr + i : 16 + 4tr + i - 4), column (j < 4 ? 4tc + j : 32 + 4tc + j - 4).
    float acc[8][8] = {};
    // The carried-in state: S_init^T in slices of states ([n][column], rows 65 words apart, so that
    // consecutive threads storing down a column hit distinct banks).
    const u32 state_stride = 65u;
    const u32 states_per_slice = min(N_STATE, SSD_OUT_STAGE / state_stride);
    for (u32 n0 = 0; n0 < N_STATE; n0 += states_per_slice) {
        const u32 count = min(states_per_slice, N_STATE - n0);
        __syncthreads();
        for (u32 e = index; e < count * 64u; e += SSD_OUT_THREADS) {
            const u32 col = col0 + e / count;
            const u32 n = n0 + e % count;
            float v = 0.0f;
            if (col < hd) v = chunk_initial[((b * p.heads * hd + h * hd + col) * p.chunks + chunk) * N_STATE + n];
            out_stage[(n - n0) * state_stride + col - col0] = v;
        }
        __syncthreads();
        ssd_accumulate_block(acc, &out_c[n0 * row_vecs], out_stage, count, state_stride, team, tr, tc);
    }
    SW_UNROLL
    for (u32 i = 0; i < 8u; i++) {
        const u32 row = first + 4u * tr + i + (i < 4u ? 0u : SSD_OUT_ROWS / 2u - 4u);
        const float carry = row < end ? expf(work[ssd_work_cum(p, b, h, row)]) : 0.0f;
        SW_UNROLL
        for (u32 j = 0; j < 8u; j++) acc[i][j] *= carry;
    }

    // The scores' rows 4sr..+3 and their a_i (0 past the chunk).
    const u32 sr = index / 16u;
    const u32 sc = index % 16u;
    float cum_rows[4];
    for (u32 i = 0; i < 4u; i++) {
        const u32 row = first + 4u * sr + i;
        cum_rows[i] = row < end ? work[ssd_work_cum(p, b, h, row)] : 0.0f;
    }
    const u32 last = min(first + SSD_OUT_ROWS, end);
    for (u32 s0 = start; s0 < last; s0 += SSD_OUT_KEYS) {
        // B^T of the tile: [n][key].
        __syncthreads();
        for (u32 e = index; e < N_STATE * SSD_OUT_KEYS; e += SSD_OUT_THREADS) {
            const u32 s = s0 + e % SSD_OUT_KEYS;
            out_stage[e] = s < end ? to_f32(b_in[ssd_bc_index(p, b, h, e / SSD_OUT_KEYS, s)]) : 0.0f;
        }
        __syncthreads();
        const u32 k0 = 2u * sc;
        float g[2][4] = {};
        for (u32 n = 0; n < N_STATE; n++) {
            const float4 cv = out_c[n * row_vecs + sr];
            const float cr[4] = {cv.x, cv.y, cv.z, cv.w};
            const float b0 = out_stage[n * SSD_OUT_KEYS + k0], b1 = out_stage[n * SSD_OUT_KEYS + k0 + 1u];
            SW_UNROLL
            for (u32 i = 0; i < 4u; i++) {
                g[0][i] += cr[i] * b0;
                g[1][i] += cr[i] * b1;
            }
        }
        SW_UNROLL
        for (u32 k = 0; k < 2u; k++) {
            const u32 s = s0 + k0 + k;
            float d[4];
            SW_UNROLL
            for (u32 i = 0; i < 4u; i++) {
                // Zero above the diagonal (and past the chunk); the decay is read only below it.
                const u32 row = first + 4u * sr + i;
                d[i] = (s <= row && row < end) ? g[k][i] * expf(cum_rows[i] - work[ssd_work_cum(p, b, h, s)]) : 0.0f;
            }
            out_scores[(k0 + k) * row_vecs + sr] = float4{d[0], d[1], d[2], d[3]};
        }
        // Y += G (dt x): x of the tile's keys, [key][column].
        __syncthreads();
        for (u32 e = index; e < SSD_OUT_KEYS * 64u; e += SSD_OUT_THREADS) {
            const u32 s = s0 + e / 64u;
            const u32 col = col0 + e % 64u;
            out_stage[e] = (s < end && col < hd) ? work[ssd_work_dt(p, b, h, s)] * to_f32(x[ssd_x_index(p, b, h * hd + col, s)]) : 0.0f;
        }
        __syncthreads();
        ssd_accumulate_block(acc, out_scores, out_stage, SSD_OUT_KEYS, 64u, team, tr, tc);
    }

    // The teams add their blocks up (block_exchange.cuh) over C^T, no longer read: team t owns rows
    // i = 2t and 2t + 1 of each thread's 8.
    float own[2][8];
    block_exchange(acc, own, out_c, team, lane, 32u);
    const float skip = HAS_D_SKIP ? d_skip[h] : 0.0f;
    SW_UNROLL
    for (u32 i = 0; i < 2u; i++) {
        const u32 row = first + 4u * tr + 2u * (team % 2u) + i + (SSD_OUT_ROWS / 2u) * (team / 2u);
        if (row >= end) continue;
        SW_UNROLL
        for (u32 j = 0; j < 8u; j++) {
            const u32 col = col0 + (j < 4u ? 4u * tc + j : 28u + 4u * tc + j);
            if (col < hd) {
                const u32 at = ssd_x_index(p, b, h * hd + col, row);
                store_f32(y, at, own[i][j] + skip * to_f32(x[at]));
            }
        }
    }
}
