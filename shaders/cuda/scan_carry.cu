// The serial middle pass of the chunked scan (shaders/wgsl/scan_carry.wgsl): for each (batch,
// channel, state) walk the chunk totals (decay, accumulated input) in order, writing every chunk's
// true initial state and the final state. One thread per state. Everything is f32.

SW_KERNEL(scan_carry, SCAN_WG, 1, 1,
          (const float* totals, const float* initial, float* chunk_initial, float* final_state,
           const CarryParams p)) {
    const u32 s = grid_block() * SCAN_WG + threadIdx.x;
    if (s >= p.states) return;
    const u32 channel = s / p.n_state;
    const u32 n = s % p.n_state;
    float h = 0.0f;
    if (p.has_initial != 0u) h = initial[s];
    for (u32 c = 0; c < p.chunks; c++) {
        const u32 at = (channel * p.chunks + c) * p.n_state;
        chunk_initial[at + n] = h;
        h = totals[2u * at + n] * h + totals[2u * at + p.n_state + n];
    }
    final_state[s] = h;
}
