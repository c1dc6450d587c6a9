// Flash attention (dense) and GRAT grouped attention, one tile machinery for both.
//
// A workgroup owns BLOCK_Q query rows of one (batch, head) and streams BLOCK_KV keys at a time
// through workgroup memory with an online softmax, so no L x L matrix ever exists. The dense kernel
// streams keys [0, kv_len); the grouped kernel enumerates, from its query group's coordinates, the
// key groups its pattern attends (whole groups, no per-element mask), then the valid text tokens.
// Tokens are addressed in raster order through per-row token tables: the group-major permutation is
// fused into the loads and stores.
//
// Q, K, V, O are addressed with explicit (batch, head, token) strides and a contiguous head_dim, so
// (B, H, L, D) and (B, L, H, D) tensors both work without copies; K and V share strides.

override HEAD_DIM: u32 = 64u;
override BLOCK_Q: u32 = 16u;
override BLOCK_KV: u32 = 16u;
override THREADS: u32 = 256u; // BLOCK_Q * BLOCK_KV
// Tile sizes in vec4s: BLOCK_Q * ceil(HEAD_DIM / 4) and BLOCK_KV * ceil(HEAD_DIM / 4).
override Q_TILE_VECS: u32 = 256u;
override KV_TILE_VECS: u32 = 256u;
// Image tokens arrive group-major (each group's tokens contiguous, groups in raster order) instead of
// raster-major; text tokens stay after them either way.
override GROUP_MAJOR: bool = false;
// permute_tokens: raster -> group-major when true, group-major -> raster when false.
override TO_GROUP_MAJOR: bool = true;

// Each thread accumulates ceil(HEAD_DIM / 4 / BLOCK_KV) vec4s of its row's output.
const MAX_OUT_VECS: u32 = 16u;
const MAX_BLOCK_Q: u32 = 16u;
const MAX_BLOCK_KV: u32 = 32u;
const NO_TOKEN: u32 = 0xffffffffu;
// Finite "minus infinity": exp(NEG_BIG - m) is 0 and NEG_BIG - NEG_BIG is 0, never NaN.
const NEG_BIG: f32 = -3.0e38;

const PATTERN_BLOCK_SHIFTED: u32 = 0u;
const PATTERN_BLOCK_TRUNCATED: u32 = 1u;
const PATTERN_CRISS_CROSS: u32 = 2u;
const PATTERN_ALL: u32 = 3u;

struct AttentionParams {
    heads: u32,
    q_batch_stride: u32,
    q_head_stride: u32,
    q_token_stride: u32,
    kv_batch_stride: u32,
    kv_head_stride: u32,
    kv_token_stride: u32,
    o_batch_stride: u32,
    o_head_stride: u32,
    o_token_stride: u32,
    // Dense: queries [q_start, q_start + q_count) attend keys [0, kv_len).
    q_start: u32,
    q_count: u32,
    kv_len: u32,
    scale: f32,
    // Grouped: the token grid (t, h, w), the group shape, the number of groups per axis.
    grid_t: u32,
    grid_h: u32,
    grid_w: u32,
    group_t: u32,
    group_h: u32,
    group_w: u32,
    groups_t: u32,
    groups_h: u32,
    groups_w: u32,
    pattern: u32,
    radius: u32,
    // 2 for images (t is a dummy axis of size 1), 3 for video.
    axes: u32,
    // Text tokens start after the image tokens; the first text_valid of them may be attended.
    text_start: u32,
    text_valid: u32,
    blocks_per_group: u32,
}

@group(0) @binding(0) var<storage, read> q: array<store_t>;
@group(0) @binding(1) var<storage, read> k: array<store_t>;
@group(0) @binding(2) var<storage, read> v: array<store_t>;
@group(0) @binding(3) var<storage, read_write> o: array<store_t>;
@group(0) @binding(4) var<uniform> p: AttentionParams;

