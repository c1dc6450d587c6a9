// The VAR next-scale sampler step (spec VAR.md section 2 c-e): CFG combine, top-k, top-p and a
// multinomial draw, one workgroup of REDUCE_WG threads per token row, everything in f32.
//
// Values are compared through `order_key`, a u32 whose unsigned order is the float order (-0 folded
// onto +0), so thresholds are found by bisection on keys with workgroup reductions instead of a sort:
// - top-k: the largest key K with count(key >= K) >= k is the k-th largest value; keep key >= K.
// - top-p: with weights w = exp(v - max) of the top-k survivors and tail = (1 - top_p) * sum(w), the
//   ascending (value, index) order removes a prefix. `cut` is the smallest key whose mass of
//   survivors with key <= cut exceeds tail: everything below it goes, and of the elements equal to
//   `cut` the `removed` lowest indices go, removed = min(floor((tail - mass below) / w_cut), ties - 1).
// - draw: inverse CDF over index order. Each thread sums a contiguous chunk, thread 0 scans the 256
//   partial sums serially (an order independent of subgroups), and the thread whose chunk crosses
//   u * total rescans it. top_k = 1 takes the lowest index among the kept maxima instead.
override CFG: bool = false;
// Write the guided, filtered logits (-inf where filtered) to `filtered`.
override KEEP_FILTERED: bool = false;

struct SampleParams {
    // philox_words only: the first counter.
    counter_base: vec4<u32>,
    // Output rows B * T, tokens T per batch row, vocabulary V.
    rows: u32,
    tokens: u32,
    vocab: u32,
    // 0: no top-k (the host maps k >= V to 0).
    top_k: u32,
    // 0: no top-p (the host maps top_p outside (0, 1) to 0).
    top_p: f32,
    // CFG: guided = (1 + t) * cond - t * uncond.
    cfg_t: f32,
    // Philox key of this (seed, step).
    key0: u32,
    key1: u32,
    // Element offset of the unconditional half (B * T * V).
    uncond_offset: u32,
}

@group(0) @binding(0) var<storage, read> logits: array<store_t>;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;
// With CFG the guided values are written here first and every later pass reads them back, so all
// passes see bit-identical values whatever the compiler does with (1 + t) * x - t * y.
@group(0) @binding(2) var<storage, read_write> filtered: array<store_t>;
@group(0) @binding(3) var<uniform> p: SampleParams;

var<workgroup> draw_scan: array<f32, REDUCE_WG>;
var<workgroup> draw_choice: u32;
var<workgroup> broadcast_slot: u32;

const NO_CHOICE: u32 = 0xFFFFFFFFu;

// ---- Philox4x32-10 (Salmon et al. 2011), u32 arithmetic only ----

const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;

// (high, low) words of the 64-bit product a * b, from 16-bit halves.
fn mul_hi_lo(a: u32, b: u32) -> vec2<u32> {
    let a_lo = a & 0xFFFFu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xFFFFu;
    let b_hi = b >> 16u;
    let ll = a_lo * b_lo;
    let lh = a_lo * b_hi;
    let hl = a_hi * b_lo;
    let hh = a_hi * b_hi;
    let carry = ((ll >> 16u) + (lh & 0xFFFFu) + (hl & 0xFFFFu)) >> 16u;
    return vec2<u32>(hh + (lh >> 16u) + (hl >> 16u) + carry, a * b);
}

fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        let p0 = mul_hi_lo(PHILOX_M0, c.x);
        let p1 = mul_hi_lo(PHILOX_M1, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
        k += vec2<u32>(PHILOX_W0, PHILOX_W1);
    }
    return c;
}

// Raw words for counters (counter_base.x + i, counter_base.yzw), i < p.rows: four per thread.
@compute @workgroup_size(THREADS_1D)
fn philox_words(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = grid_workgroup(wg, groups) * THREADS_1D + lid;
    if i >= p.rows {
        return;
    }
    let base = p.counter_base;
    let words = philox4x32_10(vec4<u32>(base.x + i, base.y, base.z, base.w), vec2<u32>(p.key0, p.key1));
    ids[4u * i] = words.x;
    ids[4u * i + 1u] = words.y;
    ids[4u * i + 2u] = words.z;
    ids[4u * i + 3u] = words.w;
}

