// SSD (Mamba-2) in the chunked matrix form. Per head h (A scalar), chunk of Q steps, positions in
// processing order (reversed when REVERSE):
//   dt_s = softplus(dt_raw + dt_bias), a_s = cumsum_{s' <= s in chunk} dt_s' A      (ssd_cumsum)
//   chunk total: decay exp(a_end), state sum_s exp(a_end - a_s) dt_s B_s x_s^T     (ssd_chunk_states)
//   carried initial state of every chunk                                         (scan_carry.wgsl)
//   y_t = sum_{s <= t} (C_t . B_s) exp(a_t - a_s) dt_s x_s + exp(a_t) C_t S_init + D x_t
//                                                                              (ssd_chunk_outputs)
// Every exponent is <= 0 (A < 0, dt > 0), so nothing overflows. The quadratic part is a masked
// matrix product staged through workgroup memory, like attention without the softmax.
override N_STATE: u32 = 64u;
override HAS_D_SKIP: bool = false;
override HAS_DT_BIAS: bool = false;
override DT_SOFTPLUS: bool = true;
override REVERSE: bool = false;

struct SsdParams {
    batch: u32,
    heads: u32,
    head_dim: u32,
    length: u32,
    groups: u32,
    chunk_len: u32,
    chunks: u32,
    x_batch: u32,
    x_channel: u32,
    x_time: u32,
    dt_batch: u32,
    dt_channel: u32,
    dt_time: u32,
    bc_batch: u32,
    bc_group: u32,
    bc_state: u32,
    bc_time: u32,
}

@group(0) @binding(0) var<storage, read> x: array<store_t>;
@group(0) @binding(1) var<storage, read> dt_raw: array<store_t>;
@group(0) @binding(2) var<storage, read> a_head: array<f32>;
@group(0) @binding(3) var<storage, read> b_in: array<store_t>;
@group(0) @binding(4) var<storage, read> c_in: array<store_t>;
@group(0) @binding(5) var<storage, read> d_skip: array<f32>;
@group(0) @binding(6) var<storage, read> dt_bias: array<f32>;
// (batch, channel, chunk, N): each chunk's true initial state, from scan_carry.
@group(0) @binding(7) var<storage, read> chunk_initial: array<f32>;
// (batch, head, position) dt, then (batch, head, position) cumulative dt * A within the chunk.
@group(0) @binding(8) var<storage, read_write> work: array<f32>;
// (batch, channel, chunk, 2N) pairs for scan_carry: decay, then the chunk's own state.
@group(0) @binding(9) var<storage, read_write> totals: array<f32>;
@group(0) @binding(10) var<storage, read_write> y: array<store_t>;
@group(0) @binding(11) var<uniform> p: SsdParams;

fn time_at(i: u32) -> u32 {
    return step_time(i, p.length, REVERSE);
}

fn work_dt(b: u32, h: u32, i: u32) -> u32 {
    return (b * p.heads + h) * p.length + i;
}

fn work_cum(b: u32, h: u32, i: u32) -> u32 {
    return p.batch * p.heads * p.length + work_dt(b, h, i);
}

fn x_index(b: u32, channel: u32, i: u32) -> u32 {
    return b * p.x_batch + channel * p.x_channel + time_at(i) * p.x_time;
}

fn bc_index(b: u32, h: u32, n: u32, i: u32) -> u32 {
    let group = h / (p.heads / p.groups);
    return b * p.bc_batch + group * p.bc_group + n * p.bc_state + time_at(i) * p.bc_time;
}

// One thread per (batch, head, chunk): processed dt and its running sum times A.
@compute @workgroup_size(SCAN_WG)
fn ssd_cumsum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let task = gid.x;
    if task >= p.batch * p.heads * p.chunks {
        return;
    }
    let chunk = task % p.chunks;
    let h = (task / p.chunks) % p.heads;
    let b = task / (p.chunks * p.heads);
    let start = chunk * p.chunk_len;
    let end = min(start + p.chunk_len, p.length);
    var sum = 0.0;
    for (var i = start; i < end; i++) {
        var dt = f32(dt_raw[b * p.dt_batch + h * p.dt_channel + time_at(i) * p.dt_time]);
        if HAS_DT_BIAS {
            dt += dt_bias[h];
        }
        if DT_SOFTPLUS {
            dt = softplus(dt);
        }
        sum += dt * a_head[h];
        work[work_dt(b, h, i)] = dt;
        work[work_cum(b, h, i)] = sum;
    }
}

