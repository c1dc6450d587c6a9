// The fragment operations of matmul_coop.wgsl in plain WGSL, for checking the kernel where the
// adapter has no matrix units. The workgroup is split into virtual subgroups of 32 invocations, and a
// fragment is spread over them as the hardware spreads it: each invocation holds 8 of the 256
// elements of an accumulator (element e = lane + 32 j). An A or B fragment is its offset in a_stage
// or b_stage, read by the product (the stages do not change between a K step's loads and products).
// The semantics are SPV_KHR_cooperative_matrix's, row-major.
const COOP_EMULATED_LANES: u32 = 32u;
const COOP_EMULATED_SHARE: u32 = COOP_FRAGMENT / COOP_EMULATED_LANES;

alias coop_a_t = u32;
alias coop_b_t = u32;
alias coop_acc_t = array<f32, COOP_EMULATED_SHARE>;

fn coop_zero() -> coop_acc_t {
    return coop_acc_t();
}

fn coop_load_a(offset: u32, lane: u32) -> coop_a_t {
    return offset;
}

fn coop_load_b(offset: u32, lane: u32) -> coop_b_t {
    return offset;
}

fn coop_mma(a: coop_a_t, b: coop_b_t, c: coop_acc_t, lane: u32) -> coop_acc_t {
    var out = c;
    for (var j = 0u; j < COOP_EMULATED_SHARE; j++) {
        let e = lane + j * COOP_EMULATED_LANES;
        let row = a + (e / 16u) * COOP_A_STRIDE;
        let col = b + e % 16u;
        var sum = out[j];
        for (var k = 0u; k < 16u; k++) {
            sum = fma(f32(a_stage[row + k]), f32(b_stage[col + k * COOP_B_STRIDE]), sum);
        }
        out[j] = sum;
    }
    return out;
}

fn coop_store(c: coop_acc_t, offset: u32, lane: u32) {
    for (var j = 0u; j < COOP_EMULATED_SHARE; j++) {
        let e = lane + j * COOP_EMULATED_LANES;
        c_stage[offset + (e / 16u) * 16u + e % 16u] = c[j];
    }
}

@compute @workgroup_size(COOP_THREADS)
fn matmul_coop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let lanes = COOP_EMULATED_LANES;
    matmul_coop_block(wg, lid, lid / lanes, COOP_THREADS / lanes, lid % lanes, lanes);
}
