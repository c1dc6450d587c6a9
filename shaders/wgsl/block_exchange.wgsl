// For blocks whose threads are four teams that split K (matmul_tiled, ssd.wgsl's chunk kernels): each
// thread of a team holds a partial 8 x 8 register block (16 quads) of the same outputs, and the teams
// add theirs up through workgroup memory at the end. Team t owns quarter t of every thread's block
// (quads 4t..4t + 3, its rows 2t and 2t + 1 of 8) and receives it from the other teams in three
// rounds, each team sending quarter (t + r) % 4 in round r. The rounds stay in the kernels: each
// sends through its own workgroup array, which WGSL cannot pass to a function.

// Quad q (0-3) of quarter u of a thread's 16 quads (acc[4u + q]). u is the team's, not a constant, so
// the quad is selected, not indexed (an indexed acc would leave registers).
fn block_quarter(acc: ptr<function, array<vec4<f32>, 16>>, u: u32, q: u32) -> vec4<f32> {
    return select(select(select((*acc)[q], (*acc)[4u + q], u == 1u), (*acc)[8u + q], u == 2u), (*acc)[12u + q], u == 3u);
}

// One k of a thread's 8 x 8 block: rows (a_lo, a_hi) times columns (b_lo, b_hi), row i's column quad
// j at acc[2i + j]. Written out rather than looped, so the block is unrolled without depending on
// the compiler and the caller's loop over k stays the innermost one.
fn block_fma(acc: ptr<function, array<vec4<f32>, 16>>, a_lo: vec4<f32>, a_hi: vec4<f32>, b_lo: vec4<f32>, b_hi: vec4<f32>) {
    (*acc)[0] += a_lo.x * b_lo;
    (*acc)[1] += a_lo.x * b_hi;
    (*acc)[2] += a_lo.y * b_lo;
    (*acc)[3] += a_lo.y * b_hi;
    (*acc)[4] += a_lo.z * b_lo;
    (*acc)[5] += a_lo.z * b_hi;
    (*acc)[6] += a_lo.w * b_lo;
    (*acc)[7] += a_lo.w * b_hi;
    (*acc)[8] += a_hi.x * b_lo;
    (*acc)[9] += a_hi.x * b_hi;
    (*acc)[10] += a_hi.y * b_lo;
    (*acc)[11] += a_hi.y * b_hi;
    (*acc)[12] += a_hi.z * b_lo;
    (*acc)[13] += a_hi.z * b_hi;
    (*acc)[14] += a_hi.w * b_lo;
    (*acc)[15] += a_hi.w * b_hi;
}
