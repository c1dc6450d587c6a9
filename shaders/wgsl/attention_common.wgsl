// What both attention machineries (attention_tile.wgsl on scalar cores, attention_coop.wgsl on
// matrix units) share: the token tables the entry points fill, the head addressing, the stream of
// contiguous keys through the machinery's attend_tile, and a dense block from start to finish. Each
// machinery defines BLOCK_Q, BLOCK_KV, THREADS, HEAD_DIM, RowState, begin_queries, attend_tile,
// finish_queries and release_key_table (called before key_token is refilled: it returns once the
// machinery's reads of the previous tile's table are done). A tile's table holds its valid keys
// first, then NO_TOKEN to the end (count_tile_keys counts them from that layout).

const NO_TOKEN: u32 = 0xffffffffu;
// Finite "minus infinity": exp(NEG_BIG - m) is 0 and NEG_BIG - NEG_BIG is 0, never NaN.
const NEG_BIG: f32 = -3.0e38;

// Sized by the host's largest tiles (kernels::size).
var<workgroup> query_token: array<u32, ATTENTION_MAX_BLOCK_Q>;
var<workgroup> key_token: array<u32, ATTENTION_MAX_BLOCK_KV>;
// The tile's valid keys, key_token's first entries (count_tile_keys): the machineries mask the
// padding keys by it in their softmax step, so that their own reads of the key table are the loads,
// before their tiles' load barriers (qkv_attention's prepare_key_tile reads it after; see each
// machinery's release_key_table).
var<workgroup> tile_keys: u32;

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

// Once key_token is filled and published, every thread: the thread of the last valid key (or of
// key 0, where none is) writes their count to tile_keys. Read it after the next barrier.
fn count_tile_keys(t: u32) {
    // A branch on the constants rather than the loop alone: where every key has a thread, the
    // compiler does not see that the loop runs at most once.
    if THREADS >= BLOCK_KV {
        if t < BLOCK_KV {
            count_key(t);
        }
    } else {
        for (var j = t; j < BLOCK_KV; j += THREADS) {
            count_key(j);
        }
    }
}

fn count_key(j: u32) {
    let valid = key_token[j] != NO_TOKEN;
    let next_valid = j + 1u < BLOCK_KV && key_token[min(j + 1u, BLOCK_KV - 1u)] != NO_TOKEN;
    if valid && !next_valid {
        tile_keys = j + 1u;
    } else if j == 0u && !valid {
        tile_keys = 0u;
    }
}

// Streams keys [start, start + count) (contiguous tokens) through attend_tile.
fn attend_range(head: Head, t: u32, start: u32, count: u32, state: ptr<function, RowState>) {
    for (var k0 = 0u; k0 < count; k0 += BLOCK_KV) {
        release_key_table();
        // A block of few rows can have fewer threads than keys.
        for (var j = t; j < BLOCK_KV; j += THREADS) {
            key_token[j] = select(NO_TOKEN, start + k0 + j, k0 + j < count);
        }
        attend_tile(head, t, state);
    }
}

// A block of a dense call: rows [first, first + BLOCK_Q) of the `rows` query rows (tokens token0 +
// row) attend keys [0, keys). The entry point has left when `first >= rows`.
fn attend_rows(head: Head, t: u32, first: u32, rows: u32, token0: u32, keys: u32) {
    if t < BLOCK_Q {
        query_token[t] = select(NO_TOKEN, token0 + first + t, first + t < rows);
    }
    var state: RowState;
    begin_queries(head, t, &state);
    attend_range(head, t, 0u, keys, &state);
    finish_queries(head, t, &state);
}
