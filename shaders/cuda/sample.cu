// The VAR next-scale sampler step (shaders/wgsl/sample.wgsl, spec VAR.md section 2 c-e): CFG
// combine, top-k, top-p and a multinomial draw, one block of REDUCE_WG threads per token row,
// everything in f32. A line-for-line port: the same bisections, the same f32 sums in the same order
// where the result is order-sensitive (the draw's chunk sums and their serial scan), the same Philox.
//
// Values are compared through `order_key`, a u32 whose unsigned order is the float order (-0 folded
// onto +0), so thresholds are found by bisection on keys with block reductions instead of a sort:
// - top-k: the largest key K with count(key >= K) >= k is the k-th largest value; keep key >= K.
// - top-p: with weights w = exp(v - max) of the top-k survivors and tail = (1 - top_p) * sum(w), the
//   ascending (value, index) order removes a prefix. `cut` is the smallest key whose mass of
//   survivors with key <= cut exceeds tail: everything below it goes, and of the elements equal to
//   `cut` the `removed` lowest indices go, removed = min(floor((tail - mass below) / w_cut), ties - 1).
// - draw: inverse CDF over index order. Each thread sums a contiguous chunk, thread 0 scans the 256
//   partial sums serially (an order independent of warps), and the thread whose chunk crosses
//   u * total rescans it. top_k = 1 takes the lowest index among the kept maxima instead.
#ifndef CFG
#define CFG 0
#endif
// Write the guided, filtered logits (-inf where filtered) to `filtered`.
#ifndef KEEP_FILTERED
#define KEEP_FILTERED 0
#endif

#define SAMPLE_NO_CHOICE 0xFFFFFFFFu

// ---- Philox4x32-10 (Salmon et al. 2011), u32 arithmetic only ----

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

struct philox_u32x4 {
    u32 x, y, z, w;
};

