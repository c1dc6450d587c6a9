// The flash-attention machinery, shared by the attention family (dense and GRAT) and the fused
// qkv_attention entry of the qkv_heads family: FlashAttention-2's structure on scalar cores.
//
// A workgroup owns BLOCK_Q query rows of one (batch, head) and streams BLOCK_KV keys at a time
// through workgroup memory with an online softmax, so no L x L matrix ever exists. Rows come in
// groups of ROWS (1, 2 or 4); each group belongs to ROW_THREADS = THREADS * ROWS / (BLOCK_Q *
// KV_SPLIT) adjacent threads, each holding SLICE_VECS / ROWS vec4s of every row of the group: 32
// dimensions of q and of the output in registers per thread in all (64 needed about 245 VGPRs on
// RDNA3, where a wave64 has 128: the output went to scratch memory, and once that was mended 113
// VGPRs spilled). A thread computes BLOCK_KV / KV_SPLIT scores of each of its rows per tile, and
// every k or v component it reads from workgroup memory meets ROWS components of q or ROWS
// probabilities held in registers: ROWS FMAs per workgroup word. With ROWS 1 or 2 the row's partial
// dot products meet once per tile, through subgroup shuffles (SUBGROUP_EXCHANGE: the subgroups
// variant, where a row's threads are lanes of one subgroup) or through workgroup memory (one more
// barrier); every thread of a row then holds the row's scores and keeps its max and sum itself. With
// ROWS 4 they meet key by key through shuffles where the group's threads fit a subgroup, and the
// rows' max moves lazily (attend_keys_in_order). Without the shuffles, ROWS 4 stages scores instead
// (STAGED_SCORES, below): no partial dot products meet at all. Barriers per key tile: 2 (free the
// tiles and publish the key table; the tiles loaded), plus 1 for the exchange through workgroup
// memory or the staged scores, plus 1 in qkv_attention under L2_NORM (prepare_key_tile's
// normalisation) or, without it, 1 before the key table is refilled (the key table had one of its
// own everywhere until the rows masked padding keys by tile_keys).
// The host (ops::attention) takes ROWS 4 with shuffles where the group's threads fit a subgroup and
// are at least 4 (the entry points fill the token tables with a thread per row), else ROWS 2 with
// shuffles where those fit, else ROWS 4 with staged scores where its stages fit, else 1.
//
// Staged scores (ROWS 4 without SUBGROUP_EXCHANGE): a row's partial dot products would have to meet
// through workgroup memory, ROWS times the exchange of one row per thread, each thread of the group
// reading every share. Instead the rows' finished queries are staged once per block (q_stage), and
// each tile's scores are a small GEMM of the staged queries and keys: a thread computes 4 rows x 4
// keys over the whole head (stage_tile_scores: 8 vec4 reads for 64 FMAs, 2 FMAs per word, where
// one row per thread reads 1) into score_tile, and after one barrier the groups' threads read each
// key's four scores (one vec4, the same for all of a group's threads, so they take the same lazy-max
// steps) and weigh their share of the values as with shuffles (4 FMAs per word). q leaves the
// registers; the output stays. The stages make the block's workgroup memory large for its 128
// threads (at head_dim 64, 29 KiB: 6 waves per SIMD on RDNA3), so on GPUs the host gives it two
// key slices where the adapter allows 256 invocations: the same memory for twice the waves, each
// slice weighing half of every tile's keys with its own max, sum and output, merged through the
// stages at the end (merge_staged_key_slices).
//
// Flash-decoding inside the workgroup: a block of few query rows would leave most of a GPU's lanes
// idle and stream every key through one thread per row, so the workgroup holds KV_SPLIT copies of the
// row layout (THREADS = KV_SPLIT * BLOCK_Q / ROWS * ROW_THREADS), and copy s attends keys
// [s, s + 1) * BLOCK_KV / KV_SPLIT of every tile with its own running max, sum and output. The
// copies load each tile together and merge their states once, at the end, in log2(KV_SPLIT) steps
// through the tile memory (2 barriers each). The host chooses KV_SPLIT (ops::attention) so that a
// step's states fit the K tile, and splits only blocks of one row per thread (ROWS 1) this way;
// staged scores split into two slices of many rows (above).
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
//   fn release_prepared_key_table()   before the key table is refilled: a barrier where
//        prepare_key_tile reads the table with no barrier of its own after
//   fn key_needs_norm(token: u32) -> bool, fn stage_normalised_key(head: Head, j: u32, token: u32)
//        for the matrix-unit machinery (attention_coop.wgsl), which normalises keys as it stages them
// Components past HEAD_DIM must read as 0. Head, the token tables and attend_range are in
// attention_common.wgsl; TileInvocation, tile_thread and lanes_sum in attention_lanes_subgroup.wgsl
// or attention_lanes_workgroup.wgsl, by variant.

