// The matmul on 16 x 16 x 16 f16 matrix units (f32 accumulation): a 64 x 64 block of C per workgroup
// of COOP_THREADS invocations, K in steps of COOP_K through workgroup memory. The interface (bindings,
// loads, the epilogue) is matmul_io.wgsl, shared with the scalar kernels; the conv2d_coop family
// runs the same block on conv2d's operands (conv2d_io.wgsl, conv2d_coop.wgsl). Either provides, as
// for gemm_wide.wgsl's tile,
//   coop_m(), coop_n(), coop_k() -> u32                  the product's M, N and K
//   gemm_a(batch, row, kk), gemm_b(batch, kk, col) -> f32 A[row][kk] and op(B)[kk][col], 0 outside
//   gemm_store(batch, row, col, sum)                     C[row][col] with its epilogue
//   B_TRANSPOSED (bool)                                  B stored N x K
//
// The fragment operations come from one of two snippets, both written against the semantics of
// SPV_KHR_cooperative_matrix (row-major: element (i, j) at offset + i * stride + j; column-major:
// at offset + j * stride + i):
// - coop_native.wgsl: wgpu's cooperative matrices (`enable wgpu_cooperative_matrix`), one fragment
//   held across a subgroup; chosen where the adapter lists 16 x 16 x 16 f16 -> f32 and its subgroups
//   are at least 32 wide (at most four per workgroup);
// - coop_emulated.wgsl: the same operations in plain WGSL over virtual 32-wide subgroups, each
//   invocation holding 8 elements of an accumulator. Slow; it exists so that the tiling, the edges
//   and the epilogue of this kernel are checked against the float64 reference without matrix units.
// Each snippet provides the fragment types coop_a_t, coop_b_t, coop_acc_t, and (lane of lanes: the
// invocation's place in its subgroup)
//   coop_zero() -> coop_acc_t
//   coop_load_a(offset, lane, lanes) -> coop_a_t    16 x 16 of a_stage at offset, stride COOP_A_STRIDE
//   coop_load_b(offset, lane, lanes) -> coop_b_t    16 x 16 of b_stage at offset: row-major with stride
//                                                   COOP_B_STRIDE, or column-major with stride COOP_K
//                                                   when B_TRANSPOSED (b_stage holds [col][k] then)
//   coop_mma(a, b, c, lane, lanes) -> coop_acc_t    a @ b + c
//   coop_store(c, offset, lane, lanes)              16 x 16 into c_stage at offset, stride 16
// and the entry point `matmul_coop`, which calls matmul_coop_block with its subgroup's place.
//
// A subgroup computes 32 x 32 quarters of the block as 2 x 2 fragments (see matmul_coop_block for how
// the quarters are shared out). The matrix operations must be in workgroup-uniform control flow:
// every loop bound and branch below is uniform, and a subgroup's place only moves the offsets it
// reads and writes.
const COOP_QUARTER: u32 = COOP_TILE / 2u;
const COOP_A_STRIDE: u32 = COOP_K; // a_stage: [row][k]
const COOP_B_STRIDE: u32 = COOP_TILE; // b_stage: [k][col], or [col][k] with stride COOP_K when B_TRANSPOSED
const COOP_FRAGMENT: u32 = 256u; // 16 x 16

var<workgroup> a_stage: array<f16, COOP_TILE * COOP_K>;
var<workgroup> b_stage: array<f16, COOP_K * COOP_TILE>;
// One fragment per quarter on its way out: the epilogue (bias, GELU, gated residual, edges) is
// applied per element by the subgroup's invocations.
var<workgroup> c_stage: array<f32, 4u * COOP_FRAGMENT>;
var<workgroup> coop_subgroups: u32;

// A's and B's COOP_K-deep slices of the block into workgroup memory, zeros past the matrices' edges
// (so a ragged K adds nothing), each in its global order: consecutive invocations read consecutive
// addresses and write consecutive workgroup words. A and a transposed B (a Linear weight, N x K) are
// staged [row][k] and [col][k]; the B fragment is then loaded column-major, which reads it as K x N.
// (Transposing while staging would put a row's 32 k, written by 32 neighbouring invocations, 128
// bytes apart: one memory bank for all of them.)
fn coop_stage(batch: u32, row0: u32, col0: u32, k0: u32, lid: u32) {
    for (var e = lid; e < COOP_TILE * COOP_K; e += COOP_THREADS) {
        a_stage[e] = f16(gemm_a(batch, row0 + e / COOP_K, k0 + e % COOP_K));
        if B_TRANSPOSED {
            b_stage[e] = f16(gemm_b(batch, k0 + e % COOP_K, col0 + e / COOP_K));
        } else {
            b_stage[e] = f16(gemm_b(batch, k0 + e / COOP_TILE, col0 + e % COOP_TILE));
        }
    }
}

// Where the B fragment of k offset `ks` and first column `col` (in the block) starts in b_stage.
fn coop_b_offset(ks: u32, col: u32) -> u32 {
    if B_TRANSPOSED {
        return col * COOP_K + ks;
    }
    return ks * COOP_B_STRIDE + col;
}