SW_DEVICE philox_u32x4 philox4x32_10(philox_u32x4 c, u32 k0, u32 k1) {
    for (u32 round = 0; round < 10u; round++) {
        // (high, low) words of the 64-bit products.
        const u32 hi0 = __umulhi(PHILOX_M0, c.x), lo0 = PHILOX_M0 * c.x;
        const u32 hi1 = __umulhi(PHILOX_M1, c.z), lo1 = PHILOX_M1 * c.z;
        c = philox_u32x4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    return c;
}

// Raw words for counters (counter_base[0] + i, counter_base[1..4]), i < p.rows: four per thread.
SW_KERNEL(philox_words, THREADS_1D, 1, 1, (const store_t* logits, u32* ids, store_t* filtered, const SampleParams p)) {
    (void)logits;
    (void)filtered;
    const u32 i = grid_block() * THREADS_1D + threadIdx.x;
    if (i >= p.rows) return;
    const philox_u32x4 words = philox4x32_10(
        philox_u32x4{p.counter_base[0] + i, p.counter_base[1], p.counter_base[2], p.counter_base[3]}, p.key0, p.key1);
    ids[4u * i] = words.x;
    ids[4u * i + 1u] = words.y;
    ids[4u * i + 2u] = words.z;
    ids[4u * i + 3u] = words.w;
}

// ---- the sampler ----

// Unsigned order = float order; -0 and +0 share a key.
// NaN or +inf, told by the bits (as sample.wgsl, where a compiler may assume floats are finite). -inf
// is not a fault: it is a masked logit, probability 0.
SW_DEVICE bool nan_or_plus_infinity(float v) {
    const u32 bits = __float_as_uint(v);
    return (bits & 0x7fffffffu) > 0x7f800000u || bits == 0x7f800000u;
}

SW_DEVICE u32 order_key(float x) {
    u32 bits = __float_as_uint(x);
    if (bits == 0x80000000u) bits = 0u;
    return (bits & 0x80000000u) != 0u ? ~bits : (bits | 0x80000000u);
}

SW_DEVICE float key_value(u32 key) {
    return __uint_as_float((key & 0x80000000u) != 0u ? (key & 0x7FFFFFFFu) : ~key);
}

// Which elements survive: key >= kth (top-k), then key > cut, or key == cut and index >= tie_end
// (top-p). Disabled stages use 0, which every key passes.
struct RowFilter {
    u32 kth;
    u32 cut;
    u32 tie_end;
};

SW_DEVICE bool survives_top_k(u32 key, const RowFilter& f) { return key >= f.kth; }

SW_DEVICE bool sample_kept(u32 key, u32 c, const RowFilter& f) {
    return key >= f.kth && (key > f.cut || (key == f.cut && c >= f.tie_end));
}

// The (guided) logit of element c of the row starting at `base`: with CFG the guided values were
// stored to `filtered` by pass 0 and every later pass reads them back, so all passes see
// bit-identical values whatever the compiler does with (1 + t) * x - t * y.
SW_DEVICE float sample_value(const store_t* logits, const store_t* filtered, u32 base, u32 c) {
    if (CFG) return to_f32(filtered[base + c]);
    return to_f32(logits[base + c]);
}

// Unnormalised probability of element c after filtering.
SW_DEVICE float sample_weight(const store_t* logits, const store_t* filtered, u32 base, u32 c, const RowFilter& f,
                              float row_max) {
    const float v = sample_value(logits, filtered, base, c);
    if (sample_kept(order_key(v), c, f)) return expf(v - row_max);
    return 0.0f;
}

SW_KERNEL(sample, REDUCE_WG, 1, 1, (const store_t* logits, u32* ids, store_t* filtered, const SampleParams p)) {
    __shared__ float scratch[32];
    __shared__ float draw_scan[REDUCE_WG];
    __shared__ u32 draw_choice;
    __shared__ u32 broadcast_slot;
    const u32 lane = threadIdx.x;
    const u32 row = grid_block();
    // `row` is the same for the whole block, so this exit keeps the barriers uniform.
    if (row >= p.rows) return;
    const u32 n = p.vocab;
    const u32 base = row * n;

    // Pass 0: guided values (CFG), the row maximum, and whether any is NaN or +inf.
    float local_max = -3.4028235e38f;
    float local_bad = 0.0f;
    for (u32 c = lane; c < n; c += REDUCE_WG) {
        float v;
        if (CFG) {
            const float x = to_f32(logits[base + c]);
            const float y = to_f32(logits[p.uncond_offset + base + c]);
            // A token masked in the conditional half (-inf) stays masked, whatever the other half:
            // -inf - t * -inf would be NaN, a fault, where both halves mask the same token.
            v = __float_as_uint(x) == 0xff800000u ? x : (1.0f + p.cfg_t) * x - p.cfg_t * y;
            store_f32(filtered, base + c, v);
        } else {
            v = to_f32(logits[base + c]);
        }
        local_max = fmaxf(local_max, v);
        local_bad = fmaxf(local_bad, nan_or_plus_infinity(v) ? 1.0f : 0.0f);
    }
    // Later passes read guided values other threads wrote (__syncthreads orders global memory within
    // the block).
    __syncthreads();
    const float row_max = block_max(local_max, scratch);
    // Such a row has no distribution to draw from: its id is V, outside the vocabulary, whatever the
    // passes below make of it (they stay bounded), so the caller can tell it from every real token.
    const bool no_token = block_max(local_bad, scratch) > 0.0f;
    const u32 max_key = order_key(row_max);
    RowFilter f = {0u, 0u, 0u};

    // Top-k: bisection for the largest K with count(key >= K) >= k (invariant: lo passes, hi fails).
    if (p.top_k > 0u) {
        const float k = (float)p.top_k;
        u32 lo = 0u;
        u32 hi = max_key + 1u;
        for (u32 i = 0; i < 32u; i++) {
            const u32 mid = lo + (hi - lo) / 2u;
            float count = 0.0f;
            for (u32 c = lane; c < n; c += REDUCE_WG)
                count += order_key(sample_value(logits, filtered, base, c)) >= mid ? 1.0f : 0.0f;
            if (block_sum(count, scratch) >= k) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        f.kth = lo;
    }

    // Top-p on the top-k survivors.
    if (p.top_p > 0.0f) {
        float local_total = 0.0f;
        for (u32 c = lane; c < n; c += REDUCE_WG) {
            const float v = sample_value(logits, filtered, base, c);
            if (survives_top_k(order_key(v), f)) local_total += expf(v - row_max);
        }
        const float tail = (1.0f - p.top_p) * block_sum(local_total, scratch);
        // Smallest key whose cumulative mass exceeds the tail (invariant: mass(<= lo) <= tail <
        // mass(<= hi)); the maximum is never removed, so hi starts there.
        u32 lo = 0u;
        u32 hi = max_key;
        for (u32 i = 0; i < 32u; i++) {
            const u32 mid = lo + (hi - lo) / 2u;
            float mass = 0.0f;
            for (u32 c = lane; c < n; c += REDUCE_WG) {
                const float v = sample_value(logits, filtered, base, c);
                const u32 key = order_key(v);
                if (survives_top_k(key, f) && key <= mid) mass += expf(v - row_max);
            }
            if (block_sum(mass, scratch) > tail) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        f.cut = hi;
        // The ties at the cut go in index order while the cumulative mass stays <= tail.
        float below = 0.0f;
        float ties = 0.0f;
        for (u32 c = lane; c < n; c += REDUCE_WG) {
            const float v = sample_value(logits, filtered, base, c);
            const u32 key = order_key(v);
            if (survives_top_k(key, f) && key < f.cut) below += expf(v - row_max);
            ties += (key == f.cut && survives_top_k(key, f)) ? 1.0f : 0.0f;
        }
        const float mass_below = block_sum(below, scratch);
        const float tie_count = block_sum(ties, scratch);
        const float cut_weight = expf(key_value(f.cut) - row_max);
        float removable = 0.0f;
        if (cut_weight > 0.0f)
            removable = fminf(fmaxf(floorf((tail - mass_below) / cut_weight), 0.0f), tie_count - 1.0f);
        // A value every thread computed identically, made block-uniform (for the control flow around
        // the barriers below).
        if (lane == 0u) broadcast_slot = (u32)removable;
        __syncthreads();
        const u32 removed = broadcast_slot;
        __syncthreads();
        if (removed > 0u) {
            // Smallest end with count(ties with index < end) >= removed (lo fails, hi passes).
            u32 lo_end = 0u;
            u32 hi_end = n;
            u32 steps = 0u;  // 32 - countLeadingZeros(n)
            for (u32 bits = n; bits != 0u; bits >>= 1) steps++;
            for (u32 i = 0; i < steps; i++) {
                const u32 mid = lo_end + (hi_end - lo_end) / 2u;
                float count = 0.0f;
                for (u32 c = lane; c < mid; c += REDUCE_WG) {
                    const u32 key = order_key(sample_value(logits, filtered, base, c));
                    count += (key == f.cut && survives_top_k(key, f)) ? 1.0f : 0.0f;
                }
                if (block_sum(count, scratch) >= (float)removed) {
                    hi_end = mid;
                } else {
                    lo_end = mid;
                }
            }
            f.tie_end = hi_end;
        }
    }

    u32 choice;
    if (p.top_k == 1u) {
        // Argmax: the lowest index among the kept maxima, independent of the RNG.
        float first = (float)n;
        for (u32 c = lane; c < n; c += REDUCE_WG) {
            if (sample_kept(max_key, c, f) && order_key(sample_value(logits, filtered, base, c)) == max_key)
                first = fminf(first, (float)c);
        }
        choice = (u32)(-block_max(-first, scratch));
    } else {
        const u32 chunk = (n + REDUCE_WG - 1u) / REDUCE_WG;
        const u32 start = min(lane * chunk, n);
        const u32 end = min(start + chunk, n);
        float part = 0.0f;
        float last = -1.0f;
        for (u32 c = start; c < end; c++) {
            const float w = sample_weight(logits, filtered, base, c, f, row_max);
            part += w;
            if (w > 0.0f) last = (float)c;
        }
        draw_scan[lane] = part;
        if (lane == 0u) draw_choice = SAMPLE_NO_CHOICE;
        // Fallback when rounding leaves u * total at the total: the last element with weight.
        const float last_kept = block_max(last, scratch);
        __syncthreads();
        if (lane == 0u) {
            float running = 0.0f;
            for (u32 i = 0; i < REDUCE_WG; i++) {
                running += draw_scan[i];
                draw_scan[i] = running;
            }
        }
        __syncthreads();
        const float total = draw_scan[REDUCE_WG - 1u];
        const u32 token = row % p.tokens;
        const u32 batch_row = row / p.tokens;
        const philox_u32x4 words = philox4x32_10(philox_u32x4{token, batch_row, 0u, 0u}, p.key0, p.key1);
        const float goal = (float)(words.x >> 8u) * (1.0f / 16777216.0f) * total;
        float before = 0.0f;
        if (lane > 0u) before = draw_scan[lane - 1u];
        if (draw_scan[lane] > goal && before <= goal) {
            // Same additions in the same order as `part`, so before + running reaches
            // draw_scan[lane] > goal by the chunk's end.
            float running = 0.0f;
            for (u32 c = start; c < end; c++) {
                running += sample_weight(logits, filtered, base, c, f, row_max);
                if (before + running > goal) {
                    draw_choice = c;
                    break;
                }
            }
        }
        __syncthreads();
        choice = draw_choice;
        if (choice == SAMPLE_NO_CHOICE) choice = (u32)last_kept;
    }
    if (lane == 0u) ids[row] = no_token ? n : choice;

    if (KEEP_FILTERED) {
        // Every thread has finished reading the guided values before they are overwritten.
        __syncthreads();
        const float neg_inf = __uint_as_float(0xFF800000u);
        for (u32 c = lane; c < n; c += REDUCE_WG) {
            const float v = sample_value(logits, filtered, base, c);
            store_f32(filtered, base + c, sample_kept(order_key(v), c, f) ? v : neg_inf);
        }
    }
}

// -log(u) for u = (bits + 0.5) / 2^24 in (0, 1), accurate at both ends: near u = 1 the f32 u would
// round to 1 (and log(u) to 0, making the Gumbel draw infinite), so there it is the series of
// -log(1 - t) in t = 1 - u, which is exact in f32.
SW_DEVICE float sample_exponential(u32 bits) {
    const float t = ((float)(16777215u - bits) + 0.5f) * (1.0f / 16777216.0f);
    if (t < 0.0625f) return t * (1.0f + t * (0.5f + t * (1.0f / 3.0f + t * (0.25f + t * 0.2f))));
    return -logf(((float)bits + 0.5f) * (1.0f / 16777216.0f));
}

// Smooth mode (VAR's more_smooth): softmax((logits * mul + g) / tau) per row, g = -log(-log(u)) a
// Gumbel draw per element with u from Philox at counter (token, batch row, element, 1) under the
// step's key. Reuses SampleParams: cfg_t = mul, top_p = tau. `logits` are the filtered logits
// (-inf where removed, which get probability 0); the probabilities go to `filtered`.
SW_KERNEL(gumbel_softmax, REDUCE_WG, 1, 1,
          (const store_t* logits, u32* ids, store_t* filtered, const SampleParams p)) {
    __shared__ float scratch[32];
    (void)ids;
    const u32 lane = threadIdx.x;
    const u32 row = grid_block();
    if (row >= p.rows) return;
    const u32 n = p.vocab;
    const u32 base = row * n;
    const u32 token = row % p.tokens;
    const u32 batch_row = row / p.tokens;
    const float neg_inf = __uint_as_float(0xFF800000u);
    float local_max = neg_inf;
    for (u32 c = lane; c < n; c += REDUCE_WG) {
        const float x = to_f32(logits[base + c]);
        float z = neg_inf;
        if (x > neg_inf) {
            const philox_u32x4 words = philox4x32_10(philox_u32x4{token, batch_row, c, 1u}, p.key0, p.key1);
            z = (x * p.cfg_t - logf(sample_exponential(words.x >> 8u))) / p.top_p;
        }
        // Each thread reads back only what it wrote itself.
        store_f32(filtered, base + c, z);
        local_max = fmaxf(local_max, z);
    }
    const float row_max = block_max(local_max, scratch);
    float local_sum = 0.0f;
    for (u32 c = lane; c < n; c += REDUCE_WG) local_sum += expf(to_f32(filtered[base + c]) - row_max);
    const float total = block_sum(local_sum, scratch);
    for (u32 c = lane; c < n; c += REDUCE_WG)
        store_f32(filtered, base + c, expf(to_f32(filtered[base + c]) - row_max) / total);
}
