// The matmul families' interface (matmul.wgsl, matmul_coop.wgsl): the specialisation constants,
// the params, the bindings, and how elements of A and B are read and outputs written.
// Batched matmul C[b] = A[b] @ op(B[b]) (+ bias), A: M x K, C: M x N, all row-major.
// op(B) = B (K x N), or B^T with B stored N x K (a PyTorch Linear weight) when B_TRANSPOSED.
// A batch stride of 0 broadcasts (one weight matrix for the whole batch).
override B_TRANSPOSED: bool = false;
override HAS_BIAS: bool = false;
// GELU (tanh) applied to each output after the bias: a Linear followed by its activation in one pass.
override GELU: bool = false;
// out = residual + gate[row / gate_rows] * (A @ op(B) + bias): the AdaLN-gated residual of a
// transformer block fused into the Linear before it. residual has C's shape, gate one row of N per
// gate_rows output rows.
override GATED_RESIDUAL: bool = false;

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    c_batch_stride: u32,
    gate_rows: u32,
}

@group(0) @binding(0) var<storage, read> a: array<store_t>;
@group(0) @binding(1) var<storage, read> b: array<store_t>;
@group(0) @binding(2) var<storage, read> bias: array<store_t>;
@group(0) @binding(3) var<storage, read> residual: array<store_t>;
@group(0) @binding(4) var<storage, read> gate: array<store_t>;
@group(0) @binding(5) var<storage, read_write> c: array<store_t>;
@group(0) @binding(6) var<uniform> p: MatmulParams;

// Stores output (row, col) of `batch`: the accumulated sum, then the bias, the activation and the
// gated residual.
fn store_output(batch: u32, row: u32, col: u32, sum: f32) {
    var value = sum;
    if HAS_BIAS {
        value += f32(bias[col]);
    }
    if GELU {
        value = gelu_tanh_f32(value);
    }
    let index = batch * p.c_batch_stride + row * p.n + col;
    if GATED_RESIDUAL {
        let gate_row = (batch * p.m + row) / p.gate_rows;
        value = f32(residual[index]) + value * f32(gate[gate_row * p.n + col]);
    }
    c[index] = store_t(value);
}

fn load_a(batch: u32, row: u32, col: u32) -> f32 {
    if row < p.m && col < p.k {
        return f32(a[batch * p.a_batch_stride + row * p.k + col]);
    }
    return 0.0;
}

fn load_b(batch: u32, kk: u32, col: u32) -> f32 {
    if kk < p.k && col < p.n {
        if B_TRANSPOSED {
            return f32(b[batch * p.b_batch_stride + col * p.k + kk]);
        }
        return f32(b[batch * p.b_batch_stride + kk * p.n + col]);
    }
    return 0.0;
}

// The product as the shared GEMM blocks read it (gemm_wide.wgsl's tile, matmul_coop.wgsl's block; conv2d_io.wgsl
// and conv2d_coop.wgsl give a convolution's).
fn gemm_a(batch: u32, row: u32, kk: u32) -> f32 {
    return load_a(batch, row, kk);
}

fn gemm_b(batch: u32, kk: u32, col: u32) -> f32 {
    return load_b(batch, kk, col);
}

fn gemm_store(batch: u32, row: u32, col: u32, sum: f32) {
    store_output(batch, row, col, sum);
}

fn coop_m() -> u32 {
    return p.m;
}

fn coop_n() -> u32 {
    return p.n;
}

fn coop_k() -> u32 {
    return p.k;
}