// Workgroup per (batch * head, chunk, group of 64 columns): that block of the chunk's own end state
// (N x P) and its decay, a GEMM over the chunk's steps (B^T (w x)). Thread (tn, tc) of a team's 8 x 8
// grid holds an 8 x 8 register block: states 4tn..4tn+3 and 32 + 4tn..+3, columns 4tc..4tc+3 and
// 32 + 4tc..+3 of the group, so a step reads 4 vec4 words for 64 FMAs (4 FMAs per word; 4 x 4 blocks
// read 2). The four teams take every fourth step of a stage (split-K), then exchange quarters of
// their blocks through the stage. States past N_STATE and columns past head_dim are staged as 0 and
// not stored.
const STATES_THREADS: u32 = 64u * BLOCK_TEAMS;
// Quads per staged step: 64 states of B, then (at STATES_X) 64 columns of the weighted x.
const STATES_X: u32 = SSD_STAGE * 16u;
var<workgroup> states_stage: array<vec4<f32>, 2u * SSD_STAGE * 16u>;

@compute @workgroup_size(STATES_THREADS)
fn ssd_chunk_states(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) index: u32) {
    let b = wg.x / p.heads;
    let h = wg.x % p.heads;
    let chunk = wg.y;
    let col0 = 64u * wg.z;
    let start = chunk * p.chunk_len;
    let end = min(start + p.chunk_len, p.length);
    let end_cum = work[work_cum(b, h, end - 1u)];
    let team = index / 64u;
    let lane = index % 64u;
    let tn = lane / 8u;
    let tc = lane % 8u;
    // acc[2i + j]: state (i < 4 ? 4tn + i : 32 + 4tn + i - 4), columns 32j + 4tc .. + 3.
    var acc: array<vec4<f32>, 16>;
    for (var s0 = start; s0 < end; s0 += SSD_STAGE) {
        let count = min(SSD_STAGE, end - s0);
        workgroupBarrier();
        for (var e = index; e < SSD_STAGE * 64u; e += STATES_THREADS) {
            let s = e / 64u;
            let n = e % 64u;
            var v = 0.0;
            if s < count && n < N_STATE {
                v = f32(b_in[bc_index(b, h, n, s0 + s)]);
            }
            states_stage[e / 4u][e % 4u] = v;
        }
        for (var e = index; e < SSD_STAGE * 64u; e += STATES_THREADS) {
            let s = e / 64u;
            let col = col0 + e % 64u;
            var v = 0.0;
            if s < count && col < p.head_dim {
                let i = s0 + s;
                let weight = exp(end_cum - work[work_cum(b, h, i)]) * work[work_dt(b, h, i)];
                v = weight * f32(x[x_index(b, h * p.head_dim + col, i)]);
            }
            states_stage[STATES_X + e / 4u][e % 4u] = v;
        }
        workgroupBarrier();
        for (var s = team; s < count; s += BLOCK_TEAMS) {
            let b_lo = states_stage[16u * s + tn];
            let b_hi = states_stage[16u * s + 8u + tn];
            let x_lo = states_stage[STATES_X + 16u * s + tc];
            let x_hi = states_stage[STATES_X + 16u * s + 8u + tc];
            block_fma(&acc, b_lo, b_hi, x_lo, x_hi);
        }
    }
    // The exchange, as matmul_tiled's: team t owns a quarter of every thread's block (its states 2t
    // and 2t + 1 of 8, 4 quads) and in round r sends quarter (t + r) % 4 to slot t and adds its own
    // from slot (t - r) % 4, all teams at once. Slot t, quad q, lane l at 64 (4t + q) + l.
    var own = array<vec4<f32>, 4>(
        block_quarter(&acc, team, 0u),
        block_quarter(&acc, team, 1u),
        block_quarter(&acc, team, 2u),
        block_quarter(&acc, team, 3u),
    );
    for (var r = 1u; r < BLOCK_TEAMS; r++) {
        workgroupBarrier();
        let sent = (team + r) % BLOCK_TEAMS;
        for (var q = 0u; q < 4u; q++) {
            states_stage[64u * (4u * team + q) + lane] = block_quarter(&acc, sent, q);
        }
        workgroupBarrier();
        let sender = (team + BLOCK_TEAMS - r) % BLOCK_TEAMS;
        for (var q = 0u; q < 4u; q++) {
            own[q] += states_stage[64u * (4u * sender + q) + lane];
        }
    }
    // Each team lays its quarter out column by column (state n of column c at word 64c + n), so that
    // every thread then stores consecutive states of a column, as totals holds them. Quad q holds
    // state 4tn + 2 (t % 2) + q / 2 (+ 32 from team 2), columns 32 (q % 2) + 4tc .. + 3.
    workgroupBarrier();
    for (var q = 0u; q < 4u; q++) {
        let n = 4u * tn + 2u * (team % 2u) + q / 2u + 32u * (team / 2u);
        for (var c = 0u; c < 4u; c++) {
            let col = 32u * (q % 2u) + 4u * tc + c;
            states_stage[16u * col + n / 4u][n % 4u] = own[q][c];
        }
    }
    workgroupBarrier();
    let decay = exp(end_cum);
    for (var e = index; e < 64u * N_STATE; e += STATES_THREADS) {
        let col = col0 + e / N_STATE;
        let n = e % N_STATE;
        if col < p.head_dim {
            let channel = h * p.head_dim + col;
            let base = ((b * p.heads * p.head_dim + channel) * p.chunks + chunk) * 2u * N_STATE;
            totals[base + n] = decay;
            totals[base + N_STATE + n] = states_stage[16u * (col - col0) + n / 4u][n % 4u];
        }
    }
}

