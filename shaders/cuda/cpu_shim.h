// The CPU shim: enough of CUDA's execution model for the host C++ compiler to run the same .cu
// sources the GPU runs, one block at a time, each thread a fiber on its own stack (a few lines of
// assembly switch them on x86-64, ucontext elsewhere: swapcontext's signal-mask syscalls made
// barrier-heavy kernels several times slower).
// __syncthreads and the warp-level primitives switch fibers; a block barrier releases when every
// live thread of the block has reached it, a warp barrier when every live thread of the warp has.
// Blocks run one after another, so __shared__ variables are plain statics. It catches indexing,
// masking, tail, barrier-placement and fragment-layout bugs; not races, timing or GPU rounding.
//
// The module exports three C functions (used by src/device/cuda/cpu.rs):
//   sw_kernel_block(name, block[3])           the entry's declared block shape (0 when unknown)
//   sw_launch(name, grid[3], args, err, len)   runs the entry over the grid; args as cuLaunchKernel's
//                                              (one pointer per parameter); 0 on success, else an
//                                              error message in err.
#define SW_CPU 1
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <functional>
#include <tuple>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__
#define SW_DEVICE static inline
#define SW_INFINITY INFINITY
#define SW_NAN NAN

struct dim3 {
    unsigned x, y, z;
};

// CUDA's built-in 128-bit vector (16-byte aligned, so that a store of one is one transaction).
struct alignas(16) float4 {
    float x, y, z, w;
};

static dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace sw {

enum State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack pointer in *from, and
// resumes the context whose stack pointer is `to` (the System V ABI preserves nothing else across a
// call, so this is a complete switch).
extern "C" void sw_switch_context(void** from, void* to);
asm(R"(
    .text
    .p2align 4
    .hidden sw_switch_context
    .globl sw_switch_context
    .type sw_switch_context, @function
sw_switch_context:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size sw_switch_context, .-sw_switch_context
)");
struct Context {
    void* sp;
};
#else
struct Context {
    ucontext_t uc;
};
#endif

struct Fiber {
    Context context;
    char* stack;
    State state;
    dim3 thread;
};

const size_t STACK_BYTES = 256 * 1024;

struct Kernel {
    const char* name;
    unsigned block[3];
    std::function<void(void**)> call;
};

static std::vector<Kernel>& kernels() {
    static std::vector<Kernel> list;
    return list;
}

// The running block.
static std::vector<Fiber> fibers;
static size_t current;
static Context scheduler;
static const Kernel* running_kernel;
static void** running_args;
// Values in flight through a warp shuffle, one slot per thread of the block.
static uint64_t exchange[1024];

static unsigned linear_thread() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

static void switch_to(Context* from, Context* to) {
#if defined(__x86_64__)
    sw_switch_context(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
}

static void yield(State state) {
    fibers[current].state = state;
    switch_to(&fibers[current].context, &scheduler);
}

static void fiber_main() {
    running_kernel->call(running_args);
    fibers[current].state = Done;
    // Never resumed again: the scheduler reinitialises the fiber for the next block.
    switch_to(&fibers[current].context, &scheduler);
}

static void start_fiber(Fiber& f) {
#if defined(__x86_64__)
    // The initial frame sw_switch_context pops: six callee-saved registers, then fiber_main as the
    // return address, then a dummy return address for fiber_main itself, placed so that fiber_main
    // starts with the stack alignment a called function expects (rsp = 8 mod 16).
    void** frame = reinterpret_cast<void**>(f.stack + STACK_BYTES - 64);
    for (int i = 0; i < 6; ++i) frame[i] = nullptr;
    frame[6] = reinterpret_cast<void*>(&fiber_main);
    frame[7] = nullptr;
    f.context.sp = frame;
#else
    getcontext(&f.context.uc);
    f.context.uc.uc_stack.ss_sp = f.stack;
    f.context.uc.uc_stack.ss_size = STACK_BYTES;
    f.context.uc.uc_link = &scheduler.uc;
    makecontext(&f.context.uc, fiber_main, 0);
#endif
}

template <class... A, size_t... I>
static void call_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    // Each parameter is copied out of the bytes the host points at (the same convention as
    // cuLaunchKernel's kernelParams): device pointers as 8-byte values, params structs by value.
    std::tuple<A...> values;
    ((memcpy(&std::get<I>(values), args[I], sizeof(A))), ...);
    f(std::get<I>(values)...);
}

struct Registrar {
    template <class... A>
    Registrar(const char* name, unsigned bx, unsigned by, unsigned bz, void (*f)(A...)) {
        kernels().push_back(Kernel{name, {bx, by, bz}, [f](void** args) {
                                       call_with(f, args, std::index_sequence_for<A...>{});
                                   }});
    }
};

static const Kernel* find(const char* name) {
    for (const Kernel& k : kernels())
        if (strcmp(k.name, name) == 0) return &k;
    return nullptr;
}

// Runs every thread of the current block to completion; false (and a message) on a deadlock.
static bool run_block(char* err, size_t err_len) {
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = fibers[t];
        f.state = Runnable;
        f.thread = dim3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
        start_fiber(f);
    }
    for (;;) {
        for (unsigned t = 0; t < threads; ++t) {
            if (fibers[t].state != Runnable) continue;
            current = t;
            threadIdx = fibers[t].thread;
            switch_to(&scheduler, &fibers[t].context);
        }
        // Everyone is done or waiting. Release whole warps at a warp barrier first.
        bool released = false;
        for (unsigned w = 0; w * 32 < threads; ++w) {
            unsigned waiting = 0, live = 0;
            for (unsigned t = w * 32; t < threads && t < w * 32 + 32; ++t) {
                if (fibers[t].state != Done) ++live;
                if (fibers[t].state == AtWarpBarrier) ++waiting;
            }
            if (waiting > 0 && waiting == live) {
                for (unsigned t = w * 32; t < threads && t < w * 32 + 32; ++t)
                    if (fibers[t].state == AtWarpBarrier) fibers[t].state = Runnable;
                released = true;
            }
        }
        if (released) continue;
        unsigned at_block = 0, live = 0;
        for (unsigned t = 0; t < threads; ++t) {
            if (fibers[t].state != Done) ++live;
            if (fibers[t].state == AtBlockBarrier) ++at_block;
        }
        if (live == 0) return true;
        if (at_block == live) {
            for (unsigned t = 0; t < threads; ++t)
                if (fibers[t].state == AtBlockBarrier) fibers[t].state = Runnable;
            continue;
        }
        snprintf(err, err_len,
                 "%s: deadlock in block (%u, %u, %u): %u threads at __syncthreads, %u at a warp primitive with "
                 "part of their warp elsewhere",
                 running_kernel->name, blockIdx.x, blockIdx.y, blockIdx.z, at_block, live - at_block);
        return false;
    }
}

}  // namespace sw

