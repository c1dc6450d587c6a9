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

// Groups of 64 columns in ssd_chunk_outputs' register blocks.
#define SSD_COL_GROUPS (SSD_MAX_HEAD_DIM / 64u)

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
#define SSD_STATES_THREADS (64u * SSD_TEAMS)
// Quads per staged step: 64 states of B, then (at SSD_STATES_X) 64 columns of the weighted x.
#define SSD_STATES_X (SSD_STAGE * 16u)
// State 2u + i (of the thread's 8), column c of quarter u of its block; u is the team's, not a
// constant, so it is picked, not indexed (an indexed acc would leave registers).
SW_DEVICE float ssd_states_quarter(const float (&acc)[8][8], u32 u, u32 i, u32 c) {
    return u == 0u ? acc[i][c] : u == 1u ? acc[2u + i][c] : u == 2u ? acc[4u + i][c] : acc[6u + i][c];
}

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
        for (u32 s = team; s < count; s += SSD_TEAMS) {
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
    // The exchange, as matmul_tiled's: team t owns states i = 2t and 2t + 1 of each thread's 8 and in
    // round r sends quarter (t + r) % 4 to slot t and adds its own from slot (t - r) % 4, all teams at
    // once. Quad q of a quarter: its state q / 2, its column half q % 2; slot t, quad q, lane l at
    // 64 (4t + q) + l.
    float own[2][8];
    SW_UNROLL
    for (u32 i = 0; i < 2u; i++)
        SW_UNROLL
        for (u32 c = 0; c < 8u; c++) own[i][c] = ssd_states_quarter(acc, team, i, c);
    for (u32 r = 1; r < SSD_TEAMS; r++) {
        __syncthreads();
        const u32 sent = (team + r) % SSD_TEAMS;
        SW_UNROLL
        for (u32 q = 0; q < 4u; q++) {
            const u32 i = q / 2u, c = 4u * (q % 2u);
            stage4[64u * (4u * team + q) + lane] =
                float4{ssd_states_quarter(acc, sent, i, c), ssd_states_quarter(acc, sent, i, c + 1u),
                       ssd_states_quarter(acc, sent, i, c + 2u), ssd_states_quarter(acc, sent, i, c + 3u)};
        }
        __syncthreads();
        const u32 sender = (team + SSD_TEAMS - r) % SSD_TEAMS;
        SW_UNROLL
        for (u32 q = 0; q < 4u; q++) {
            const float4 v = stage4[64u * (4u * sender + q) + lane];
            const u32 i = q / 2u, c = 4u * (q % 2u);
            own[i][c] += v.x;
            own[i][c + 1u] += v.y;
            own[i][c + 2u] += v.z;
            own[i][c + 3u] += v.w;
        }
    }
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

// The thread's output block += rows[k * SSD_OUT_ROWS / 4 + tr] (four rows) x stage[k * stride + col..
// col + 3] over k < count, for each 64-column group below head_dim (unrolled, so acc stays in registers).
SW_DEVICE void ssd_accumulate_rows(float (&acc)[SSD_COL_GROUPS][4][4], const float4* rows, const float* stage,
                                   u32 count, u32 stride, u32 hd, u32 tr, u32 c0) {
    SW_UNROLL
    for (u32 q = 0; q < SSD_COL_GROUPS; q++) {
        const u32 col = 64u * q + c0;
        if (col < hd) {
            for (u32 k = 0; k < count; k++) {
                const float4 rv = rows[k * (SSD_OUT_ROWS / 4u) + tr];
                const float r[4] = {rv.x, rv.y, rv.z, rv.w};
                const float* cols = &stage[k * stride + col];
                SW_UNROLL
                for (u32 i = 0; i < 4u; i++)
                    SW_UNROLL
                    for (u32 c = 0; c < 4u; c++) acc[q][i][c] += r[i] * cols[c];
            }
        }
    }
}

// Block per (batch * head, chunk, block of SSD_OUT_ROWS steps): the block's outputs as three small
// GEMMs in register blocks, as ssd.wgsl's ssd_chunk_outputs (see there): thread (tr, tc) holds rows
// 4tr..4tr+3 x columns 64q + 4tc..+3 of every 64-column group q, and computes the scores of those rows
// against keys 2tc and 2tc + 1 of each SSD_OUT_KEYS-key tile. C stays staged, transposed; B^T, the
// carried-in states and dt x take turns in one stage.
SW_KERNEL(ssd_chunk_outputs, SSD_OUT_THREADS, 1, 1,
          (SSD_BINDINGS)) {
    __shared__ float4 out_c[MAX_STATE * SSD_OUT_ROWS / 4u];         // [n][row / 4]: C^T
    __shared__ float4 out_scores[SSD_OUT_KEYS * SSD_OUT_ROWS / 4u];  // [key][row / 4]
    // Plus 4: a block's last 4 columns of a row not a multiple of 4 long read up to 3 words past it.
    __shared__ float out_stage[SSD_OUT_STAGE + 4u];
    const u32 row_vecs = SSD_OUT_ROWS / 4u;
    const u32 index = threadIdx.x;
    const u32 b = blockIdx.x / p.heads;
    const u32 h = blockIdx.x % p.heads;
    const u32 chunk = blockIdx.y;
    const u32 start = chunk * p.chunk_len;
    const u32 end = min(start + p.chunk_len, p.length);
    const u32 first = start + blockIdx.z * SSD_OUT_ROWS;
    if (first >= end) return;  // uniform over the block
    const u32 hd = p.head_dim;
    const u32 tr = index / 16u;
    const u32 tc = index % 16u;
    const u32 r0 = 4u * tr;
    const u32 c0 = 4u * tc;
    float* c_words = reinterpret_cast<float*>(out_c);
    for (u32 e = index; e < N_STATE * SSD_OUT_ROWS; e += SSD_OUT_THREADS) {
        const u32 row = first + e % SSD_OUT_ROWS;
        float v = 0.0f;
        if (row < end) v = to_f32(c_in[ssd_bc_index(p, b, h, e / SSD_OUT_ROWS, row)]);
        c_words[e] = v;
    }
    // a_i of the thread's rows (0 past the chunk, whose C is 0).
    float cum_rows[4];
    SW_UNROLL
    for (u32 i = 0; i < 4u; i++) cum_rows[i] = first + r0 + i < end ? work[ssd_work_cum(p, b, h, first + r0 + i)] : 0.0f;

    // acc[q][i][c]: row r0 + i, column 64q + c0 + c.
    float acc[SSD_COL_GROUPS][4][4] = {};
    // The carried-in state: S_init^T in slices of states ([n][column]), read along n (contiguous in
    // chunk_initial), so consecutive threads store down a column: rows hd + 1 apart keep those stores
    // in distinct banks.
    const u32 state_stride = hd + 1u;
    const u32 states_per_slice = min(N_STATE, SSD_OUT_STAGE / state_stride);
    for (u32 n0 = 0; n0 < N_STATE; n0 += states_per_slice) {
        const u32 count = min(states_per_slice, N_STATE - n0);
        __syncthreads();
        for (u32 e = index; e < count * hd; e += SSD_OUT_THREADS) {
            const u32 col = e / count;
            const u32 n = n0 + e % count;
            const u32 channel = h * hd + col;
            out_stage[(n - n0) * state_stride + col] = chunk_initial[((b * p.heads * hd + channel) * p.chunks + chunk) * N_STATE + n];
        }
        __syncthreads();
        ssd_accumulate_rows(acc, &out_c[n0 * row_vecs], out_stage, count, state_stride, hd, tr, c0);
    }
    SW_UNROLL
    for (u32 i = 0; i < 4u; i++) {
        const float carry = expf(cum_rows[i]);
        SW_UNROLL
        for (u32 q = 0; q < SSD_COL_GROUPS; q++)
            SW_UNROLL
            for (u32 c = 0; c < 4u; c++) acc[q][i][c] *= carry;
    }

    // Within the chunk: key tiles up to the block's last step (causal).
    const u32 last = min(first + SSD_OUT_ROWS, end);
    const u32 keys_per_slice = min(SSD_OUT_KEYS, SSD_OUT_STAGE / hd);
    for (u32 s0 = start; s0 < last; s0 += SSD_OUT_KEYS) {
        // B^T of the tile: [n][key].
        __syncthreads();
        for (u32 e = index; e < N_STATE * SSD_OUT_KEYS; e += SSD_OUT_THREADS) {
            const u32 s = s0 + e % SSD_OUT_KEYS;
            float v = 0.0f;
            if (s < end) v = to_f32(b_in[ssd_bc_index(p, b, h, e / SSD_OUT_KEYS, s)]);
            out_stage[e] = v;
        }
        __syncthreads();
        // Scores of rows r0..r0 + 3 against keys s0 + 2tc and s0 + 2tc + 1.
        const u32 k0 = 2u * tc;
        float g[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
        for (u32 n = 0; n < N_STATE; n++) {
            const float4 cv = out_c[n * row_vecs + tr];
            const float rows[4] = {cv.x, cv.y, cv.z, cv.w};
            const float keys[2] = {out_stage[n * SSD_OUT_KEYS + k0], out_stage[n * SSD_OUT_KEYS + k0 + 1u]};
            SW_UNROLL
            for (u32 k = 0; k < 2u; k++)
                SW_UNROLL
                for (u32 i = 0; i < 4u; i++) g[k][i] += rows[i] * keys[k];
        }
        SW_UNROLL
        for (u32 k = 0; k < 2u; k++) {
            const u32 s = s0 + k0 + k;
            float decayed[4];
            SW_UNROLL
            for (u32 i = 0; i < 4u; i++) {
                // Zero above the diagonal (and past the chunk); the decay is read only below it.
                const u32 row = first + r0 + i;
                decayed[i] = s <= row && row < end ? g[k][i] * expf(cum_rows[i] - work[ssd_work_cum(p, b, h, s)]) : 0.0f;
            }
            out_scores[(k0 + k) * row_vecs + tr] = float4{decayed[0], decayed[1], decayed[2], decayed[3]};
        }
        // Y += G (dt x), x in slices of keys ([key][column]).
        for (u32 k_first = 0; k_first < SSD_OUT_KEYS; k_first += keys_per_slice) {
            const u32 count = min(keys_per_slice, SSD_OUT_KEYS - k_first);
            __syncthreads();
            for (u32 e = index; e < count * hd; e += SSD_OUT_THREADS) {
                const u32 s = s0 + k_first + e / hd;
                float v = 0.0f;
                if (s < end) v = work[ssd_work_dt(p, b, h, s)] * to_f32(x[ssd_x_index(p, b, h * hd + e % hd, s)]);
                out_stage[e] = v;
            }
            __syncthreads();
            ssd_accumulate_rows(acc, &out_scores[k_first * row_vecs], out_stage, count, hd, hd, tr, c0);
        }
    }

    float skip = 0.0f;
    if (HAS_D_SKIP) skip = d_skip[h];
    SW_UNROLL
    for (u32 q = 0; q < SSD_COL_GROUPS; q++)
        SW_UNROLL
        for (u32 i = 0; i < 4u; i++)
            SW_UNROLL
            for (u32 c = 0; c < 4u; c++) {
                const u32 row = first + r0 + i;
                const u32 col = 64u * q + c0 + c;
                if (row < end && col < hd) {
                    const u32 at = ssd_x_index(p, b, h * hd + col, row);
                    store_f32(y, at, acc[q][i][c] + skip * to_f32(x[at]));
                }
            }
}