override HEAD_DIM: u32 = 64u;
override BLOCK_Q: u32 = 64u;
override BLOCK_KV: u32 = 16u;
override THREADS: u32 = 128u; // KV_SPLIT * BLOCK_Q / ROWS * ROW_THREADS
// Key slices per tile (a power of two dividing BLOCK_KV); 1 for blocks with enough rows, but 1 or 2
// with staged scores.
override KV_SPLIT: u32 = 1u;
// Query rows per thread: 1, 2 or 4 (2 with SUBGROUP_EXCHANGE only; 4 without it stages its scores),
// dividing BLOCK_Q.
override ROWS: u32 = 1u;
// A row's partial scores meet through subgroup shuffles (lanes_sum) instead of partial_scores: the
// subgroups variant only, with ROW_THREADS a power of two no wider than the narrowest subgroup.
override SUBGROUP_EXCHANGE: bool = false;
// Partial scores exchanged per tile through workgroup memory: BLOCK_Q * BLOCK_KV * ROW_THREADS when
// ROW_THREADS > 1 and SUBGROUP_EXCHANGE is off, else 1; with STAGED_SCORES, THREADS (the queries'
// norms only, row_totals).
override Q_TILE_VECS: u32 = 2048u;
// K and V tiles in vec4s: BLOCK_KV * ceil(HEAD_DIM / 4).
override KV_TILE_VECS: u32 = 256u;
// Staged scores only (ROWS 4 without SUBGROUP_EXCHANGE), else 1: the block's finished queries,
// BLOCK_Q * ceil(HEAD_DIM / 4) vec4s, and a tile's scores, one vec4 (four rows) per group of rows
// and key, BLOCK_Q / 4 * BLOCK_KV.
override Q_STAGE_VECS: u32 = 1u;
override SCORE_TILE_VECS: u32 = 1u;
// Four rows per thread whose scores are staged (see the top): ROWS 4 without SUBGROUP_EXCHANGE (the
// variant without shuffles, or a group too wide for the narrowest subgroup). Set by the host with
// them (AttentionTiles::staged_scores) rather than derived here, like every override.
override STAGED_SCORES: bool = false;

// Registers per thread: 8 vec4s (32 dimensions) of q and of the output, over its ROWS rows. (The
// defaults above are a launch of many rows at head_dim 64 with one row per thread, two threads per
// row, the layout before staged scores; the host sets every constant of a launch.)
const SLICE_VECS: u32 = 8u;

var<workgroup> k_tile: array<vec4<f32>, KV_TILE_VECS>;
var<workgroup> v_tile: array<vec4<f32>, KV_TILE_VECS>;
var<workgroup> partial_scores: array<f32, Q_TILE_VECS>;
var<workgroup> q_stage: array<vec4<f32>, Q_STAGE_VECS>;
var<workgroup> score_tile: array<vec4<f32>, SCORE_TILE_VECS>;


// prepare_key_tile normalises the keys that need it in the staged tile (this machinery stages keys
// as they arrive).
const STAGED_KEYS_NORMALISED: bool = false;

// Called by the entry point with its linear workgroup index, before begin_queries.
fn enter_tile(tile: TileInvocation, block: u32) {}

