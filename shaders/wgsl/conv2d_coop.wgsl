// conv2d on 16 x 16 x 16 f16 matrix units: the convolution as a GEMM (conv2d_io.wgsl's gemm_a, gemm_b
// and gemm_store: per image, weight (Cout x Cin*K*K) @ im2col(x) (Cin*K*K x H*W), im2col read from x
// where the block stages it) on matmul_coop.wgsl's 64 x 64 block. Output channels are M, so a
// 160-channel layer takes three 64-row blocks (the wide scalar tile took two of 128); the bias is the
// epilogue. f16 storage only: the staged operands are f16, as they already are in memory, and the
// sums f32.

fn coop_m() -> u32 {
    return p.cout;
}

fn coop_n() -> u32 {
    return p.height * p.width;
}

fn coop_k() -> u32 {
    return p.cin * KSIZE * KSIZE;
}
