// The flash-attention machinery, shared by the attention family (dense and GRAT) and the fused
// qkv_attention entry of the qkv_heads family: FlashAttention-2's structure on scalar cores.
//
// A workgroup owns BLOCK_Q query rows of one (batch, head) and streams BLOCK_KV keys at a time
// through workgroup memory with an online softmax, so no L x L matrix ever exists. Each query row
// belongs to ROW_THREADS = THREADS / BLOCK_Q adjacent threads (ceil(HEAD_DIM / 64)), each holding
// 64 of its dimensions of q and of the output in registers: a thread computes BLOCK_KV scores per
// tile, reading one workgroup word per FMA (each k or v component meets a q component or a
// probability held in registers, where a one-score-per-thread tile reads both operands from
// workgroup memory), and its row's max and sum are its own, so no reduction crosses threads. With
// ROW_THREADS > 1 the partial dot products meet once per tile through workgroup memory. Barriers per
// key tile: 3 (free the tiles, the key table, the tiles loaded), plus 1 with ROW_THREADS > 1.
//
// The including module says where rows live by defining:
//   fn query_vec(head: Head, token: u32, c: u32) -> vec4<f32>        components [4c, 4c + 4)
//   fn finish_query(head: Head, x: vec4<f32>, sum_sq: f32) -> vec4<f32>
//        the query as attended, given its row's sum of squares (softmax scale, normalisation)
//   fn key_vec(head: Head, token: u32, c: u32) -> vec4<f32>
//   fn value_vec(head: Head, token: u32, c: u32) -> vec4<f32>
//   fn store_out(head: Head, token: u32, d: u32, value: f32)
//   fn prepare_key_tile(head: Head, t: u32)   every thread, once k_tile and v_tile are loaded (may barrier)
// Components past HEAD_DIM must read as 0.

override HEAD_DIM: u32 = 64u;
override BLOCK_Q: u32 = 64u;
override BLOCK_KV: u32 = 16u;
override THREADS: u32 = 64u; // BLOCK_Q * ROW_THREADS
// Partial scores exchanged per tile: BLOCK_Q * BLOCK_KV * ROW_THREADS when ROW_THREADS > 1, else 1.
override Q_TILE_VECS: u32 = 1u;
// K and V tiles in vec4s: BLOCK_KV * ceil(HEAD_DIM / 4).
override KV_TILE_VECS: u32 = 256u;

// Registers per thread: 16 vec4s (64 dimensions) of q and of the output.
const SLICE_VECS: u32 = 16u;
const MAX_BLOCK_Q: u32 = 64u;
const MAX_BLOCK_KV: u32 = 32u;
const NO_TOKEN: u32 = 0xffffffffu;
// Finite "minus infinity": exp(NEG_BIG - m) is 0 and NEG_BIG - NEG_BIG is 0, never NaN.
const NEG_BIG: f32 = -3.0e38;

var<workgroup> k_tile: array<vec4<f32>, KV_TILE_VECS>;
var<workgroup> v_tile: array<vec4<f32>, KV_TILE_VECS>;
var<workgroup> partial_scores: array<f32, Q_TILE_VECS>;
var<workgroup> query_token: array<u32, MAX_BLOCK_Q>;
var<workgroup> key_token: array<u32, MAX_BLOCK_KV>;

// Where one (batch, head)'s rows start in the including module's tensors.
struct Head {
    q_base: u32,
    kv_base: u32,
    o_base: u32,
    batch: u32,
    head: u32,
}

// One thread's share of a query row: its q and output slices, the row's running max and sum.
struct RowState {
    q: array<vec4<f32>, SLICE_VECS>,
    o: array<vec4<f32>, SLICE_VECS>,
    max: f32,
    sum: f32,
}

fn head_vecs() -> u32 {
    return (HEAD_DIM + 3u) / 4u;
}

fn row_threads() -> u32 {
    return THREADS / BLOCK_Q;
}

// The thread's row in the block and the first vec4 of its slice.
fn row_of(t: u32) -> u32 {
    return t / row_threads();
}

fn slice_start(t: u32) -> u32 {
    return (t % row_threads()) * SLICE_VECS;
}

// Sum over the row's threads of one value per thread (every thread gets the same total, summed in
// the same order). Uniform control flow; uses partial_scores, so not inside a tile.
fn row_total(t: u32, value: f32) -> f32 {
    let rt = row_threads();
    if rt == 1u {
        return value;
    }
    workgroupBarrier();
    partial_scores[t] = value;
    workgroupBarrier();
    var total = 0.0;
    for (var s = 0u; s < rt; s++) {
        total += partial_scores[row_of(t) * rt + s];
    }
    return total;
}

