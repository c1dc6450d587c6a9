// The CUDA prelude, prepended to every family (after the composer's block sizes, params structs,
// storage type and specialisation constants). Kernel bodies use only what is declared here and
// CUDA's built-in variables and math functions, so the same .cu source compiles twice:
// - by NVRTC for the GPU (SW_CPU undefined): no libc or CUDA headers exist there, so the f16
//   conversions and tensor-core instructions are inline-PTX wrappers in this file;
// - by the host C++ compiler for the CPU shim (SW_CPU defined, cpu_shim.h included first), where each
//   wrapper has a twin that follows the same data layout.
//
// The composer defines before this file:
//   SW_STORE_F32, SW_STORE_F16 or SW_STORE_U32: the storage element store_t (float, half_t or u32;
//                  arithmetic is always f32)
//   block sizes    THREADS_1D, REDUCE_WG, TILE_M, ... (crate::kernels::size), as u32 constants
//   constants      the family's specialisation constants, as macros (bools are 0 or 1)
//   params structs every family's #[repr(C)] struct, field for field (crate::kernels)

typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;

#ifndef SW_CPU
#define SW_DEVICE __device__ __forceinline__
// A kernel entry: its block shape is part of its declaration (as WGSL's @workgroup_size), published
// as the global `<name>_block` that the host reads after loading the module.
#define SW_KERNEL(name, bx, by, bz, params)                                                        \
    extern "C" __device__ const u32 name##_block[3] = {(bx), (by), (bz)};                         \
    extern "C" __global__ void __launch_bounds__((bx) * (by) * (bz)) name params
#define SW_INFINITY __int_as_float(0x7f800000)
#define SW_NAN __int_as_float(0x7fffffff)
#endif

// Full unrolling of loops over compile-time bounds (keeps per-thread arrays in registers on the GPU;
// nothing on the CPU shim).
#ifdef SW_CPU
#define SW_UNROLL
#else
#define SW_UNROLL _Pragma("unroll")
#endif

// f16 storage: the bits of an IEEE binary16, converted with round-to-nearest-even.
struct half_t {
    unsigned short bits;
};

#if defined(SW_STORE_F16)
typedef half_t store_t;
#elif defined(SW_STORE_U32)
typedef u32 store_t;
#else
typedef float store_t;
#endif

#ifndef SW_CPU
SW_DEVICE float half_to_f32(half_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
    return f;
}
SW_DEVICE half_t f32_to_half(float f) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
    return h;
}
#else
// GCC's _Float16 rounds to nearest even, as cvt.rn.f16.f32 does.
SW_DEVICE float half_to_f32(half_t h) {
    _Float16 v;
    memcpy(&v, &h.bits, 2);
    return (float)v;
}
SW_DEVICE half_t f32_to_half(float f) {
    _Float16 v = (_Float16)f;
    half_t h;
    memcpy(&h.bits, &v, 2);
    return h;
}
#endif

// Storage loads and stores: every kernel reads and writes store_t through these, as WGSL's
// f32(x[i]) and store_t(v).
SW_DEVICE float to_f32(float v) { return v; }
SW_DEVICE float to_f32(half_t v) { return half_to_f32(v); }
SW_DEVICE float to_f32(u32 v) { return (float)v; }
SW_DEVICE void store_f32(float* p, u32 i, float v) { p[i] = v; }
SW_DEVICE void store_f32(half_t* p, u32 i, float v) { p[i] = f32_to_half(v); }
SW_DEVICE float load_f32(const float* p, u32 i) { return p[i]; }
SW_DEVICE float load_f32(const half_t* p, u32 i) { return half_to_f32(p[i]); }

// GELU, tanh approximation (PyTorch approximate="tanh"): the elementwise op and the matmul epilogue.
// tanh saturates to +-1 in f32 long before 10; clamping keeps an exp-based tanh from inf/inf.
SW_DEVICE float gelu_tanh_f32(float x) {
    return 0.5f * x * (1.0f + tanhf(fminf(fmaxf(0.7978845608028654f * (x + 0.044715f * x * x * x), -10.0f), 10.0f)));
}

// The Grid::Linear contract: the host spreads a long 1-D range of blocks over x and y; this is the
// flat block index (blocks past the end return early in the kernel). z is the batch of
// Grid::Batched.
SW_DEVICE u32 grid_block() { return blockIdx.x + blockIdx.y * gridDim.x; }

// Warp reductions (warp size 32 on every CUDA GPU; full-mask shuffles only, so the CPU shim can
// follow them).
SW_DEVICE float warp_sum(float v) {
    for (u32 offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
SW_DEVICE float warp_max(float v) {
    for (u32 offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Block reductions over every thread of a 1-D block whose size is a multiple of 32 (at most 1024),
// called from uniform control flow; every thread gets the total. `scratch` holds 32 floats in
// shared memory; the trailing barrier lets the next reduction reuse it.
SW_DEVICE float block_sum(float v, float* scratch) {
    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < warps ? scratch[lane] : 0.0f;
    total = warp_sum(total);
    __syncthreads();
    return total;
}
SW_DEVICE float block_max(float v, float* scratch) {
    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < warps ? scratch[lane] : -SW_INFINITY;
    total = warp_max(total);
    __syncthreads();
    return total;
}

