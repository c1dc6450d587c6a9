// 2-D convolution (shaders/wgsl/conv2d.wgsl), stride 1, zero padding (K - 1) / 2 (output size = input
// size), odd K <= 7, PyTorch layouts x (B, Cin, H, W), weight (Cout, Cin, K, K), y (B, Cout, H, W):
//   y[b, o, r, c] = bias[o] + sum_{i, ky, kx} weight[o, i, ky, kx] * x[b, i, r + ky - pad, c + kx - pad]
// Every entry takes (x, weight, bias, y, params); launchers without a bias bind the weight as bias.

#ifndef KSIZE
#define KSIZE 3u
#endif
#ifndef HAS_BIAS
#define HAS_BIAS 0
#endif
// Input channels staged per step of the tiled kernel; the host picks it so that the patch and the
// weights of one step fit CONV_PATCH_CAP and CONV_WEIGHT_CAP.
#ifndef CIN_CHUNK
#define CIN_CHUNK 8u
#endif

// The staging loops unrolled twice: fully unrolled (their trip counts are constants), ptxas spills
// for sm_80 at some KSIZE / CIN_CHUNK.
#ifdef SW_CPU
#define CONV_STAGE_UNROLL
#else
#define CONV_STAGE_UNROLL _Pragma("unroll 2")
#endif

// The conv2d_coop family's module (gemm_tc.cuh included) holds only its tensor-core entry below: the
// other entries would only add to its compile time.
#ifndef GEMM_TC_BLOCK
// Tiled kernel: one block of 128 threads computes a 16 x 8 tile of output pixels for a block of 32
// output channels. Per step of CIN_CHUNK input channels it stages, in f32 shared memory,
// - x_tile, the input patch: the tile plus its halo, (8 + K - 1) x (16 + K - 1) per channel, zeros
//   outside the image (the padding) and past the last channel;
// - w_tile, the weights of the 32 channels for those input channels, [co][ci][ky][kx] as in global
//   memory (so the loads are contiguous runs).
// Each thread owns 4 pixels (one column, rows ly, ly + 2, ly + 4, ly + 6) x 8 output channels: per tap
// 4 patch reads and 8 weight reads feed 32 FMAs. A warp shares its 8 channels, so weight reads are
// broadcasts, and reads the patch along rows (consecutive addresses).
SW_KERNEL(conv2d_tiled, CONV_THREADS, 1, 1,
          (const store_t* x, const store_t* weight, const store_t* bias, store_t* y, const Conv2dParams p)) {
    __shared__ float x_tile[CONV_PATCH_CAP];
    __shared__ float w_tile[CONV_WEIGHT_CAP];
    const u32 lid = threadIdx.x;
    const u32 f = grid_block();
    if (f >= p.tiles * p.cout_blocks * p.batch) return;
    const u32 tile = f % p.tiles;
    const u32 co0 = p.cout_start + ((f / p.tiles) % p.cout_blocks) * CONV_COUT_BLOCK;
    const u32 b = f / (p.tiles * p.cout_blocks);
    const u32 x0 = (tile % p.tiles_x) * CONV_TILE_W;
    const u32 y0 = (tile / p.tiles_x) * CONV_TILE_H;

    const u32 pad = (KSIZE - 1u) / 2u;
    const u32 pw = CONV_TILE_W + KSIZE - 1u;
    const u32 patch_len = (CONV_TILE_H + KSIZE - 1u) * pw;  // per input channel
    const u32 taps = KSIZE * KSIZE;
    const u32 w_len = CIN_CHUNK * taps;  // per output channel

    const u32 lane = lid % 32u;
    const u32 cg = lid / 32u;  // channels co0 + 8 cg ..< co0 + 8 cg + 8
    const u32 lx = lane % 16u;
    const u32 ly = lane / 16u;

    float acc[8][4];
    for (u32 j = 0; j < 8; ++j)
        for (u32 i = 0; i < 4; ++i) acc[j][i] = 0.0f;
    for (u32 c0 = 0; c0 < p.cin; c0 += CIN_CHUNK) {
        CONV_STAGE_UNROLL
        for (u32 e = lid; e < CIN_CHUNK * patch_len; e += CONV_THREADS) {
            const u32 ci = e / patch_len;
            const u32 r = e % patch_len;
            const i32 iy = (i32)(y0 + r / pw) - (i32)pad;
            const i32 ix = (i32)(x0 + r % pw) - (i32)pad;
            float v = 0.0f;
            if (c0 + ci < p.cin && iy >= 0 && iy < (i32)p.height && ix >= 0 && ix < (i32)p.width)
                v = to_f32(x[((b * p.cin + c0 + ci) * p.height + (u32)iy) * p.width + (u32)ix]);
            x_tile[e] = v;
        }
        CONV_STAGE_UNROLL
        for (u32 e = lid; e < CONV_COUT_BLOCK * w_len; e += CONV_THREADS) {
            const u32 co = e / w_len;
            const u32 r = e % w_len;  // ci * taps + ky * KSIZE + kx
            float v = 0.0f;
            if (co0 + co < p.cout && c0 + r / taps < p.cin) v = to_f32(weight[((co0 + co) * p.cin + c0) * taps + r]);
            w_tile[e] = v;
        }
        __syncthreads();
        for (u32 ci = 0; ci < CIN_CHUNK; ++ci) {
            for (u32 ky = 0; ky < KSIZE; ++ky) {
                const u32 row = ci * patch_len + (ly + ky) * pw + lx;
                const u32 wrow = cg * 8u * w_len + ci * taps + ky * KSIZE;
                for (u32 kx = 0; kx < KSIZE; ++kx) {
                    const u32 q = row + kx;
                    float v[4];
                    for (u32 i = 0; i < 4; ++i) v[i] = x_tile[q + 2u * i * pw];
                    const u32 w = wrow + kx;
                    for (u32 j = 0; j < 8; ++j) {
                        const float wv = w_tile[w + j * w_len];
                        for (u32 i = 0; i < 4; ++i) acc[j][i] += v[i] * wv;
                    }
                }
            }
        }
        __syncthreads();
    }
    const u32 ox = x0 + lx;
    if (ox >= p.width) return;
    for (u32 j = 0; j < 8u; ++j) {
        const u32 co = co0 + cg * 8u + j;
        if (co >= p.cout) break;
        float shift = 0.0f;
        if (HAS_BIAS) shift = to_f32(bias[co]);
        for (u32 i = 0; i < 4u; ++i) {
            const u32 oy = y0 + ly + 2u * i;
            if (oy < p.height) store_f32(y, ((b * p.cout + co) * p.height + oy) * p.width + ox, acc[j][i] + shift);
        }
    }
}

