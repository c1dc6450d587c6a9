// The wide GEMM tile (shaders/wgsl/gemm_wide.wgsl), shared by the matmul (matmul_wide) and the
// implicit-GEMM conv2d (conv2d_gemm): C (m x n) = A (m x k) @ B (k x n) for one 128 x 128 block of C
// per block of 16 x 16 threads. `Ops` says how elements are read and written, through overloads of
//   float gemm_a(const Ops&, u32 batch, u32 row, u32 kk)           A[row][kk], 0 outside A
//   float gemm_b(const Ops&, u32 batch, u32 kk, u32 col)           B[kk][col], 0 outside B
//   void gemm_store(const Ops&, u32 batch, u32 row, u32 col, float) C[row][col] with its epilogue
// and Ops::b_transposed: B is stored N x K, so its fetches run along k like A's.
//
// Each thread owns 8 x 8 outputs (rows 4ty..4ty+3 and 64+4ty..64+4ty+3, the same for columns). K
// advances WIDE_K at a time through two shared-memory stages: the next step's 4 A and 4 B elements
// are fetched into registers before the current stage is computed and stored into the other stage
// after it, one barrier per step.

template <class Ops>
SW_DEVICE void gemm_wide_fetch(const Ops& ops, u32 batch, u32 row0, u32 col0, u32 k0, u32 lid, float* na,
                               float* nb) {
    const u32 a_k = k0 + lid % WIDE_K;
    const u32 a_row = row0 + 4u * (lid / WIDE_K);
    const u32 b_k = Ops::b_transposed ? k0 + lid % WIDE_K : k0 + lid / (WIDE_TILE / 4u);
    const u32 b_col = col0 + 4u * (Ops::b_transposed ? lid / WIDE_K : lid % (WIDE_TILE / 4u));
    for (u32 i = 0; i < 4u; ++i) {
        na[i] = gemm_a(ops, batch, a_row + i, a_k);
        nb[i] = gemm_b(ops, batch, b_k, b_col + i);
    }
}

// Where thread `lid`'s fetched elements go in a stage laid out [k][row] (A) and [k][col] (B).
template <class Ops>
SW_DEVICE void gemm_wide_stash(float* stage_a, float* stage_b, u32 lid, const float* na, const float* nb) {
    const u32 a_slot = (lid % WIDE_K) * WIDE_TILE + 4u * (lid / WIDE_K);
    const u32 b_slot =
        Ops::b_transposed ? a_slot : (lid / (WIDE_TILE / 4u)) * WIDE_TILE + 4u * (lid % (WIDE_TILE / 4u));
    for (u32 i = 0; i < 4u; ++i) {
        stage_a[a_slot + i] = na[i];
        stage_b[b_slot + i] = nb[i];
    }
}

// The block of C at (row0, col0) of `batch`; called by every thread of the block with the same m, n, k.
template <class Ops>
SW_DEVICE void gemm_wide_tile(const Ops& ops, u32 batch, u32 row0, u32 col0, u32 m, u32 n, u32 k) {
    __shared__ float wide_a[2u * WIDE_K * WIDE_TILE];  // [stage][k][row]
    __shared__ float wide_b[2u * WIDE_K * WIDE_TILE];  // [stage][k][col]
    const u32 stage = WIDE_K * WIDE_TILE;
    const u32 lid = threadIdx.x + threadIdx.y * MATMUL_SIDE;
    float acc[8][8];
    for (u32 i = 0; i < 8u; ++i)
        for (u32 j = 0; j < 8u; ++j) acc[i][j] = 0.0f;
    float na[4], nb[4];
    gemm_wide_fetch(ops, batch, row0, col0, 0u, lid, na, nb);
    gemm_wide_stash<Ops>(wide_a, wide_b, lid, na, nb);
    __syncthreads();
    const u32 tiles = (k + WIDE_K - 1u) / WIDE_K;
    for (u32 t = 0; t < tiles; ++t) {
        const u32 cur = (t % 2u) * stage;
        const bool more = t + 1u < tiles;
        if (more) gemm_wide_fetch(ops, batch, row0, col0, (t + 1u) * WIDE_K, lid, na, nb);
        for (u32 kk = 0; kk < WIDE_K; ++kk) {
            const u32 base = cur + kk * WIDE_TILE;
            float av[8], bv[8];
            for (u32 i = 0; i < 4u; ++i) {
                av[i] = wide_a[base + 4u * threadIdx.y + i];
                av[4u + i] = wide_a[base + WIDE_TILE / 2u + 4u * threadIdx.y + i];
                bv[i] = wide_b[base + 4u * threadIdx.x + i];
                bv[4u + i] = wide_b[base + WIDE_TILE / 2u + 4u * threadIdx.x + i];
            }
            for (u32 i = 0; i < 8u; ++i)
                for (u32 j = 0; j < 8u; ++j) acc[i][j] += av[i] * bv[j];
        }
        // The other stage was last read before the previous barrier.
        if (more) gemm_wide_stash<Ops>(wide_a + (stage - cur), wide_b + (stage - cur), lid, na, nb);
        __syncthreads();
    }
    for (u32 i = 0; i < 8u; ++i) {
        const u32 row = row0 + (i < 4u ? 4u * threadIdx.y + i : WIDE_TILE / 2u + 4u * threadIdx.y + i - 4u);
        if (row >= m) continue;
        for (u32 j = 0; j < 8u; ++j) {
            const u32 col = col0 + (j < 4u ? 4u * threadIdx.x + j : WIDE_TILE / 2u + 4u * threadIdx.x + j - 4u);
            if (col < n) gemm_store(ops, batch, row, col, acc[i][j]);
        }
    }
}
