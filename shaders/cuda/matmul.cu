// Batched matmul (shaders/wgsl/matmul.wgsl): C[b] = A[b] @ op(B[b]) (+ bias), A: M x K, C: M x N, all
// row-major. op(B) = B (K x N), or B^T with B stored N x K (a PyTorch Linear weight) when
// B_TRANSPOSED. A batch stride of 0 broadcasts (one weight matrix for the whole batch).
// Every entry takes (a, b, bias, residual, gate, c, params); launchers bind b in place of the
// operands a launch does not use.

#ifndef B_TRANSPOSED
#define B_TRANSPOSED 0
#endif
#ifndef HAS_BIAS
#define HAS_BIAS 0
#endif
#ifndef GELU
#define GELU 0
#endif
#ifndef GATED_RESIDUAL
#define GATED_RESIDUAL 0
#endif

// The operands every entry takes: (a, b, bias, residual, gate, c, params).
#define MATMUL_ARGS                                                                                   \
    (const store_t* a, const store_t* b, const store_t* bias, const store_t* residual, const store_t* gate, \
     store_t* c, const MatmulParams p)

// Stores output (row, col) of `batch` (matmul.wgsl's store_output): the accumulated sum, then the
// bias, GELU (tanh) and the gated residual residual + gate[row / gate_rows] * value.
SW_DEVICE void matmul_store(store_t* c, const store_t* bias, const store_t* residual, const store_t* gate,
                            const MatmulParams p, u32 batch, u32 row, u32 col, float value) {
    if (HAS_BIAS) value += to_f32(bias[col]);
    if (GELU) value = gelu_tanh_f32(value);
    const u32 index = batch * p.c_batch_stride + row * p.n + col;
    if (GATED_RESIDUAL) {
        const u32 gate_row = (batch * p.m + row) / p.gate_rows;
        value = to_f32(residual[index]) + value * to_f32(gate[gate_row * p.n + col]);
    }
    store_f32(c, index, value);
}

SW_DEVICE float matmul_load_a(const store_t* a, const MatmulParams p, u32 batch, u32 row, u32 col) {
    if (row < p.m && col < p.k) return to_f32(a[batch * p.a_batch_stride + row * p.k + col]);
    return 0.0f;
}

SW_DEVICE float matmul_load_b(const store_t* b, const MatmulParams p, u32 batch, u32 kk, u32 col) {
    if (kk < p.k && col < p.n) {
        if (B_TRANSPOSED) return to_f32(b[batch * p.b_batch_stride + col * p.k + kk]);
        return to_f32(b[batch * p.b_batch_stride + kk * p.n + col]);
    }
    return 0.0f;
}

// Tiled kernel (matmul_tiled in matmul.wgsl): a 64 x 64 block of C per block of 256 threads, four
// teams of 64 that split K. Thread (ty, tx) of each team holds 8 x 8 outputs of the block (rows
// 4ty..+3 and 32 + 4ty..+3, the same for columns): one k reads 4 float4 words for 64 FMAs. K
// advances TILE_K at a time through two shared stages, double-buffered (one float4 of A and of B
// fetched per thread and stage, one barrier per stage); team t takes the stage's k = t, t + 4, ...
// The k-major fetches are swizzled (quad q of stage row k at q ^ k). At the end team t owns rows 2t
// and 2t + 1 of each thread's 8 and receives them from the other teams in three rounds, all teams
// sending and receiving at once, through the stages.
#define TILED_QUADS (TILE_M / 4u)
#define TILED_STAGE (TILE_K * TILED_QUADS)

SW_DEVICE void matmul_tiled_fetch(const store_t* a, const store_t* b, const MatmulParams& p, u32 batch, u32 row0,
                                  u32 col0, u32 k0, u32 lid, float4& na, float4& nb) {
    const u32 a_k = k0 + lid % TILE_K;
    const u32 a_row = row0 + 4u * (lid / TILE_K);
    const u32 b_k = B_TRANSPOSED ? k0 + lid % TILE_K : k0 + lid / TILED_QUADS;
    const u32 b_col = col0 + 4u * (B_TRANSPOSED ? lid / TILE_K : lid % TILED_QUADS);
    na = float4{matmul_load_a(a, p, batch, a_row, a_k), matmul_load_a(a, p, batch, a_row + 1u, a_k),
                matmul_load_a(a, p, batch, a_row + 2u, a_k), matmul_load_a(a, p, batch, a_row + 3u, a_k)};
    nb = float4{matmul_load_b(b, p, batch, b_k, b_col), matmul_load_b(b, p, batch, b_k, b_col + 1u),
                matmul_load_b(b, p, batch, b_k, b_col + 2u), matmul_load_b(b, p, batch, b_k, b_col + 3u)};
}