// One thread per output element, straight from global memory: the baseline the tiled kernel is
// measured against.
SW_KERNEL(conv2d_naive, THREADS_1D, 1, 1,
          (const store_t* x, const store_t* weight, const store_t* bias, store_t* y, const Conv2dParams p)) {
    const u32 i = grid_block() * THREADS_1D + threadIdx.x;
    if (i >= p.batch * p.cout * p.height * p.width) return;
    const u32 ox = i % p.width;
    const u32 oy = (i / p.width) % p.height;
    const u32 co = (i / (p.width * p.height)) % p.cout;
    const u32 b = i / (p.width * p.height * p.cout);
    const i32 pad = (i32)((KSIZE - 1u) / 2u);
    float acc = 0.0f;
    if (HAS_BIAS) acc = to_f32(bias[co]);
    for (u32 ci = 0; ci < p.cin; ++ci) {
        for (u32 ky = 0; ky < KSIZE; ++ky) {
            const i32 iy = (i32)(oy + ky) - pad;
            if (iy < 0 || iy >= (i32)p.height) continue;
            for (u32 kx = 0; kx < KSIZE; ++kx) {
                const i32 ix = (i32)(ox + kx) - pad;
                if (ix >= 0 && ix < (i32)p.width) {
                    const float xv = to_f32(x[((b * p.cin + ci) * p.height + (u32)iy) * p.width + (u32)ix]);
                    acc += to_f32(weight[((co * p.cin + ci) * KSIZE + ky) * KSIZE + kx]) * xv;
                }
            }
        }
    }
    store_f32(y, i, acc);
}

#endif

// Implicit-GEMM kernel for wide layers (conv2d_gemm in conv2d.wgsl): per image, y (Cout x H*W) =
// weight (Cout x Cin*K*K) @ im2col(x) (Cin*K*K x H*W) on the shared wide GEMM tile (gemm_wide.cuh),
// each element of im2col read from x where the tile fetches it (zero in the padding).
struct ConvGemm {
    static constexpr bool b_transposed = false;
    const store_t* x;
    const store_t* weight;
    const store_t* bias;
    store_t* y;
    Conv2dParams p;
};

SW_DEVICE float gemm_a(const ConvGemm& g, u32 batch, u32 row, u32 kk) {
    const u32 taps = g.p.cin * KSIZE * KSIZE;
    return row < g.p.cout && kk < taps ? to_f32(g.weight[row * taps + kk]) : 0.0f;
}

