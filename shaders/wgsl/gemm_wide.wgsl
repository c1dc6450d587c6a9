// The wide GEMM tile, shared by the matmul (matmul_wide) and the implicit-GEMM conv2d (conv2d_gemm):
// C (m x n) = A (m x k) @ B (k x n) for one 128 x 128 block of C per workgroup of 16 x 16 threads.
// The including module defines how elements are read and written:
//   fn gemm_a(batch: u32, row: u32, kk: u32) -> f32            A[row][kk], 0 outside A
//   fn gemm_b(batch: u32, kk: u32, col: u32) -> f32            B[kk][col], 0 outside B
//   fn gemm_store(batch: u32, row: u32, col: u32, sum: f32)    C[row][col] (with its epilogue)
//   B_TRANSPOSED (bool): B is stored N x K, so its fetches run along k like A's
//
// Each thread owns 8 x 8 outputs (rows 4ty..4ty+3 and 64+4ty..64+4ty+3, the same for columns), so one
// K step reads 4 vec4 words from workgroup memory for 64 FMAs (4 FMAs per word against the 64 x 64
// matmul's 2). K advances WIDE_K at a time through two stages of workgroup memory: each thread
// fetches the next step's 4 A and 4 B elements from global memory into registers before computing on
// the current stage, so the loads are in flight during the FMAs, and stores them into the other stage
// afterwards; one barrier per K step. Both stages fit in 16 KiB, WebGPU's default workgroup-memory
// limit.
const WIDE_QUADS: u32 = WIDE_TILE / 4u; // vec4 words per K row of a stage
const WIDE_STAGE: u32 = WIDE_K * WIDE_QUADS; // vec4 words per stage (one per thread)
const WIDE_HALF: u32 = WIDE_TILE / 2u;
// The swizzle XORs a quad with kk < 8, which permutes each aligned group of 8 quads: a half row
// (MATMUL_SIDE quads) must be whole groups.
const_assert WIDE_K <= 8u && MATMUL_SIDE % 8u == 0u;

var<workgroup> wide_a: array<vec4<f32>, 2u * WIDE_STAGE>; // [stage][k][row / 4]
var<workgroup> wide_b: array<vec4<f32>, 2u * WIDE_STAGE>; // [stage][k][col / 4]

// Thread `lid` fetches one vec4 of each stage: 4 consecutive rows of A (or columns of a transposed B)
// at one k, consecutive threads on consecutive k of the same rows; a B stored K x N gives 4
// consecutive columns, consecutive threads on consecutive columns.
//
// The k-major fetches land in the stage swizzled: quad q of row k is stored at q ^ k. Unswizzled, the
// 8 consecutive threads that write k = 0..7 of one quad (the lanes one 128-bit LDS store serves per
// cycle on AMD and NVIDIA) would hit the same 4 banks, rows being 128 words apart: an 8-way
// conflict on every staging store. Swizzled, they cover all 32 banks. k < WIDE_K = 8 flips only the
// quad's low 3 bits, so a quad stays within its half of the row, and the readers' XOR with the
// unrolled kk is one instruction.
//
// The 64 x 64 matmul (matmul_tiled) fills its stages the same way, `depth` k rows of `quads` quads.
fn stage_fetch_a(batch: u32, row0: u32, k0: u32, lid: u32, depth: u32) -> vec4<f32> {
    let kk = k0 + lid % depth;
    let row = row0 + 4u * (lid / depth);
    return vec4<f32>(gemm_a(batch, row, kk), gemm_a(batch, row + 1u, kk), gemm_a(batch, row + 2u, kk), gemm_a(batch, row + 3u, kk));
}

fn stage_slot_a(lid: u32, depth: u32, quads: u32) -> u32 {
    let kk = lid % depth;
    return kk * quads + ((lid / depth) ^ kk);
}

fn stage_fetch_b(batch: u32, col0: u32, k0: u32, lid: u32, depth: u32, quads: u32) -> vec4<f32> {
    var kk = k0 + lid / quads;
    var col = col0 + 4u * (lid % quads);
    if B_TRANSPOSED {
        kk = k0 + lid % depth;
        col = col0 + 4u * (lid / depth);
    }
    return vec4<f32>(gemm_b(batch, kk, col), gemm_b(batch, kk, col + 1u), gemm_b(batch, kk, col + 2u), gemm_b(batch, kk, col + 3u));
}

fn stage_slot_b(lid: u32, depth: u32, quads: u32) -> u32 {
    if B_TRANSPOSED {
        return stage_slot_a(lid, depth, quads);
    }
    return lid;
}

// Where quad `q` of stage row `kk` of B is: swizzled as A's when B is fetched k-major.
fn stage_quad_b(q: u32, kk: u32) -> u32 {
    if B_TRANSPOSED {
        return q ^ kk;
    }
    return q;
}

fn gemm_wide_store(batch: u32, row: u32, col: u32, m: u32, n: u32, v: vec4<f32>) {
    if row >= m {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if col + j < n {
            gemm_store(batch, row, col + j, v[j]);
        }
    }
}

