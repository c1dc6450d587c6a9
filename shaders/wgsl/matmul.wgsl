// Batched matmul C[b] = A[b] @ op(B[b]) (+ bias), A: M x K, C: M x N, all row-major.
// op(B) = B (K x N), or B^T with B stored N x K (a PyTorch Linear weight) when B_TRANSPOSED.
// A batch stride of 0 broadcasts (one weight matrix for the whole batch).
override B_TRANSPOSED: bool = false;
override HAS_BIAS: bool = false;

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    c_batch_stride: u32,
}

@group(0) @binding(0) var<storage, read> a: array<store_t>;
@group(0) @binding(1) var<storage, read> b: array<store_t>;
@group(0) @binding(2) var<storage, read> bias: array<store_t>;
@group(0) @binding(3) var<storage, read_write> c: array<store_t>;
@group(0) @binding(4) var<uniform> p: MatmulParams;

// Tiled kernel: a 64 x 64 block of C per workgroup of 16 x 16 threads, K in steps of 16 through
// workgroup memory (f32, whatever the storage type). Each thread owns a 4 x 4 micro-tile strided by
// 16 rows and 16 columns, so neighbouring threads read neighbouring workgroup-memory words and
// write neighbouring addresses of C.

var<workgroup> a_tile: array<f32, TILE_K * TILE_M>; // [TILE_K][TILE_M], k-major so the inner loop reads rows
var<workgroup> b_tile: array<f32, TILE_K * TILE_N>; // [TILE_K][TILE_N]

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

@compute @workgroup_size(MATMUL_SIDE, MATMUL_SIDE)
fn matmul_tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let batch = wg.z;
    let row0 = wg.y * TILE_M;
    let col0 = wg.x * TILE_N;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let tiles = (p.k + TILE_K - 1u) / TILE_K;
    for (var t = 0u; t < tiles; t++) {
        let k0 = t * TILE_K;
        // 1024 elements of each tile, 4 per thread; consecutive threads read consecutive addresses.
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * 256u;
            let a_row = e / TILE_K;
            let a_col = e % TILE_K;
            a_tile[a_col * TILE_M + a_row] = load_a(batch, row0 + a_row, k0 + a_col);
            if B_TRANSPOSED {
                let b_col = e / TILE_K;
                let b_k = e % TILE_K;
                b_tile[b_k * TILE_N + b_col] = load_b(batch, k0 + b_k, col0 + b_col);
            } else {
                let b_k = e / TILE_N;
                let b_col = e % TILE_N;
                b_tile[b_k * TILE_N + b_col] = load_b(batch, k0 + b_k, col0 + b_col);
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a_base = kk * TILE_M + local.y;
            let b_base = kk * TILE_N + local.x;
            let bv = vec4<f32>(b_tile[b_base], b_tile[b_base + 16u], b_tile[b_base + 32u], b_tile[b_base + 48u]);
            acc0 += a_tile[a_base] * bv;
            acc1 += a_tile[a_base + 16u] * bv;
            acc2 += a_tile[a_base + 32u] * bv;
            acc3 += a_tile[a_base + 48u] * bv;
        }
        workgroupBarrier();
    }
    let rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + local.y + 16u * i;
        if row >= p.m {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + local.x + 16u * j;
            if col < p.n {
                var value = rows[i][j];
                if HAS_BIAS {
                    value += f32(bias[col]);
                }
                c[batch * p.c_batch_stride + row * p.n + col] = store_t(value);
            }
        }
    }
}

// One thread per output element: the baseline the tiled kernel is measured against.
@compute @workgroup_size(MATMUL_SIDE, MATMUL_SIDE)
fn matmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.y;
    let col = gid.x;
    let batch = gid.z;
    if row >= p.m || col >= p.n {
        return;
    }
    var value = 0.0;
    for (var kk = 0u; kk < p.k; kk++) {
        value += load_a(batch, row, kk) * load_b(batch, kk, col);
    }
    if HAS_BIAS {
        value += f32(bias[col]);
    }
    c[batch * p.c_batch_stride + row * p.n + col] = store_t(value);
}