var<workgroup> q_tile: array<vec4<f32>, Q_TILE_VECS>;
var<workgroup> k_tile: array<vec4<f32>, KV_TILE_VECS>;
var<workgroup> v_tile: array<vec4<f32>, KV_TILE_VECS>;
var<workgroup> p_tile: array<f32, 512>; // MAX_BLOCK_Q * MAX_BLOCK_KV scores, then probabilities
var<workgroup> row_max: array<f32, MAX_BLOCK_Q>;
var<workgroup> row_sum: array<f32, MAX_BLOCK_Q>;
var<workgroup> row_rescale: array<f32, MAX_BLOCK_Q>;
var<workgroup> query_token: array<u32, MAX_BLOCK_Q>;
var<workgroup> key_token: array<u32, MAX_BLOCK_KV>;

fn head_vecs() -> u32 {
    return (HEAD_DIM + 3u) / 4u;
}

fn load_vec(src_is_q: bool, base: u32, c: u32) -> vec4<f32> {
    var out = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let d = c * 4u + i;
        if d < HEAD_DIM {
            if src_is_q {
                out[i] = f32(q[base + d]);
            } else {
                out[i] = f32(k[base + d]);
            }
        }
    }
    return out;
}

fn load_v_vec(base: u32, c: u32) -> vec4<f32> {
    var out = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let d = c * 4u + i;
        if d < HEAD_DIM {
            out[i] = f32(v[base + d]);
        }
    }
    return out;
}

struct Head {
    q_base: u32,
    kv_base: u32,
    o_base: u32,
}

fn head_of(bh: u32) -> Head {
    let b = bh / p.heads;
    let h = bh % p.heads;
    return Head(
        b * p.q_batch_stride + h * p.q_head_stride,
        b * p.kv_batch_stride + h * p.kv_head_stride,
        b * p.o_batch_stride + h * p.o_head_stride,
    );
}

