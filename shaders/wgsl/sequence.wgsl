// Shared by the sequence scans (scan.wgsl, ssd.wgsl).

// softplus(x) = log(1 + exp(x)), passed through above 20 as PyTorch does, and without losing
// exp(x) << 1 to rounding below.
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        return x;
    }
    let e = exp(x);
    if e < 1e-4 {
        return e - 0.5 * e * e;
    }
    return log(1.0 + e);
}

// Time index of processing step i of a `length`-step sequence walked backwards when `reverse`.
fn step_time(i: u32, length: u32, reverse: bool) -> u32 {
    if reverse {
        return length - 1u - i;
    }
    return i;
}