// One fragment of C, whose first output is (row, col): through the quarter's slot of c_stage, then
// each invocation of the subgroup writes its share of the 256 outputs with the epilogue.
fn coop_emit(acc: coop_acc_t, batch: u32, row: u32, col: u32, quarter: u32, lane: u32, lanes: u32) {
    let slot = quarter * COOP_FRAGMENT;
    coop_store(acc, slot, lane, lanes);
    workgroupBarrier();
    for (var e = lane; e < COOP_FRAGMENT; e += lanes) {
        let r = row + e / 16u;
        let c = col + e % 16u;
        if r < coop_m() && c < coop_n() {
            gemm_store(batch, r, c, c_stage[slot + e]);
        }
    }
    workgroupBarrier();
}

// The block at workgroup `wg` of the grid; `group` of `groups` subgroups, `lane` of its `lanes`
// invocations. `groups` must divide 4 (subgroups of 32 invocations or more).
//
// Four subgroups (32 wide) take a quarter each. Fewer, wider ones take two quarters of the same rows
// at once (0 and 1, or 2 and 3), sharing the A fragments, so that the block is staged once, not
// once per round: two 64-wide subgroups (RADV's compute default on RDNA) in one round, one 128-wide
// subgroup in two.
fn matmul_coop_block(wg: vec3<u32>, lid: u32, group: u32, groups: u32, lane: u32, lanes: u32) {
    // Through workgroup memory so that the branches and the round count below are uniform in the
    // analysis (the matrix operations and barriers need it); every invocation has the same value.
    if lid == 0u {
        coop_subgroups = groups;
    }
    let group_count = workgroupUniformLoad(&coop_subgroups);
    let pair = group_count < 4u;
    let per_group = select(1u, 2u, pair);
    let rounds = 4u / (group_count * per_group);
    let batch = wg.z;
    let row0 = wg.y * COOP_TILE;
    let col0 = wg.x * COOP_TILE;
    for (var round = 0u; round < rounds; round++) {
        // The first quarter, and with `pair` the one to its right (qc = 32).
        let quarter = (group + round * group_count) * per_group;
        let qr = (quarter / 2u) * COOP_QUARTER;
        let qc = (quarter % 2u) * COOP_QUARTER;
        var c00 = coop_zero();
        var c01 = coop_zero();
        var c10 = coop_zero();
        var c11 = coop_zero();
        var d00 = coop_zero();
        var d01 = coop_zero();
        var d10 = coop_zero();
        var d11 = coop_zero();
        for (var k0 = 0u; k0 < coop_k(); k0 += COOP_K) {
            coop_stage(batch, row0, col0, k0, lid);
            workgroupBarrier();
            for (var ks = 0u; ks < COOP_K; ks += 16u) {
                let a0 = coop_load_a(qr * COOP_A_STRIDE + ks, lane, lanes);
                let a1 = coop_load_a((qr + 16u) * COOP_A_STRIDE + ks, lane, lanes);
                let b0 = coop_load_b(coop_b_offset(ks, qc), lane, lanes);
                let b1 = coop_load_b(coop_b_offset(ks, qc + 16u), lane, lanes);
                c00 = coop_mma(a0, b0, c00, lane, lanes);
                c01 = coop_mma(a0, b1, c01, lane, lanes);
                c10 = coop_mma(a1, b0, c10, lane, lanes);
                c11 = coop_mma(a1, b1, c11, lane, lanes);
                if pair {
                    let b2 = coop_load_b(coop_b_offset(ks, qc + 32u), lane, lanes);
                    let b3 = coop_load_b(coop_b_offset(ks, qc + 48u), lane, lanes);
                    d00 = coop_mma(a0, b2, d00, lane, lanes);
                    d01 = coop_mma(a0, b3, d01, lane, lanes);
                    d10 = coop_mma(a1, b2, d10, lane, lanes);
                    d11 = coop_mma(a1, b3, d11, lane, lanes);
                }
            }
            workgroupBarrier();
        }
        coop_emit(c00, batch, row0 + qr, col0 + qc, quarter, lane, lanes);
        coop_emit(c01, batch, row0 + qr, col0 + qc + 16u, quarter, lane, lanes);
        coop_emit(c10, batch, row0 + qr + 16u, col0 + qc, quarter, lane, lanes);
        coop_emit(c11, batch, row0 + qr + 16u, col0 + qc + 16u, quarter, lane, lanes);
        if pair {
            let right = quarter + 1u;
            coop_emit(d00, batch, row0 + qr, col0 + qc + 32u, right, lane, lanes);
            coop_emit(d01, batch, row0 + qr, col0 + qc + 48u, right, lane, lanes);
            coop_emit(d10, batch, row0 + qr + 16u, col0 + qc + 32u, right, lane, lanes);
            coop_emit(d11, batch, row0 + qr + 16u, col0 + qc + 48u, right, lane, lanes);
        }
    }
}