// Where thread `lid`'s fetched quads go in a stage of A ([k][row / 4]) and of B ([k][col / 4]).
SW_DEVICE void matmul_tiled_stash(float4* stage_a, float4* stage_b, u32 lid, const float4& na, const float4& nb) {
    const u32 k = lid % TILE_K;
    const u32 a_slot = k * TILED_QUADS + ((lid / TILE_K) ^ k);
    stage_a[a_slot] = na;
    stage_b[B_TRANSPOSED ? a_slot : lid] = nb;
}

SW_KERNEL(matmul_tiled, MATMUL_SIDE, MATMUL_SIDE, 1,
          MATMUL_ARGS) {
    static_assert(TILE_M == 64u && TILE_N == TILE_M && TILE_K == 16u && TILED_STAGE == MATMUL_SIDE * MATMUL_SIDE,
                  "a 64 x 64 block, one float4 of each stage per thread");
    // [stage of A (2)][k][row / 4], then [stage of B (2)][k][col / 4]; the exchange's 16 slots of 64
    // quads at the end.
    __shared__ float4 stage[4u * TILED_STAGE];
    float4* stage_b = stage + 2u * TILED_STAGE;
    const u32 lid = threadIdx.x + threadIdx.y * MATMUL_SIDE;
    const u32 batch = blockIdx.z;
    const u32 row0 = blockIdx.y * TILE_M;
    const u32 col0 = blockIdx.x * TILE_N;
    const u32 team = lid / 64u;
    const u32 lane = lid % 64u;
    const u32 ty = lane / 8u;
    const u32 tx = lane % 8u;
    // acc[i][j]: row (i < 4 ? 4ty + i : 32 + 4ty + i - 4), column (j < 4 ? 4tx + j : 32 + 4tx + j - 4).
    float acc[8][8] = {};
    float4 na, nb;
    matmul_tiled_fetch(a, b, p, batch, row0, col0, 0u, lid, na, nb);
    matmul_tiled_stash(stage, stage_b, lid, na, nb);
    __syncthreads();
    const u32 tiles = (p.k + TILE_K - 1u) / TILE_K;
    for (u32 t = 0; t < tiles; ++t) {
        const u32 cur = (t % 2u) * TILED_STAGE;
        const bool more = t + 1u < tiles;
        if (more) matmul_tiled_fetch(a, b, p, batch, row0, col0, (t + 1u) * TILE_K, lid, na, nb);
        for (u32 kk = team; kk < TILE_K; kk += BLOCK_TEAMS) {
            const u32 base = cur + kk * TILED_QUADS;
            const float4 a_lo = stage[base + (ty ^ kk)], a_hi = stage[base + ((8u + ty) ^ kk)];
            const float4 b_lo = stage_b[base + (B_TRANSPOSED ? tx ^ kk : tx)];
            const float4 b_hi = stage_b[base + (B_TRANSPOSED ? (8u + tx) ^ kk : 8u + tx)];
            const float av[8] = {a_lo.x, a_lo.y, a_lo.z, a_lo.w, a_hi.x, a_hi.y, a_hi.z, a_hi.w};
            const float bv[8] = {b_lo.x, b_lo.y, b_lo.z, b_lo.w, b_hi.x, b_hi.y, b_hi.z, b_hi.w};
            for (u32 i = 0; i < 8u; ++i)
                for (u32 j = 0; j < 8u; ++j) acc[i][j] += av[i] * bv[j];
        }
        // The other stage was last read before the previous barrier.
        if (more) matmul_tiled_stash(stage + (TILED_STAGE - cur), stage_b + (TILED_STAGE - cur), lid, na, nb);
        __syncthreads();
    }
    // The teams add their blocks up over the stages (block_exchange.cuh): team t owns rows 2t and
    // 2t + 1 of each thread's 8.
    float own[2][8];
    block_exchange(acc, own, stage, team, lane, 64u);
    for (u32 i = 0; i < 2u; ++i) {
        const u32 row = row0 + 4u * ty + 2u * (team % 2u) + (TILE_M / 2u) * (team / 2u) + i;
        if (row >= p.m) continue;
        for (u32 j = 0; j < 8u; ++j) {
            const u32 col = col0 + (j < 4u ? 4u * tx + j : TILE_N / 2u + 4u * tx + j - 4u);
            if (col < p.n) matmul_store(c, bias, residual, gate, p, batch, row, col, own[i][j]);
        }
    }
}

