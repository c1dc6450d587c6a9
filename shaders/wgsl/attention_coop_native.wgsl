// The fragment operations of attention_coop.wgsl on wgpu's cooperative matrices (the module starts
// with `enable wgpu_cooperative_matrix;`): SPIR-V's OpCooperativeMatrix*KHR on Vulkan, one fragment
// held across a subgroup. coopLoadT and coopStoreT are the row-major forms, coopLoad the
// column-major one. The workgroup-memory exchanges rely on drivers treating workgroup memory under
// the Vulkan memory model as they do without it (see coop_native.wgsl); the device's self-check
// (ops::attention::attention_units_verified) guards it before `Auto` uses this kernel.
alias coop_a_t = coop_mat16x16<f16, A>;
alias coop_b_t = coop_mat16x16<f16, B>;
alias coop_acc_t = coop_mat16x16<f32, C>;

struct TileInvocation {
    @builtin(local_invocation_index) index: u32,
    @builtin(subgroup_id) group: u32,
    @builtin(num_subgroups) groups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
}

var<private> coop_place: vec4<u32>;

fn enter_tile(tile: TileInvocation, block: u32) {
    coop_place = vec4<u32>(tile.group, tile.groups, tile.lane, tile.lanes);
}

fn tile_place() -> vec4<u32> {
    return coop_place;
}

fn frag_zero() -> coop_acc_t {
    return coop_acc_t();
}

fn frag_query(offset: u32, lane: u32, lanes: u32) -> coop_a_t {
    return coopLoadT<coop_a_t>(&q_stage[offset], COOP_DIM);
}

fn frag_weights(offset: u32, lane: u32, lanes: u32) -> coop_a_t {
    return coopLoadT<coop_a_t>(&p_stage[offset], weight_stride());
}

fn frag_keys(offset: u32, lane: u32, lanes: u32) -> coop_b_t {
    return coopLoad<coop_b_t>(&k_stage[offset], COOP_DIM);
}

fn frag_values(offset: u32, lane: u32, lanes: u32) -> coop_b_t {
    return coopLoadT<coop_b_t>(&v_stage[offset], COOP_DIM);
}

fn frag_mma(a: coop_a_t, b: coop_b_t, c: coop_acc_t, lane: u32, lanes: u32) -> coop_acc_t {
    return coopMultiplyAdd(a, b, c);
}

fn frag_store(c: coop_acc_t, offset: u32, stride: u32, lane: u32, lanes: u32) {
    coopStoreT(c, &product_stage[offset], stride);
}