// Where element (kk, col) of im2col(x) lives in x; false in the padding and past the matrix.
SW_DEVICE bool conv_im2col_at(const ConvGemm& g, u32 batch, u32 kk, u32 col, u32& index) {
    const Conv2dParams& p = g.p;
    if (kk >= p.cin * KSIZE * KSIZE || col >= p.height * p.width) return false;
    const u32 ci = kk / (KSIZE * KSIZE);
    const u32 tap = kk % (KSIZE * KSIZE);
    const i32 pad = (i32)((KSIZE - 1u) / 2u);
    const i32 iy = (i32)(col / p.width + tap / KSIZE) - pad;
    const i32 ix = (i32)(col % p.width + tap % KSIZE) - pad;
    if (iy < 0 || iy >= (i32)p.height || ix < 0 || ix >= (i32)p.width) return false;
    index = ((batch * p.cin + ci) * p.height + (u32)iy) * p.width + (u32)ix;
    return true;
}

SW_DEVICE float gemm_b(const ConvGemm& g, u32 batch, u32 kk, u32 col) {
    u32 index = 0u;
    return conv_im2col_at(g, batch, kk, col, index) ? to_f32(g.x[index]) : 0.0f;
}

SW_DEVICE void gemm_store(const ConvGemm& g, u32 batch, u32 row, u32 col, float sum) {
    if (HAS_BIAS) sum += to_f32(g.bias[row]);
    store_f32(g.y, (batch * g.p.cout + row) * g.p.height * g.p.width + col, sum);
}

#ifndef GEMM_TC_BLOCK
SW_KERNEL(conv2d_gemm, MATMUL_SIDE, MATMUL_SIDE, 1,
          (const store_t* x, const store_t* weight, const store_t* bias, store_t* y, const Conv2dParams p)) {
    const ConvGemm g = {x, weight, bias, y, p};
    gemm_wide_tile(g, blockIdx.z, blockIdx.y * WIDE_TILE, blockIdx.x * WIDE_TILE, p.cout, p.height * p.width,
                   p.cin * KSIZE * KSIZE);
}
#endif

#ifdef GEMM_TC_BLOCK
// conv2d on tensor cores (the conv2d_coop family, Conv2dAlgorithm::Cooperative; conv2d_coop.wgsl on
// wgpu's cooperative matrices): the implicit GEMM above on gemm_tc.cuh's block, 64 output channels x
// 64 pixels per block. The weight's rows are staged as a matmul's A (16-byte copies where Cin * K * K
// allows them); im2col(x) is gathered half by half into the [k][n] stage (zeros in the padding).
struct ConvTc {
    ConvGemm g;
    u32 mode_a;  // gemm_tc_mode of the weight
};

SW_DEVICE void gemm_tc_stage(const ConvTc& o, u32 (*a_st)[GEMM_TC_ROW_WORDS], u32 (*b_st)[GEMM_TC_B_WORDS],
                             u32 batch, u32 row0, u32 col0, u32 k0, u32 lid) {
    const Conv2dParams& p = o.g.p;
    const u32 taps = p.cin * KSIZE * KSIZE;
    {
        const u32 r = lid / 4u, c = (lid % 4u) * 8u;  // 64 output channels x 4 chunks of k
        const u32 row = row0 + r, kk = k0 + c;
        const u32 valid = row < p.cout && kk < taps ? min(8u, taps - kk) : 0u;
        const store_t* src = valid > 0u ? o.g.weight + row * taps + kk : o.g.weight;
        gemm_tc_chunk(&a_st[r][c / 2u], src, valid, o.mode_a);
    }
    {
        const u32 r = lid / 8u, c = (lid % 8u) * 8u;  // 32 rows of k x 8 chunks of pixels
        for (u32 w = 0; w < 4u; ++w) {
            u32 lo = 0u, hi = 0u, index = 0u;
            if (conv_im2col_at(o.g, batch, k0 + r, col0 + c + 2u * w, index)) lo = (u32)o.g.x[index].bits;
            if (conv_im2col_at(o.g, batch, k0 + r, col0 + c + 2u * w + 1u, index)) hi = (u32)o.g.x[index].bits;
            b_st[r][c / 2u + w] = lo | (hi << 16);
        }
    }
}

SW_DEVICE void gemm_tc_store(const ConvTc& o, u32 batch, u32 row, u32 col, float sum) {
    gemm_store(o.g, batch, row, col, sum);
}

SW_KERNEL(matmul_coop, MATMUL_SIDE, MATMUL_SIDE, 1,
          (const store_t* x, const store_t* weight, const store_t* bias, store_t* y, const Conv2dParams p)) {
    const u32 taps = p.cin * KSIZE * KSIZE;
    const ConvTc ops = {{x, weight, bias, y, p}, gemm_tc_mode(weight, taps, 0u)};
    gemm_tc_block(ops, p.cout, p.height * p.width, taps);
}
#endif
