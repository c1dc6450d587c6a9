// 2-D convolution, stride 1, zero padding (K - 1) / 2 (output size = input size), odd K <= 7, PyTorch
// layouts x (B, Cin, H, W), weight (Cout, Cin, K, K), y (B, Cout, H, W):
//   y[b, o, r, c] = bias[o] + sum_{i, ky, kx} weight[o, i, ky, kx] * x[b, i, r + ky - pad, c + kx - pad]
// The constants, params and bindings are conv2d_io.wgsl's.

// Input channels staged per step of the tiled kernel; the host picks it so that the patch and the
// weights of one step fit PATCH_CAP and WEIGHT_CAP.
override CIN_CHUNK: u32 = 8u;

// Tiled kernel: one workgroup of 128 threads computes a 16 x 8 tile of output pixels for a block of
// 32 output channels. Per step of CIN_CHUNK input channels it stages, in f32 workgroup memory,
// - x_tile, the input patch: the tile plus its halo, (8 + K - 1) x (16 + K - 1) per channel, zeros outside
//   the image (the padding) and past the last channel;
// - w_tile, the weights of the 32 channels for those input channels, [co][ci][ky][kx] as in global memory
//   (so the loads are contiguous runs).
// 1536 + 2560 floats = 16 KiB. Each thread owns 4 pixels (one column, rows ly, ly + 2, ly + 4,
// ly + 6) x 8 output channels = 8 vec4 accumulators: per tap 4 patch reads and 8 weight reads feed
// 32 FMAs. A warp of 32 threads shares its 8 channels, so weight reads are broadcasts, and reads
// the patch along rows (consecutive addresses).

var<workgroup> x_tile: array<f32, CONV_PATCH_CAP>;
var<workgroup> w_tile: array<f32, CONV_WEIGHT_CAP>;

@compute @workgroup_size(CONV_THREADS)
fn conv2d_tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let f = grid_workgroup(wg, groups);
    if f >= p.tiles * p.cout_blocks * p.batch {
        return;
    }
    let tile = f % p.tiles;
    let co0 = p.cout_start + ((f / p.tiles) % p.cout_blocks) * CONV_COUT_BLOCK;
    let b = f / (p.tiles * p.cout_blocks);
    let x0 = (tile % p.tiles_x) * CONV_TILE_W;
    let y0 = (tile / p.tiles_x) * CONV_TILE_H;

    let pad = (KSIZE - 1u) / 2u;
    let pw = CONV_TILE_W + KSIZE - 1u;
    let patch_len = (CONV_TILE_H + KSIZE - 1u) * pw; // per input channel
    let taps = KSIZE * KSIZE;
    let w_len = CIN_CHUNK * taps; // per output channel

    let lane = lid % 32u;
    let cg = lid / 32u; // channels co0 + 8 cg ..< co0 + 8 cg + 8
    let lx = lane % 16u;
    let ly = lane / 16u;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    for (var c0 = 0u; c0 < p.cin; c0 += CIN_CHUNK) {
        for (var e = lid; e < CIN_CHUNK * patch_len; e += CONV_THREADS) {
            let ci = e / patch_len;
            let r = e % patch_len;
            let iy = i32(y0 + r / pw) - i32(pad);
            let ix = i32(x0 + r % pw) - i32(pad);
            var v = 0.0;
            if c0 + ci < p.cin && iy >= 0 && iy < i32(p.height) && ix >= 0 && ix < i32(p.width) {
                v = f32(x[((b * p.cin + c0 + ci) * p.height + u32(iy)) * p.width + u32(ix)]);
            }
            x_tile[e] = v;
        }
        for (var e = lid; e < CONV_COUT_BLOCK * w_len; e += CONV_THREADS) {
            let co = e / w_len;
            let r = e % w_len; // ci * taps + ky * KSIZE + kx
            var v = 0.0;
            if co0 + co < p.cout && c0 + r / taps < p.cin {
                v = f32(weight[((co0 + co) * p.cin + c0) * taps + r]);
            }
            w_tile[e] = v;
        }
        workgroupBarrier();
        for (var ci = 0u; ci < CIN_CHUNK; ci++) {
            for (var ky = 0u; ky < KSIZE; ky++) {
                let row = ci * patch_len + (ly + ky) * pw + lx;
                let wrow = cg * 8u * w_len + ci * taps + ky * KSIZE;
                for (var kx = 0u; kx < KSIZE; kx++) {
                    let q = row + kx;
                    let v = vec4<f32>(x_tile[q], x_tile[q + 2u * pw], x_tile[q + 4u * pw], x_tile[q + 6u * pw]);
                    let w = wrow + kx;
                    acc0 += v * w_tile[w];
                    acc1 += v * w_tile[w + w_len];
                    acc2 += v * w_tile[w + 2u * w_len];
                    acc3 += v * w_tile[w + 3u * w_len];
                    acc4 += v * w_tile[w + 4u * w_len];
                    acc5 += v * w_tile[w + 5u * w_len];
                    acc6 += v * w_tile[w + 6u * w_len];
                    acc7 += v * w_tile[w + 7u * w_len];
                }
            }
        }
        workgroupBarrier();
    }
    let ox = x0 + lx;
    if ox >= p.width {
        return;
    }
    let accs = array<vec4<f32>, 8>(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7);
    for (var j = 0u; j < 8u; j++) {
        let co = co0 + cg * 8u + j;
        if co >= p.cout {
            break;
        }
        var shift = 0.0;
        if HAS_BIAS {
            shift = f32(bias[co]);
        }
        for (var i = 0u; i < 4u; i++) {
            let oy = y0 + ly + 2u * i;
            if oy < p.height {
                y[((b * p.cout + co) * p.height + oy) * p.width + ox] = store_t(accs[j][i] + shift);
            }
        }
    }
}

// One thread per output element, straight from global memory: the baseline the tiled kernel is
// measured against.
@compute @workgroup_size(THREADS_1D)
fn conv2d_naive(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) index: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + index;
    if i >= p.batch * p.cout * p.height * p.width {
        return;
    }
    let ox = i % p.width;
    let oy = (i / p.width) % p.height;
    let co = (i / (p.width * p.height)) % p.cout;
    let b = i / (p.width * p.height * p.cout);
    let pad = i32((KSIZE - 1u) / 2u);
    var acc = 0.0;
    if HAS_BIAS {
        acc = f32(bias[co]);
    }
    for (var ci = 0u; ci < p.cin; ci++) {
        for (var ky = 0u; ky < KSIZE; ky++) {
            let iy = i32(oy + ky) - pad;
            if iy < 0 || iy >= i32(p.height) {
                continue;
            }
            for (var kx = 0u; kx < KSIZE; kx++) {
                let ix = i32(ox + kx) - pad;
                if ix >= 0 && ix < i32(p.width) {
                    let xv = f32(x[((b * p.cin + ci) * p.height + u32(iy)) * p.width + u32(ix)]);
                    acc += f32(weight[((co * p.cin + ci) * KSIZE + ky) * KSIZE + kx]) * xv;
                }
            }
        }
    }
    y[i] = store_t(acc);
}

// Implicit-GEMM kernel for wide layers (64+ channels, the VQVAE decoder's body): the convolution as a
// GEMM (conv2d_io.wgsl) on the shared wide GEMM tile (gemm_wide.wgsl).
@compute @workgroup_size(MATMUL_SIDE, MATMUL_SIDE)
fn conv2d_gemm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    gemm_wide_tile(wg.z, wg.y * WIDE_TILE, wg.x * WIDE_TILE, p.cout, p.height * p.width, p.cin * KSIZE * KSIZE, local, lid);
}