// Once query_token is filled: load the scaled query rows, reset the softmax state.
fn begin_queries(head: Head, t: u32) {
    workgroupBarrier();
    let hv = head_vecs();
    for (var e = t; e < BLOCK_Q * hv; e += THREADS) {
        let r = e / hv;
        let token = query_token[r];
        var value = vec4<f32>(0.0);
        if token != NO_TOKEN {
            value = load_vec(true, head.q_base + token * p.q_token_stride, e % hv) * p.scale;
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
            let base = head.kv_base + token * p.kv_token_stride;
            kv = load_vec(false, base, e % hv);
            vv = load_v_vec(base, e % hv);
        }
        k_tile[e] = kv;
        v_tile[e] = vv;
    }
    workgroupBarrier();

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
    let base = head.o_base + token * p.o_token_stride;
    let hv = head_vecs();
    for (var i = 0u; i < MAX_OUT_VECS; i++) {
        let c = j + i * BLOCK_KV;
        if c < hv {
            let value = (*out)[i] * inv_sum;
            for (var x = 0u; x < 4u; x++) {
                let d = c * 4u + x;
                if d < HEAD_DIM {
                    o[base + d] = store_t(value[x]);
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

@compute @workgroup_size(THREADS)
fn flash_attention(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    lane: Lane,
) {
    let t = lane.index;
    let block = grid_workgroup(wg, groups);
    let first = block * BLOCK_Q;
    // Uniform per workgroup: whole surplus workgroups leave before any barrier.
    if first >= p.q_count {
        return;
    }
    let head = head_of(wg.z);
    if t < BLOCK_Q {
        query_token[t] = select(NO_TOKEN, p.q_start + first + t, first + t < p.q_count);
    }
    begin_queries(head, t);
    var out: array<vec4<f32>, MAX_OUT_VECS>;
    attend_range(head, t, lane, 0u, p.kv_len, &out);
    finish_queries(head, t, &out);
}

// ---- GRAT ----

struct Group {
    origin: vec3<u32>, // first token coordinate (t, h, w)
    extent: vec3<u32>, // tokens per axis; border groups of ragged grids are smaller
}

fn group_at(g: vec3<u32>) -> Group {
    let origin = g * vec3<u32>(p.group_t, p.group_h, p.group_w);
    let grid = vec3<u32>(p.grid_t, p.grid_h, p.grid_w);
    let extent = min(vec3<u32>(p.group_t, p.group_h, p.group_w), grid - origin);
    return Group(origin, extent);
}

fn group_size(group: Group) -> u32 {
    return group.extent.x * group.extent.y * group.extent.z;
}

// Where a group starts in the group-major order: every group before it along each axis is full-size.
fn group_major_start(group: Group) -> u32 {
    let o = group.origin;
    let e = group.extent;
    return o.x * p.grid_h * p.grid_w + e.x * o.y * p.grid_w + e.x * e.y * o.z;
}

// Token index of the i-th token of a group (group-local raster order).
fn group_token(group: Group, i: u32) -> u32 {
    if GROUP_MAJOR {
        return group_major_start(group) + i;
    }
    let plane = group.extent.y * group.extent.z;
    let lt = i / plane;
    let lh = (i % plane) / group.extent.z;
    let lw = i % group.extent.z;
    let c = group.origin + vec3<u32>(lt, lh, lw);
    return (c.x * p.grid_h + c.y) * p.grid_w + c.z;
}

// Attended groups along one axis for GRAT-B: [lo, hi).
fn block_axis(qc: u32, n: u32) -> vec2<u32> {
    let r = p.radius;
    if p.pattern == PATTERN_BLOCK_TRUNCATED {
        return vec2<u32>(select(0u, qc - r, qc >= r), min(qc + r + 1u, n));
    }
    // Shifted inward at the border, never shrunk (the whole axis when it has fewer than 2r+1 groups).
    if n <= 2u * r {
        return vec2<u32>(0u, n);
    }
    let c = clamp(qc, r, n - 1u - r);
    return vec2<u32>(c - r, c + r + 1u);
}

// x-th value of 0..n without `skip`.
fn skipping(x: u32, skip: u32) -> u32 {
    return x + select(0u, 1u, x >= skip);
}

fn attended_count(qg: vec3<u32>) -> u32 {
    let n = vec3<u32>(p.groups_t, p.groups_h, p.groups_w);
    switch p.pattern {
        case PATTERN_CRISS_CROSS: {
            if p.axes == 2u {
                return n.y + n.z - 1u;
            }
            return n.y * n.z + (n.x - 1u) * n.z + (n.x - 1u) * (n.y - 1u);
        }
        case PATTERN_ALL: {
            return n.x * n.y * n.z;
        }
        default: {
            let rt = block_axis(qg.x, n.x);
            let rh = block_axis(qg.y, n.y);
            let rw = block_axis(qg.z, n.z);
            return (rt.y - rt.x) * (rh.y - rh.x) * (rw.y - rw.x);
        }
    }
}

fn attended_group(qg: vec3<u32>, i: u32) -> vec3<u32> {
    let n = vec3<u32>(p.groups_t, p.groups_h, p.groups_w);
    switch p.pattern {
        case PATTERN_CRISS_CROSS: {
            if p.axes == 2u {
                // The group row, then the group column without the query's own group.
                if i < n.z {
                    return vec3<u32>(0u, qg.y, i);
                }
                return vec3<u32>(0u, skipping(i - n.z, qg.y), qg.z);
            }
            // Three planes: t = qt; then h = qh (t != qt); then w = qw (t != qt, h != qh).
            let plane = n.y * n.z;
            if i < plane {
                return vec3<u32>(qg.x, i / n.z, i % n.z);
            }
            let j = i - plane;
            if j < (n.x - 1u) * n.z {
                return vec3<u32>(skipping(j / n.z, qg.x), qg.y, j % n.z);
            }
            let l = j - (n.x - 1u) * n.z;
            return vec3<u32>(skipping(l / (n.y - 1u), qg.x), skipping(l % (n.y - 1u), qg.y), qg.z);
        }
        case PATTERN_ALL: {
            return vec3<u32>(i / (n.y * n.z), (i / n.z) % n.y, i % n.z);
        }
        default: {
            let rt = block_axis(qg.x, n.x);
            let rh = block_axis(qg.y, n.y);
            let rw = block_axis(qg.z, n.z);
            let sh = rh.y - rh.x;
            let sw = rw.y - rw.x;
            return vec3<u32>(rt.x + i / (sh * sw), rh.x + (i / sw) % sh, rw.x + i % sw);
        }
    }
}

// Image queries only (text queries attend everything valid: flash_attention serves them).
// Workgroup = (query group, block of BLOCK_Q of its tokens, batch * head).
@compute @workgroup_size(THREADS)
fn grouped_attention(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    lane: Lane,
) {
    let t = lane.index;
    let block = grid_workgroup(wg, groups);
    let g = block / p.blocks_per_group;
    let first = (block % p.blocks_per_group) * BLOCK_Q;
    if g >= p.groups_t * p.groups_h * p.groups_w {
        return;
    }
    let qg = vec3<u32>(g / (p.groups_h * p.groups_w), (g / p.groups_w) % p.groups_h, g % p.groups_w);
    let query_group = group_at(qg);
    let query_count = group_size(query_group);
    if first >= query_count {
        return;
    }
    let head = head_of(wg.z);
    if t < BLOCK_Q {
        query_token[t] = select(NO_TOKEN, group_token(query_group, first + t), first + t < query_count);
    }
    begin_queries(head, t);
    var out: array<vec4<f32>, MAX_OUT_VECS>;
    let attended = attended_count(qg);
    for (var i = 0u; i < attended; i++) {
        let key_group = group_at(attended_group(qg, i));
        let key_count = group_size(key_group);
        for (var k0 = 0u; k0 < key_count; k0 += BLOCK_KV) {
            workgroupBarrier();
            if t < BLOCK_KV {
                key_token[t] = select(NO_TOKEN, group_token(key_group, k0 + t), k0 + t < key_count);
            }
            attend_tile(head, t, lane, &out);
        }
    }
    attend_range(head, t, lane, p.text_start, p.text_valid, &out);
    finish_queries(head, t, &out);
}

// ---- The separate group-major permutation (the alternative to the fused addressing above) ----

// Group-major position of a raster image token.
fn group_major_index(raster: u32) -> u32 {
    let c = vec3<u32>(raster / (p.grid_h * p.grid_w), (raster / p.grid_w) % p.grid_h, raster % p.grid_w);
    let group = group_at(c / vec3<u32>(p.group_t, p.group_h, p.group_w));
    let l = c - group.origin;
    return group_major_start(group) + (l.x * group.extent.y + l.y) * group.extent.z + l.z;
}

// o = q with the image tokens of every (batch, head) moved from raster to group-major order or
// back (TO_GROUP_MAJOR). One thread per element; text tokens are copied in place. Here p.heads counts
// batch * heads, and the tensors are contiguous (B, H, L, D).
@compute @workgroup_size(THREADS_1D)
fn permute_tokens(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, lane: Lane) {
    let idx = grid_workgroup(wg, groups) * THREADS_1D + lane.index;
    let len = p.text_start + p.text_valid;
    if idx >= p.heads * len * HEAD_DIM {
        return;
    }
    let d = idx % HEAD_DIM;
    let token = (idx / HEAD_DIM) % len;
    let bh = idx / (HEAD_DIM * len);
    var moved = token;
    if token < p.text_start {
        moved = group_major_index(token);
    }
    let raster_side = bh * p.q_head_stride + token * p.q_token_stride + d;
    let grouped_side = bh * p.q_head_stride + moved * p.q_token_stride + d;
    if TO_GROUP_MAJOR {
        o[grouped_side] = q[raster_side];
    } else {
        o[raster_side] = q[grouped_side];
    }
}
