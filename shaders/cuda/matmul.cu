// Batched matmul (shaders/wgsl/matmul.wgsl): C[b] = A[b] @ op(B[b]) (+ bias), A: M x K, C: M x N, all
// row-major. op(B) = B (K x N), or B^T with B stored N x K (a PyTorch Linear weight) when
// B_TRANSPOSED. A batch stride of 0 broadcasts (one weight matrix for the whole batch).
// Every entry takes (a, b, bias, c, params); launchers without a bias bind b as bias.

#ifndef B_TRANSPOSED
#define B_TRANSPOSED 0
#endif
#ifndef HAS_BIAS
#define HAS_BIAS 0
#endif

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
          (const store_t* a, const store_t* b, const store_t* bias, store_t* c, const MatmulParams p)) {
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
                float value = acc[i][j];
                if (HAS_BIAS) value += to_f32(bias[col]);
                store_f32(c, batch * p.c_batch_stride + row * p.n + col, value);
            }
        }
    }
}

// One thread per output element: the baseline the tiled kernel is measured against.
SW_KERNEL(matmul_naive, MATMUL_SIDE, MATMUL_SIDE, 1,
          (const store_t* a, const store_t* b, const store_t* bias, store_t* c, const MatmulParams p)) {
    const u32 row = blockIdx.y * MATMUL_SIDE + threadIdx.y;
    const u32 col = blockIdx.x * MATMUL_SIDE + threadIdx.x;
    const u32 batch = blockIdx.z;
    if (row >= p.m || col >= p.n) return;
    float value = 0.0f;
    for (u32 kk = 0; kk < p.k; ++kk) value += matmul_load_a(a, p, batch, row, kk) * matmul_load_b(b, p, batch, kk, col);
    if (HAS_BIAS) value += to_f32(bias[col]);
    store_f32(c, batch * p.c_batch_stride + row * p.n + col, value);
}

#ifdef SW_STORE_F16
// Tensor-core variant of matmul_tiled for f16 storage (launched instead of it for f16): the same
// block of 16 x 16 threads and the same grid, a 64 x 64 block of C per block. The 8 warps form a 2 x 4
// grid, each warp computing 32 rows x 16 columns of the block as 2 x 2 mma.m16n8k16 tiles (f16 in, f32
// accumulate). K advances MATMUL_TC_K at a time through shared memory holding f16 pairs packed in
// 32-bit words: A row-major [row][k], B column-major [col][k] (whatever B's layout in global
// memory), so every fragment register is one aligned word. Rows are padded to MATMUL_TC_STRIDE
// words so that the fragment reads of a warp hit 32 distinct banks. Elements past M, N or K are
// zeros, as in matmul_tiled.
#define MATMUL_TC_K 32u
#define MATMUL_TC_WORDS (MATMUL_TC_K / 2u)         // words per row of a K step
#define MATMUL_TC_STRIDE (MATMUL_TC_WORDS + 4u)    // padded row stride in words

SW_DEVICE half_t matmul_half_a(const store_t* a, const MatmulParams p, u32 batch, u32 row, u32 col) {
    if (row < p.m && col < p.k) return a[batch * p.a_batch_stride + row * p.k + col];
    half_t zero;
    zero.bits = 0;
    return zero;
}

SW_DEVICE half_t matmul_half_b(const store_t* b, const MatmulParams p, u32 batch, u32 kk, u32 col) {
    if (kk < p.k && col < p.n) {
        if (B_TRANSPOSED) return b[batch * p.b_batch_stride + col * p.k + kk];
        return b[batch * p.b_batch_stride + kk * p.n + col];
    }
    half_t zero;
    zero.bits = 0;
    return zero;
}

