// The flash-attention machinery, shared by the attention family (dense and GRAT) and the fused
// qkv_attention entry of the qkv_heads family: FlashAttention-2's structure on scalar cores.
//
// A workgroup owns BLOCK_Q query rows of one (batch, head) and streams BLOCK_KV keys at a time
// through workgroup memory with an online softmax, so no L x L matrix ever exists. Each query row
// belongs to ROW_THREADS = THREADS / (BLOCK_Q * KV_SPLIT) adjacent threads (ceil(HEAD_DIM / 32)),
// each holding 32 of its dimensions of q and of the output in registers (64 per thread needed about
// 245 VGPRs on RDNA3, where a wave64 has 128: the output went to scratch memory, and once that was
// mended 113 VGPRs spilled): a thread computes BLOCK_KV / KV_SPLIT scores per tile (KV_SPLIT: see
// below), reading one workgroup word per FMA (each k or v component meets a q component or a
// probability held in registers, where a one-score-per-thread tile reads both operands from
// workgroup memory), and its row's max and sum are its own, so no reduction crosses threads. With
// ROW_THREADS > 1 the partial dot products meet once per tile through workgroup memory. Barriers per
// key tile: 3 (free the tiles, the key table, the tiles loaded), plus 1 with ROW_THREADS > 1.
//
// Flash-decoding inside the workgroup: a block of few query rows would leave most of a GPU's lanes
// idle and stream every key through one thread per row, so the workgroup holds KV_SPLIT copies of the
// row layout (THREADS = KV_SPLIT * BLOCK_Q * ROW_THREADS), and copy s attends keys
// [s, s + 1) * BLOCK_KV / KV_SPLIT of every tile with its own running max, sum and output. The
// copies load each tile together and merge their states once, at the end, in log2(KV_SPLIT) steps
// through the tile memory (2 barriers each). The host chooses KV_SPLIT (ops::attention) so that a
// step's states fit the K tile.
//
// The including module says where rows live by defining:
//   fn query_vec(head: Head, token: u32, c: u32) -> vec4<f32>        components [4c, 4c + 4)
//   fn finish_query(head: Head, x: vec4<f32>, sum_sq: f32) -> vec4<f32>
//        the query as attended, given its row's sum of squares (a normalisation), before the scale
//   fn softmax_scale() -> f32                                        scores are scale * q . k
//   fn key_vec(head: Head, token: u32, c: u32) -> vec4<f32>
//   fn value_vec(head: Head, token: u32, c: u32) -> vec4<f32>
//   fn store_out(head: Head, token: u32, d: u32, value: f32)
//   fn prepare_key_tile(head: Head, t: u32)   every thread, once the tile's keys and values are
//        staged (may barrier; may read and rewrite them through staged_key, restage_key, staged_value)
// Components past HEAD_DIM must read as 0. Head, the token tables and attend_range are in
// attention_common.wgsl.

override HEAD_DIM: u32 = 64u;
override BLOCK_Q: u32 = 64u;
override BLOCK_KV: u32 = 16u;
override THREADS: u32 = 128u; // KV_SPLIT * BLOCK_Q * ROW_THREADS
// Key slices per tile (a power of two dividing BLOCK_KV); 1 for blocks with enough rows.
override KV_SPLIT: u32 = 1u;
// Partial scores exchanged per tile: BLOCK_Q * BLOCK_KV * ROW_THREADS when ROW_THREADS > 1, else 1.
override Q_TILE_VECS: u32 = 2048u;
// K and V tiles in vec4s: BLOCK_KV * ceil(HEAD_DIM / 4).
override KV_TILE_VECS: u32 = 256u;

// Registers per thread: 8 vec4s (32 dimensions) of q and of the output. (The defaults above are the
// launch of many rows at head_dim 64: two threads per row.)
const SLICE_VECS: u32 = 8u;

