// The scalar matmul kernels; the interface (bindings, loads, the output's epilogue) is matmul_io.wgsl.

// Tiled kernel: a 64 x 64 block of C per workgroup of 256 threads, for grids too small for the wide
// kernel's 128 x 128 blocks. The threads are four teams of 64 that split K (split-K inside the
// workgroup): thread (ty, tx) of each team holds 8 x 8 outputs of the block (rows 4ty..4ty+3 and
// 32 + 4ty..+3, the same for columns), so one k reads 4 vec4 words for 64 FMAs (4 per word; 4 x 4
// outputs per thread read 2). K advances TILE_K at a time through two stages of workgroup memory,
// double-buffered as in the wide kernel (each thread fetches one vec4 of A and one of B per stage,
// the next stage's loads in flight during the FMAs; one barrier per stage); team t takes the stage's
// k = t, t + 4, ... At the end the teams exchange their partial blocks through the stages: team t
// owns a quarter of the thread's outputs (rows 2t and 2t + 1 of its 8) and receives that quarter
// from each other team, three rounds in which every team sends and receives at once.
const TILED_QUADS: u32 = TILE_M / 4u; // vec4 words per k row of a stage (A's rows, or B's columns)
const TILED_STAGE: u32 = TILE_K * TILED_QUADS; // vec4 words per stage: one per thread
const TILED_HALF: u32 = TILE_M / 2u;
const_assert TILE_M == 64u && TILE_N == TILE_M && TILE_K == 16u && TILED_STAGE == MATMUL_SIDE * MATMUL_SIDE;

// [stage of A (2)][k][row / 4], then [stage of B (2)][k][col / 4] at TILED_B; all four are the
// exchange's 16 slots of 64 quads at the end.
const TILED_B: u32 = 2u * TILED_STAGE;
var<workgroup> tiled_stage: array<vec4<f32>, 4u * TILED_STAGE>;

// The stages are filled as the wide kernel's (gemm_wide.wgsl's stage_fetch_a and the rest): thread
// `lid` fetches 4 consecutive rows of A (or columns of a transposed B) at one k, stored at quad
// (row / 4) ^ k of stage row k (k < 16 permutes a row's 16 quads), so that the 8 threads one 128-bit
// store serves per cycle cover all 32 banks.

@compute @workgroup_size(MATMUL_SIDE, MATMUL_SIDE)
fn matmul_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let batch = wg.z;
    let row0 = wg.y * TILE_M;
    let col0 = wg.x * TILE_N;
    let team = lid / 64u;
    let ty = (lid % 64u) / 8u;
    let tx = lid % 8u;
    // acc[2i + j]: row i of the thread's 8 (4ty + i, or 32 + 4ty + i - 4 from i = 4), columns
    // 4tx..+3 (j = 0) or 32 + 4tx..+3 (j = 1).
    var acc: array<vec4<f32>, 16>;
    let tiles = (p.k + TILE_K - 1u) / TILE_K;
    tiled_stage[stage_slot_a(lid, TILE_K, TILED_QUADS)] = stage_fetch_a(batch, row0, 0u, lid, TILE_K);
    tiled_stage[TILED_B + stage_slot_b(lid, TILE_K, TILED_QUADS)] = stage_fetch_b(batch, col0, 0u, lid, TILE_K, TILED_QUADS);
    workgroupBarrier();
    for (var t = 0u; t < tiles; t++) {
        let cur = (t % 2u) * TILED_STAGE;
        let more = t + 1u < tiles;
        var next_a = vec4<f32>(0.0);
        var next_b = vec4<f32>(0.0);
        if more {
            next_a = stage_fetch_a(batch, row0, (t + 1u) * TILE_K, lid, TILE_K);
            next_b = stage_fetch_b(batch, col0, (t + 1u) * TILE_K, lid, TILE_K, TILED_QUADS);
        }
        for (var j = 0u; j < TILE_K / BLOCK_TEAMS; j++) {
            let kk = BLOCK_TEAMS * j + team;
            let base = cur + kk * TILED_QUADS;
            let a_lo = tiled_stage[base + (ty ^ kk)];
            let a_hi = tiled_stage[base + ((8u + ty) ^ kk)];
            let b_lo = tiled_stage[TILED_B + base + stage_quad_b(tx, kk)];
            let b_hi = tiled_stage[TILED_B + base + stage_quad_b(8u + tx, kk)];
            block_fma(&acc, a_lo, a_hi, b_lo, b_hi);
        }
        // The other stage was last read before the previous barrier, so it can be overwritten now.
        if more {
            let next = TILED_STAGE - cur;
            tiled_stage[next + stage_slot_a(lid, TILE_K, TILED_QUADS)] = next_a;
            tiled_stage[TILED_B + next + stage_slot_b(lid, TILE_K, TILED_QUADS)] = next_b;
        }
        workgroupBarrier();
    }
    // The exchange: in round r, team t sends quarter (t + r) % 4 of its outputs to slot t and adds the
    // quarter it owns from slot (t - r) % 4. Slot t, quad q, lane l is at 64 (4t + q) + l.
    let lane = lid % 64u;
    var own = array<vec4<f32>, 4>(
        block_quarter(&acc, team, 0u),
        block_quarter(&acc, team, 1u),
        block_quarter(&acc, team, 2u),
        block_quarter(&acc, team, 3u),
    );
    for (var r = 1u; r < BLOCK_TEAMS; r++) {
        if r > 1u {
            workgroupBarrier();
        }
        let sent = (team + r) % BLOCK_TEAMS;
        for (var q = 0u; q < 4u; q++) {
            tiled_stage[64u * (4u * team + q) + lane] = block_quarter(&acc, sent, q);
        }
        workgroupBarrier();
        let sender = (team + BLOCK_TEAMS - r) % BLOCK_TEAMS;
        for (var q = 0u; q < 4u; q++) {
            own[q] += tiled_stage[64u * (4u * sender + q) + lane];
        }
    }
    // Quarter t: rows 2t and 2t + 1 of the thread's 8, each in two column quads.
    let row = row0 + 4u * ty + 2u * (team % 2u) + TILED_HALF * (team / 2u);
    let col = col0 + 4u * tx;
    gemm_wide_store(batch, row, col, p.m, p.n, own[0]);
    gemm_wide_store(batch, row, col + TILED_HALF, p.m, p.n, own[1]);
    gemm_wide_store(batch, row + 1u, col, p.m, p.n, own[2]);
    gemm_wide_store(batch, row + 1u, col + TILED_HALF, p.m, p.n, own[3]);
}

