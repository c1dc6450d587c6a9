// The flash-attention machinery on 16 x 16 x 16 f16 matrix units (f32 accumulation), f16 storage
// only, under the same hooks as attention_tile.wgsl (query_vec, finish_query, softmax_scale, key_vec,
// value_vec, store_out, prepare_key_tile) and two of its own (key_needs_norm, stage_normalised_key:
// keys normalised as staged): attention.wgsl's dense and GRAT entries (the attention_coop family) and
// qkv_attention.wgsl's fused entry (the qkv_attention_coop family).
//
// A workgroup of THREADS = 4 BLOCK_Q invocations (256 or 128) owns BLOCK_Q query rows (64 or 32) of
// one (batch, head) and streams BLOCK_KV = 32 keys at a time, FlashAttention-2 style: an online
// softmax, no L x L matrix. Four threads per row rather than two: the stages are a workgroup's, so
// twice the waves share them (a 64-row block at head_dim 64 is 39.5 KiB over 4 wave64s, where 37.5
// KiB over 2 held RDNA3 to half the waves), and each thread's share of the softmax step halves.
// Head dimensions are padded with zeros to COOP_DIM (a multiple of 32). Per key tile, four barriers:
//   1. (barrier: the key table and the previous tile's product P V are published, the stages free)
//      the previous tile's product added to the output in registers; the K and V rows into f16
//      stages, keys that the including module normalises (qkv_attention's new keys) by one thread
//      a row, which restages its row normalised (barrier: loaded, and product_stage read);
//   2. S = Q K^T on the matrix units, (BLOCK_Q / 16) x (BLOCK_KV / 16) fragments of COOP_DIM / 16
//      products each, into product_stage (barrier);
//   3. each of a row's ROW_THREADS = THREADS / BLOCK_Q threads reads all the row's scores for the
//      row's new maximum (times the softmax scale, in f32: the f16 queries are staged as stored,
//      unscaled), then writes the weights exp(s - max) of its BLOCK_KV / ROW_THREADS keys into p_stage
//      as f16, rescales its output columns and its part of the row sum (barrier);
//   4. P V on the matrix units into product_stage, added to the output by the next tile's step 1 or
//      by finish_queries, after their barrier.
// The row's threads compute the same maximum from the same words in the same order, so they agree
// without an exchange, and keep their own parts of the row sum (rescaled alike) until
// finish_queries sums them: no exchange barriers, where there were two a tile. Deferring the
// product's addition to the next tile's first barrier saves the barrier that followed the product.
// The key table needs no barrier of its own (release_key_table): its last read in a tile is before
// the weights barrier, and the next tile's first barrier publishes the refilled table. The output
// stays in registers (each thread its row's columns part, part + ROW_THREADS, ...), so only its
// per-tile increment passes through workgroup memory, and the rescale by exp(old max - new max),
// which a matrix fragment cannot apply per row, is a multiply in registers. The weights are rounded
// to f16 for the product and summed as rounded, so the normalisation matches what was multiplied.
// Four is the least for fragments whose layout is opaque: the loaded stages, the stored scores, the
// stored weights and the stored product each need one before other invocations read them.
//
// The fragment work of steps 2 and 4 is shared out among the workgroup's subgroups (THREADS / lanes of
// them, 32 to 128 lanes wide: two to eight in a 64-row block, one to four in a 32-row one) in rounds
// of whole fragments; the host's tiles make both fragment counts multiples of the most subgroups the
// block may hold, so every subgroup runs the same number of rounds and every matrix operation is in
// uniform control flow. The fragment operations come from attention_coop_native.wgsl
// (wgpu's cooperative matrices) or attention_coop_emulated.wgsl (plain WGSL, for checking this
// kernel without matrix units), which define TileInvocation and enter_tile, and:
//   frag_zero() -> coop_acc_t
//   frag_query(offset, lane, lanes) -> coop_a_t     16 x 16 of q_stage, row-major, stride COOP_DIM
//   frag_weights(offset, lane, lanes) -> coop_a_t   16 x 16 of p_stage, row-major, stride weight_stride()
//   frag_keys(offset, lane, lanes) -> coop_b_t      16 (dims) x 16 (keys) of k_stage: K^T, read
//                                                   column-major with stride COOP_DIM
//   frag_values(offset, lane, lanes) -> coop_b_t    16 (keys) x 16 (dims) of v_stage, row-major
//   frag_mma(a, b, c, lane, lanes) -> coop_acc_t    a @ b + c
//   frag_store(c, offset, stride, lane, lanes)      into product_stage, row-major
//   tile_place() -> vec4<u32>                       (subgroup, subgroups, lane, lanes) of the invocation
// Head, the token tables and attend_range are in attention_common.wgsl.