var<workgroup> k_tile: array<vec4<f32>, KV_TILE_VECS>;
var<workgroup> v_tile: array<vec4<f32>, KV_TILE_VECS>;
var<workgroup> partial_scores: array<f32, Q_TILE_VECS>;

// The builtins an entry point hands the machinery (attention_coop.wgsl needs its subgroup's place).
struct TileInvocation {
    @builtin(local_invocation_index) index: u32,
}

// Called by the entry point with its linear workgroup index, before begin_queries.
fn enter_tile(tile: TileInvocation, block: u32) {}

// The rows read the key table after the tile's last barrier (the score loop), so the next tile's
// table waits for them.
fn release_key_table() {
    workgroupBarrier();
}

// Components [4c, 4c + 4) of the tile's key (value) j as staged, for prepare_key_tile.
fn staged_key(j: u32, c: u32) -> vec4<f32> {
    return k_tile[j * head_vecs() + c];
}

fn restage_key(j: u32, c: u32, x: vec4<f32>) {
    k_tile[j * head_vecs() + c] = x;
}

fn staged_value(j: u32, c: u32) -> vec4<f32> {
    return v_tile[j * head_vecs() + c];
}

// One thread's share of a query row: its q and output slices, the row's running max and sum.
struct RowState {
    q: array<vec4<f32>, SLICE_VECS>,
    o: array<vec4<f32>, SLICE_VECS>,
    max: f32,
    sum: f32,
}

fn row_threads() -> u32 {
    return THREADS / (BLOCK_Q * KV_SPLIT);
}

// Threads of one key slice: one copy of the row layout.
fn slice_threads() -> u32 {
    return THREADS / KV_SPLIT;
}

// The thread's key slice, its row in the block and the first vec4 of its share of the row.
fn key_slice(t: u32) -> u32 {
    return t / slice_threads();
}

