// The scalar matmul kernels; the interface (bindings, loads, the output's epilogue) is matmul_io.wgsl.

// Tiled kernel: a 64 x 64 block of C per workgroup of 16 x 16 threads, K in steps of 16 through
// workgroup memory (f32, whatever the storage type). Each thread owns a 4 x 4 micro-tile strided by
// 16 rows and 16 columns, so neighbouring threads read neighbouring workgroup-memory words and
// write neighbouring addresses of C.

var<workgroup> a_tile: array<f32, TILE_K * TILE_M>; // [TILE_K][TILE_M], k-major so the inner loop reads rows
var<workgroup> b_tile: array<f32, TILE_K * TILE_N>; // [TILE_K][TILE_N]

@compute @workgroup_size(MATMUL_SIDE, MATMUL_SIDE)
fn matmul_tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let batch = wg.z;
    let row0 = wg.y * TILE_M;
    let col0 = wg.x * TILE_N;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let tiles = (p.k + TILE_K - 1u) / TILE_K;
    for (var t = 0u; t < tiles; t++) {
        let k0 = t * TILE_K;
        // 1024 elements of each tile, 4 per thread; consecutive threads read consecutive addresses.
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * 256u;
            let a_row = e / TILE_K;
            let a_col = e % TILE_K;
            a_tile[a_col * TILE_M + a_row] = load_a(batch, row0 + a_row, k0 + a_col);
            if B_TRANSPOSED {
                let b_col = e / TILE_K;
                let b_k = e % TILE_K;
                b_tile[b_k * TILE_N + b_col] = load_b(batch, k0 + b_k, col0 + b_col);
            } else {
                let b_k = e / TILE_N;
                let b_col = e % TILE_N;
                b_tile[b_k * TILE_N + b_col] = load_b(batch, k0 + b_k, col0 + b_col);
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a_base = kk * TILE_M + local.y;
            let b_base = kk * TILE_N + local.x;
            let bv = vec4<f32>(b_tile[b_base], b_tile[b_base + 16u], b_tile[b_base + 32u], b_tile[b_base + 48u]);
            acc0 += a_tile[a_base] * bv;
            acc1 += a_tile[a_base + 16u] * bv;
            acc2 += a_tile[a_base + 32u] * bv;
            acc3 += a_tile[a_base + 48u] * bv;
        }
        workgroupBarrier();
    }
    let rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + local.y + 16u * i;
        if row >= p.m {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + local.x + 16u * j;
            if col < p.n {
                store_output(batch, row, col, rows[i][j]);
            }
        }
    }
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

// Wide kernel for large products: the shared wide GEMM tile (gemm_wide.wgsl), 128 x 128 outputs per
// workgroup, 8 x 8 per thread, K double-buffered.
fn gemm_a(batch: u32, row: u32, kk: u32) -> f32 {
    return load_a(batch, row, kk);
}

fn gemm_b(batch: u32, kk: u32, col: u32) -> f32 {
    return load_b(batch, kk, col);
}

fn gemm_store(batch: u32, row: u32, col: u32, sum: f32) {
    store_output(batch, row, col, sum);
}

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
