// Flash attention (dense) and GRAT grouped attention, on a tile machinery: attention_tile.wgsl (scalar
// cores, the attention family) or attention_coop.wgsl (16 x 16 f16 matrix units, attention_coop).
// The machinery defines the entry points' TileInvocation (the invocation's builtins it needs) and
// enter_tile, and the block sizes BLOCK_Q, BLOCK_KV and THREADS.
//
// The dense kernel streams keys [0, kv_len); the grouped kernel enumerates, from its query group's
// coordinates, the key groups its pattern attends (whole groups, no per-element mask), then the
// valid text tokens. Tokens are addressed in raster order through per-row token tables: the
// group-major permutation is fused into the loads and stores.
//
// Q, K, V, O are addressed with explicit (batch, head, token) strides and a contiguous head_dim, so
// (B, H, L, D) and (B, L, H, D) tensors both work without copies; K and V share strides.

// Image tokens arrive group-major (each group's tokens contiguous, groups in raster order) instead of
// raster-major; text tokens stay after them either way.
override GROUP_MAJOR: bool = false;
// permute_tokens: raster -> group-major when true, group-major -> raster when false.
override TO_GROUP_MAJOR: bool = true;

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

fn head_of(bh: u32) -> Head {
    let b = bh / p.heads;
    let h = bh % p.heads;
    return Head(
        b * p.q_batch_stride + h * p.q_head_stride,
        b * p.kv_batch_stride + h * p.kv_head_stride,
        b * p.o_batch_stride + h * p.o_head_stride,
        b,
        h,
    );
}

// The machinery's hooks (attention_tile.wgsl): rows at explicit strides, queries as stored.
fn query_vec(head: Head, token: u32, c: u32) -> vec4<f32> {
    return load_vec(true, head.q_base + token * p.q_token_stride, c);
}

fn finish_query(head: Head, x: vec4<f32>, sum_sq: f32) -> vec4<f32> {
    return x;
}

fn softmax_scale() -> f32 {
    return p.scale;
}

fn key_vec(head: Head, token: u32, c: u32) -> vec4<f32> {
    return load_vec(false, head.kv_base + token * p.kv_token_stride, c);
}

fn value_vec(head: Head, token: u32, c: u32) -> vec4<f32> {
    return load_v_vec(head.kv_base + token * p.kv_token_stride, c);
}

fn store_out(head: Head, token: u32, d: u32, value: f32) {
    o[head.o_base + token * p.o_token_stride + d] = store_t(value);
}

fn prepare_key_tile(head: Head, t: u32) {}

// prepare_key_tile does not read the key table: the next tile's table waits for nothing.
fn release_prepared_key_table() {}

// Keys are attended as stored: none is normalised as staged.
fn key_needs_norm(token: u32) -> bool {
    return false;
}

fn stage_normalised_key(head: Head, j: u32, token: u32) {}

@compute @workgroup_size(THREADS)
fn flash_attention(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    tile: TileInvocation,
) {
    let t = tile_thread(tile);
    let block = grid_workgroup(wg, groups);
    enter_tile(tile, block);
    let first = block * BLOCK_Q;
    // Uniform per workgroup: whole surplus workgroups leave before any barrier.
    if first >= p.q_count {
        return;
    }
    attend_rows(head_of(wg.z), t, first, p.q_count, p.q_start, p.kv_len);
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
    tile: TileInvocation,
) {
    let t = tile_thread(tile);
    let block = grid_workgroup(wg, groups);
    enter_tile(tile, block);
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
    var state: RowState;
    begin_queries(head, t, &state);
    let attended = attended_count(qg);
    for (var i = 0u; i < attended; i++) {
        let key_group = group_at(attended_group(qg, i));
        let key_count = group_size(key_group);
        for (var k0 = 0u; k0 < key_count; k0 += BLOCK_KV) {
            release_key_table();
            // A block of few rows can have fewer threads than keys.
            for (var j = t; j < BLOCK_KV; j += THREADS) {
                key_token[j] = select(NO_TOKEN, group_token(key_group, k0 + j), k0 + j < key_count);
            }
            attend_tile(head, t, &state);
        }
    }
    attend_range(head, t, p.text_start, p.text_valid, &state);
    finish_queries(head, t, &state);
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
fn permute_tokens(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let idx = grid_workgroup(wg, groups) * THREADS_1D + t;
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