// ---- the sampler ----

// Unsigned order = float order; -0 and +0 share a key.
fn order_key(x: f32) -> u32 {
    var bits = bitcast<u32>(x);
    if bits == 0x80000000u {
        bits = 0u;
    }
    return select(bits | 0x80000000u, ~bits, (bits & 0x80000000u) != 0u);
}

fn key_value(key: u32) -> f32 {
    return bitcast<f32>(select(~key, key & 0x7FFFFFFFu, (key & 0x80000000u) != 0u));
}

// The (guided) logit of element c of the row starting at `base`.
fn value(base: u32, c: u32) -> f32 {
    if CFG {
        return f32(filtered[base + c]);
    }
    return f32(logits[base + c]);
}

// Which elements survive: key >= kth (top-k), then key > cut, or key == cut and index >= tie_end
// (top-p). Disabled stages use 0, which every key passes.
struct RowFilter {
    kth: u32,
    cut: u32,
    tie_end: u32,
}

fn survives_top_k(key: u32, f: RowFilter) -> bool {
    return key >= f.kth;
}

fn kept(key: u32, c: u32, f: RowFilter) -> bool {
    return key >= f.kth && (key > f.cut || (key == f.cut && c >= f.tie_end));
}

// Unnormalised probability of element c after filtering.
fn weight(base: u32, c: u32, f: RowFilter, row_max: f32) -> f32 {
    let v = value(base, c);
    if kept(order_key(v), c, f) {
        return exp(v - row_max);
    }
    return 0.0;
}

// A value every thread computed identically, as a uniform value (for control flow around barriers).
// NaN or +inf, told by the bits: WGSL lets a compiler assume floats are finite, so `v != v` could
// fold away. -inf is not a fault: it is a masked logit, probability 0.
fn nan_or_plus_infinity(v: f32) -> bool {
    let bits = bitcast<u32>(v);
    return (bits & 0x7fffffffu) > 0x7f800000u || bits == 0x7f800000u;
}

fn broadcast(v: u32, lane: Lane) -> u32 {
    if lane.index == 0u {
        broadcast_slot = v;
    }
    return workgroupUniformLoad(&broadcast_slot);
}

