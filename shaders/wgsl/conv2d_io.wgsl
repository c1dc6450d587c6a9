// conv2d's interface, shared by the conv2d family (conv2d.wgsl) and its matrix-unit flavour
// (conv2d_coop.wgsl): the specialisation constants, the params, the bindings, and the convolution
// read as a GEMM.
//
// 2-D convolution, stride 1, zero padding (K - 1) / 2 (output size = input size), odd K <= 7, PyTorch
// layouts x (B, Cin, H, W), weight (Cout, Cin, K, K), y (B, Cout, H, W):
//   y[b, o, r, c] = bias[o] + sum_{i, ky, kx} weight[o, i, ky, kx] * x[b, i, r + ky - pad, c + kx - pad]
override KSIZE: u32 = 3u;
override HAS_BIAS: bool = false;

struct Conv2dParams {
    batch: u32,
    cin: u32,
    cout: u32,
    height: u32,
    width: u32,
    tiles_x: u32,
    tiles: u32,       // tiles_x * tiles_y
    cout_blocks: u32,
    // conv2d_tiled's first output channel: its blocks cover [cout_start, cout).
    cout_start: u32,
}

@group(0) @binding(0) var<storage, read> x: array<store_t>;
@group(0) @binding(1) var<storage, read> weight: array<store_t>;
@group(0) @binding(2) var<storage, read> bias: array<store_t>;
@group(0) @binding(3) var<storage, read_write> y: array<store_t>;
@group(0) @binding(4) var<uniform> p: Conv2dParams;

// The convolution as a GEMM, per image: y (Cout x H*W) = weight (Cout x Cin*K*K) @ im2col(x) (Cin*K*K x
// H*W). The im2col matrix is never stored: each element of B is read from x where a GEMM tile fetches
// it (zero in the padding). Rows are output channels and columns pixels, so C is y's own layout and
// consecutive threads fetch and store consecutive pixels.
const B_TRANSPOSED: bool = false;

fn gemm_a(batch: u32, row: u32, kk: u32) -> f32 {
    let taps = p.cin * KSIZE * KSIZE;
    if row < p.cout && kk < taps {
        return f32(weight[row * taps + kk]);
    }
    return 0.0;
}

fn gemm_b(batch: u32, kk: u32, col: u32) -> f32 {
    let pixels = p.height * p.width;
    if kk >= p.cin * KSIZE * KSIZE || col >= pixels {
        return 0.0;
    }
    let ci = kk / (KSIZE * KSIZE);
    let tap = kk % (KSIZE * KSIZE);
    let pad = i32((KSIZE - 1u) / 2u);
    let iy = i32(col / p.width + tap / KSIZE) - pad;
    let ix = i32(col % p.width + tap % KSIZE) - pad;
    if iy < 0 || iy >= i32(p.height) || ix < 0 || ix >= i32(p.width) {
        return 0.0;
    }
    return f32(x[((batch * p.cin + ci) * p.height + u32(iy)) * p.width + u32(ix)]);
}

fn gemm_store(batch: u32, row: u32, col: u32, sum: f32) {
    var value = sum;
    if HAS_BIAS {
        value += f32(bias[row]);
    }
    y[(batch * p.cout + row) * p.height * p.width + col] = store_t(value);
}

