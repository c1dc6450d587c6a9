// The flash-attention tile machinery, shared by the attention family (dense and GRAT) and the fused
// qkv_attention entry of the qkv_heads family.
//
// A workgroup owns BLOCK_Q query rows of one (batch, head) and streams BLOCK_KV keys at a time
// through workgroup memory with an online softmax, so no L x L matrix ever exists. The including
// module says where rows live by defining:
//   fn query_vec(head: Head, token: u32, c: u32) -> vec4<f32>   components [4c, 4c + 4), scaled
//   fn key_vec(head: Head, token: u32, c: u32) -> vec4<f32>
//   fn value_vec(head: Head, token: u32, c: u32) -> vec4<f32>
//   fn store_out(head: Head, token: u32, d: u32, value: f32)
//   fn prepare_key_tile(t: u32)   called by every thread once k_tile is loaded (may barrier)
// Components past HEAD_DIM must read as 0.

override HEAD_DIM: u32 = 64u;
override BLOCK_Q: u32 = 16u;
override BLOCK_KV: u32 = 16u;
override THREADS: u32 = 256u; // BLOCK_Q * BLOCK_KV
// Tile sizes in vec4s: BLOCK_Q * ceil(HEAD_DIM / 4) and BLOCK_KV * ceil(HEAD_DIM / 4).
override Q_TILE_VECS: u32 = 256u;
override KV_TILE_VECS: u32 = 256u;

// Each thread accumulates ceil(HEAD_DIM / 4 / BLOCK_KV) vec4s of its row's output.
const MAX_OUT_VECS: u32 = 16u;
const MAX_BLOCK_Q: u32 = 16u;
const MAX_BLOCK_KV: u32 = 32u;
const NO_TOKEN: u32 = 0xffffffffu;
// Finite "minus infinity": exp(NEG_BIG - m) is 0 and NEG_BIG - NEG_BIG is 0, never NaN.
const NEG_BIG: f32 = -3.0e38;

var<workgroup> q_tile: array<vec4<f32>, Q_TILE_VECS>;
var<workgroup> k_tile: array<vec4<f32>, KV_TILE_VECS>;
var<workgroup> v_tile: array<vec4<f32>, KV_TILE_VECS>;
var<workgroup> p_tile: array<f32, 512>; // MAX_BLOCK_Q * MAX_BLOCK_KV scores, then probabilities
var<workgroup> row_max: array<f32, MAX_BLOCK_Q>;
var<workgroup> row_sum: array<f32, MAX_BLOCK_Q>;
var<workgroup> row_rescale: array<f32, MAX_BLOCK_Q>;
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

fn head_vecs() -> u32 {
    return (HEAD_DIM + 3u) / 4u;
}

// Once query_token is filled: load the query rows, reset the softmax state.
fn begin_queries(head: Head, t: u32) {
    workgroupBarrier();
    let hv = head_vecs();
    for (var e = t; e < BLOCK_Q * hv; e += THREADS) {
        let token = query_token[e / hv];
        var value = vec4<f32>(0.0);
        if token != NO_TOKEN {
            value = query_vec(head, token, e % hv);
        }
        q_tile[e] = value;
    }
    if t < BLOCK_Q {
        row_max[t] = NEG_BIG;
        row_sum[t] = 0.0;
    }
}

// Once key_token is filled: one online-softmax step over this tile of keys. Thread t owns row
// t / BLOCK_KV: its score against key t % BLOCK_KV, and the output columns t % BLOCK_KV + i * BLOCK_KV.
fn attend_tile(head: Head, t: u32, lane: Lane, out: ptr<function, array<vec4<f32>, MAX_OUT_VECS>>) {
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
    prepare_key_tile(t);

    let r = t / BLOCK_KV;
    let j = t % BLOCK_KV;
    var score = NEG_BIG;
    if key_token[j] != NO_TOKEN {
        var acc = vec4<f32>(0.0);
        for (var c = 0u; c < hv; c++) {
            acc += q_tile[r * hv + c] * k_tile[j * hv + c];
        }
        score = acc.x + acc.y + acc.z + acc.w;
    }
    p_tile[r * BLOCK_KV + j] = score;
    workgroupBarrier();

    // Row statistics: each team takes whole rows; its members split the row's keys.
    for (var row = team_index(lane); row < BLOCK_Q; row += team_count(lane, THREADS)) {
        var local_max = NEG_BIG;
        for (var key = member_index(lane); key < BLOCK_KV; key += member_count(lane)) {
            local_max = max(local_max, p_tile[row * BLOCK_KV + key]);
        }
        let new_max = max(row_max[row], team_max(local_max));
        var local_sum = 0.0;
        for (var key = member_index(lane); key < BLOCK_KV; key += member_count(lane)) {
            let e = exp(p_tile[row * BLOCK_KV + key] - new_max);
            p_tile[row * BLOCK_KV + key] = e;
            local_sum += e;
        }
        let tile_sum = team_sum(local_sum);
        if member_index(lane) == 0u {
            let rescale = exp(row_max[row] - new_max);
            row_rescale[row] = rescale;
            row_sum[row] = row_sum[row] * rescale + tile_sum;
            row_max[row] = new_max;
        }
    }
    workgroupBarrier();

    let rescale = row_rescale[r];
    for (var i = 0u; i < MAX_OUT_VECS; i++) {
        let c = j + i * BLOCK_KV;
        if c < hv {
            var acc = (*out)[i] * rescale;
            for (var key = 0u; key < BLOCK_KV; key++) {
                acc += p_tile[r * BLOCK_KV + key] * v_tile[key * hv + c];
            }
            (*out)[i] = acc;
        }
    }
}

fn finish_queries(head: Head, t: u32, out: ptr<function, array<vec4<f32>, MAX_OUT_VECS>>) {
    let r = t / BLOCK_KV;
    let j = t % BLOCK_KV;
    let token = query_token[r];
    if token == NO_TOKEN {
        return;
    }
    let inv_sum = 1.0 / row_sum[r];
    let hv = head_vecs();
    for (var i = 0u; i < MAX_OUT_VECS; i++) {
        let c = j + i * BLOCK_KV;
        if c < hv {
            let value = (*out)[i] * inv_sum;
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
fn attend_range(head: Head, t: u32, lane: Lane, start: u32, count: u32, out: ptr<function, array<vec4<f32>, MAX_OUT_VECS>>) {
    for (var k0 = 0u; k0 < count; k0 += BLOCK_KV) {
        workgroupBarrier();
        if t < BLOCK_KV {
            key_token[t] = select(NO_TOKEN, start + k0 + t, k0 + t < count);
        }
        attend_tile(head, t, lane, out);
    }
}
