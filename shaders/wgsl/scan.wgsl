// Selective scan (Mamba-1) and, through the same recurrence, SSD (Mamba-2):
//   delta' = softplus(delta + delta_bias)                    (when DELTA_SOFTPLUS)
//   h_i    = exp(delta'_i * A) * h_{i-1} + delta'_i * B_i * u_i    (h: N states per channel, f32)
//   y_i    = sum_n C_i[n] h_i[n] + D * u_i,  times silu(z_i)  (when HAS_Z)
// SSD is this with A one scalar per head and delta, D and delta_bias per head: channel d belongs to
// head d / CHANNELS_PER_HEAD (1 for Mamba-1, headdim P for SSD).
//
// Parallelism: the sequence is split into chunks. scan_chunk_totals reduces each chunk to the pair
// (prod a, b) of the associative operator (a1, b1) o (a0, b0) = (a1 a0, a1 b0 + b1), multiplying
// pairs rather than exponentiating long sums (which overflows); scan_carry.wgsl carries the true
// initial state across chunks serially; scan_chunk_outputs recomputes each chunk from it. With one
// chunk the last pass alone is the whole scan. No workgroup ever waits on another.
//
// A thread owns one channel of one (batch, chunk); a workgroup owns SCAN_WG channels of one group, so
// they share B and C, which are staged through workgroup memory STAGE_STEPS steps at a time.
// Steps are taken in processing order i; the time index is t = i, or L - 1 - i when REVERSE.

override N_STATE: u32 = 16u;
override CHANNELS_PER_HEAD: u32 = 1u;
override A_PER_HEAD: bool = false;
override HAS_Z: bool = false;
override HAS_D_SKIP: bool = false;
override HAS_DELTA_BIAS: bool = false;
override DELTA_SOFTPLUS: bool = false;
override HAS_INITIAL_STATE: bool = false;
override REVERSE: bool = false;

const STAGE_STEPS: u32 = 16u;

struct ScanParams {
    batch: u32,
    channels: u32,
    length: u32,
    groups: u32,
    chunk_len: u32,
    chunks: u32,
    // Element strides (batch, channel, time) of u, z and y; of delta (channel = head for SSD);
    // (batch, group, state, time) of B and C.
    x_batch: u32,
    x_channel: u32,
    x_time: u32,
    dt_batch: u32,
    dt_channel: u32,
    dt_time: u32,
    bc_batch: u32,
    bc_group: u32,
    bc_state: u32,
    bc_time: u32,
}

@group(0) @binding(0) var<storage, read> u: array<store_t>;
@group(0) @binding(1) var<storage, read> delta: array<store_t>;
@group(0) @binding(2) var<storage, read> z: array<store_t>;
@group(0) @binding(3) var<storage, read> a_log: array<f32>; // A itself (already negative), f32
@group(0) @binding(4) var<storage, read> b_in: array<store_t>;
@group(0) @binding(5) var<storage, read> c_in: array<store_t>;
@group(0) @binding(6) var<storage, read> d_skip: array<f32>;
@group(0) @binding(7) var<storage, read> delta_bias: array<f32>;
// (batch, channel, chunk, N): the initial state of every chunk (h0 when there is one chunk).
@group(0) @binding(8) var<storage, read> state_in: array<f32>;
@group(0) @binding(9) var<storage, read_write> y: array<store_t>;
// scan_chunk_totals: (batch, channel, chunk, 2N) pairs; scan_chunk_outputs with one chunk: hL.
@group(0) @binding(10) var<storage, read_write> state_out: array<f32>;
@group(0) @binding(11) var<uniform> p: ScanParams;

var<workgroup> b_stage: array<f32, STAGE_STEPS * MAX_STATE>;
var<workgroup> c_stage: array<f32, STAGE_STEPS * MAX_STATE>;

struct Channel {
    batch: u32,
    channel: u32,
    chunk: u32,
    group: u32,
    live: bool,
}

// Workgroup (x: channel block within the group, y: group * chunks + chunk, z: batch).
fn channel_of(wg: vec3<u32>, index: u32) -> Channel {
    let per_group = p.channels / p.groups;
    let group = wg.y / p.chunks;
    let chunk = wg.y % p.chunks;
    let local = wg.x * SCAN_WG + index;
    return Channel(wg.z, group * per_group + local, chunk, group, local < per_group);
}

fn time_at(i: u32) -> u32 {
    return step_time(i, p.length, REVERSE);
}

fn head_param(channel: u32) -> u32 {
    return channel / CHANNELS_PER_HEAD;
}

fn a_value(channel: u32, n: u32) -> f32 {
    if A_PER_HEAD {
        return a_log[head_param(channel)];
    }
    return a_log[channel * N_STATE + n];
}

// SSD: one decay per step serves every state (A is a scalar per head); Mamba-1 needs one per state.
fn step_head_decay(channel: u32, dt: f32) -> f32 {
    if A_PER_HEAD {
        return exp(dt * a_value(channel, 0u));
    }
    return 1.0;
}

