// The end of a block whose threads are four teams that split K (matmul_tiled, ssd.cu's chunk
// kernels): each thread of a team holds a partial 8 x 8 register block of the same outputs, and the
// teams add theirs up through shared memory. Team t owns a quarter of every thread's block, its rows
// 2t and 2t + 1 of 8, and in round r (1-3) sends quarter (t + r) % 4 to slot t and adds its own from
// slot (t - r) % 4: every team sends and receives at once. Slot t, quad q (row q / 2, columns
// 4 (q % 2)..+3), lane l is at lanes (4t + q) + l of `slots` (16 x lanes float4). The caller's
// shared memory there must no longer be read when it calls.

// Row 2u + i of the thread's 8, column j: quarter u of its block. u is the team's, not a constant,
// so it is picked, not indexed (an indexed acc would leave registers).
SW_DEVICE float block_quarter(const float (&acc)[8][8], u32 u, u32 i, u32 j) {
    return u == 0u ? acc[i][j] : u == 1u ? acc[2u + i][j] : u == 2u ? acc[4u + i][j] : acc[6u + i][j];
}

// own: the team's quarter of the block (rows 2 team + i), summed over the four teams.
SW_DEVICE void block_exchange(const float (&acc)[8][8], float (&own)[2][8], float4* slots, u32 team, u32 lane,
                              u32 lanes) {
    SW_UNROLL
    for (u32 i = 0; i < 2u; i++)
        SW_UNROLL
        for (u32 j = 0; j < 8u; j++) own[i][j] = block_quarter(acc, team, i, j);
    for (u32 r = 1; r < BLOCK_TEAMS; r++) {
        __syncthreads();
        const u32 sent = (team + r) % BLOCK_TEAMS;
        SW_UNROLL
        for (u32 q = 0; q < 4u; q++) {
            const u32 i = q / 2u, j = 4u * (q % 2u);
            slots[lanes * (4u * team + q) + lane] =
                float4{block_quarter(acc, sent, i, j), block_quarter(acc, sent, i, j + 1u),
                       block_quarter(acc, sent, i, j + 2u), block_quarter(acc, sent, i, j + 3u)};
        }
        __syncthreads();
        const u32 sender = (team + BLOCK_TEAMS - r) % BLOCK_TEAMS;
        SW_UNROLL
        for (u32 q = 0; q < 4u; q++) {
            const float4 v = slots[lanes * (4u * sender + q) + lane];
            const u32 i = q / 2u, j = 4u * (q % 2u);
            own[i][j] += v.x;
            own[i][j + 1u] += v.y;
            own[i][j + 2u] += v.z;
            own[i][j + 3u] += v.w;
        }
    }
}
