// The scalar attention machinery's lanes in the subgroups variant (attention_tile.wgsl): a row's
// threads may sum their partial scores through subgroup shuffles instead of workgroup memory.
//
// Where a row's threads sum through shuffles (SUBGROUP_EXCHANGE), a thread's place in the block
// counts its subgroup's lanes first (subgroup * size + lane), not local_invocation_index: a row's
// ROW_THREADS threads, a power of two no wider than the narrowest subgroup, are then lanes of one
// subgroup whose indices differ only in their low bits, whatever order the implementation gives the
// workgroup's invocations. That numbering covers the block once only if its subgroups are full and
// of one size. One size per dispatch Vulkan promises (SubgroupSize is uniform with command scope,
// also under the varying subgroup sizes wgpu allows); full subgroups it promises only to pipelines
// that require them, which wgpu cannot ask for. So the host asks for the exchange only where the
// block is a multiple of the widest subgroup the adapter may run, or fits in the narrowest
// (ops::attention), sizes that implementations fill with full subgroups: an assumption, which the
// row-layout tests check against float64 on every adapter they run on. Elsewhere the place is the
// local index, as in the variant without subgroups. No subgroup size is assumed.

struct TileInvocation {
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(subgroup_size) subgroup_size: u32,
}

fn tile_thread(tile: TileInvocation) -> u32 {
    if SUBGROUP_EXCHANGE {
        return tile.subgroup * tile.subgroup_size + tile.lane;
    }
    return tile.index;
}

// Each component r < ROWS summed over `lanes` adjacent lanes (a power of two; call from uniform
// control flow). A butterfly: every lane adds the same pairs in the same order, so the lanes of a
// row get bit-identical totals and take identical softmax decisions.
// Straight-line steps, not a loop: RADV kept a loop of them (7 bit steps, or `m <<= 1`) rolled, and
// with it the caller's loop over the scores, which then went to scratch memory. Subgroups are at
// most 128 lanes wide, so masks stop at 64.
fn lanes_sum(x: vec4<f32>, lanes: u32) -> vec4<f32> {
    var v = x;
    if lanes > 1u { v = lanes_step(v, 1u); }
    if lanes > 2u { v = lanes_step(v, 2u); }
    if lanes > 4u { v = lanes_step(v, 4u); }
    if lanes > 8u { v = lanes_step(v, 8u); }
    if lanes > 16u { v = lanes_step(v, 16u); }
    if lanes > 32u { v = lanes_step(v, 32u); }
    if lanes > 64u { v = lanes_step(v, 64u); }
    return v;
}

// One butterfly step: the components r < ROWS plus the lane `mask` away's.
fn lanes_step(v: vec4<f32>, mask: u32) -> vec4<f32> {
    if ROWS == 1u {
        return vec4<f32>(v.x + subgroupShuffleXor(v.x, mask), v.yzw);
    }
    if ROWS == 4u {
        return v + subgroupShuffleXor(v, mask);
    }
    return vec4<f32>(v.xy + subgroupShuffleXor(v.xy, mask), v.zw);
}