// One thread per output element: the baseline the tiled kernel is measured against.
@compute @workgroup_size(MATMUL_SIDE, MATMUL_SIDE)
fn matmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.y;
    let col = gid.x;
    let batch = gid.z;
    if row >= p.m || col >= p.n {
        return;
    }
    var value = 0.0;
    for (var kk = 0u; kk < p.k; kk++) {
        value += load_a(batch, row, kk) * load_b(batch, kk, col);
    }
    store_output(batch, row, col, value);
}

// Wide kernel for large products: the shared wide GEMM tile (gemm_wide.wgsl, on matmul_io.wgsl's
// gemm_a, gemm_b and gemm_store), 128 x 128 outputs per workgroup, 8 x 8 per thread, K double-buffered.

@compute @workgroup_size(MATMUL_SIDE, MATMUL_SIDE)
fn matmul_wide(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    gemm_wide_tile(wg.z, wg.y * WIDE_TILE, wg.x * WIDE_TILE, p.m, p.n, p.k, local, lid);
}

// Skinny kernel for at most SKINNY_ROWS rows of A (the conditioning, the first scales): GEMV-like, so
// the bound is reading B once. A workgroup computes all rows for SKINNY_COLS columns; the
// SKINNY_LANES threads of a column split K between them, so with a transposed B (a Linear weight)
// neighbouring threads read neighbouring words of one weight row. A is staged through workgroup
// memory SKINNY_CHUNK k at a time as [k][rows], zeros past M and K; each thread accumulates its rows
// in two vec4s (the second only with more than 4 rows), and the lanes of a column are summed through
// workgroup memory at the end.
const SKINNY_QUADS: u32 = SKINNY_ROWS / 4u;

// A's chunk during the K loop, then the lanes' partial sums: [column][quad][lane].
var<workgroup> skinny_shared: array<vec4<f32>, SKINNY_CHUNK * SKINNY_QUADS>;

@compute @workgroup_size(SKINNY_LANES, SKINNY_COLS)
fn matmul_skinny(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let batch = wg.z;
    let lane = local.x;
    let col = wg.x * SKINNY_COLS + local.y;
    let two_quads = p.m > 4u;
    var acc_lo = vec4<f32>(0.0);
    var acc_hi = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += SKINNY_CHUNK) {
        for (var v = lid; v < SKINNY_CHUNK * SKINNY_QUADS; v += SKINNY_LANES * SKINNY_COLS) {
            let kk = k0 + v / SKINNY_QUADS;
            let row = 4u * (v % SKINNY_QUADS);
            skinny_shared[v] = vec4<f32>(load_a(batch, row, kk), load_a(batch, row + 1u, kk), load_a(batch, row + 2u, kk), load_a(batch, row + 3u, kk));
        }
        workgroupBarrier();
        for (var kk = lane; kk < SKINNY_CHUNK; kk += SKINNY_LANES) {
            let bv = load_b(batch, k0 + kk, col);
            acc_lo += skinny_shared[kk * SKINNY_QUADS] * bv;
            if two_quads {
                acc_hi += skinny_shared[kk * SKINNY_QUADS + 1u] * bv;
            }
        }
        workgroupBarrier();
    }
    skinny_shared[(local.y * SKINNY_QUADS) * SKINNY_LANES + lane] = acc_lo;
    skinny_shared[(local.y * SKINNY_QUADS + 1u) * SKINNY_LANES + lane] = acc_hi;
    workgroupBarrier();
    // One thread per output: SKINNY_COLS x SKINNY_ROWS of the workgroup's threads each sum one
    // component over the lanes.
    if lid >= SKINNY_COLS * SKINNY_ROWS {
        return;
    }
    let out_col = lid / SKINNY_ROWS;
    let row = lid % SKINNY_ROWS;
    let n = wg.x * SKINNY_COLS + out_col;
    if row >= p.m || n >= p.n {
        return;
    }
    let base = (out_col * SKINNY_QUADS + row / 4u) * SKINNY_LANES;
    var value = 0.0;
    for (var l = 0u; l < SKINNY_LANES; l++) {
        value += skinny_shared[base + l][row % 4u];
    }
    store_output(batch, row, n, value);
}