// Workgroup per (batch * head, chunk, block of SSD_OUT_ROWS steps x group of 64 columns): that block
// of the outputs, three small GEMMs per workgroup in register blocks:
//   carried-in state  Y = diag(exp(a)) C S_init^T    K = N (the states)
//   scores, per tile  G = (C B^T) * exp(a_i - a_s)   K = N; masked to s <= i
//   of SSD_OUT_KEYS   Y += G (dt x)                  K = the tile's keys
// For the two products into Y the 128 threads are four teams of 32 that split K, as ssd_chunk_states'
// teams: thread (tr, tc) of a team's 4 x 8 grid holds rows 4tr..+3 and 16 + 4tr..+3 x columns
// 4tc..+3 and 32 + 4tc..+3 of the block (16 workgroup words per 64 FMAs), and the teams exchange
// quarters of their blocks at the end. The scores are shared out over all 128 threads: (sr, sc) of
// a 8 x 16 grid computes rows 4sr..+3 x keys 2sc, 2sc + 1 of a tile (6 words per 8 FMAs).
// C stays staged (transposed, so four rows are one vec4); B^T, a slice of S_init and dt x take
// turns in one stage of SSD_OUT_STAGE words (x: all 32 keys x 64 columns). Barriers per key tile: 4.
// Rows past the chunk read C = 0 and are not stored; columns past head_dim are staged as 0 and not
// stored.
const OUT_THREADS: u32 = SSD_OUT_THREADS;
const OUT_ROW_VECS: u32 = SSD_OUT_ROWS / 4u;
const OUT_HALF: u32 = SSD_OUT_ROWS / 2u;

// The left operands, four rows to a vec4: C^T ([n][row / 4]), then a tile's scores ([key][row / 4]);
// the teams' exchange at the end (16 slots of 32 quads).
const SCORES_AT: u32 = MAX_STATE * OUT_ROW_VECS;
var<workgroup> out_rows: array<vec4<f32>, (MAX_STATE + SSD_OUT_KEYS) * OUT_ROW_VECS>;
var<workgroup> out_stage: array<f32, SSD_OUT_STAGE>;