// The block of C at (row0, col0) of `batch`; m, n and k must be uniform over the workgroup.
fn gemm_wide_tile(batch: u32, row0: u32, col0: u32, m: u32, n: u32, k: u32, local: vec3<u32>, lid: u32) {
    var c00 = vec4<f32>(0.0);
    var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0);
    var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0);
    var c31 = vec4<f32>(0.0);
    var c40 = vec4<f32>(0.0);
    var c41 = vec4<f32>(0.0);
    var c50 = vec4<f32>(0.0);
    var c51 = vec4<f32>(0.0);
    var c60 = vec4<f32>(0.0);
    var c61 = vec4<f32>(0.0);
    var c70 = vec4<f32>(0.0);
    var c71 = vec4<f32>(0.0);
    let tiles = (k + WIDE_K - 1u) / WIDE_K;
    wide_a[stage_slot_a(lid, WIDE_K, WIDE_QUADS)] = stage_fetch_a(batch, row0, 0u, lid, WIDE_K);
    wide_b[stage_slot_b(lid, WIDE_K, WIDE_QUADS)] = stage_fetch_b(batch, col0, 0u, lid, WIDE_K, WIDE_QUADS);
    workgroupBarrier();
    for (var t = 0u; t < tiles; t++) {
        let cur = (t % 2u) * WIDE_STAGE;
        let more = t + 1u < tiles;
        var next_a = vec4<f32>(0.0);
        var next_b = vec4<f32>(0.0);
        if more {
            next_a = stage_fetch_a(batch, row0, (t + 1u) * WIDE_K, lid, WIDE_K);
            next_b = stage_fetch_b(batch, col0, (t + 1u) * WIDE_K, lid, WIDE_K, WIDE_QUADS);
        }
        for (var kk = 0u; kk < WIDE_K; kk++) {
            let base = cur + kk * WIDE_QUADS;
            let a_lo = wide_a[base + (local.y ^ kk)];
            let a_hi = wide_a[base + MATMUL_SIDE + (local.y ^ kk)];
            let b_lo = wide_b[base + stage_quad_b(local.x, kk)];
            let b_hi = wide_b[base + MATMUL_SIDE + stage_quad_b(local.x, kk)];
            c00 += a_lo.x * b_lo;
            c01 += a_lo.x * b_hi;
            c10 += a_lo.y * b_lo;
            c11 += a_lo.y * b_hi;
            c20 += a_lo.z * b_lo;
            c21 += a_lo.z * b_hi;
            c30 += a_lo.w * b_lo;
            c31 += a_lo.w * b_hi;
            c40 += a_hi.x * b_lo;
            c41 += a_hi.x * b_hi;
            c50 += a_hi.y * b_lo;
            c51 += a_hi.y * b_hi;
            c60 += a_hi.z * b_lo;
            c61 += a_hi.z * b_hi;
            c70 += a_hi.w * b_lo;
            c71 += a_hi.w * b_hi;
        }
        // The other stage was last read before the previous barrier, so it can be overwritten now.
        if more {
            let next = WIDE_STAGE - cur;
            wide_a[next + stage_slot_a(lid, WIDE_K, WIDE_QUADS)] = next_a;
            wide_b[next + stage_slot_b(lid, WIDE_K, WIDE_QUADS)] = next_b;
        }
        workgroupBarrier();
    }
    let row_lo = row0 + 4u * local.y;
    let row_hi = row_lo + WIDE_HALF;
    let col_lo = col0 + 4u * local.x;
    let col_hi = col_lo + WIDE_HALF;
    gemm_wide_store(batch, row_lo + 0u, col_lo, m, n, c00);
    gemm_wide_store(batch, row_lo + 0u, col_hi, m, n, c01);
    gemm_wide_store(batch, row_lo + 1u, col_lo, m, n, c10);
    gemm_wide_store(batch, row_lo + 1u, col_hi, m, n, c11);
    gemm_wide_store(batch, row_lo + 2u, col_lo, m, n, c20);
    gemm_wide_store(batch, row_lo + 2u, col_hi, m, n, c21);
    gemm_wide_store(batch, row_lo + 3u, col_lo, m, n, c30);
    gemm_wide_store(batch, row_lo + 3u, col_hi, m, n, c31);
    gemm_wide_store(batch, row_hi + 0u, col_lo, m, n, c40);
    gemm_wide_store(batch, row_hi + 0u, col_hi, m, n, c41);
    gemm_wide_store(batch, row_hi + 1u, col_lo, m, n, c50);
    gemm_wide_store(batch, row_hi + 1u, col_hi, m, n, c51);
    gemm_wide_store(batch, row_hi + 2u, col_lo, m, n, c60);
    gemm_wide_store(batch, row_hi + 2u, col_hi, m, n, c61);
    gemm_wide_store(batch, row_hi + 3u, col_lo, m, n, c70);
    gemm_wide_store(batch, row_hi + 3u, col_hi, m, n, c71);
}