// The rows mask the padding keys by tile_keys, not the key table, so its last reads in a tile are the
// loads, before the tile's load barrier: the next tile's table waits for nothing more, unless the
// including module's prepare_key_tile reads the table after that barrier with no barrier of its own
// to follow (qkv_attention without L2_NORM), whose release_prepared_key_table then waits. With
// staged scores the barrier after the scores already follows those reads.
fn release_key_table() {
    if !STAGED_SCORES {
        release_prepared_key_table();
    }
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

// One thread's share of ROWS query rows: row r's q and output slices at [r * row_vecs(), (r + 1) *
// row_vecs()), and the rows' running max and sum in components r < ROWS.
struct RowState {
    q: array<vec4<f32>, SLICE_VECS>,
    o: array<vec4<f32>, SLICE_VECS>,
    max: vec4<f32>,
    sum: vec4<f32>,
}

// The vec4s of one row a thread holds.
fn row_vecs() -> u32 {
    return SLICE_VECS / ROWS;
}

fn row_threads() -> u32 {
    return THREADS * ROWS / (BLOCK_Q * KV_SPLIT);
}

// Threads of one key slice: one copy of the row layout.
fn slice_threads() -> u32 {
    return THREADS / KV_SPLIT;
}

// The thread's key slice, its first row in the block and the first vec4 of its share of a row.
fn key_slice(t: u32) -> u32 {
    return t / slice_threads();
}

fn first_row(t: u32) -> u32 {
    return (t % slice_threads()) / row_threads() * ROWS;
}

fn slice_start(t: u32) -> u32 {
    return (t % row_threads()) * row_vecs();
}

// A thread's scores of one tile: ROWS per key, key j's at [j * ROWS, (j + 1) * ROWS). Flat f32s,
// not a vec4 per key: where a loop over it stays rolled, RADV keeps an indexed array of up to 256
// bytes in registers and moves a larger one to scratch memory (a vec4 per key of a 32-key tile is
// 512 bytes). The host keeps ROWS * BLOCK_KV / KV_SPLIT <= ATTENTION_MAX_BLOCK_KV for ROWS 1 and 2;
// ROWS 4 holds no tile of scores (attend_keys_in_order).
alias Scores = array<f32, ATTENTION_MAX_BLOCK_KV>;

// Key j's scores, row r's in component r < ROWS.
fn get_scores(scores: ptr<function, Scores>, j: u32) -> vec4<f32> {
    var s = vec4<f32>(0.0);
    for (var r = 0u; r < ROWS; r++) {
        s[r] = (*scores)[j * ROWS + r];
    }
    return s;
}

fn set_scores(scores: ptr<function, Scores>, j: u32, s: vec4<f32>) {
    for (var r = 0u; r < ROWS; r++) {
        (*scores)[j * ROWS + r] = s[r];
    }
}

// The query tokens of the thread's rows (components r < ROWS).
fn row_tokens(t: u32) -> vec4<u32> {
    let row0 = first_row(t);
    var tokens = vec4<u32>(NO_TOKEN);
    for (var r = 0u; r < ROWS; r++) {
        tokens[r] = query_token[row0 + r];
    }
    return tokens;
}

fn total(v: vec4<f32>) -> f32 {
    return v.x + v.y + v.z + v.w;
}

// exp of components r < ROWS, for ROWS 1 or 2 (the tile path; the others are never read): no
// transcendental spent on absent rows.
fn exp_rows(x: vec4<f32>) -> vec4<f32> {
    if ROWS == 1u {
        return vec4<f32>(exp(x.x), 0.0, 0.0, 0.0);
    }
    return vec4<f32>(exp(x.xy), 0.0, 0.0);
}

// Per row (component r < ROWS), the sum over the row's threads of one value per thread; every
// thread of the row gets the same total. Uniform control flow; may use partial_scores, so not
// inside a tile.
fn row_totals(t: u32, value: vec4<f32>) -> vec4<f32> {
    let rt = row_threads();
    if rt == 1u {
        return value;
    }
    if SUBGROUP_EXCHANGE {
        return lanes_sum(value, rt);
    }
    var total = vec4<f32>(0.0);
    // The row's threads are rt consecutive ones in every key slice.
    let first = t - t % rt;
    for (var r = 0u; r < ROWS; r++) {
        workgroupBarrier();
        partial_scores[t] = value[r];
        workgroupBarrier();
        for (var s = 0u; s < rt; s++) {
            total[r] += partial_scores[first + s];
        }
    }
    return total;
}

// Once query_token is filled: the thread's query slices into registers, the softmax state reset.
fn begin_queries(head: Head, t: u32, state: ptr<function, RowState>) {
    workgroupBarrier();
    let hv = head_vecs();
    let rv = row_vecs();
    let first = slice_start(t);
    let tokens = row_tokens(t);
    var sum_sq = vec4<f32>(0.0);
    for (var i = 0u; i < SLICE_VECS; i++) {
        let c = first + i % rv;
        let token = tokens[i / rv];
        var x = vec4<f32>(0.0);
        if token != NO_TOKEN && c < hv {
            x = query_vec(head, token, c);
        }
        (*state).q[i] = x;
        (*state).o[i] = vec4<f32>(0.0);
        sum_sq[i / rv] += dot(x, x);
    }
    sum_sq = row_totals(t, sum_sq);
    // The scale goes into q once, not into every score.
    let scale = softmax_scale();
    for (var i = 0u; i < SLICE_VECS; i++) {
        (*state).q[i] = finish_query(head, (*state).q[i], sum_sq[i / rv]) * scale;
    }
    // Key slice 0 stages the block's queries (every slice holds the same rows).
    if STAGED_SCORES && key_slice(t) == 0u {
        // Read after attend_tile's first barrier. Padding rows stage 0s (or whatever finish_query
        // makes of them): their scores reach only their own components, never stored.
        let row0 = first_row(t);
        for (var i = 0u; i < SLICE_VECS; i++) {
            let c = first + i % rv;
            if c < hv {
                q_stage[(row0 + i / rv) * hv + c] = (*state).q[i];
            }
        }
    }
    (*state).max = vec4<f32>(NEG_BIG);
    (*state).sum = vec4<f32>(0.0);
}

// Once key_token is filled: one online-softmax step over this tile of keys.
fn attend_tile(head: Head, t: u32, state: ptr<function, RowState>) {
    // The tiles are free (the previous tile's reads are done) and the key table published.
    workgroupBarrier();
    // The count's last read was in the previous tile's softmax, before this barrier.
    count_tile_keys(t);
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

    if ROWS == 4u {
        if STAGED_SCORES {
            stage_tile_scores(t);
            workgroupBarrier();
        }
        attend_keys_in_order(t, state);
    } else {
        attend_keys_by_tile(t, state);
    }
}

// ROWS 1 or 2: a tile's scores first, then its max, then the weighted values. A thread holds its
// scores of the tile (ROWS per key), so ROWS * BLOCK_KV / KV_SPLIT <= ATTENTION_MAX_BLOCK_KV.
fn attend_keys_by_tile(t: u32, state: ptr<function, RowState>) {
    let hv = head_vecs();
    // Loops run to SLICE_VECS with a predicate, a constant trip count, so the slices stay in registers;
    // the rows past the first are written out (under ROWS, which the overrides make constant) so that
    // each k or v vec4 is read once for all of them.
    // The thread's keys are [k0, k0 + keys) of the tile; scores[] is indexed from k0 (see Scores).
    let first = slice_start(t);
    let rv = row_vecs();
    let keys = BLOCK_KV / KV_SPLIT;
    let k0 = key_slice(t) * keys;
    var scores: Scores;
    for (var j = 0u; j < keys; j++) {
        var acc0 = vec4<f32>(0.0);
        var acc1 = vec4<f32>(0.0);
        for (var c = 0u; c < rv; c++) {
            if first + c < hv {
                let k = k_tile[(k0 + j) * hv + first + c];
                acc0 += (*state).q[c] * k;
                if ROWS == 2u {
                    acc1 += (*state).q[rv + c] * k;
                }
            }
        }
        set_scores(&scores, j, vec4<f32>(total(acc0), total(acc1), 0.0, 0.0));
    }
    // The exchange is a loop of its own: RADV unrolls a loop only up to a size, and the score loop
    // with the shuffles inside outgrew it (its scores then went to scratch memory).
    let rt = row_threads();
    if rt > 1u {
        if SUBGROUP_EXCHANGE {
            for (var j = 0u; j < keys; j++) {
                set_scores(&scores, j, lanes_sum(get_scores(&scores, j), rt));
            }
        } else {
            // One slot per (row, key of the tile, share of the row): the key slices never collide.
            let row0 = first_row(t);
            for (var j = 0u; j < keys; j++) {
                for (var r = 0u; r < ROWS; r++) {
                    partial_scores[((row0 + r) * BLOCK_KV + k0 + j) * rt + t % rt] = scores[j * ROWS + r];
                }
            }
            workgroupBarrier();
            for (var j = 0u; j < keys; j++) {
                var total = vec4<f32>(0.0);
                for (var r = 0u; r < ROWS; r++) {
                    for (var s = 0u; s < rt; s++) {
                        total[r] += partial_scores[((row0 + r) * BLOCK_KV + k0 + j) * rt + s];
                    }
                }
                set_scores(&scores, j, total);
            }
        }
    }
    let valid_keys = tile_keys;
    var tile_max = vec4<f32>(NEG_BIG);
    for (var j = 0u; j < keys; j++) {
        if k0 + j < valid_keys {
            tile_max = max(tile_max, get_scores(&scores, j));
        }
    }
    let new_max = max((*state).max, tile_max);
    let rescale = exp_rows((*state).max - new_max);
    for (var i = 0u; i < SLICE_VECS; i++) {
        (*state).o[i] *= rescale[i / rv];
    }
    var tile_sum = vec4<f32>(0.0);
    for (var j = 0u; j < keys; j++) {
        // Padding keys weigh exactly 0 (v is 0 there too). A valid score is at most new_max; the
        // min keeps a padding score of a slice that has seen no key yet (new_max NEG_BIG) finite.
        let score = get_scores(&scores, j);
        let w = select(vec4<f32>(0.0), exp_rows(min(score - new_max, vec4<f32>(0.0))), k0 + j < valid_keys);
        tile_sum += w;
        for (var c = 0u; c < rv; c++) {
            if first + c < hv {
                let v = v_tile[(k0 + j) * hv + first + c];
                (*state).o[c] += w.x * v;
                if ROWS == 2u {
                    (*state).o[rv + c] += w.y * v;
                }
            }
        }
    }
    (*state).sum = (*state).sum * rescale + tile_sum;
    (*state).max = new_max;
}

// Staged scores: the tile's scores of every group of four rows, 4 keys x 4 rows per thread and
// step, from the staged queries and keys over the whole head: 8 vec4 reads for 64 FMAs. Key j's
// scores of group g land in score_tile[g * BLOCK_KV + j], row r's in component r (padding keys
// score 0 against their zero keys; the rows mask them by tile_keys).
fn stage_tile_scores(t: u32) {
    let blocks = BLOCK_Q / 4u * (BLOCK_KV / 4u);
    // A branch on the constants rather than the loop alone: where every block has a thread, the
    // compiler does not see that the loop runs at most once.
    if THREADS >= blocks {
        if t < blocks {
            stage_score_block(t);
        }
    } else {
        for (var b = t; b < blocks; b += THREADS) {
            stage_score_block(b);
        }
    }
}

// Block b of stage_tile_scores: four rows of group b / (BLOCK_KV / 4) against four keys.
fn stage_score_block(b: u32) {
    let hv = head_vecs();
    let quads = BLOCK_KV / 4u;
    let g = b / quads;
    let j0 = (b % quads) * 4u;
    let q0 = 4u * g * hv;
    let k0 = j0 * hv;
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var s3 = vec4<f32>(0.0);
    for (var c = 0u; c < hv; c++) {
        let r0 = q_stage[q0 + c];
        let r1 = q_stage[q0 + hv + c];
        let r2 = q_stage[q0 + 2u * hv + c];
        let r3 = q_stage[q0 + 3u * hv + c];
        let ka = k_tile[k0 + c];
        let kb = k_tile[k0 + hv + c];
        let kc = k_tile[k0 + 2u * hv + c];
        let kd = k_tile[k0 + 3u * hv + c];
        s0 += vec4<f32>(dot(r0, ka), dot(r1, ka), dot(r2, ka), dot(r3, ka));
        s1 += vec4<f32>(dot(r0, kb), dot(r1, kb), dot(r2, kb), dot(r3, kb));
        s2 += vec4<f32>(dot(r0, kc), dot(r1, kc), dot(r2, kc), dot(r3, kc));
        s3 += vec4<f32>(dot(r0, kd), dot(r1, kd), dot(r2, kd), dot(r3, kd));
    }
    let out = g * BLOCK_KV + j0;
    score_tile[out] = s0;
    score_tile[out + 1u] = s1;
    score_tile[out + 2u] = s2;
    score_tile[out + 3u] = s3;
}

// A score may pass its row's running max by this much before the row's output and sum are rescaled
// (attend_keys_in_order): weights stay below exp(8), about 3000, far from overflowing f32.
const RESCALE_MARGIN: f32 = 8.0;

// ROWS 4: keys one at a time, with no tile of scores held in registers. Four rows' scores of a
// key are 4 floats, where a tile's would be 4 * BLOCK_KV (16 keys: 64 VGPRs beside q and the output,
// which spilled); instead of a tile max, each row's max moves only where a score passes it by
// RESCALE_MARGIN, and then the row's output and sum are rescaled. A row's max is always one of its
// scores, so its largest weight is at least 1 and the sum never underflows; the output is
// sum_j exp(s_j - m) v_j / sum_j exp(s_j - m) for whatever m the row ends with, as exact as with the
// tile max. The row's threads hold bit-identical scores (lanes_sum, or the staged score_tile), so
// they take the same steps.
fn attend_keys_in_order(t: u32, state: ptr<function, RowState>) {
    let hv = head_vecs();
    let first = slice_start(t);
    let rv = row_vecs();
    let rt = row_threads();
    let valid_keys = tile_keys;
    // The thread's keys: [k0, k0 + keys) of the tile (all of them but with staged scores in key
    // slices).
    let keys = BLOCK_KV / KV_SPLIT;
    let k0 = key_slice(t) * keys;
    // A constant trip count (the shuffles need uniform control flow); padding keys weigh 0.
    let group_scores = first_row(t) / 4u * BLOCK_KV + k0;
    for (var j = 0u; j < keys; j++) {
        var score: vec4<f32>;
        if STAGED_SCORES {
            score = score_tile[group_scores + j];
        } else {
            var partial = vec4<f32>(0.0);
            for (var c = 0u; c < rv; c++) {
                if first + c < hv {
                    let k = k_tile[(k0 + j) * hv + first + c];
                    partial += vec4<f32>(
                        dot((*state).q[c], k),
                        dot((*state).q[rv + c], k),
                        dot((*state).q[2u * rv + c], k),
                        dot((*state).q[3u * rv + c], k),
                    );
                }
            }
            score = lanes_sum(partial, rt);
        }
        let valid = k0 + j < valid_keys;
        if valid && any(score > (*state).max + vec4<f32>(RESCALE_MARGIN)) {
            let new_max = max((*state).max, score);
            let rescale = exp((*state).max - new_max);
            for (var i = 0u; i < SLICE_VECS; i++) {
                (*state).o[i] *= rescale[i / rv];
            }
            (*state).sum *= rescale;
            (*state).max = new_max;
        }
        // A padding key's exp may overflow; select takes 0 for it, not a product with it.
        let w = select(vec4<f32>(0.0), exp(score - (*state).max), valid);
        (*state).sum += w;
        for (var c = 0u; c < rv; c++) {
            if first + c < hv {
                let v = v_tile[(k0 + j) * hv + first + c];
                (*state).o[c] += w.x * v;
                (*state).o[rv + c] += w.y * v;
                (*state).o[2u * rv + c] += w.z * v;
                (*state).o[3u * rv + c] += w.w * v;
            }
        }
    }
}

// The key slices' states merged into slice 0's: in each step the upper half of the remaining slices
// hands its output share and (max, sum) to the lower half through the tile memory (which the host
// sized for it: KV_SPLIT / 2 * THREADS / KV_SPLIT shares of min(SLICE_VECS, head_vecs) vec4s fit
// KV_TILE_VECS). Only blocks of one row per thread split their keys this way (ROWS 1: component x);
// staged scores merge through their stages (merge_staged_key_slices). Every
// thread calls it, in uniform control flow; empty slices hold max NEG_BIG and sum 0, and weigh
// exactly 0 once any slice has a key.
fn merge_key_slices(t: u32, state: ptr<function, RowState>) {
    // A branch rather than an early return, so that shader-stats' counts skip it where KV_SPLIT is 1.
    if KV_SPLIT > 1u {
        // Staged scores merge their own way (`if STAGED_SCORES && ..` would become control flow
        // naga leaves unfolded, and the counts would charge both merges to every variant).
        if STAGED_SCORES {
            merge_staged_key_slices(t, state);
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
                v_tile[slot] = vec4<f32>((*state).max.x, (*state).sum.x, 0.0, 0.0);
            }
            workgroupBarrier();
            if s < half {
                let slot = s * slice_threads() + local;
                let other = v_tile[slot];
                let new_max = max((*state).max.x, other.x);
                let mine = exp((*state).max.x - new_max);
                let theirs = exp(other.x - new_max);
                for (var i = 0u; i < SLICE_VECS; i++) {
                    if i < share {
                        (*state).o[i] = (*state).o[i] * mine + k_tile[slot * share + i] * theirs;
                    }
                }
                (*state).sum.x = (*state).sum.x * mine + other.y * theirs;
                (*state).max.x = new_max;
            }
        }
    }
}