@compute @workgroup_size(OUT_THREADS)
fn ssd_chunk_outputs(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) index: u32) {
    let b = wg.x / p.heads;
    let h = wg.x % p.heads;
    let chunk = wg.y;
    let column_groups = (p.head_dim + 63u) / 64u;
    let col0 = 64u * (wg.z % column_groups);
    let start = chunk * p.chunk_len;
    let end = min(start + p.chunk_len, p.length);
    let first = start + (wg.z / column_groups) * SSD_OUT_ROWS;
    if first >= end {
        return;
    }
    let hd = p.head_dim;
    let team = index / 32u;
    let lane = index % 32u;
    let tr = lane / 8u;
    let tc = lane % 8u;
    for (var e = index; e < N_STATE * SSD_OUT_ROWS; e += OUT_THREADS) {
        let row = first + e % SSD_OUT_ROWS;
        var v = 0.0;
        if row < end {
            v = f32(c_in[bc_index(b, h, e / SSD_OUT_ROWS, row)]);
        }
        out_rows[e / 4u][e % 4u] = v;
    }

    // acc[2i + j]: row i of the thread's 8 (4tr + i, or 16 + 4tr + i - 4 from i = 4), columns
    // 4tc..+3 (j = 0) or 32 + 4tc..+3 (j = 1) of the group.
    var acc: array<vec4<f32>, 16>;
    // The carried-in state: S_init^T in slices of states ([n][column]), read along n (contiguous in
    // chunk_initial), so consecutive threads store down a column: rows 65 words apart keep those
    // stores in distinct banks (64 apart would put all of a wave's in one). Team t takes the slice's
    // states t, t + 4, ...
    let state_stride = 65u;
    let states_per_slice = min(N_STATE, SSD_OUT_STAGE / state_stride);
    for (var n0 = 0u; n0 < N_STATE; n0 += states_per_slice) {
        let count = min(states_per_slice, N_STATE - n0);
        workgroupBarrier();
        for (var e = index; e < count * 64u; e += OUT_THREADS) {
            let col = col0 + e / count;
            let n = n0 + e % count;
            var v = 0.0;
            if col < hd {
                let channel = h * hd + col;
                v = chunk_initial[((b * p.heads * hd + channel) * p.chunks + chunk) * N_STATE + n];
            }
            out_stage[(n - n0) * state_stride + col - col0] = v;
        }
        workgroupBarrier();
        for (var k = team; k < count; k += BLOCK_TEAMS) {
            let rows = (n0 + k) * OUT_ROW_VECS;
            let c_lo = out_rows[rows + tr];
            let c_hi = out_rows[rows + 4u + tr];
            let lo = k * state_stride + 4u * tc;
            let hi = lo + 32u;
            let s_lo = vec4<f32>(out_stage[lo], out_stage[lo + 1u], out_stage[lo + 2u], out_stage[lo + 3u]);
            let s_hi = vec4<f32>(out_stage[hi], out_stage[hi + 1u], out_stage[hi + 2u], out_stage[hi + 3u]);
            block_fma(&acc, c_lo, c_hi, s_lo, s_hi);
        }
    }
    // exp(a) of the thread's 8 rows (0 past the chunk, whose C is 0).
    for (var i = 0u; i < 8u; i++) {
        let row = first + 4u * tr + i + select(0u, OUT_HALF - 4u, i >= 4u);
        var carry = 0.0;
        if row < end {
            carry = exp(work[work_cum(b, h, row)]);
        }
        acc[2u * i] *= carry;
        acc[2u * i + 1u] *= carry;
    }

    // The scores' rows: a_i of rows 4sr..+3 (0 past the chunk).
    let sr = index / 16u;
    let sc = index % 16u;
    var cum_rows = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if first + 4u * sr + i < end {
            cum_rows[i] = work[work_cum(b, h, first + 4u * sr + i)];
        }
    }
    // Within the chunk: key tiles up to the block's last step (causal).
    let last = min(first + SSD_OUT_ROWS, end);
    for (var s0 = start; s0 < last; s0 += SSD_OUT_KEYS) {
        // B^T of the tile: [n][key].
        workgroupBarrier();
        for (var e = index; e < N_STATE * SSD_OUT_KEYS; e += OUT_THREADS) {
            let s = s0 + e % SSD_OUT_KEYS;
            var v = 0.0;
            if s < end {
                v = f32(b_in[bc_index(b, h, e / SSD_OUT_KEYS, s)]);
            }
            out_stage[e] = v;
        }
        workgroupBarrier();
        // Scores of rows 4sr..4sr + 3 against keys s0 + 2sc and s0 + 2sc + 1.
        var g0 = vec4<f32>(0.0);
        var g1 = vec4<f32>(0.0);
        let k0 = 2u * sc;
        for (var n = 0u; n < N_STATE; n++) {
            let cv = out_rows[n * OUT_ROW_VECS + sr];
            let kb = n * SSD_OUT_KEYS + k0;
            g0 += cv * out_stage[kb];
            g1 += cv * out_stage[kb + 1u];
        }
        for (var k = 0u; k < 2u; k++) {
            let s = s0 + k0 + k;
            var g = select(g0, g1, k == 1u);
            for (var i = 0u; i < 4u; i++) {
                // Zero above the diagonal (and past the chunk, where s > every live row); the decay is
                // read only below it, where s is a step of this chunk.
                let row = first + 4u * sr + i;
                var decayed = 0.0;
                if s <= row && row < end {
                    decayed = g[i] * exp(cum_rows[i] - work[work_cum(b, h, s)]);
                }
                g[i] = decayed;
            }
            out_rows[SCORES_AT + (k0 + k) * OUT_ROW_VECS + sr] = g;
        }
        // Y += G (dt x): x of the tile's keys, [key][column]; team t takes keys t, t + 4, ...
        workgroupBarrier();
        for (var e = index; e < SSD_OUT_KEYS * 64u; e += OUT_THREADS) {
            let s = s0 + e / 64u;
            let col = col0 + e % 64u;
            var v = 0.0;
            if s < end && col < hd {
                v = work[work_dt(b, h, s)] * f32(x[x_index(b, h * hd + col, s)]);
            }
            out_stage[e] = v;
        }
        workgroupBarrier();
        for (var k = team; k < SSD_OUT_KEYS; k += BLOCK_TEAMS) {
            let rows = SCORES_AT + k * OUT_ROW_VECS;
            let g_lo = out_rows[rows + tr];
            let g_hi = out_rows[rows + 4u + tr];
            let lo = k * 64u + 4u * tc;
            let hi = lo + 32u;
            let x_lo = vec4<f32>(out_stage[lo], out_stage[lo + 1u], out_stage[lo + 2u], out_stage[lo + 3u]);
            let x_hi = vec4<f32>(out_stage[hi], out_stage[hi + 1u], out_stage[hi + 2u], out_stage[hi + 3u]);
            block_fma(&acc, g_lo, g_hi, x_lo, x_hi);
        }
    }

    // The exchange (as ssd_chunk_states'): team t owns rows 2t and 2t + 1 of every thread's 8 and in
    // round r sends quarter (t + r) % 4 to slot t and adds its own from slot (t - r) % 4. Slot t, quad
    // q, lane l at 32 (4t + q) + l, over C^T and the scores, no longer read after the first barrier.
    var own = array<vec4<f32>, 4>(
        block_quarter(&acc, team, 0u),
        block_quarter(&acc, team, 1u),
        block_quarter(&acc, team, 2u),
        block_quarter(&acc, team, 3u),
    );
    for (var r = 1u; r < BLOCK_TEAMS; r++) {
        workgroupBarrier();
        let sent = (team + r) % BLOCK_TEAMS;
        for (var q = 0u; q < 4u; q++) {
            out_rows[32u * (4u * team + q) + lane] = block_quarter(&acc, sent, q);
        }
        workgroupBarrier();
        let sender = (team + BLOCK_TEAMS - r) % BLOCK_TEAMS;
        for (var q = 0u; q < 4u; q++) {
            own[q] += out_rows[32u * (4u * sender + q) + lane];
        }
    }

    var skip = 0.0;
    if HAS_D_SKIP {
        skip = d_skip[h];
    }
    // Quad q: row 4tr + 2 (t % 2) + q / 2 (+ 16 from team 2), columns 32 (q % 2) + 4tc .. + 3.
    for (var q = 0u; q < 4u; q++) {
        let row = first + 4u * tr + 2u * (team % 2u) + q / 2u + OUT_HALF * (team / 2u);
        for (var c = 0u; c < 4u; c++) {
            let col = col0 + 32u * (q % 2u) + 4u * tc + c;
            if row < end && col < hd {
                let at = x_index(b, h * hd + col, row);
                y[at] = store_t(own[q][c] + skip * f32(x[at]));
            }
        }
    }
}
