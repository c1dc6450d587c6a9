// Tensor-core instruction wrappers (composed after the prelude and before the family source, for the
// Matmul and Attention families). On the GPU they are inline PTX (sm_80 and later); under the CPU
// shim (SW_CPU) each has a twin that follows the same fragment layout, so a layout bug shows up in
// the CPU tests as a wrong result.

// Two halves in one 32-bit register, `lo` in the low 16 bits: the element order of an .f16x2
// fragment register ("elements low to high").
SW_DEVICE u32 pack_half2(half_t lo, half_t hi) { return (u32)lo.bits | ((u32)hi.bits << 16); }

// D = A B + C for one warp: A 16 x 16 (row-major) f16, B 16 x 8 (column-major) f16, C and D 16 x 8 f32.
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with
// g = lane >> 2 and t = lane % 4:
//   a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//   a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]      b[1] = B[2t+8, 2t+9][g]
//   c[0], c[1] = C[g][2t, 2t+1]  c[2], c[3] = C[g+8][2t, 2t+1]   (the same for d)
// Executed by all 32 lanes of the warp. d may alias c.
#ifndef SW_CPU
SW_DEVICE void mma_m16n8k16_f16_f32(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}
#else
namespace sw {
// The warp's fragments in flight, one slot per thread of the block (blocks run one at a time).
static u32 mma_a[1024][4];
static u32 mma_b[1024][2];
}  // namespace sw

SW_DEVICE float sw_half_of(u32 reg, u32 high) {
    half_t h;
    h.bits = (unsigned short)(high ? reg >> 16 : reg & 0xffffu);
    return half_to_f32(h);
}

SW_DEVICE void mma_m16n8k16_f16_f32(float d[4], const u32 a[4], const u32 b[2], const float c[4]) {
    const u32 me = sw::linear_thread();
    const u32 base = me & ~31u, lane = me & 31u;
    for (u32 r = 0; r < 4; ++r) sw::mma_a[me][r] = a[r];
    for (u32 r = 0; r < 2; ++r) sw::mma_b[me][r] = b[r];
    __syncwarp();
    // A[row][k] lives in lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 (k >= 8), half k % 2;
    // B[k][col] in lane col * 4 + (k % 8) / 2, register (k >= 8), half k % 2.
    const u32 g = lane >> 2, t = lane & 3u;
    float out[4];
    for (u32 i = 0; i < 4; ++i) {
        const u32 row = g + (i >= 2 ? 8u : 0u);
        const u32 col = 2u * t + (i & 1u);
        float acc = c[i];
        for (u32 k = 0; k < 16; ++k) {
            const u32 a_lane = (row % 8u) * 4u + (k % 8u) / 2u;
            const u32 a_reg = (row >= 8u ? 1u : 0u) + (k >= 8u ? 2u : 0u);
            const u32 b_lane = col * 4u + (k % 8u) / 2u;
            const u32 b_reg = k >= 8u ? 1u : 0u;
            const float av = sw_half_of(sw::mma_a[base + a_lane][a_reg], k & 1u);
            const float bv = sw_half_of(sw::mma_b[base + b_lane][b_reg], k & 1u);
            acc += av * bv;
        }
        out[i] = acc;
    }
    __syncwarp();
    for (u32 i = 0; i < 4; ++i) d[i] = out[i];
}
#endif
