// Elementwise ops (shaders/wgsl/elementwise.wgsl): one thread per element. Every entry takes
// (a, b, out, params); unary launchers pass their input as b too. a repeats over the output every
// lhs_n elements (add_repeat's copies; n elsewhere).

#define SW_ELEMENTWISE(name, expr)                                                                 \
    SW_KERNEL(name, THREADS_1D, 1, 1,                                                              \
              (const store_t* a, const store_t* b, store_t* out, const ElementwiseParams p)) {     \
        const u32 i = grid_block() * THREADS_1D + threadIdx.x;                                     \
        if (i < p.n) {                                                                             \
            const float x = to_f32(a[i % p.lhs_n]);                                                \
            (void)b;                                                                               \
            store_f32(out, i, (expr));                                                             \
        }                                                                                          \
    }

SW_ELEMENTWISE(add, x + to_f32(b[i % p.rhs_n]))
SW_ELEMENTWISE(mul, x * to_f32(b[i % p.rhs_n]))
// GELU, tanh approximation (PyTorch approximate="tanh"); the clamp keeps tanh away from inf/inf.
SW_ELEMENTWISE(gelu_tanh, gelu_tanh_f32(x))
SW_ELEMENTWISE(silu, x / (1.0f + expf(-x)))