fn row_of(t: u32) -> u32 {
    return (t % slice_threads()) / row_threads();
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
    // The row's threads are rt consecutive ones in every key slice.
    let first = t - t % rt;
    for (var s = 0u; s < rt; s++) {
        total += partial_scores[first + s];
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
    // The scale goes into q once, not into every score.
    let scale = softmax_scale();
    for (var i = 0u; i < SLICE_VECS; i++) {
        (*state).q[i] = finish_query(head, (*state).q[i], sum_sq) * scale;
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
    // The thread's keys are [k0, k0 + keys) of the tile; scores[] is indexed from k0.
    let first = slice_start(t);
    let keys = BLOCK_KV / KV_SPLIT;
    let k0 = key_slice(t) * keys;
    var scores: array<f32, ATTENTION_MAX_BLOCK_KV>;
    for (var j = 0u; j < keys; j++) {
        var acc = vec4<f32>(0.0);
        for (var i = 0u; i < SLICE_VECS; i++) {
            if first + i < hv {
                acc += (*state).q[i] * k_tile[(k0 + j) * hv + first + i];
            }
        }
        scores[j] = acc.x + acc.y + acc.z + acc.w;
    }
    let rt = row_threads();
    if rt > 1u {
        // One slot per (row, key of the tile, share of the row): the key slices never collide.
        let r = row_of(t);
        for (var j = 0u; j < keys; j++) {
            partial_scores[(r * BLOCK_KV + k0 + j) * rt + t % rt] = scores[j];
        }
        workgroupBarrier();
        for (var j = 0u; j < keys; j++) {
            var total = 0.0;
            for (var s = 0u; s < rt; s++) {
                total += partial_scores[(r * BLOCK_KV + k0 + j) * rt + s];
            }
            scores[j] = total;
        }
    }
    var tile_max = NEG_BIG;
    for (var j = 0u; j < keys; j++) {
        if key_token[k0 + j] != NO_TOKEN {
            tile_max = max(tile_max, scores[j]);
        }
    }
    let new_max = max((*state).max, tile_max);
    let rescale = exp((*state).max - new_max);
    for (var i = 0u; i < SLICE_VECS; i++) {
        (*state).o[i] *= rescale;
    }
    var tile_sum = 0.0;
    for (var j = 0u; j < keys; j++) {
        // Padding keys weigh exactly 0 (v is 0 there too). A valid score is at most new_max; the
        // min keeps a padding score of a slice that has seen no key yet (new_max NEG_BIG) finite.
        let w = select(0.0, exp(min(scores[j] - new_max, 0.0)), key_token[k0 + j] != NO_TOKEN);
        tile_sum += w;
        for (var i = 0u; i < SLICE_VECS; i++) {
            if first + i < hv {
                (*state).o[i] += w * v_tile[(k0 + j) * hv + first + i];
            }
        }
    }
    (*state).sum = (*state).sum * rescale + tile_sum;
    (*state).max = new_max;
}

// The key slices' states merged into slice 0's: in each step the upper half of the remaining slices
// hands its output share and (max, sum) to the lower half through the tile memory (which the host
// sized for it: KV_SPLIT / 2 * THREADS / KV_SPLIT shares of min(SLICE_VECS, head_vecs) vec4s fit
// KV_TILE_VECS). Every thread calls it, in uniform control flow; empty slices hold max NEG_BIG and
// sum 0, and weigh exactly 0 once any slice has a key.
fn merge_key_slices(t: u32, state: ptr<function, RowState>) {
    if KV_SPLIT == 1u {
        return;
    }
    let s = key_slice(t);
    let local = t % slice_threads();
    let share = min(SLICE_VECS, head_vecs());
    for (var half = KV_SPLIT / 2u; half > 0u; half /= 2u) {
        // The tiles are free: the last tile's reads (or the previous step's) are done.
        workgroupBarrier();
        if s >= half && s < 2u * half {
            let slot = (s - half) * slice_threads() + local;
            for (var i = 0u; i < SLICE_VECS; i++) {
                if i < share {
                    k_tile[slot * share + i] = (*state).o[i];
                }
            }
            v_tile[slot] = vec4<f32>((*state).max, (*state).sum, 0.0, 0.0);
        }
        workgroupBarrier();
        if s < half {
            let slot = s * slice_threads() + local;
            let other = v_tile[slot];
            let new_max = max((*state).max, other.x);
            let mine = exp((*state).max - new_max);
            let theirs = exp(other.x - new_max);
            for (var i = 0u; i < SLICE_VECS; i++) {
                if i < share {
                    (*state).o[i] = (*state).o[i] * mine + k_tile[slot * share + i] * theirs;
                }
            }
            (*state).sum = (*state).sum * mine + other.y * theirs;
            (*state).max = new_max;
        }
    }
}

// Every thread calls it (the key slices merge first); slice 0 stores its rows.
fn finish_queries(head: Head, t: u32, state: ptr<function, RowState>) {
    merge_key_slices(t, state);
    let token = query_token[row_of(t)];
    if token == NO_TOKEN || key_slice(t) != 0u {
        return;
    }
    let inv_sum = 1.0 / (*state).sum;
    let hv = head_vecs();
    let first = slice_start(t);
    for (var i = 0u; i < SLICE_VECS; i++) {
        let c = first + i;
        if c < hv {
            // This loop, with its stores, is not unrolled; reading o[i] here would index the output
            // dynamically, and the compiler would then keep all of it in scratch memory for the whole
            // kernel (RADV: 520 bytes per invocation). The inner loop is unrolled: constant indices.
            var slice = vec4<f32>(0.0);
            for (var j = 0u; j < SLICE_VECS; j++) {
                slice = select(slice, (*state).o[j], j == i);
            }
            let value = slice * inv_sum;
            for (var x = 0u; x < 4u; x++) {
                let d = c * 4u + x;
                if d < HEAD_DIM {
                    store_out(head, token, d, value[x]);
                }
            }
        }
    }
}