// Once query_token is filled: the thread's query slice into registers, the softmax state reset.
fn begin_queries(head: Head, t: u32, state: ptr<function, RowState>) {
    workgroupBarrier();
    let hv = head_vecs();
    let first = slice_start(t);
    let token = query_token[row_of(t)];
    var sum_sq = 0.0;
    for (var i = 0u; i < SLICE_VECS; i++) {
        var x = vec4<f32>(0.0);
        if token != NO_TOKEN && first + i < hv {
            x = query_vec(head, token, first + i);
        }
        (*state).q[i] = x;
        (*state).o[i] = vec4<f32>(0.0);
        sum_sq += dot(x, x);
    }
    sum_sq = row_total(t, sum_sq);
    for (var i = 0u; i < SLICE_VECS; i++) {
        (*state).q[i] = finish_query(head, (*state).q[i], sum_sq);
    }
    (*state).max = NEG_BIG;
    (*state).sum = 0.0;
}

// Once key_token is filled: one online-softmax step over this tile of keys.
fn attend_tile(head: Head, t: u32, state: ptr<function, RowState>) {
    workgroupBarrier();
    let hv = head_vecs();
    for (var e = t; e < BLOCK_KV * hv; e += THREADS) {
        let token = key_token[e / hv];
        var kv = vec4<f32>(0.0);
        var vv = vec4<f32>(0.0);
        if token != NO_TOKEN {
            kv = key_vec(head, token, e % hv);
            vv = value_vec(head, token, e % hv);
        }
        k_tile[e] = kv;
        v_tile[e] = vv;
    }
    workgroupBarrier();
    prepare_key_tile(head, t);

    // Loops run to SLICE_VECS with a predicate, a constant trip count, so the slices stay in registers.
    let first = slice_start(t);
    var scores: array<f32, MAX_BLOCK_KV>;
    for (var j = 0u; j < BLOCK_KV; j++) {
        var acc = vec4<f32>(0.0);
        for (var i = 0u; i < SLICE_VECS; i++) {
            if first + i < hv {
                acc += (*state).q[i] * k_tile[j * hv + first + i];
            }
        }
        scores[j] = acc.x + acc.y + acc.z + acc.w;
    }
    let rt = row_threads();
    if rt > 1u {
        let r = row_of(t);
        for (var j = 0u; j < BLOCK_KV; j++) {
            partial_scores[(r * BLOCK_KV + j) * rt + t % rt] = scores[j];
        }
        workgroupBarrier();
        for (var j = 0u; j < BLOCK_KV; j++) {
            var total = 0.0;
            for (var s = 0u; s < rt; s++) {
                total += partial_scores[(r * BLOCK_KV + j) * rt + s];
            }
            scores[j] = total;
        }
    }
    var tile_max = NEG_BIG;
    for (var j = 0u; j < BLOCK_KV; j++) {
        if key_token[j] != NO_TOKEN {
            tile_max = max(tile_max, scores[j]);
        }
    }
    let new_max = max((*state).max, tile_max);
    let rescale = exp((*state).max - new_max);
    for (var i = 0u; i < SLICE_VECS; i++) {
        (*state).o[i] *= rescale;
    }
    var tile_sum = 0.0;
    for (var j = 0u; j < BLOCK_KV; j++) {
        // Padding keys weigh exactly 0 (v is 0 there too).
        let w = select(0.0, exp(scores[j] - new_max), key_token[j] != NO_TOKEN);
        tile_sum += w;
        for (var i = 0u; i < SLICE_VECS; i++) {
            if first + i < hv {
                (*state).o[i] += w * v_tile[j * hv + first + i];
            }
        }
    }
    (*state).sum = (*state).sum * rescale + tile_sum;
    (*state).max = new_max;
}

fn finish_queries(head: Head, t: u32, state: ptr<function, RowState>) {
    let token = query_token[row_of(t)];
    if token == NO_TOKEN {
        return;
    }
    let inv_sum = 1.0 / (*state).sum;
    let hv = head_vecs();
    let first = slice_start(t);
    for (var i = 0u; i < SLICE_VECS; i++) {
        let c = first + i;
        if c < hv {
            let value = (*state).o[i] * inv_sum;
            for (var x = 0u; x < 4u; x++) {
                let d = c * 4u + x;
                if d < HEAD_DIM {
                    store_out(head, token, d, value[x]);
                }
            }
        }
    }
}

// Streams keys [start, start + count) (contiguous tokens) through attend_tile.
fn attend_range(head: Head, t: u32, start: u32, count: u32, state: ptr<function, RowState>) {
    for (var k0 = 0u; k0 < count; k0 += BLOCK_KV) {
        workgroupBarrier();
        // A block of few rows can have fewer threads than keys.
        for (var j = t; j < BLOCK_KV; j += THREADS) {
            key_token[j] = select(NO_TOKEN, start + k0 + j, k0 + j < count);
        }
        attend_tile(head, t, state);
    }
}