SW_KERNEL(matmul_tiled_tc, MATMUL_SIDE, MATMUL_SIDE, 1,
          (const store_t* a, const store_t* b, const store_t* bias, store_t* c, const MatmulParams p)) {
    __shared__ u32 a_s[TILE_M * MATMUL_TC_STRIDE];  // [row][k pair]
    __shared__ u32 b_s[TILE_N * MATMUL_TC_STRIDE];  // [col][k pair]
    const u32 lid = threadIdx.x + threadIdx.y * MATMUL_SIDE;
    const u32 warp = lid / 32u, lane = lid % 32u;
    const u32 g = lane >> 2, t = lane & 3u;
    const u32 warp_row = (warp / 4u) * 32u;  // 2 warps down
    const u32 warp_col = (warp % 4u) * 16u;  // 4 warps across
    const u32 batch = blockIdx.z;
    const u32 row0 = blockIdx.y * TILE_M;
    const u32 col0 = blockIdx.x * TILE_N;
    float acc[2][2][4];
    for (u32 mi = 0; mi < 2; ++mi)
        for (u32 ni = 0; ni < 2; ++ni)
            for (u32 i = 0; i < 4; ++i) acc[mi][ni][i] = 0.0f;
    const u32 steps = (p.k + MATMUL_TC_K - 1u) / MATMUL_TC_K;
    const u32 threads = MATMUL_SIDE * MATMUL_SIDE;
    for (u32 s = 0; s < steps; ++s) {
        const u32 k0 = s * MATMUL_TC_K;
        // TILE_M * MATMUL_TC_WORDS words of each tile; consecutive threads read consecutive addresses.
        for (u32 e = lid; e < TILE_M * MATMUL_TC_WORDS; e += threads) {
            const u32 r = e / MATMUL_TC_WORDS, w = e % MATMUL_TC_WORDS;
            a_s[r * MATMUL_TC_STRIDE + w] = pack_half2(matmul_half_a(a, p, batch, row0 + r, k0 + 2u * w),
                                                       matmul_half_a(a, p, batch, row0 + r, k0 + 2u * w + 1u));
        }
        for (u32 e = lid; e < TILE_N * MATMUL_TC_WORDS; e += threads) {
            u32 n, w;
            if (B_TRANSPOSED) {
                n = e / MATMUL_TC_WORDS;
                w = e % MATMUL_TC_WORDS;
            } else {
                n = e % TILE_N;
                w = e / TILE_N;
            }
            b_s[n * MATMUL_TC_STRIDE + w] = pack_half2(matmul_half_b(b, p, batch, k0 + 2u * w, col0 + n),
                                                       matmul_half_b(b, p, batch, k0 + 2u * w + 1u, col0 + n));
        }
        __syncthreads();
        for (u32 kw = 0; kw < MATMUL_TC_WORDS; kw += 8u) {  // one k16 slice: 8 words
            u32 af[2][4], bf[2][2];
            for (u32 mi = 0; mi < 2; ++mi) {
                const u32 r = warp_row + mi * 16u + g;
                af[mi][0] = a_s[r * MATMUL_TC_STRIDE + kw + t];
                af[mi][1] = a_s[(r + 8u) * MATMUL_TC_STRIDE + kw + t];
                af[mi][2] = a_s[r * MATMUL_TC_STRIDE + kw + t + 4u];
                af[mi][3] = a_s[(r + 8u) * MATMUL_TC_STRIDE + kw + t + 4u];
            }
            for (u32 ni = 0; ni < 2; ++ni) {
                const u32 n = warp_col + ni * 8u + g;
                bf[ni][0] = b_s[n * MATMUL_TC_STRIDE + kw + t];
                bf[ni][1] = b_s[n * MATMUL_TC_STRIDE + kw + t + 4u];
            }
            for (u32 mi = 0; mi < 2; ++mi)
                for (u32 ni = 0; ni < 2; ++ni) mma_m16n8k16_f16_f32(acc[mi][ni], af[mi], bf[ni], acc[mi][ni]);
        }
        __syncthreads();
    }
    for (u32 mi = 0; mi < 2; ++mi) {
        for (u32 ni = 0; ni < 2; ++ni) {
            for (u32 i = 0; i < 4; ++i) {
                const u32 row = row0 + warp_row + mi * 16u + g + (i >= 2u ? 8u : 0u);
                const u32 col = col0 + warp_col + ni * 8u + 2u * t + (i & 1u);
                if (row < p.m && col < p.n) {
                    float value = acc[mi][ni][i];
                    if (HAS_BIAS) value += to_f32(bias[col]);
                    store_f32(c, batch * p.c_batch_stride + row * p.n + col, value);
                }
            }
        }
    }
}
#endif
