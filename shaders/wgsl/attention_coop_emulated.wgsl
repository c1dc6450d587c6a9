// The fragment operations of attention_coop.wgsl in plain WGSL, for checking the kernel where the
// adapter has no matrix units. The workgroup is split into virtual subgroups 32, 64 or 128 wide by
// the block's index (block % 3), so that any call of three or more blocks takes each of the kernel's
// three ways of sharing out the fragments. An accumulator is spread over a subgroup's invocations as
// the hardware spreads it: each holds 256 / lanes consecutive elements (e = lane * 256 / lanes + j),
// which is not the order in which the softmax and the output read product_stage, so a missing
// barrier shows as wrong outputs here too. An A or B fragment is (its stage, its offset), read by
// the product in the layout the native loads use (the stages do not change between a load and its
// products).
const COOP_FRAGMENT: u32 = 256u;
const COOP_EMULATED_MAX_SHARE: u32 = COOP_FRAGMENT / 32u;
const FRAG_QUERY: u32 = 0u;
const FRAG_WEIGHTS: u32 = 1u;
const FRAG_KEYS: u32 = 0u;
const FRAG_VALUES: u32 = 1u;

alias coop_a_t = vec2<u32>;
alias coop_b_t = vec2<u32>;
alias coop_acc_t = array<f32, COOP_EMULATED_MAX_SHARE>;

struct TileInvocation {
    @builtin(local_invocation_index) index: u32,
}

var<private> coop_place: vec4<u32>;

fn enter_tile(tile: TileInvocation, block: u32) {
    let lanes = 32u << (block % 3u);
    coop_place = vec4<u32>(tile.index / lanes, THREADS / lanes, tile.index % lanes, lanes);
}

fn tile_place() -> vec4<u32> {
    return coop_place;
}

fn frag_zero() -> coop_acc_t {
    return coop_acc_t();
}

fn frag_query(offset: u32, lane: u32, lanes: u32) -> coop_a_t {
    return vec2<u32>(FRAG_QUERY, offset);
}

fn frag_weights(offset: u32, lane: u32, lanes: u32) -> coop_a_t {
    return vec2<u32>(FRAG_WEIGHTS, offset);
}

fn frag_keys(offset: u32, lane: u32, lanes: u32) -> coop_b_t {
    return vec2<u32>(FRAG_KEYS, offset);
}

fn frag_values(offset: u32, lane: u32, lanes: u32) -> coop_b_t {
    return vec2<u32>(FRAG_VALUES, offset);
}

// Element (row, k) of an A fragment: q_stage row-major (stride COOP_DIM) or p_stage (weight_stride()).
fn frag_a_at(a: coop_a_t, row: u32, k: u32) -> f32 {
    if a.x == FRAG_QUERY {
        return f32(q_stage[a.y + row * COOP_DIM + k]);
    }
    return f32(p_stage[a.y + row * weight_stride() + k]);
}

// Element (k, col) of a B fragment: k_stage column-major (K^T) or v_stage row-major, stride COOP_DIM.
fn frag_b_at(b: coop_b_t, k: u32, col: u32) -> f32 {
    if b.x == FRAG_KEYS {
        return f32(k_stage[b.y + col * COOP_DIM + k]);
    }
    return f32(v_stage[b.y + k * COOP_DIM + col]);
}

fn frag_mma(a: coop_a_t, b: coop_b_t, c: coop_acc_t, lane: u32, lanes: u32) -> coop_acc_t {
    var out = c;
    let share = COOP_FRAGMENT / lanes;
    for (var j = 0u; j < share; j++) {
        let e = lane * share + j;
        var sum = out[j];
        for (var k = 0u; k < 16u; k++) {
            sum = fma(frag_a_at(a, e / 16u, k), frag_b_at(b, k, e % 16u), sum);
        }
        out[j] = sum;
    }
    return out;
}

fn frag_store(c: coop_acc_t, offset: u32, stride: u32, lane: u32, lanes: u32) {
    let share = COOP_FRAGMENT / lanes;
    for (var j = 0u; j < share; j++) {
        let e = lane * share + j;
        product_stage[offset + (e / 16u) * stride + e % 16u] = c[j];
    }
}
