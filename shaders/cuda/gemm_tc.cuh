// The tensor-core GEMM block for f16 storage, shared by matmul.cu (matmul_tiled for f16, matmul_coop)
// and conv2d.cu (matmul_coop of the conv2d_coop family): a block of 16 x 16 threads computes a
// 64 x 64 block of C = A @ op(B). The 8 warps form a 2 x 4 grid, each warp computing 32 rows x 16
// columns of the block as 2 x 2 mma.m16n8k16 tiles (f16 in, f32 accumulate). K advances GEMM_TC_K at
// a time through two shared-memory stages: while the block computes on one, the next K step is
// staged into the other (cp.async where the operand allows it). The stages keep global memory's
// element order: A as [row][k], B as [n][k] when B_TRANSPOSED (a Linear weight) or [k][n] otherwise.
// (An operand staged with plain loads, such as conv2d's gathered im2col, is read before the step's
// barrier, so only cp.async copies overlap the products.)
// ldmatrix fills the fragments (.trans for the [k][n] B). Rows are padded by 16 bytes so that the 8
// row addresses of an ldmatrix matrix fall in distinct bank groups. Elements past M, N or K are zeros.
//
// B_TRANSPOSED comes from the host's constants (0 when unset, here). The file using the block defines,
// for its operand type Ops,
//   void gemm_tc_stage(const Ops&, u32 (*a_st)[GEMM_TC_ROW_WORDS], u32 (*b_st)[GEMM_TC_B_WORDS],
//                      u32 batch, u32 row0, u32 col0, u32 k0, u32 lid)
//       K step [k0, k0 + GEMM_TC_K) of the block at (row0, col0) into one stage, by the block's 256
//       threads (zeros outside the matrices)
//   void gemm_tc_store(const Ops&, u32 batch, u32 row, u32 col, float sum)
//       output (row, col) with its epilogue
#ifdef SW_STORE_F16
#ifndef B_TRANSPOSED
#define B_TRANSPOSED 0
#endif
#define GEMM_TC_BLOCK 1
#define GEMM_TC_K 32u
#define GEMM_TC_ROW_WORDS (GEMM_TC_K / 2u + 4u)  // [row][k] stage: 32 halves + 8 of padding (80 bytes)
#define GEMM_TC_KN_WORDS (TILE_N / 2u + 4u)      // [k][n] stage: 64 halves + 8 of padding (144 bytes)
#if B_TRANSPOSED
#define GEMM_TC_B_ROWS TILE_N
#define GEMM_TC_B_WORDS GEMM_TC_ROW_WORDS
#else
#define GEMM_TC_B_ROWS GEMM_TC_K
#define GEMM_TC_B_WORDS GEMM_TC_KN_WORDS
#endif

// How a matrix is staged: 16-byte cp.async copies where every 8-half chunk starts 16-byte aligned
// (the base pointer 16-byte aligned, the row length and batch stride multiples of 8 halves), 4-byte
// loads where every pair is 4-byte aligned, element loads otherwise.
#define GEMM_TC_ASYNC 2u
#define GEMM_TC_WORDS 1u
#define GEMM_TC_HALVES 0u

SW_DEVICE u32 gemm_tc_mode(const store_t* base, u32 row_len, u32 batch_stride) {
    const u64 address = (u64)base;
    if (row_len % 8u == 0u && batch_stride % 8u == 0u && address % 16u == 0u) return GEMM_TC_ASYNC;
    if (row_len % 2u == 0u && batch_stride % 2u == 0u && address % 4u == 0u) return GEMM_TC_WORDS;
    return GEMM_TC_HALVES;
}

// Stages 8 consecutive halves of one matrix row into 16 bytes of shared memory: the first `valid`
// (0 to 8) from `src`, zeros after them. `src` is not read when valid is 0 (it must still be the
// matrix's base or a chunk start, so that the async copy's address is aligned).
SW_DEVICE void gemm_tc_chunk(u32* dst, const store_t* src, u32 valid, u32 mode) {
    if (mode == GEMM_TC_ASYNC) {
        cp_async_16_zfill(dst, src, 2u * valid);
        return;
    }
    for (u32 w = 0; w < 4u; ++w) {
        u32 word = 0u;
        if (2u * w + 1u < valid) {
            if (mode == GEMM_TC_WORDS) word = reinterpret_cast<const u32*>(src)[w];
            else word = pack_half2(src[2u * w], src[2u * w + 1u]);
        } else if (2u * w < valid) {
            word = (u32)src[2u * w].bits;
        }
        dst[w] = word;
    }
}

// The 64 x 64 block of C at grid block (blockIdx.x, blockIdx.y) of batch blockIdx.z, for an M x K by
// K x N product.
template <typename Ops>
SW_DEVICE void gemm_tc_block(const Ops& ops, u32 m, u32 n, u32 k) {
    alignas(16) __shared__ u32 a_s[2][TILE_M][GEMM_TC_ROW_WORDS];
    alignas(16) __shared__ u32 b_s[2][GEMM_TC_B_ROWS][GEMM_TC_B_WORDS];
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
    const u32 steps = (k + GEMM_TC_K - 1u) / GEMM_TC_K;
    if (steps > 0u) gemm_tc_stage(ops, a_s[0], b_s[0], batch, row0, col0, 0u, lid);
    cp_async_commit();
    for (u32 s = 0; s < steps; ++s) {
        const u32 st = s & 1u;
        // Step s + 1 into the other stage (last read in step s - 1, before the barrier that ended it).
        if (s + 1u < steps) gemm_tc_stage(ops, a_s[st ^ 1u], b_s[st ^ 1u], batch, row0, col0, (s + 1u) * GEMM_TC_K, lid);
        cp_async_commit();
        cp_async_wait_group<1>();  // this thread's copies of step s have landed
        __syncthreads();           // and everyone's
        for (u32 kk = 0; kk < GEMM_TC_K; kk += 16u) {  // one k16 slice
            u32 af[2][4], bf[4];
            // A: lanes 0-15 address rows 0-15 at k, lanes 16-31 the same rows at k + 8:
            // matrices (rows 0-7, k), (rows 8-15, k), (rows 0-7, k + 8), (rows 8-15, k + 8) = a[0..3].
            for (u32 mi = 0; mi < 2; ++mi)
                ldmatrix_x4(af[mi], &a_s[st][warp_row + mi * 16u + lane % 16u][(kk + (lane / 16u) * 8u) / 2u]);
            // B: matrices (n 0-7, k), (n 0-7, k + 8), (n 8-15, k), (n 8-15, k + 8) of the warp's 16
            // columns = b[0..1] of the first n8 tile, then of the second.
            if (B_TRANSPOSED) {
                const u32 col = warp_col + (lane / 16u) * 8u + lane % 8u;
                ldmatrix_x4(bf, &b_s[st][col][(kk + ((lane / 8u) % 2u) * 8u) / 2u]);
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
                if (row < m && col < n) gemm_tc_store(ops, batch, row, col, acc[mi][ni][i]);
            }
        }
    }
}
#endif