// Staged scores in two key slices (the host splits them no further): slice 1 hands its rows'
// outputs to slice 0 through q_stage, where the rows' queries were (each component where it was
// staged, so the shares fit whatever the head dim), and each group's max and sum (the same in all of
// its threads) through score_tile. Both are free once the last tile's scores have been read, which
// the first barrier waits for. Every thread calls it, in uniform control flow.
fn merge_staged_key_slices(t: u32, state: ptr<function, RowState>) {
    let hv = head_vecs();
    let rv = row_vecs();
    let first = slice_start(t);
    let row0 = first_row(t);
    let s = key_slice(t);
    workgroupBarrier();
    if s == 1u {
        for (var i = 0u; i < SLICE_VECS; i++) {
            let c = first + i % rv;
            if c < hv {
                q_stage[(row0 + i / rv) * hv + c] = (*state).o[i];
            }
        }
        if first == 0u {
            score_tile[row0 / 2u] = (*state).max;
            score_tile[row0 / 2u + 1u] = (*state).sum;
        }
    }
    workgroupBarrier();
    if s == 0u {
        let other_max = score_tile[row0 / 2u];
        let other_sum = score_tile[row0 / 2u + 1u];
        let new_max = max((*state).max, other_max);
        let mine = exp((*state).max - new_max);
        let theirs = exp(other_max - new_max);
        for (var i = 0u; i < SLICE_VECS; i++) {
            let c = first + i % rv;
            if c < hv {
                let r = i / rv;
                (*state).o[i] = (*state).o[i] * mine[r] + q_stage[(row0 + r) * hv + c] * theirs[r];
            }
        }
        (*state).sum = (*state).sum * mine + other_sum * theirs;
        (*state).max = new_max;
    }
}