#define SW_KERNEL(name, bx, by, bz, params)                                                         \
    static void name params;                                                                       \
    static sw::Registrar sw_register_##name(#name, (bx), (by), (bz), &name);                        \
    static void name params

SW_DEVICE void __syncthreads() { sw::yield(sw::AtBlockBarrier); }
SW_DEVICE void __syncwarp(unsigned = 0xffffffffu) { sw::yield(sw::AtWarpBarrier); }

// Warp shuffles: every lane publishes its value, the warp meets, each lane reads its source, and
// the warp meets again before the slots are reused.
template <class T>
static T sw_shuffle(T value, unsigned source_lane) {
    static_assert(sizeof(T) <= 8, "shuffled values are at most 8 bytes");
    const unsigned me = sw::linear_thread();
    uint64_t bits = 0;
    memcpy(&bits, &value, sizeof(T));
    sw::exchange[me] = bits;
    __syncwarp();
    const unsigned source = (me & ~31u) + (source_lane & 31u);
    T out;
    memcpy(&out, &sw::exchange[source], sizeof(T));
    __syncwarp();
    return out;
}
template <class T>
SW_DEVICE T __shfl_sync(unsigned, T value, int lane, int = 32) {
    return sw_shuffle(value, (unsigned)lane);
}
template <class T>
SW_DEVICE T __shfl_xor_sync(unsigned, T value, int mask, int = 32) {
    return sw_shuffle(value, (sw::linear_thread() % 32) ^ (unsigned)mask);
}
template <class T>
SW_DEVICE T __shfl_down_sync(unsigned, T value, unsigned delta, int = 32) {
    const unsigned lane = sw::linear_thread() % 32;
    return sw_shuffle(value, lane + delta < 32 ? lane + delta : lane);
}
template <class T>
SW_DEVICE T __shfl_up_sync(unsigned, T value, unsigned delta, int = 32) {
    const unsigned lane = sw::linear_thread() % 32;
    return sw_shuffle(value, lane >= delta ? lane - delta : lane);
}

// CUDA's bit reinterpretations, as memcpy (the defined way in C++17).
template <class To, class From>
static inline To sw_bit_cast(From v) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To out;
    memcpy(&out, &v, sizeof out);
    return out;
}
SW_DEVICE float __int_as_float(int v) { return sw_bit_cast<float>(v); }
SW_DEVICE int __float_as_int(float v) { return sw_bit_cast<int>(v); }
SW_DEVICE float __uint_as_float(unsigned v) { return sw_bit_cast<float>(v); }
SW_DEVICE unsigned __float_as_uint(float v) { return sw_bit_cast<unsigned>(v); }
SW_DEVICE unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
SW_DEVICE unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
SW_DEVICE int min(int a, int b) { return a < b ? a : b; }
SW_DEVICE int max(int a, int b) { return a > b ? a : b; }
SW_DEVICE unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }

extern "C" int sw_kernel_block(const char* name, unsigned* block) {
    const sw::Kernel* k = sw::find(name);
    if (!k) return 1;
    memcpy(block, k->block, sizeof k->block);
    return 0;
}

extern "C" int sw_launch(const char* name, const unsigned* grid, void** args, char* err, size_t err_len) {
    const sw::Kernel* k = sw::find(name);
    if (!k) {
        snprintf(err, err_len, "no kernel %s in this module", name);
        return 1;
    }
    const unsigned threads = k->block[0] * k->block[1] * k->block[2];
    if (threads == 0 || threads > 1024) {
        snprintf(err, err_len, "%s: block of %u threads", name, threads);
        return 1;
    }
    while (sw::fibers.size() < threads) {
        void* stack = mmap(nullptr, sw::STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (stack == MAP_FAILED) {
            snprintf(err, err_len, "out of memory for fiber stacks");
            return 1;
        }
        sw::fibers.push_back(sw::Fiber{{}, static_cast<char*>(stack), sw::Done, {}});
    }
    sw::running_kernel = k;
    sw::running_args = args;
    blockDim = dim3{k->block[0], k->block[1], k->block[2]};
    gridDim = dim3{grid[0], grid[1], grid[2]};
    for (unsigned z = 0; z < grid[2]; ++z)
        for (unsigned y = 0; y < grid[1]; ++y)
            for (unsigned x = 0; x < grid[0]; ++x) {
                blockIdx = dim3{x, y, z};
                if (!sw::run_block(err, err_len)) return 1;
            }
    return 0;
}
