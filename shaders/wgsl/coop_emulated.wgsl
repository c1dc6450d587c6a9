// The fragment operations of matmul_coop.wgsl in plain WGSL, for checking the kernel where the
// adapter has no matrix units. The workgroup is split into virtual subgroups, and a fragment is
// spread over their invocations as the hardware spreads it: each holds 256 / lanes consecutive
// elements of an accumulator (e = lane * 256 / lanes + j). That is not the order in which the
// epilogue reads c_stage (e = lane + lanes j), so a missing barrier between coop_store and the
// epilogue shows as wrong outputs here too. An A or B fragment is its offset in a_stage or b_stage,
// read by the product (the stages do not change between a K step's loads and products) in the
// layout the native loads use: row-major, or column-major for B when B_TRANSPOSED.
//
// The virtual subgroups are 32, 64 or 128 wide by the block's column (wg.x % 3), so that any product
// of three or more column blocks takes each of the kernel's three ways of sharing out the quarters.
const COOP_EMULATED_MAX_SHARE: u32 = COOP_FRAGMENT / 32u;

alias coop_a_t = u32;
alias coop_b_t = u32;
alias coop_acc_t = array<f32, COOP_EMULATED_MAX_SHARE>;

fn coop_zero() -> coop_acc_t {
    return coop_acc_t();
}

fn coop_load_a(offset: u32, lane: u32, lanes: u32) -> coop_a_t {
    return offset;
}

fn coop_load_b(offset: u32, lane: u32, lanes: u32) -> coop_b_t {
    return offset;
}

fn coop_mma(a: coop_a_t, b: coop_b_t, c: coop_acc_t, lane: u32, lanes: u32) -> coop_acc_t {
    var out = c;
    let share = COOP_FRAGMENT / lanes;
    for (var j = 0u; j < share; j++) {
        let e = lane * share + j;
        let row = a + (e / 16u) * COOP_A_STRIDE;
        // Element (k, e % 16) of the B fragment: row-major, or column-major with stride COOP_K.
        var col = b + e % 16u;
        var k_stride = COOP_B_STRIDE;
        if B_TRANSPOSED {
            col = b + (e % 16u) * COOP_K;
            k_stride = 1u;
        }
        var sum = out[j];
        for (var k = 0u; k < 16u; k++) {
            sum = fma(f32(a_stage[row + k]), f32(b_stage[col + k * k_stride]), sum);
        }
        out[j] = sum;
    }
    return out;
}

fn coop_store(c: coop_acc_t, offset: u32, lane: u32, lanes: u32) {
    let share = COOP_FRAGMENT / lanes;
    for (var j = 0u; j < share; j++) {
        let e = lane * share + j;
        c_stage[offset + (e / 16u) * 16u + e % 16u] = c[j];
    }
}

@compute @workgroup_size(COOP_THREADS)
fn matmul_coop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let lanes = 32u << (wg.x % 3u);
    matmul_coop_block(wg, lid, lid / lanes, COOP_THREADS / lanes, lid % lanes, lanes);
}