// One thread per output element: the baseline the tiled kernel is measured against.
SW_KERNEL(matmul_naive, MATMUL_SIDE, MATMUL_SIDE, 1,
          MATMUL_ARGS) {
    const u32 row = blockIdx.y * MATMUL_SIDE + threadIdx.y;
    const u32 col = blockIdx.x * MATMUL_SIDE + threadIdx.x;
    const u32 batch = blockIdx.z;
    if (row >= p.m || col >= p.n) return;
    float value = 0.0f;
    for (u32 kk = 0; kk < p.k; ++kk) value += matmul_load_a(a, p, batch, row, kk) * matmul_load_b(b, p, batch, kk, col);
    matmul_store(c, bias, residual, gate, p, batch, row, col, value);
}

// Wide kernel for large products (matmul_wide in matmul.wgsl): the shared wide GEMM tile
// (gemm_wide.cuh), 128 x 128 outputs per block, 8 x 8 per thread, K double-buffered. For f16 with
// tensor cores the launcher keeps matmul_tiled_tc.
struct MatmulGemm {
    static constexpr bool b_transposed = B_TRANSPOSED;
    const store_t* a;
    const store_t* b;
    const store_t* bias;
    const store_t* residual;
    const store_t* gate;
    store_t* c;
    MatmulParams p;
};

SW_DEVICE float gemm_a(const MatmulGemm& g, u32 batch, u32 row, u32 kk) { return matmul_load_a(g.a, g.p, batch, row, kk); }
SW_DEVICE float gemm_b(const MatmulGemm& g, u32 batch, u32 kk, u32 col) { return matmul_load_b(g.b, g.p, batch, kk, col); }
SW_DEVICE void gemm_store(const MatmulGemm& g, u32 batch, u32 row, u32 col, float sum) {
    matmul_store(g.c, g.bias, g.residual, g.gate, g.p, batch, row, col, sum);
}

SW_KERNEL(matmul_wide, MATMUL_SIDE, MATMUL_SIDE, 1,
          MATMUL_ARGS) {
    const MatmulGemm g = {a, b, bias, residual, gate, c, p};
    gemm_wide_tile(g, blockIdx.z, blockIdx.y * WIDE_TILE, blockIdx.x * WIDE_TILE, p.m, p.n, p.k);
}

// Skinny kernel for at most SKINNY_ROWS rows of A (matmul_skinny in matmul.wgsl): SKINNY_COLS columns
// of C per block, the SKINNY_LANES threads of a column splitting K so that neighbouring threads read
// neighbouring words of a transposed B's row. A is staged SKINNY_CHUNK k at a time as [k][row], zeros
// past M and K, and the lanes' partial sums are added through shared memory at the end.
SW_KERNEL(matmul_skinny, SKINNY_LANES, SKINNY_COLS, 1,
          MATMUL_ARGS) {
    // A's chunk during the K loop, then the partial sums [column][row][lane].
    __shared__ float skinny_shared[SKINNY_CHUNK * SKINNY_ROWS];
    const u32 lane = threadIdx.x;
    const u32 lid = threadIdx.x + threadIdx.y * SKINNY_LANES;
    const u32 batch = blockIdx.z;
    const u32 col = blockIdx.x * SKINNY_COLS + threadIdx.y;
    float acc[SKINNY_ROWS];
    for (u32 r = 0; r < SKINNY_ROWS; ++r) acc[r] = 0.0f;
    for (u32 k0 = 0; k0 < p.k; k0 += SKINNY_CHUNK) {
        for (u32 v = lid; v < SKINNY_CHUNK * SKINNY_ROWS; v += SKINNY_LANES * SKINNY_COLS)
            skinny_shared[v] = matmul_load_a(a, p, batch, v % SKINNY_ROWS, k0 + v / SKINNY_ROWS);
        __syncthreads();
        for (u32 kk = lane; kk < SKINNY_CHUNK; kk += SKINNY_LANES) {
            const float bv = matmul_load_b(b, p, batch, k0 + kk, col);
            for (u32 r = 0; r < SKINNY_ROWS; ++r) acc[r] += skinny_shared[kk * SKINNY_ROWS + r] * bv;
        }
        __syncthreads();
    }
    for (u32 r = 0; r < SKINNY_ROWS; ++r) skinny_shared[(threadIdx.y * SKINNY_ROWS + r) * SKINNY_LANES + lane] = acc[r];
    __syncthreads();
    if (lid >= SKINNY_COLS * SKINNY_ROWS) return;
    const u32 out_col = lid / SKINNY_ROWS;
    const u32 row = lid % SKINNY_ROWS;
    const u32 n = blockIdx.x * SKINNY_COLS + out_col;
    if (row >= p.m || n >= p.n) return;
    float value = 0.0f;
    for (u32 l = 0; l < SKINNY_LANES; ++l) value += skinny_shared[(out_col * SKINNY_ROWS + row) * SKINNY_LANES + l];
    matmul_store(c, bias, residual, gate, p, batch, row, n, value);
}