@compute @workgroup_size(REDUCE_WG)
fn sample(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, lane: Lane) {
    let row = grid_workgroup(wg, groups);
    // `row` is the same for the whole workgroup, so this exit keeps the barriers uniform.
    if row >= p.rows {
        return;
    }
    let n = p.vocab;
    let base = row * n;

    // Pass 0: guided values (CFG), the row maximum, and whether any is NaN or +inf.
    var local_max = -3.4028235e38;
    var local_bad = 0.0;
    for (var c = lane.index; c < n; c += REDUCE_WG) {
        var v: f32;
        if CFG {
            let x = f32(logits[base + c]);
            let y = f32(logits[p.uncond_offset + base + c]);
            // A token masked in the conditional half (-inf) stays masked, whatever the other half:
            // -inf - t * -inf would be NaN, a fault, where both halves mask the same token.
            v = select((1.0 + p.cfg_t) * x - p.cfg_t * y, x, bitcast<u32>(x) == 0xff800000u);
            filtered[base + c] = store_t(v);
        } else {
            v = f32(logits[base + c]);
        }
        local_max = max(local_max, v);
        local_bad = max(local_bad, select(0.0, 1.0, nan_or_plus_infinity(v)));
    }
    // Later passes read guided values other threads wrote.
    storageBarrier();
    let row_max = workgroup_max(local_max, lane);
    // Such a row has no distribution to draw from: its id is V, outside the vocabulary, whatever the
    // passes below make of it (they stay bounded), so the caller can tell it from every real token.
    let no_token = workgroup_max(local_bad, lane) > 0.0;
    let max_key = order_key(row_max);
    var f = RowFilter(0u, 0u, 0u);

    // Top-k: bisection for the largest K with count(key >= K) >= k (invariant: lo passes, hi fails).
    if p.top_k > 0u {
        let k = f32(p.top_k);
        var lo = 0u;
        var hi = max_key + 1u;
        for (var i = 0u; i < 32u; i++) {
            let mid = lo + (hi - lo) / 2u;
            var count = 0.0;
            for (var c = lane.index; c < n; c += REDUCE_WG) {
                count += select(0.0, 1.0, order_key(value(base, c)) >= mid);
            }
            if workgroup_sum(count, lane) >= k {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        f.kth = lo;
    }

    // Top-p on the top-k survivors.
    if p.top_p > 0.0 {
        var local_total = 0.0;
        for (var c = lane.index; c < n; c += REDUCE_WG) {
            let v = value(base, c);
            if survives_top_k(order_key(v), f) {
                local_total += exp(v - row_max);
            }
        }
        let tail = (1.0 - p.top_p) * workgroup_sum(local_total, lane);
        // Smallest key whose cumulative mass exceeds the tail (invariant: mass(<= lo) <= tail <
        // mass(<= hi)); the maximum is never removed, so hi starts there.
        var lo = 0u;
        var hi = max_key;
        for (var i = 0u; i < 32u; i++) {
            let mid = lo + (hi - lo) / 2u;
            var mass = 0.0;
            for (var c = lane.index; c < n; c += REDUCE_WG) {
                let v = value(base, c);
                let key = order_key(v);
                if survives_top_k(key, f) && key <= mid {
                    mass += exp(v - row_max);
                }
            }
            if workgroup_sum(mass, lane) > tail {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        f.cut = hi;
        // The ties at the cut go in index order while the cumulative mass stays <= tail.
        var below = 0.0;
        var ties = 0.0;
        for (var c = lane.index; c < n; c += REDUCE_WG) {
            let v = value(base, c);
            let key = order_key(v);
            if survives_top_k(key, f) && key < f.cut {
                below += exp(v - row_max);
            }
            ties += select(0.0, 1.0, key == f.cut && survives_top_k(key, f));
        }
        let mass_below = workgroup_sum(below, lane);
        let tie_count = workgroup_sum(ties, lane);
        let cut_weight = exp(key_value(f.cut) - row_max);
        var removable = 0.0;
        if cut_weight > 0.0 {
            removable = clamp(floor((tail - mass_below) / cut_weight), 0.0, tie_count - 1.0);
        }
        let removed = broadcast(u32(removable), lane);
        if removed > 0u {
            // Smallest end with count(ties with index < end) >= removed (lo fails, hi passes).
            var lo_end = 0u;
            var hi_end = n;
            let steps = 32u - countLeadingZeros(n);
            for (var i = 0u; i < steps; i++) {
                let mid = lo_end + (hi_end - lo_end) / 2u;
                var count = 0.0;
                for (var c = lane.index; c < mid; c += REDUCE_WG) {
                    let key = order_key(value(base, c));
                    count += select(0.0, 1.0, key == f.cut && survives_top_k(key, f));
                }
                if workgroup_sum(count, lane) >= f32(removed) {
                    hi_end = mid;
                } else {
                    lo_end = mid;
                }
            }
            f.tie_end = hi_end;
        }
    }

    var choice: u32;
    if p.top_k == 1u {
        // Argmax: the lowest index among the kept maxima, independent of the RNG.
        var first = f32(n);
        for (var c = lane.index; c < n; c += REDUCE_WG) {
            if kept(max_key, c, f) && order_key(value(base, c)) == max_key {
                first = min(first, f32(c));
            }
        }
        choice = u32(-workgroup_max(-first, lane));
    } else {
        let chunk = (n + REDUCE_WG - 1u) / REDUCE_WG;
        let start = min(lane.index * chunk, n);
        let end = min(start + chunk, n);
        var part = 0.0;
        var last = -1.0;
        for (var c = start; c < end; c++) {
            let w = weight(base, c, f, row_max);
            part += w;
            if w > 0.0 {
                last = f32(c);
            }
        }
        draw_scan[lane.index] = part;
        if lane.index == 0u {
            draw_choice = NO_CHOICE;
        }
        // Fallback when rounding leaves u * total at the total: the last element with weight.
        let last_kept = workgroup_max(last, lane);
        workgroupBarrier();
        if lane.index == 0u {
            var running = 0.0;
            for (var i = 0u; i < REDUCE_WG; i++) {
                running += draw_scan[i];
                draw_scan[i] = running;
            }
        }
        workgroupBarrier();
        let total = draw_scan[REDUCE_WG - 1u];
        let token = row % p.tokens;
        let batch_row = row / p.tokens;
        let words = philox4x32_10(vec4<u32>(token, batch_row, 0u, 0u), vec2<u32>(p.key0, p.key1));
        let goal = f32(words.x >> 8u) * (1.0 / 16777216.0) * total;
        var before = 0.0;
        if lane.index > 0u {
            before = draw_scan[lane.index - 1u];
        }
        if draw_scan[lane.index] > goal && before <= goal {
            // Same additions in the same order as `part`, so before + running reaches
            // draw_scan[lane.index] > goal by the chunk's end.
            var running = 0.0;
            for (var c = start; c < end; c++) {
                running += weight(base, c, f, row_max);
                if before + running > goal {
                    draw_choice = c;
                    break;
                }
            }
        }
        workgroupBarrier();
        choice = draw_choice;
        if choice == NO_CHOICE {
            choice = u32(last_kept);
        }
    }
    if lane.index == 0u {
        ids[row] = select(choice, n, no_token);
    }

    if KEEP_FILTERED {
        // Every thread has finished reading the guided values before they are overwritten.
        storageBarrier();
        let neg_inf = bitcast<f32>(0xFF800000u);
        for (var c = lane.index; c < n; c += REDUCE_WG) {
            let v = value(base, c);
            filtered[base + c] = store_t(select(neg_inf, v, kept(order_key(v), c, f)));
        }
    }
}

// -log(u) for u = (bits + 0.5) / 2^24 in (0, 1), accurate at both ends: near u = 1 the f32 u would
// round to 1 (and log(u) to 0, making the Gumbel draw infinite), so there it is the series of
// -log(1 - t) in t = 1 - u, which is exact in f32.
fn exponential(bits: u32) -> f32 {
    let t = (f32(16777215u - bits) + 0.5) * (1.0 / 16777216.0);
    if t < 0.0625 {
        return t * (1.0 + t * (0.5 + t * (1.0 / 3.0 + t * (0.25 + t * 0.2))));
    }
    return -log((f32(bits) + 0.5) * (1.0 / 16777216.0));
}

// Smooth mode (VAR's more_smooth): softmax((logits * mul + g) / tau) per row, g = -log(-log(u)) a
// Gumbel draw per element with u from Philox at counter (token, batch row, element, 1) under the
// step's key. Reuses SampleParams: cfg_t = mul, top_p = tau. `logits` are the filtered logits
// (-inf where removed, which get probability 0); the probabilities go to `filtered`.
@compute @workgroup_size(REDUCE_WG)
fn gumbel_softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, lane: Lane) {
    let row = grid_workgroup(wg, groups);
    if row >= p.rows {
        return;
    }
    let n = p.vocab;
    let base = row * n;
    let token = row % p.tokens;
    let batch_row = row / p.tokens;
    let neg_inf = bitcast<f32>(0xFF800000u);
    var local_max = neg_inf;
    for (var c = lane.index; c < n; c += REDUCE_WG) {
        let x = f32(logits[base + c]);
        var z = neg_inf;
        if x > neg_inf {
            let words = philox4x32_10(vec4<u32>(token, batch_row, c, 1u), vec2<u32>(p.key0, p.key1));
            z = (x * p.cfg_t - log(exponential(words.x >> 8u))) / p.top_p;
        }
        // Each thread reads back only what it wrote itself.
        filtered[base + c] = store_t(z);
        local_max = max(local_max, z);
    }
    let row_max = workgroup_max(local_max, lane);
    var local_sum = 0.0;
    for (var c = lane.index; c < n; c += REDUCE_WG) {
        local_sum += exp(f32(filtered[base + c]) - row_max);
    }
    let total = workgroup_sum(local_sum, lane);
    for (var c = lane.index; c < n; c += REDUCE_WG) {
        filtered[base + c] = store_t(exp(f32(filtered[base + c]) - row_max) / total);
    }
}
