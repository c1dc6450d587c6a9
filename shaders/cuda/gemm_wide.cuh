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

SW_DEVICE float4 gemm_wide_quad(const float* v) {
    float4 q;
    q.x = v[0];
    q.y = v[1];
    q.z = v[2];
    q.w = v[3];
    return q;
}

// Where thread `lid`'s fetched quad goes in a stage laid out [k][row / 4] (A) and [k][col / 4] (B),
// as one 128-bit store. The k-major fetches (A's, and B's when transposed) are swizzled: quad q of
// row k is stored at q ^ k. Unswizzled, the 8 threads one 128-bit store serves per cycle (k = 0..7
// of one quad, rows 128 words apart) hit the same 4 banks; swizzled they cover all 32 (as in
// gemm_wide.wgsl). k < WIDE_K = 8 flips only a quad's low 3 bits, so it stays in its half row.
template <class Ops>
SW_DEVICE void gemm_wide_stash(float4* stage_a, float4* stage_b, u32 lid, const float* na, const float* nb) {
    const u32 k = lid % WIDE_K;
    const u32 a_slot = k * (WIDE_TILE / 4u) + ((lid / WIDE_K) ^ k);
    // B stored K x N: thread lid fetched quad lid % 32 of row lid / 32.
    const u32 b_slot = Ops::b_transposed ? a_slot : lid;
    stage_a[a_slot] = gemm_wide_quad(na);
    stage_b[b_slot] = gemm_wide_quad(nb);
}

// The block of C at (row0, col0) of `batch`; called by every thread of the block with the same m, n, k.
template <class Ops>
SW_DEVICE void gemm_wide_tile(const Ops& ops, u32 batch, u32 row0, u32 col0, u32 m, u32 n, u32 k) {
    // The swizzle XORs a quad with kk < 8, which permutes each aligned group of 8 quads: a half row
    // (MATMUL_SIDE quads) must be whole groups.
    static_assert(WIDE_K <= 8u && MATMUL_SIDE % 8u == 0u, "the swizzle stays within a half row");
    __shared__ float4 wide_a[2u * WIDE_K * (WIDE_TILE / 4u)];  // [stage][k][row / 4], swizzled
    __shared__ float4 wide_b[2u * WIDE_K * (WIDE_TILE / 4u)];  // [stage][k][col / 4], swizzled if transposed
    const u32 stage = WIDE_K * (WIDE_TILE / 4u);
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
            const u32 base = cur + kk * (WIDE_TILE / 4u);
            const u32 qa = threadIdx.y ^ kk;
            const u32 qb = Ops::b_transposed ? threadIdx.x ^ kk : threadIdx.x;
            const float4 a_lo = wide_a[base + qa], a_hi = wide_a[base + MATMUL_SIDE + qa];
            const float4 b_lo = wide_b[base + qb], b_hi = wide_b[base + MATMUL_SIDE + qb];
            const float av[8] = {a_lo.x, a_lo.y, a_lo.z, a_lo.w, a_hi.x, a_hi.y, a_hi.z, a_hi.w};
            const float bv[8] = {b_lo.x, b_lo.y, b_lo.z, b_lo.w, b_hi.x, b_hi.y, b_hi.z, b_hi.w};
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