override HEAD_DIM: u32 = 64u;
override BLOCK_Q: u32 = 64u;
override BLOCK_KV: u32 = 32u;
// HEAD_DIM rounded up to a multiple of 32.
override COOP_DIM: u32 = 64u;
// Stage sizes in elements: BLOCK_Q * COOP_DIM, BLOCK_KV * COOP_DIM, BLOCK_Q * weight_stride(), and
// BLOCK_Q * max(output_stride(), score_stride()) (scores, then the product P V, never both at once).
override COOP_Q_WORDS: u32 = 4096u;
override COOP_KV_WORDS: u32 = 2048u;
override COOP_P_WORDS: u32 = 2560u;
override COOP_PRODUCT_WORDS: u32 = 4352u;

// 4 * BLOCK_Q (ops::attention::CoopAttentionTiles::threads).
override THREADS: u32 = 256u;
// Output columns one thread keeps: BLOCK_Q * COOP_DIM / THREADS at most.
const OUT_SHARE: u32 = 32u;

var<workgroup> q_stage: array<f16, COOP_Q_WORDS>;
var<workgroup> k_stage: array<f16, COOP_KV_WORDS>;
var<workgroup> v_stage: array<f16, COOP_KV_WORDS>;
var<workgroup> p_stage: array<f16, COOP_P_WORDS>;
var<workgroup> product_stage: array<f32, COOP_PRODUCT_WORDS>;
var<workgroup> row_part_sum: array<f32, THREADS>;
var<workgroup> coop_subgroups: u32;

// The entry points' thread index: the local invocation index (the fragment operations place the
// subgroups themselves, in enter_tile).
fn tile_thread(tile: TileInvocation) -> u32 {
    return tile.index;
}

// The machinery normalises the keys that need it as it stages them (attend_tile), so
// prepare_key_tile does not.
const STAGED_KEYS_NORMALISED: bool = true;

// Every read of the key table in a tile comes before the tile's weights barrier, so the next tile's
// table needs no barrier of its own (attend_tile's first one publishes it).
fn release_key_table() {}

// Components [4c, 4c + 4) of the tile's key (value) j as staged (f16), for prepare_key_tile and
// stage_normalised_key.
fn staged_key(j: u32, c: u32) -> vec4<f32> {
    let e = j * COOP_DIM + c * 4u;
    return vec4<f32>(f32(k_stage[e]), f32(k_stage[e + 1u]), f32(k_stage[e + 2u]), f32(k_stage[e + 3u]));
}

fn restage_key(j: u32, c: u32, x: vec4<f32>) {
    let e = j * COOP_DIM + c * 4u;
    for (var i = 0u; i < 4u; i++) {
        k_stage[e + i] = f16(x[i]);
    }
}

fn staged_value(j: u32, c: u32) -> vec4<f32> {
    let e = j * COOP_DIM + c * 4u;
    return vec4<f32>(f32(v_stage[e]), f32(v_stage[e + 1u]), f32(v_stage[e + 2u]), f32(v_stage[e + 3u]));
}

// One thread's share of a query row: its output columns, the row's running max (the row's threads
// hold the same), its part of the row's running sum (over its own keys), the thread's subgroup
// place (subgroup, subgroups, lane, lanes), and whether a tile's product P V waits in product_stage.
struct RowState {
    o: array<f32, OUT_SHARE>,
    max: f32,
    sum: f32,
    place: vec4<u32>,
    pending: bool,
}

fn row_threads() -> u32 {
    return THREADS / BLOCK_Q;
}

// The thread's row of the block, and its part of the row (its columns and keys are part + k
// row_threads()).
fn row_of(t: u32) -> u32 {
    return t / row_threads();
}

fn part_of(t: u32) -> u32 {
    return t % row_threads();
}

// Row strides of the stages the rows' threads read across: the scores and the product P V (f32,
// product_stage) and the weights (f16, p_stage). Unpadded, the f32 rows are multiples of 32 words
// apart, the bank count of AMD's and NVIDIA's workgroup memory, so the same column of every row is in
// one bank: a wave64's 16 rows x 4 parts read 4 of the 32 banks (16-way conflicts) on every score and
// output read of the softmax step and its output update; the f16 rows, 16 words, put a wave64's
// weight stores on 4 banks. COOP_PAD_F32 words (COOP_PAD_F16 halves) more per row, the least the
// matrix loads and stores allow (16 bytes), move each f32 row 4 banks on, so 8 consecutive rows cover
// all 32 (no conflicts in a 32-lane subgroup; two lanes a bank in a wave64, which the LDS serves in
// two passes anyway), and each f16 row 20 banks on, so 8 rows' stores (two lanes a word) fall in 16
// banks, one word each.
fn score_stride() -> u32 {
    return BLOCK_KV + COOP_PAD_F32;
}