// Every thread calls it (the key slices merge first); slice 0 stores its rows.
fn finish_queries(head: Head, t: u32, state: ptr<function, RowState>) {
    merge_key_slices(t, state);
    if key_slice(t) != 0u {
        return;
    }
    let inv_sum = vec4<f32>(1.0) / (*state).sum;
    let hv = head_vecs();
    let rv = row_vecs();
    let first = slice_start(t);
    let tokens = row_tokens(t);
    for (var i = 0u; i < SLICE_VECS; i++) {
        let c = first + i % rv;
        let token = tokens[i / rv];
        if token != NO_TOKEN && c < hv {
            // This loop, with its stores, is not unrolled; reading o[i] here would index the output
            // dynamically, and the compiler would then keep all of it in scratch memory for the whole
            // kernel (RADV: 520 bytes per invocation). The inner loop is unrolled: constant indices.
            var slice = vec4<f32>(0.0);
            for (var j = 0u; j < SLICE_VECS; j++) {
                slice = select(slice, (*state).o[j], j == i);
            }
            let value = slice * inv_sum[i / rv];
            for (var x = 0u; x < 4u; x++) {
                let d = c * 4u + x;
                if d < HEAD_DIM {
                    store_out(head, token, d, value[x]);
                }
            }
        }
    }
}