fn step_decay(channel: u32, dt: f32, n: u32, head_decay: f32) -> f32 {
    if A_PER_HEAD {
        return head_decay;
    }
    return exp(dt * a_value(channel, n));
}

fn step_delta(ch: Channel, t: u32) -> f32 {
    var d = f32(delta[ch.batch * p.dt_batch + head_param(ch.channel) * p.dt_channel + t * p.dt_time]);
    if HAS_DELTA_BIAS {
        d += delta_bias[head_param(ch.channel)];
    }
    if DELTA_SOFTPLUS {
        d = softplus(d);
    }
    return d;
}

// Loads B (and C) for processing steps [i0, i0 + count) of this workgroup's group.
fn stage(ch: Channel, i0: u32, count: u32, index: u32, with_c: bool) {
    workgroupBarrier();
    for (var e = index; e < STAGE_STEPS * N_STATE; e += SCAN_WG) {
        let s = e / N_STATE;
        let n = e % N_STATE;
        var bv = 0.0;
        var cv = 0.0;
        if s < count {
            let at = ch.batch * p.bc_batch + ch.group * p.bc_group + n * p.bc_state + time_at(i0 + s) * p.bc_time;
            bv = f32(b_in[at]);
            if with_c {
                cv = f32(c_in[at]);
            }
        }
        b_stage[e] = bv;
        c_stage[e] = cv;
    }
    workgroupBarrier();
}

fn chunk_bounds(ch: Channel) -> vec2<u32> {
    let start = ch.chunk * p.chunk_len;
    return vec2<u32>(start, min(start + p.chunk_len, p.length));
}

fn state_index(ch: Channel, n: u32) -> u32 {
    return ((ch.batch * p.channels + ch.channel) * p.chunks + ch.chunk) * N_STATE + n;
}

@compute @workgroup_size(SCAN_WG)
fn scan_chunk_totals(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) index: u32) {
    let ch = channel_of(wg, index);
    let bounds = chunk_bounds(ch);
    var decay: array<f32, MAX_STATE>;
    var acc: array<f32, MAX_STATE>;
    for (var n = 0u; n < N_STATE; n++) {
        decay[n] = 1.0;
    }
    for (var i0 = bounds.x; i0 < bounds.y; i0 += STAGE_STEPS) {
        let count = min(STAGE_STEPS, bounds.y - i0);
        stage(ch, i0, count, index, false);
        if ch.live {
            for (var s = 0u; s < count; s++) {
                let t = time_at(i0 + s);
                let dt = step_delta(ch, t);
                let du = dt * f32(u[ch.batch * p.x_batch + ch.channel * p.x_channel + t * p.x_time]);
                let head_decay = step_head_decay(ch.channel, dt);
                for (var n = 0u; n < N_STATE; n++) {
                    let a = step_decay(ch.channel, dt, n, head_decay);
                    decay[n] *= a;
                    acc[n] = a * acc[n] + du * b_stage[s * N_STATE + n];
                }
            }
        }
    }
    if ch.live {
        let base = state_index(ch, 0u) * 2u;
        for (var n = 0u; n < N_STATE; n++) {
            state_out[base + n] = decay[n];
            state_out[base + N_STATE + n] = acc[n];
        }
    }
}

@compute @workgroup_size(SCAN_WG)
fn scan_chunk_outputs(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) index: u32) {
    let ch = channel_of(wg, index);
    let bounds = chunk_bounds(ch);
    var h: array<f32, MAX_STATE>;
    if ch.live && (HAS_INITIAL_STATE || p.chunks > 1u) {
        for (var n = 0u; n < N_STATE; n++) {
            h[n] = state_in[state_index(ch, n)];
        }
    }
    var skip = 0.0;
    if HAS_D_SKIP && ch.live {
        skip = d_skip[head_param(ch.channel)];
    }
    for (var i0 = bounds.x; i0 < bounds.y; i0 += STAGE_STEPS) {
        let count = min(STAGE_STEPS, bounds.y - i0);
        stage(ch, i0, count, index, true);
        if ch.live {
            for (var s = 0u; s < count; s++) {
                let t = time_at(i0 + s);
                let dt = step_delta(ch, t);
                let x_at = ch.batch * p.x_batch + ch.channel * p.x_channel + t * p.x_time;
                let x = f32(u[x_at]);
                let du = dt * x;
                var out = 0.0;
                let head_decay = step_head_decay(ch.channel, dt);
                for (var n = 0u; n < N_STATE; n++) {
                    let a = step_decay(ch.channel, dt, n, head_decay);
                    h[n] = a * h[n] + du * b_stage[s * N_STATE + n];
                    out += c_stage[s * N_STATE + n] * h[n];
                }
                out += skip * x;
                if HAS_Z {
                    let g = f32(z[x_at]);
                    out *= g / (1.0 + exp(-g));
                }
                y[x_at] = store_t(out);
            }
        }
    }
    // With one chunk this pass saw the whole sequence: its state is the final state.
    if ch.live && p.chunks == 1u {
        let base = (ch.batch * p.channels + ch.channel) * N_STATE;
        for (var n = 0u; n < N_STATE; n++) {
            state_out[base + n] = h[n];
        }
    }
}