#ifdef GEMM_TC_BLOCK
// Tensor-core variant of matmul_tiled for f16 storage (launched instead of it for f16), on
// gemm_tc.cuh's block: the same block of 16 x 16 threads, the same grid and 64 x 64 blocks of C.
// Every copy into a stage moves 16 contiguous bytes where the operand's alignment allows it.
struct MatmulTc {
    MatmulGemm g;        // the operands, as the wide tile takes them
    u32 mode_a, mode_b;  // gemm_tc_mode of each operand
};

// Issues the copies of K step [k0, k0 + GEMM_TC_K) into one stage: 256 chunks of A and 256 of B,
// one of each per thread, consecutive threads on consecutive 16-byte chunks of a row.
SW_DEVICE void gemm_tc_stage(const MatmulTc& o, u32 (*a_st)[GEMM_TC_ROW_WORDS], u32 (*b_st)[GEMM_TC_B_WORDS],
                             u32 batch, u32 row0, u32 col0, u32 k0, u32 lid) {
    const MatmulParams& p = o.g.p;
    {
        const u32 r = lid / 4u, c = (lid % 4u) * 8u;  // 64 rows x 4 chunks
        const u32 row = row0 + r, kk = k0 + c;
        const u32 valid = row < p.m && kk < p.k ? min(8u, p.k - kk) : 0u;
        const store_t* src = valid > 0u ? o.g.a + batch * p.a_batch_stride + row * p.k + kk : o.g.a;
        gemm_tc_chunk(&a_st[r][c / 2u], src, valid, o.mode_a);
    }
    if (B_TRANSPOSED) {
        const u32 r = lid / 4u, c = (lid % 4u) * 8u;  // 64 columns of op(B) x 4 chunks of k
        const u32 n = col0 + r, kk = k0 + c;
        const u32 valid = n < p.n && kk < p.k ? min(8u, p.k - kk) : 0u;
        const store_t* src = valid > 0u ? o.g.b + batch * p.b_batch_stride + n * p.k + kk : o.g.b;
        gemm_tc_chunk(&b_st[r][c / 2u], src, valid, o.mode_b);
    } else {
        const u32 r = lid / 8u, c = (lid % 8u) * 8u;  // 32 rows of k x 8 chunks of n
        const u32 kk = k0 + r, n = col0 + c;
        const u32 valid = kk < p.k && n < p.n ? min(8u, p.n - n) : 0u;
        const store_t* src = valid > 0u ? o.g.b + batch * p.b_batch_stride + kk * p.n + n : o.g.b;
        gemm_tc_chunk(&b_st[r][c / 2u], src, valid, o.mode_b);
    }
}

SW_DEVICE void gemm_tc_store(const MatmulTc& o, u32 batch, u32 row, u32 col, float sum) {
    gemm_store(o.g, batch, row, col, sum);
}

SW_DEVICE void matmul_tc_block MATMUL_ARGS {
    const MatmulTc ops = {{a, b, bias, residual, gate, c, p}, gemm_tc_mode(a, p.k, p.a_batch_stride),
                          gemm_tc_mode(b, B_TRANSPOSED ? p.k : p.n, p.b_batch_stride)};
    gemm_tc_block(ops, p.m, p.n, p.k);
}

SW_KERNEL(matmul_tiled_tc, MATMUL_SIDE, MATMUL_SIDE, 1,
          MATMUL_ARGS) {
    matmul_tc_block(a, b, bias, residual, gate, c, p);
}

// The matrix-unit matmul (the matmul_coop family, MatmulAlgorithm::Cooperative; matmul_coop.wgsl on
// wgpu's cooperative matrices): on CUDA, the tensor-core kernel above, over the same 64 x 64 blocks.
SW_KERNEL(matmul_coop, MATMUL_SIDE, MATMUL_SIDE, 1,
          MATMUL_ARGS) {
    matmul_tc_block(a, b, bias, residual, gate, c, p);
}
#endif