fn output_stride() -> u32 {
    return COOP_DIM + COOP_PAD_F32;
}

fn weight_stride() -> u32 {
    return BLOCK_KV + COOP_PAD_F16;
}

fn out_columns() -> u32 {
    return COOP_DIM / row_threads();
}

// Once query_token is filled: the block's queries, as attended, into q_stage (zeros past HEAD_DIM and
// for padding rows), the softmax state reset, the subgroup place read.
fn begin_queries(head: Head, t: u32, state: ptr<function, RowState>) {
    workgroupBarrier();
    let hv = head_vecs();
    let rt = row_threads();
    let r = row_of(t);
    let part = part_of(t);
    let token = query_token[r];
    var sum_sq = 0.0;
    if token != NO_TOKEN {
        for (var c = part; c < hv; c += rt) {
            let x = query_vec(head, token, c);
            sum_sq += dot(x, x);
        }
    }
    row_part_sum[t] = sum_sq;
    workgroupBarrier();
    var total = 0.0;
    for (var s = 0u; s < rt; s++) {
        total += row_part_sum[r * rt + s];
    }
    for (var c = part; c < COOP_DIM / 4u; c += rt) {
        var x = vec4<f32>(0.0);
        if token != NO_TOKEN && c < hv {
            x = finish_query(head, query_vec(head, token, c), total);
        }
        for (var i = 0u; i < 4u; i++) {
            q_stage[r * COOP_DIM + c * 4u + i] = f16(x[i]);
        }
    }
    for (var i = 0u; i < OUT_SHARE; i++) {
        (*state).o[i] = 0.0;
    }
    (*state).max = NEG_BIG;
    (*state).sum = 0.0;
    (*state).pending = false;
    // Through workgroup memory so that the round counts are uniform in the analysis (the matrix
    // operations need it); the barrier also publishes q_stage and frees row_part_sum.
    let place = tile_place();
    if t == 0u {
        coop_subgroups = place.y;
    }
    (*state).place = vec4<u32>(place.x, workgroupUniformLoad(&coop_subgroups), place.z, place.w);
}

