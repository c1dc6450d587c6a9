// Activations shared by the elementwise ops and the matmul epilogue, so that a fused GELU computes
// exactly what the separate op does.
const SQRT_2_OVER_PI: f32 = 0.7978845608028654;

// GELU, tanh approximation (PyTorch approximate="tanh").
fn gelu_tanh_f32(x: f32) -> f32 {
    // tanh saturates to +-1 in f32 long before 10; clamping keeps exp-based tanh from inf/inf.
    let inner = clamp(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x), -10.0, 10.0);
    return 0.5 * x * (1.0 + tanh(inner));
}
