// The fragment operations of matmul_coop.wgsl on wgpu's cooperative matrices (the module starts with
// `enable wgpu_cooperative_matrix;`): SPIR-V's OpCooperativeMatrix*KHR on Vulkan. coopLoadT and
// coopStoreT are the row-major forms, coopLoad the column-major one.
//
// With this capability naga declares the Vulkan memory model but (naga 30) marks neither the
// workgroup loads and stores NonPrivatePointer nor the barriers MakeAvailable/MakeVisible, so the
// exchanges through a_stage, b_stage and c_stage rely on drivers treating workgroup memory as they
// do without the model. Not seen to matter on RADV's compiler; the device's self-check
// (ops::matmul::matrix_units_verified) is what guards it before `Auto` uses this kernel.
alias coop_a_t = coop_mat16x16<f16, A>;
alias coop_b_t = coop_mat16x16<f16, B>;
alias coop_acc_t = coop_mat16x16<f32, C>;

fn coop_zero() -> coop_acc_t {
    return coop_acc_t();
}

fn coop_load_a(offset: u32, lane: u32, lanes: u32) -> coop_a_t {
    return coopLoadT<coop_a_t>(&a_stage[offset], COOP_A_STRIDE);
}

fn coop_load_b(offset: u32, lane: u32, lanes: u32) -> coop_b_t {
    if B_TRANSPOSED {
        return coopLoad<coop_b_t>(&b_stage[offset], COOP_K);
    }
    return coopLoadT<coop_b_t>(&b_stage[offset], COOP_B_STRIDE);
}

fn coop_mma(a: coop_a_t, b: coop_b_t, c: coop_acc_t, lane: u32, lanes: u32) -> coop_acc_t {
    return coopMultiplyAdd(a, b, c);
}

fn coop_store(c: coop_acc_t, offset: u32, lane: u32, lanes: u32) {
    coopStoreT(c, &c_stage[offset], 16u);
}

@compute @workgroup_size(COOP_THREADS)
fn matmul_coop(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) group: u32,
    @builtin(num_subgroups) groups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) lanes: u32,
) {
    matmul_coop_block(wg, lid, group, groups, lane, lanes);
}