// Once key_token is filled: one online-softmax step over this tile of keys. The previous tile's
// product P V is added to the output here, after the first barrier (see the header).
fn attend_tile(head: Head, t: u32, state: ptr<function, RowState>) {
    // Publishes the key table and the previous tile's product; the stages are free (the previous
    // tile's last reads of k_stage and v_stage were before its weights barrier and its end).
    workgroupBarrier();
    let rt = row_threads();
    let r = row_of(t);
    let part = part_of(t);
    let columns = out_columns();
    if (*state).pending {
        add_product(state, r, part);
    }
    (*state).pending = true;
    // The tile's valid keys (attention_common.wgsl), read in step 3; the count's last read was
    // before the previous tile's weights barrier.
    count_tile_keys(t);
    let hv = head_vecs();
    let dim_vecs = COOP_DIM / 4u;
    for (var e = t; e < BLOCK_KV * dim_vecs; e += THREADS) {
        let token = key_token[e / dim_vecs];
        let c = e % dim_vecs;
        // A key to normalise is staged by stage_normalised_key below, not here.
        let by_row = token != NO_TOKEN && key_needs_norm(token);
        var kv = vec4<f32>(0.0);
        var vv = vec4<f32>(0.0);
        if token != NO_TOKEN && c < hv {
            if !by_row {
                kv = key_vec(head, token, c);
            }
            vv = value_vec(head, token, c);
        }
        for (var i = 0u; i < 4u; i++) {
            if !(by_row && c < hv) {
                k_stage[e * 4u + i] = f16(kv[i]);
            }
            v_stage[e * 4u + i] = f16(vv[i]);
        }
    }
    // Keys the including module normalises (qkv_attention's new keys under L2_NORM): one thread per
    // key row stages the row and restages it normalised. It reads back only its own writes, so this
    // needs no barrier of its own (it cost one a tile in prepare_key_tile).
    if t < BLOCK_KV {
        let token = key_token[t];
        if token != NO_TOKEN && key_needs_norm(token) {
            stage_normalised_key(head, t, token);
        }
    }
    // The stages are loaded, and every read of the previous product is done.
    workgroupBarrier();
    prepare_key_tile(head, t);

    let group = (*state).place.x;
    let groups = (*state).place.y;
    let lane = (*state).place.z;
    let lanes = (*state).place.w;
    let key_blocks = BLOCK_KV / 16u;
    let dim_blocks = COOP_DIM / 16u;

    // 2. Scores: fragment f is rows (f / key_blocks) * 16, keys (f % key_blocks) * 16.
    let score_rounds = (BLOCK_Q / 16u) * key_blocks / groups;
    for (var round = 0u; round < score_rounds; round++) {
        let f = group + round * groups;
        let rows = (f / key_blocks) * 16u;
        let keys = (f % key_blocks) * 16u;
        var acc = frag_zero();
        for (var d = 0u; d < dim_blocks; d++) {
            let a = frag_query(rows * COOP_DIM + d * 16u, lane, lanes);
            let b = frag_keys(keys * COOP_DIM + d * 16u, lane, lanes);
            acc = frag_mma(a, b, acc, lane, lanes);
        }
        frag_store(acc, rows * score_stride() + keys, score_stride(), lane, lanes);
    }
    workgroupBarrier();

    // 3. The row's softmax step. Every thread of the row takes the row's maximum over all the tile's
    // scores (the same reads in the same order, so the row's threads agree bit for bit: no exchange,
    // no barrier; the row's threads read the same words, which the LDS broadcasts), then the weights
    // of its own keys, part, part + rt, ... of the tile, and its own part of the row sum.
    // The scale multiplies the f32 scores, not the f16 queries, which it could overflow.
    let scale = softmax_scale();
    let valid_keys = tile_keys;
    // Every score is read and the padding ones are selected away, not branched around: the loads
    // then issue together instead of one wait each.
    var new_max = (*state).max;
    for (var j = 0u; j < BLOCK_KV; j++) {
        let s = scale * product_stage[r * score_stride() + j];
        new_max = max(new_max, select(NEG_BIG, s, j < valid_keys));
    }
    let rescale = exp((*state).max - new_max);
    var tile_sum = 0.0;
    for (var j = part; j < BLOCK_KV; j += rt) {
        // Padding keys weigh exactly 0 (their v is 0 too); a valid score is at most new_max.
        let s = scale * product_stage[r * score_stride() + j];
        let w = f16(select(0.0, exp(min(s - new_max, 0.0)), j < valid_keys));
        p_stage[r * weight_stride() + j] = w;
        tile_sum += f32(w);
    }
    // Only the columns the thread holds (a constant once the overrides are): a 64-row block at
    // head_dim 64 holds 16 of the 32.
    for (var i = 0u; i < OUT_SHARE; i++) {
        if i < columns {
            (*state).o[i] *= rescale;
        }
    }
    (*state).max = new_max;
    (*state).sum = (*state).sum * rescale + tile_sum;
    // The weights are staged; the key table's last reads were in step 1 and prepare_key_tile, so the
    // caller may refill it.
    workgroupBarrier();

    // 4. P V: fragment f is rows (f / dim_blocks) * 16, dimensions (f % dim_blocks) * 16.
    let value_rounds = (BLOCK_Q / 16u) * dim_blocks / groups;
    for (var round = 0u; round < value_rounds; round++) {
        let f = group + round * groups;
        let rows = (f / dim_blocks) * 16u;
        let dims = (f % dim_blocks) * 16u;
        var acc = frag_zero();
        for (var k = 0u; k < key_blocks; k++) {
            let a = frag_weights(rows * weight_stride() + k * 16u, lane, lanes);
            let b = frag_values(k * 16u * COOP_DIM + dims, lane, lanes);
            acc = frag_mma(a, b, acc, lane, lanes);
        }
        frag_store(acc, rows * output_stride() + dims, output_stride(), lane, lanes);
    }
}

// The product P V of the last tile, from product_stage, added to the thread's output columns.
fn add_product(state: ptr<function, RowState>, r: u32, part: u32) {
    let rt = row_threads();
    let columns = out_columns();
    // Constant trip count with a predicate, so the output stays in registers.
    for (var i = 0u; i < OUT_SHARE; i++) {
        if i < columns {
            (*state).o[i] += product_stage[r * output_stride() + part + i * rt];
        }
    }
}

// Every thread calls it (its barrier is the workgroup's); the row's threads add the last tile's
// product, sum their parts of the row sum, and store their columns.
fn finish_queries(head: Head, t: u32, state: ptr<function, RowState>) {
    let rt = row_threads();
    let r = row_of(t);
    let part = part_of(t);
    row_part_sum[t] = (*state).sum;
    // Publishes the last product and the parts of the sums (row_part_sum's last reads, in
    // begin_queries, were before its uniform load's barrier).
    workgroupBarrier();
    if (*state).pending {
        add_product(state, r, part);
    }
    let token = query_token[r];
    if token == NO_TOKEN {
        return;
    }
    var row_sum = 0.0;
    for (var s = 0u; s < rt; s++) {
        row_sum += row_part_sum[r * rt + s];
    }
    let inv_sum = 1.0 / row_sum;
    for (var i = 0u; i < OUT_SHARE; i++) {
        let d = part + i * rt;
        if d < HEAD_DIM {
            store_out(head, token, d, (*state).o[i] * inv_sum);
        }
    }
}
