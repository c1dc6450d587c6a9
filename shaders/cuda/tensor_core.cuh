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

// Asynchronous global -> shared copies (cp.async, sm_80) and warp-wide matrix loads from shared
// memory (ldmatrix, sm_75). Under the CPU shim a copy happens at once (so the waits have nothing to
// wait for) and ldmatrix gathers through the warp as the hardware does, so a wrong row address or
// register order shows up as a wrong result there too. Misaligned addresses, a fault on the GPU,
// stop the CPU twin as well.
#ifndef SW_CPU
// The .shared window address of a generic pointer into shared memory (the operand of cp.async's
// destination and of ldmatrix).
SW_DEVICE u32 sw_shared_address(const void* p) {
    u32 address;
    asm("{\n .reg .u64 a;\n cvta.to.shared.u64 a, %1;\n cvt.u32.u64 %0, a;\n}\n" : "=r"(address) : "l"(p));
    return address;
}
// Copies 16 bytes from global to shared memory asynchronously (complete after cp_async_commit and a
// wait); both addresses 16-byte aligned. L2 only (.cg): tiles are staged once per block.
SW_DEVICE void cp_async_16(void* smem_dst, const void* gmem_src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sw_shared_address(smem_dst)), "l"(gmem_src)
                 : "memory");
}
// As cp_async_16, but reads only the first `src_bytes` (0 to 16) bytes of the source and zero-fills
// the rest of the 16 (0: nothing is read, all zeros; the source must still be a 16-byte aligned
// address).
SW_DEVICE void cp_async_16_zfill(void* smem_dst, const void* gmem_src, u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sw_shared_address(smem_dst)),
                 "l"(gmem_src), "r"(src_bytes)
                 : "memory");
}
// Closes the group of this thread's copies issued since the last commit.
SW_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight (the newest N).
// Other threads' copies become visible after a __syncthreads that follows the wait.
template <int N>
SW_DEVICE void cp_async_wait_group() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
SW_DEVICE void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// ldmatrix .m8n8 .b16: one to four 8 x 8 matrices of 16-bit elements, each row 16 contiguous,
// 16-byte aligned bytes of shared memory. Lane 8i + j passes the address of row j of matrix i
// (lanes 0-7 matrix 0, 8-15 matrix 1, ...; for x1/x2 the other lanes' addresses are ignored, but
// every lane of the warp executes it). Lane l receives in r[i], from matrix i, the 32-bit word at
// row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 (low half first): the layout of an mma A
// fragment register, or of a B fragment register when the rows are B's columns.
// The .trans forms load each matrix transposed: lane l receives elements [2 (l % 4)][l / 4] (low)
// and [2 (l % 4) + 1][l / 4] (high) of matrix i, i.e. a B fragment register from rows of B (k-major).
SW_DEVICE void ldmatrix_x4(u32 r[4], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(sw_shared_address(smem_row))
                 : "memory");
}
SW_DEVICE void ldmatrix_x2(u32 r[2], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(sw_shared_address(smem_row))
                 : "memory");
}
SW_DEVICE void ldmatrix_x4_trans(u32 r[4], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(sw_shared_address(smem_row))
                 : "memory");
}
SW_DEVICE void ldmatrix_x2_trans(u32 r[2], const void* smem_row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(sw_shared_address(smem_row))
                 : "memory");
}
#else
namespace sw {
// Each lane's ldmatrix row address in flight, one slot per thread of the block.
static const unsigned char* ldmatrix_rows[1024];

static void require_aligned16(const void* p, const char* what) {
    if (((uintptr_t)p & 15u) != 0) {
        fprintf(stderr, "%s: address %p is not 16-byte aligned (a misaligned-address fault on the GPU)\n", what, p);
        __builtin_trap();
    }
}

template <u32 COUNT, bool TRANS>
static void ldmatrix(u32* r, const void* smem_row) {
    const u32 me = linear_thread();
    const u32 base = me & ~31u, lane = me & 31u;
    if (lane < 8u * COUNT) require_aligned16(smem_row, "ldmatrix row");
    ldmatrix_rows[me] = static_cast<const unsigned char*>(smem_row);
    __syncwarp();
    for (u32 i = 0; i < COUNT; ++i) {
        if (!TRANS) {
            memcpy(&r[i], ldmatrix_rows[base + 8u * i + lane / 4u] + 4u * (lane % 4u), 4);
        } else {
            unsigned short lo, hi;
            memcpy(&lo, ldmatrix_rows[base + 8u * i + 2u * (lane % 4u)] + 2u * (lane / 4u), 2);
            memcpy(&hi, ldmatrix_rows[base + 8u * i + 2u * (lane % 4u) + 1u] + 2u * (lane / 4u), 2);
            r[i] = (u32)lo | ((u32)hi << 16);
        }
    }
    __syncwarp();
}
}  // namespace sw

SW_DEVICE void cp_async_16(void* smem_dst, const void* gmem_src) {
    sw::require_aligned16(smem_dst, "cp.async destination");
    sw::require_aligned16(gmem_src, "cp.async source");
    memcpy(smem_dst, gmem_src, 16);
}
SW_DEVICE void cp_async_16_zfill(void* smem_dst, const void* gmem_src, u32 src_bytes) {
    sw::require_aligned16(smem_dst, "cp.async destination");
    sw::require_aligned16(gmem_src, "cp.async source");
    if (src_bytes > 16u) src_bytes = 16u;  // undefined on the GPU
    memcpy(smem_dst, gmem_src, src_bytes);
    memset(static_cast<unsigned char*>(smem_dst) + src_bytes, 0, 16u - src_bytes);
}
SW_DEVICE void cp_async_commit() {}
template <int N>
SW_DEVICE void cp_async_wait_group() {}
SW_DEVICE void cp_async_wait_all() {}

SW_DEVICE void ldmatrix_x4(u32 r[4], const void* smem_row) { sw::ldmatrix<4, false>(r, smem_row); }
SW_DEVICE void ldmatrix_x2(u32 r[2], const void* smem_row) { sw::ldmatrix<2, false>(r, smem_row); }
SW_DEVICE void ldmatrix_x4_trans(u32 r[4], const void* smem_row) { sw::ldmatrix<4, true>(r, smem_row); }
SW_DEVICE void ldmatrix_x2_trans(u32 r[2], const void* smem_row) { sw::ldmatrix<2, true>(r, smem_row); }
#endif
