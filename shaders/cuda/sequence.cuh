// Shared by the sequence scans (scan.cu, ssd.cu): the CUDA twin of shaders/wgsl/sequence.wgsl.
// The composer prepends it to the Scan and Ssd families, after the specialisation constants and
// before the family source.

// softplus(x) = log(1 + exp(x)), passed through above 20 as PyTorch does, and without losing
// exp(x) << 1 to rounding below.
SW_DEVICE float softplus(float x) {
    if (x > 20.0f) return x;
    const float e = expf(x);
    if (e < 1e-4f) return e - 0.5f * e * e;
    return logf(1.0f + e);
}

// Time index of processing step i of a `length`-step sequence walked backwards when `reverse`.
SW_DEVICE u32 step_time(u32 i, u32 length, bool reverse) {
    if (reverse) return length - 1u - i;
    return i;
}
