// The AdaLN-gated residual of a VAR block (shaders/wgsl/residual.wgsl): out = x + y * gate[b], with
// x and y (B, T, C) and one gate row (B, C) per batch entry. One thread per element.
SW_KERNEL(gated_residual, THREADS_1D, 1, 1,
          (const store_t* x, const store_t* y, const store_t* gate, store_t* out, const ResidualParams p)) {
    const u32 i = grid_block() * THREADS_1D + threadIdx.x;
    if (i < p.n) {
        const float g = to_f32(gate[(i / p.per_batch) * p.channels + i % p.channels]);
        store_f32(out, i, to_f32(x[i]) + to_f32(y[i]) * g);
    }
}
