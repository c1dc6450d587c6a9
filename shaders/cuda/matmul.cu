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

// Tiled kernel: a 64 x 64 block of C per block of 16 x 16 threads, K in steps of 16 through shared
// memory (f32, whatever the storage type). Each thread owns a 4 x 4 micro-tile strided by 16 rows and
// 16 columns, so neighbouring threads read neighbouring shared-memory words and write neighbouring
// addresses of C.
SW_KERNEL(matmul_tiled, MATMUL_SIDE, MATMUL_SIDE, 1,
          MATMUL_ARGS) {
    __shared__ float a_tile[TILE_K * TILE_M];  // [TILE_K][TILE_M], k-major so the inner loop reads rows
    __shared__ float b_tile[TILE_K * TILE_N];  // [TILE_K][TILE_N]
    const u32 lid = threadIdx.x + threadIdx.y * MATMUL_SIDE;
    const u32 batch = blockIdx.z;
    const u32 row0 = blockIdx.y * TILE_M;
    const u32 col0 = blockIdx.x * TILE_N;
    float acc[4][4];
    for (u32 i = 0; i < 4; ++i)
        for (u32 j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    const u32 tiles = (p.k + TILE_K - 1u) / TILE_K;
    for (u32 t = 0; t < tiles; ++t) {
        const u32 k0 = t * TILE_K;
        // 1024 elements of each tile, 4 per thread; consecutive threads read consecutive addresses.
        for (u32 i = 0; i < 4u; ++i) {
            const u32 e = lid + i * 256u;
            const u32 a_row = e / TILE_K;
            const u32 a_col = e % TILE_K;
            a_tile[a_col * TILE_M + a_row] = matmul_load_a(a, p, batch, row0 + a_row, k0 + a_col);
            if (B_TRANSPOSED) {
                const u32 b_col = e / TILE_K;
                const u32 b_k = e % TILE_K;
                b_tile[b_k * TILE_N + b_col] = matmul_load_b(b, p, batch, k0 + b_k, col0 + b_col);
            } else {
                const u32 b_k = e / TILE_N;
                const u32 b_col = e % TILE_N;
                b_tile[b_k * TILE_N + b_col] = matmul_load_b(b, p, batch, k0 + b_k, col0 + b_col);
            }
        }
        __syncthreads();
        for (u32 kk = 0; kk < TILE_K; ++kk) {
            const u32 a_base = kk * TILE_M + threadIdx.y;
            const u32 b_base = kk * TILE_N + threadIdx.x;
            float bv[4];
            for (u32 j = 0; j < 4; ++j) bv[j] = b_tile[b_base + 16u * j];
            for (u32 i = 0; i < 4; ++i) {
                const float av = a_tile[a_base + 16u * i];
                for (u32 j = 0; j < 4; ++j) acc[i][j] += av * bv[j];
            }
        }
        __syncthreads();
    }
    for (u32 i = 0; i < 4u; ++i) {
        const u32 row = row0 + threadIdx.y + 16u * i;
        if (row >= p.m) continue;
        for (u32 j = 0; j < 4u; ++j) {
            const u32 col = col0 + threadIdx.x + 16u * j;
            if (col < p.n) {
                matmul_store(c, bias, residual, gate, p, batch, row, col, acc[i][j]);
            }
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

#ifdef SW_STORE_F16
// Tensor-core variant of matmul_tiled for f16 storage (launched instead of it for f16): the same
// block of 16 x 16 threads and the same grid, a 64 x 64 block of C per block. The 8 warps form a 2 x 4
// grid, each warp computing 32 rows x 16 columns of the block as 2 x 2 mma.m16n8k16 tiles (f16 in, f32
// accumulate). K advances MATMUL_TC_K at a time through two shared-memory stages: while the block
// computes on one, the next K step is copied into the other with cp.async. The tiles keep global
// memory's element order, so every copy moves 16 contiguous bytes: A as [row][k], B as [n][k] when
// B_TRANSPOSED (a Linear weight) or [k][n] otherwise. ldmatrix fills the fragments (.trans for the
// [k][n] B). Rows are padded by 16 bytes so that the 8 row addresses of an ldmatrix matrix fall in
// distinct bank groups. Elements past M, N or K are zeros, as in matmul_tiled.
#define MATMUL_TC_K 32u
#define MATMUL_TC_ROW_WORDS (MATMUL_TC_K / 2u + 4u)  // [row][k] stage: 32 halves + 8 of padding (80 bytes)
#define MATMUL_TC_KN_WORDS (TILE_N / 2u + 4u)        // [k][n] stage: 64 halves + 8 of padding (144 bytes)
#if B_TRANSPOSED
#define MATMUL_TC_B_ROWS TILE_N
#define MATMUL_TC_B_WORDS MATMUL_TC_ROW_WORDS
#else
#define MATMUL_TC_B_ROWS MATMUL_TC_K
#define MATMUL_TC_B_WORDS MATMUL_TC_KN_WORDS
#endif

// How a matrix is staged: 16-byte cp.async copies where every 8-half chunk starts 16-byte aligned
// (the base pointer 16-byte aligned, the row length and batch stride multiples of 8 halves), 4-byte
// loads where every pair is 4-byte aligned, element loads otherwise.
#define MATMUL_TC_ASYNC 2u
#define MATMUL_TC_WORDS 1u
#define MATMUL_TC_HALVES 0u

SW_DEVICE u32 matmul_tc_mode(const store_t* base, u32 row_len, u32 batch_stride) {
    const u64 address = (u64)base;
    if (row_len % 8u == 0u && batch_stride % 8u == 0u && address % 16u == 0u) return MATMUL_TC_ASYNC;
    if (row_len % 2u == 0u && batch_stride % 2u == 0u && address % 4u == 0u) return MATMUL_TC_WORDS;
    return MATMUL_TC_HALVES;
}

// Stages 8 consecutive halves of one matrix row into 16 bytes of shared memory: the first `valid`
// (0 to 8) from `src`, zeros after them. `src` is not read when valid is 0 (it must still be the
// matrix's base or a chunk start, so that the async copy's address is aligned).
SW_DEVICE void matmul_tc_chunk(u32* dst, const store_t* src, u32 valid, u32 mode) {
    if (mode == MATMUL_TC_ASYNC) {
        cp_async_16_zfill(dst, src, 2u * valid);
        return;
    }
    for (u32 w = 0; w < 4u; ++w) {
        u32 word = 0u;
        if (2u * w + 1u < valid) {
            if (mode == MATMUL_TC_WORDS) word = reinterpret_cast<const u32*>(src)[w];
            else word = pack_half2(src[2u * w], src[2u * w + 1u]);
        } else if (2u * w < valid) {
            word = (u32)src[2u * w].bits;
        }
        dst[w] = word;
    }
}

// Issues the copies of K step [k0, k0 + MATMUL_TC_K) into one stage: 256 chunks of A and 256 of B,
// one of each per thread, consecutive threads on consecutive 16-byte chunks of a row.
SW_DEVICE void matmul_tc_load(u32 (*a_st)[MATMUL_TC_ROW_WORDS], u32 (*b_st)[MATMUL_TC_B_WORDS], const store_t* a,
                              const store_t* b, const MatmulParams p, u32 batch, u32 row0, u32 col0, u32 k0, u32 lid,
                              u32 mode_a, u32 mode_b) {
    {
        const u32 r = lid / 4u, c = (lid % 4u) * 8u;  // 64 rows x 4 chunks
        const u32 row = row0 + r, kk = k0 + c;
        const u32 valid = row < p.m && kk < p.k ? min(8u, p.k - kk) : 0u;
        const store_t* src = valid > 0u ? a + batch * p.a_batch_stride + row * p.k + kk : a;
        matmul_tc_chunk(&a_st[r][c / 2u], src, valid, mode_a);
    }
    if (B_TRANSPOSED) {
        const u32 r = lid / 4u, c = (lid % 4u) * 8u;  // 64 columns of op(B) x 4 chunks of k
        const u32 n = col0 + r, kk = k0 + c;
        const u32 valid = n < p.n && kk < p.k ? min(8u, p.k - kk) : 0u;
        const store_t* src = valid > 0u ? b + batch * p.b_batch_stride + n * p.k + kk : b;
        matmul_tc_chunk(&b_st[r][c / 2u], src, valid, mode_b);
    } else {
        const u32 r = lid / 8u, c = (lid % 8u) * 8u;  // 32 rows of k x 8 chunks of n
        const u32 kk = k0 + r, n = col0 + c;
        const u32 valid = kk < p.k && n < p.n ? min(8u, p.n - n) : 0u;
        const store_t* src = valid > 0u ? b + batch * p.b_batch_stride + kk * p.n + n : b;
        matmul_tc_chunk(&b_st[r][c / 2u], src, valid, mode_b);
    }
}

SW_DEVICE void matmul_tc_block MATMUL_ARGS {
    alignas(16) __shared__ u32 a_s[2][TILE_M][MATMUL_TC_ROW_WORDS];
    alignas(16) __shared__ u32 b_s[2][MATMUL_TC_B_ROWS][MATMUL_TC_B_WORDS];
    const u32 lid = threadIdx.x + threadIdx.y * MATMUL_SIDE;
    const u32 warp = lid / 32u, lane = lid % 32u;
    const u32 g = lane >> 2, t = lane & 3u;
    const u32 warp_row = (warp / 4u) * 32u;  // 2 warps down
    const u32 warp_col = (warp % 4u) * 16u;  // 4 warps across
    const u32 batch = blockIdx.z;
    const u32 row0 = blockIdx.y * TILE_M;
    const u32 col0 = blockIdx.x * TILE_N;
    const u32 mode_a = matmul_tc_mode(a, p.k, p.a_batch_stride);
    const u32 mode_b = matmul_tc_mode(b, B_TRANSPOSED ? p.k : p.n, p.b_batch_stride);
    float acc[2][2][4];
    for (u32 mi = 0; mi < 2; ++mi)
        for (u32 ni = 0; ni < 2; ++ni)
            for (u32 i = 0; i < 4; ++i) acc[mi][ni][i] = 0.0f;
    const u32 steps = (p.k + MATMUL_TC_K - 1u) / MATMUL_TC_K;
    if (steps > 0u) matmul_tc_load(a_s[0], b_s[0], a, b, p, batch, row0, col0, 0u, lid, mode_a, mode_b);
    cp_async_commit();
    for (u32 s = 0; s < steps; ++s) {
        const u32 st = s & 1u;
        // Step s + 1 into the other stage (last read in step s - 1, before the barrier that ended it).
        if (s + 1u < steps)
            matmul_tc_load(a_s[st ^ 1u], b_s[st ^ 1u], a, b, p, batch, row0, col0, (s + 1u) * MATMUL_TC_K, lid,
                           mode_a, mode_b);
        cp_async_commit();
        cp_async_wait_group<1>();  // this thread's copies of step s have landed
        __syncthreads();           // and everyone's
        for (u32 kk = 0; kk < MATMUL_TC_K; kk += 16u) {  // one k16 slice
            u32 af[2][4], bf[4];
            // A: lanes 0-15 address rows 0-15 at k, lanes 16-31 the same rows at k + 8:
            // matrices (rows 0-7, k), (rows 8-15, k), (rows 0-7, k + 8), (rows 8-15, k + 8) = a[0..3].
            for (u32 mi = 0; mi < 2; ++mi)
                ldmatrix_x4(af[mi], &a_s[st][warp_row + mi * 16u + lane % 16u][(kk + (lane / 16u) * 8u) / 2u]);
            // B: matrices (n 0-7, k), (n 0-7, k + 8), (n 8-15, k), (n 8-15, k + 8) of the warp's 16
            // columns = b[0..1] of the first n8 tile, then of the second.
            if (B_TRANSPOSED) {
                const u32 n = warp_col + (lane / 16u) * 8u + lane % 8u;
                ldmatrix_x4(bf, &b_s[st][n][(kk + ((lane / 8u) % 2u) * 8u) / 2u]);
            } else {
                const u32 k_row = kk + ((lane / 8u) % 2u) * 8u + lane % 8u;
                ldmatrix_x4_trans(bf, &b_s[st][k_row][(warp_col + (lane / 16u) * 8u) / 2u]);
            }
            for (u32 mi = 0; mi < 2; ++mi) {
                mma_m16n8k16_f16_f32(acc[mi][0], af[mi], &bf[0], acc[mi][0]);
                mma_m16n8k16_f16_f32(acc[mi][1], af[mi], &bf[2], acc[mi][1]);
            }
        }
        __syncthreads();  // before step s + 2 overwrites this stage
    }
    for (u32 mi = 0; mi < 2; ++mi) {
        for (u32 ni = 0; ni < 2; ++ni) {
            for (u32 i = 0; i < 4; ++i) {
                const u32 row = row0 + warp_row + mi * 16u + g + (i >= 2u ? 8u : 0u);
                const u32 col = col0 + warp_col + ni * 8u + 2u * t + (i & 1u);
                if (row < p.m && col < p.n) {
                    matmul_store(c, bias, residual, gate, p, batch, row, col, acc[mi][ni][i]);
                }
            }
        }
    }
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
