//! Dense and grouped attention against a float64 softmax attention restricted by the spec's
//! allowed(q, k) predicate: random ragged grids (2D and 3D), random group shapes, r = 0..2, with and
//! without text, f32 and f16, batch and heads > 1, head_dim 64, 128 and odd sizes.

use crate::common::{Rng, Seeded, Tol, WGPU_FULL, assert_close, dtypes, full_device};
use scalewise::ops::attention::reference::{allowed, masked_attention};
use scalewise::ops::{
    AttentionAlgorithm, AttentionLayout, AttentionOptions, GratPattern, GroupedLayout, GroupedOptions, attention,
    attention_tiles, coop_attention_tiles_for, grouped_attention, grouped_attention_with, reference_values as stored,
};
use scalewise::{AttentionDesign, DType, Device, Error, MatrixUnits, Tensor};

/// Rows of one (batch, head) of a (B, H, L, D) tensor.
fn head_rows(data: &[f32], heads: usize, len: usize, dim: usize, b: usize, h: usize) -> &[f32] {
    let start = ((b * heads + h) * len) * dim;
    &data[start..start + len * dim]
}

#[allow(clippy::too_many_arguments)]
fn check_grouped(
    device: &scalewise::Device,
    dtype: DType,
    rng: &mut Rng,
    layout: &GroupedLayout,
    batch: usize,
    heads: usize,
    dim: usize,
    what: &str,
) {
    let len = layout.seq_len();
    let n = batch * heads * len * dim;
    let (q, k, v) = (stored(&rng.vec(n, 1.0), dtype), stored(&rng.vec(n, 1.0), dtype), stored(&rng.vec(n, 1.0), dtype));
    let shape = [batch, heads, len, dim];
    let up = |x: &[f32]| Tensor::from_f32(device, &shape, x, dtype).unwrap();
    let scale = 1.0 / (dim as f32).sqrt();
    let out = grouped_attention(&up(&q), &up(&k), &up(&v), layout, None).unwrap().to_vec_f32().unwrap();
    let mut want = Vec::with_capacity(n);
    for b in 0..batch {
        for h in 0..heads {
            let rows = |x| head_rows(x, heads, len, dim, b, h);
            want.extend(masked_attention(rows(&q), rows(&k), rows(&v), dim, scale as f64, |i, j| {
                allowed(layout, i, j)
            }));
        }
    }
    assert_close(&out, &want, Tol::for_dtype(dtype, 1.0), what);
}

/// The float64 dense attention of q (lq rows) over the first kv_len of lk keys, per (batch, head),
/// for tensors in `layout`, laid out as the output is.
fn dense_reference(
    [q, k, v]: [&[f32]; 3],
    layout: AttentionLayout,
    (batch, heads, dim): (usize, usize, usize),
    (lq, lk, kv_len): (usize, usize, usize),
    scale: f64,
) -> Vec<f64> {
    let row = |len: usize, b: usize, h: usize, t: usize| match layout {
        AttentionLayout::HeadsMajor => ((b * heads + h) * len + t) * dim,
        AttentionLayout::TokensMajor => ((b * len + t) * heads + h) * dim,
    };
    // The reference works per (batch, head) on (L, D) rows.
    let gather = |x: &[f32], len: usize, b: usize, h: usize| -> Vec<f32> {
        (0..len).flat_map(|t| x[row(len, b, h, t)..row(len, b, h, t) + dim].to_vec()).collect()
    };
    let mut want = vec![0.0; batch * heads * lq * dim];
    for b in 0..batch {
        for h in 0..heads {
            let o = masked_attention(
                &gather(q, lq, b, h),
                &gather(k, lk, b, h),
                &gather(v, lk, b, h),
                dim,
                scale,
                |_, j| j < kv_len,
            );
            for t in 0..lq {
                want[row(lq, b, h, t)..row(lq, b, h, t) + dim].copy_from_slice(&o[t * dim..(t + 1) * dim]);
            }
        }
    }
    want
}

/// A dense call of one batch, (1, heads, len, dim) tensors with random rows, the first `kv_len` of
/// `lk` keys attended, against the float64 reference with the default scale.
fn check_one_batch(
    device: &Device,
    rng: &mut Rng,
    dtype: DType,
    (heads, dim): (usize, usize),
    (lq, lk, kv_len): (usize, usize, usize),
    what: &str,
) {
    let shape = |len| vec![1, heads, len, dim];
    let q = stored(&rng.vec(heads * lq * dim, 1.0), dtype);
    let k = stored(&rng.vec(heads * lk * dim, 1.0), dtype);
    let v = stored(&rng.vec(heads * lk * dim, 1.0), dtype);
    let up = |x: &[f32], len| Tensor::from_f32(device, &shape(len), x, dtype).unwrap();
    let options = AttentionOptions { kv_len: Some(kv_len), ..Default::default() };
    let out = attention(&up(&q, lq), &up(&k, lk), &up(&v, lk), &options).unwrap().to_vec_f32().unwrap();
    let scale = 1.0 / (dim as f64).sqrt();
    let mut want = Vec::with_capacity(out.len());
    for h in 0..heads {
        let rows = |x, len| head_rows(x, heads, len, dim, 0, h);
        want.extend(masked_attention(rows(&q, lq), rows(&k, lk), rows(&v, lk), dim, scale, |_, j| j < kv_len));
    }
    assert_close(&out, &want, Tol::for_dtype(dtype, 1.0), what);
}

fn random_pattern(rng: &mut Rng) -> GratPattern {
    match rng.range(0, 3) {
        0 => GratPattern::Block { radius: rng.range(0, 2) },
        1 => GratPattern::BlockTruncated { radius: rng.range(0, 2) },
        2 => GratPattern::CrissCross,
        _ => GratPattern::All,
    }
}

backend_tests! {
    /// Few query rows over many keys (a KV-cache step): on wgpu the block splits each key tile
    /// between copies of its row layout and merges their softmax states at the end. Ragged key
    /// counts leave some slices empty in the last tile, 9 keys leave one empty for the whole call
    /// (16-key tiles in 4 slices); head_dim past 64 gives rows of several threads, so the merge and
    /// the partial dot products meet.
    fn dense_attention_of_few_rows_splits_the_keys(device: &Device, config: &str) {
        let mut rng = Rng::for_config("dense_attention_split", config);
        let caps = device.caps();
        let splits = caps.attention == AttentionDesign::RowsInRegisters && caps.attention_key_split;
        // The last two split only where workgroup memory exceeds WebGPU's default 16 KiB.
        let roomy = caps.shared_memory_bytes >= 32 * 1024;
        let cases = [
            (1, 64, 9, true),
            (1, 64, rng.range(70, 300), true),
            (3, 80, rng.range(70, 300), true),
            (5, rng.range(1, 63), rng.range(70, 300), true),
            (5, 100, rng.range(70, 300), true),
            (3, 130, rng.range(70, 300), roomy),
            (2, 256, rng.range(70, 300), roomy),
        ];
        for dtype in dtypes(device) {
            for &(lq, dim, lk, must_split) in &cases {
                let heads = rng.range(1, 3);
                let kv_len = if lk < 70 { lk } else { rng.range(lk - 40, lk) };
                let tiles = attention_tiles(device, dim, lq, kv_len).unwrap();
                if splits && must_split {
                    assert!(tiles.key_slices > 1, "{config}: lq {lq} d{dim} kv {kv_len} is not split: {tiles:?}");
                }
                let what = format!("{config} {dtype} split {} lq{lq} kv{kv_len} d{dim}", tiles.key_slices);
                check_one_batch(device, &mut rng, dtype, (heads, dim), (lq, lk, kv_len), &what);
            }
        }
    }
}

backend_tests! {
    /// The scalar machinery's layouts of a block of many rows: four or two query rows per thread
    /// whose partial scores meet through subgroup shuffles (the subgroups variant, where the rows'
    /// threads fit the narrowest subgroup; four rows take their keys one at a time), four rows whose
    /// scores are staged (where no shuffles serve them and the stages fit), one row per thread
    /// through shuffles, and through workgroup memory (a head dim whose row threads are no power of
    /// two, or no subgroups, and whose staged scores do not fit). Row counts that are no multiple of
    /// 4 leave padding rows beside real ones in the last group, over several blocks; the keys end
    /// inside a tile. On a subgroups device four rows must have run where 8 threads fit the narrowest
    /// subgroup (head dim 64), pairs where 8 do and 16 do not (head dim 128), and single rows through
    /// shuffles where 8 threads fit and 16 do not (head dim 256); staged scores where the device has
    /// no subgroups and 32 KiB of workgroup memory (head dim 64), or where the rows' threads are no
    /// power of two (head dim 80); the workgroup-memory exchange runs everywhere (head dim 200).
    fn dense_attention_row_layouts_match_reference(device: &Device, config: &str) {
        let mut rng = Rng::for_config("dense_attention_row_layouts", config);
        let caps = device.caps();
        let scalar_rows = caps.attention == AttentionDesign::RowsInRegisters;
        // A row's threads can sum through shuffles: a power of two within the narrowest subgroup.
        let shuffles =
            |threads: usize| caps.subgroups && threads > 1 && threads.is_power_of_two() && threads <= caps.subgroup_sizes.0 as usize;
        // Staged scores split their keys on GPUs; on a CPU adapter only where the test device asks
        // (wgpu_portable and wgpu_gl do, wgpu_full does not).
        if config == "wgpu_full" {
            assert_eq!(caps.attention_staged_key_slices, caps.attention_key_split && !caps.is_cpu, "{config}");
        }
        let mut layouts = Vec::new();
        for dtype in dtypes(device) {
            let shapes = [(64, 67), (128, 33), (256, 21), (80, 45), (200, 19), (rng.range(1, 31), 70), (64, 1 + 2 * rng.range(4, 60))];
            // And head dim 64 over fewer keys than half a 16-key tile, and over one more: staged
            // scores' second key slice attends none or one of them.
            let few_keys = [(64, 67, 7), (64, 45, 9)].map(|(dim, lq, lk)| (dim, lq, Some(lk)));
            for (dim, lq, keys) in shapes.map(|(dim, lq)| (dim, lq, None)).into_iter().chain(few_keys) {
                let heads = rng.range(1, 2);
                let lk = keys.unwrap_or_else(|| rng.range(40, 150));
                let kv_len = if keys.is_some() { lk } else { rng.range(lk - 30, lk) };
                let tiles = attention_tiles(device, dim, lq, kv_len).unwrap();
                // Blocks of many rows; staged scores' may split their keys too.
                if scalar_rows && (tiles.key_slices == 1 || tiles.staged_scores()) {
                    let layout = (tiles.rows_per_thread, tiles.subgroup_exchange);
                    layouts.push(layout);
                    // Four rows on ceil(dim / 8) threads where those can shuffle, else pairs on
                    // ceil(dim / 16), else four rows with staged scores (at least 4 threads, the
                    // layout allowed) where their stages fit, else one row on ceil(dim / 32)
                    // threads, shuffling where they can; the block's subgroups full. Whether the
                    // stages fit is the host's sizing: here a staged layout is only checked to be
                    // allowed, and the assertions after the loop require it where it must fit.
                    let full = tiles.threads <= caps.subgroup_sizes.0 as usize
                        || tiles.threads.is_multiple_of(caps.subgroup_sizes.1 as usize);
                    // Four rows only on 4 or more threads: a block keeps a thread per row.
                    let want = if dim.div_ceil(8) >= 4 && shuffles(dim.div_ceil(8)) && full {
                        (4, true)
                    } else if shuffles(dim.div_ceil(16)) && full {
                        (2, true)
                    } else if dim.div_ceil(8) >= 4 && caps.attention_staged_scores && layout == (4, false) {
                        (4, false)
                    } else {
                        (1, shuffles(dim.div_ceil(32)) && full)
                    };
                    assert_eq!(layout, want, "{config}: head_dim {dim}, {lq} rows: {tiles:?}");
                }
                let what = format!(
                    "{config} {dtype} lq{lq} kv{kv_len} d{dim} rows/thread {} subgroup exchange {} key slices {}",
                    tiles.rows_per_thread, tiles.subgroup_exchange, tiles.key_slices
                );
                check_one_batch(device, &mut rng, dtype, (heads, dim), (lq, lk, kv_len), &what);
            }
        }
        if scalar_rows {
            assert!(layouts.contains(&(1, false)), "{config}: no workgroup-memory exchange ran: {layouts:?}");
            // Head dim 80: 10 threads per four rows, no power of two.
            let staged = caps.attention_staged_scores && caps.shared_memory_bytes >= 32768;
            if staged {
                assert!(layouts.contains(&(4, false)), "{config}: no staged scores ran: {layouts:?}");
            }
            if staged && !caps.subgroups {
                let at_64 = attention_tiles(device, 64, 67, 100).unwrap();
                assert!(at_64.staged_scores(), "{config}: head dim 64 without subgroups: {at_64:?}");
                // In two key slices where the device splits them and 256 invocations are allowed.
                let slices = if caps.attention_staged_key_slices && caps.max_threads_per_group >= 256 { 2 } else { 1 };
                assert_eq!(at_64.key_slices, slices, "{config}: head dim 64 without subgroups: {at_64:?}");
            }
            // Head dim 64: 8 threads per four rows; head dim 128: 16 per four, 8 per pair.
            if shuffles(8) {
                assert!(layouts.contains(&(4, true)), "{config}: no four-row groups ran: {layouts:?}");
            }
            if shuffles(8) && !shuffles(16) {
                assert!(layouts.contains(&(2, true)), "{config}: no row pairs ran: {layouts:?}");
            }
            // Head dim 256: 8 threads per row, 16 per pair.
            if shuffles(8) && !shuffles(16) {
                assert!(layouts.contains(&(1, true)), "{config}: no single rows shuffled: {layouts:?}");
            }
        }
    }
}

backend_tests! {
    /// Scores far apart: where a row's running max moves by more than exp's f32 range (88), its
    /// output and sum must follow it. Along the keys, each row's scores climb by at least 9 per key
    /// (9-20 for the rows whose q weighs least; so each key moves the max by more than the four-row
    /// scalar layout's rescale margin, 8), or fall (the first key holds the max and the rest weigh
    /// almost nothing), or climb to a random key and fall after it (the attended keys, the first
    /// 70-100%, may end before the peak). Head dims 64 and a random one of 25-128, so rows in fours,
    /// pairs and one per thread on a subgroups device; four rows must have run where 8 threads fit
    /// the narrowest subgroup, and, without subgroups, with staged scores where 32 KiB of workgroup
    /// memory hold them (the rows' max moves by the same rule).
    fn dense_attention_with_wide_score_spreads_matches_reference(device: &Device, config: &str) {
        let mut rng = Rng::for_config("dense_attention_wide_scores", config);
        let caps = device.caps();
        let mut four_rows = false;
        for dtype in dtypes(device) {
            for (shape, dim) in [(0, 64), (1, 64), (2, 64), (0, rng.range(25, 128)), (2, rng.range(25, 128))] {
                let (lq, lk) = (rng.range(20, 90), rng.range(40, 100));
                let kv_len = rng.range(lk - 30, lk);
                let scale = 1.0 / (dim as f64).sqrt();
                // q: component 0 in [0.5, 1], the rest noise; k: component 0 moves by `step`, which
                // moves each row's score by 9-20 (at least 0.5 * step * scale).
                let mut q = rng.vec(lq * dim, 0.05);
                for i in 0..lq {
                    q[i * dim] = 0.75 + rng.uniform(0.25);
                }
                let mut k = rng.vec(lk * dim, 0.05);
                let peak = match shape {
                    0 => lk,
                    1 => 0,
                    _ => rng.range(1, lk - 1),
                };
                let mut level = 0.0f32;
                for j in 0..lk {
                    let step = (9.0 + 11.0 * rng.unit()) / (0.5 * scale as f32);
                    level += if j < peak { step } else { -step };
                    k[j * dim] = level;
                }
                let v = rng.vec(lk * dim, 1.0);
                let (q, k, v) = (stored(&q, dtype), stored(&k, dtype), stored(&v, dtype));
                let up = |x: &[f32], len| Tensor::from_f32(device, &[1, 1, len, dim], x, dtype).unwrap();
                let options = AttentionOptions { kv_len: Some(kv_len), ..Default::default() };
                let out = attention(&up(&q, lq), &up(&k, lk), &up(&v, lk), &options).unwrap().to_vec_f32().unwrap();
                let want = masked_attention(&q, &k, &v, dim, scale, |_, j| j < kv_len);
                let tiles = attention_tiles(device, dim, lq, kv_len).unwrap();
                four_rows |= tiles.rows_per_thread == 4;
                let what = format!(
                    "{config} {dtype} lq{lq} lk{lk} kv{kv_len} peak {peak} d{dim} rows/thread {}",
                    tiles.rows_per_thread
                );
                assert_close(&out, &want, Tol::for_dtype(dtype, 1.0), &what);
            }
        }
        let scalar_rows = caps.attention == AttentionDesign::RowsInRegisters;
        let fours_fit = if caps.subgroups {
            caps.subgroup_sizes.0 >= 8
        } else {
            caps.attention_staged_scores && caps.shared_memory_bytes >= 32768
        };
        if scalar_rows && fours_fit {
            assert!(four_rows, "{config}: no block of four rows per thread ran");
        }
    }
}

backend_tests! {
    fn dense_attention_matches_reference(device: &Device, config: &str) {
        let mut rng = Rng::for_config("dense_attention", config);
        for dtype in dtypes(device) {
            for dim in [64, 128, rng.range(1, 255)] {
                let (batch, heads) = (rng.range(1, 2), rng.range(1, 3));
                let (lq, lk) = (rng.range(1, 40), rng.range(1, 90));
                let kv_len = if rng.range(0, 1) == 0 { lk } else { rng.range(1, lk) };
                let layout =
                    if rng.range(0, 1) == 0 { AttentionLayout::HeadsMajor } else { AttentionLayout::TokensMajor };
                let scale = if rng.range(0, 1) == 0 { None } else { Some(0.37f32) };
                let q = stored(&rng.vec(batch * heads * lq * dim, 1.0), dtype);
                let k = stored(&rng.vec(batch * heads * lk * dim, 1.0), dtype);
                let v = stored(&rng.vec(batch * heads * lk * dim, 1.0), dtype);
                let shape = |len| match layout {
                    AttentionLayout::HeadsMajor => vec![batch, heads, len, dim],
                    AttentionLayout::TokensMajor => vec![batch, len, heads, dim],
                };
                let up = |x: &[f32], len| Tensor::from_f32(device, &shape(len), x, dtype).unwrap();
                let options = AttentionOptions { scale, kv_len: Some(kv_len), layout, ..Default::default() };
                let out = attention(&up(&q, lq), &up(&k, lk), &up(&v, lk), &options).unwrap().to_vec_f32().unwrap();
                let scale = scale.unwrap_or(1.0 / (dim as f32).sqrt()) as f64;
                let want = dense_reference([&q, &k, &v], layout, (batch, heads, dim), (lq, lk, kv_len), scale);
                let what =
                    format!("{config} {dtype} dense b{batch} h{heads} lq{lq} lk{lk} kv{kv_len} d{dim} {layout:?}");
                assert_close(&out, &want, Tol::for_dtype(dtype, 1.0), &what);
            }
        }
    }
}

backend_tests! {
    fn grouped_attention_2d_matches_reference(device: &Device, config: &str) {
        let mut rng = Rng::for_config("grouped_2d", config);
        for dtype in dtypes(device) {
            for trial in 0..5 {
                let grid = [rng.range(1, 23), rng.range(1, 23)];
                let group = [rng.range(1, 8), rng.range(1, 8)];
                let text_len = if trial % 2 == 0 { rng.range(1, 9) } else { 0 };
                let text_valid = rng.range(0, text_len);
                let layout = GroupedLayout::image(grid[0], grid[1])
                    .with_group(&group)
                    .with_pattern(random_pattern(&mut rng))
                    .with_text(text_len, text_valid);
                let dim = [64, 128, 24][trial % 3];
                let (batch, heads) = (rng.range(1, 2), rng.range(1, 2));
                let what = format!("{config} {dtype} 2D {layout:?} b{batch} h{heads} d{dim}");
                check_grouped(device, dtype, &mut rng, &layout, batch, heads, dim, &what);
            }
        }
    }
}

backend_tests! {
    fn grouped_attention_3d_matches_reference(device: &Device, config: &str) {
        let mut rng = Rng::for_config("grouped_3d", config);
        for dtype in dtypes(device) {
            for trial in 0..4 {
                let grid = [rng.range(1, 7), rng.range(1, 11), rng.range(1, 11)];
                let group = [rng.range(1, 3), rng.range(1, 4), rng.range(1, 4)];
                let text_len = if trial % 2 == 1 { rng.range(1, 6) } else { 0 };
                let layout = GroupedLayout::video(grid[0], grid[1], grid[2])
                    .with_group(&group)
                    .with_pattern(random_pattern(&mut rng))
                    .with_text(text_len, rng.range(0, text_len));
                let dim = if trial % 2 == 0 { 64 } else { 128 };
                let what = format!("{config} {dtype} 3D {layout:?} d{dim}");
                check_grouped(device, dtype, &mut rng, &layout, 1, 2, dim, &what);
            }
        }
    }
}

#[test]
fn every_pattern_on_one_ragged_video_grid() {
    // All four patterns and r = 0..2 on one grid that is ragged on every axis.
    let mut rng = Rng::for_test("patterns");
    let (name, device) = (WGPU_FULL, full_device());
    let mut patterns = vec![GratPattern::CrissCross, GratPattern::All];
    for radius in 0..=2 {
        patterns.push(GratPattern::Block { radius });
        patterns.push(GratPattern::BlockTruncated { radius });
    }
    for pattern in patterns {
        let layout = GroupedLayout::video(5, 9, 11).with_group(&[2, 4, 3]).with_pattern(pattern).with_text(3, 2);
        check_grouped(device, DType::F32, &mut rng, &layout, 1, 1, 32, &format!("{name} {pattern:?}"));
    }
}

backend_tests! {
    fn grouped_with_everything_allowed_equals_dense(device: &Device, config: &str) {
        let mut rng = Rng::for_config("all_equals_dense", config);
        let layout = GroupedLayout::image(13, 21).with_group(&[4, 8]).with_pattern(GratPattern::All).with_text(5, 5);
        let shape = [2, 2, layout.seq_len(), 64];
        let n: usize = shape.iter().product();
        let up = |x: Vec<f32>| Tensor::from_f32(device, &shape, &x, DType::F32).unwrap();
        let (q, k, v) = (up(rng.vec(n, 1.0)), up(rng.vec(n, 1.0)), up(rng.vec(n, 1.0)));
        let grouped = grouped_attention(&q, &k, &v, &layout, None).unwrap().to_vec_f32().unwrap();
        let dense = attention(&q, &k, &v, &AttentionOptions::default()).unwrap().to_vec_f32().unwrap();
        let dense: Vec<f64> = dense.iter().map(|&x| x as f64).collect();
        assert_close(&grouped, &dense, Tol::for_dtype(DType::F32, 1.0), config);
    }
}

/// (B, H, L, D) host data as (B, L, H, D).
fn heads_to_tokens_major(x: &[f32], batch: usize, heads: usize, len: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for h in 0..heads {
            for t in 0..len {
                let (from, to) = (((b * heads + h) * len + t) * dim, ((b * len + t) * heads + h) * dim);
                out[to..to + dim].copy_from_slice(&x[from..from + dim]);
            }
        }
    }
    out
}

backend_tests! {
    /// (B, L, H, D) tensors, as a fused qkv projection leaves them, give the (B, H, L, D) result
    /// transposed: the strides reach the kernel, no copy is made.
    fn grouped_attention_reads_tokens_major_tensors(device: &Device, config: &str) {
        let mut rng = Rng::for_config("grouped_tokens_major", config);
        for dtype in dtypes(device) {
            for trial in 0..3 {
                let (batch, heads, dim) = (rng.range(1, 2), rng.range(2, 3), [64, 24, 40][trial]);
                let heads_major = GroupedLayout::image(rng.range(3, 17), rng.range(3, 17))
                    .with_group(&[rng.range(2, 6), rng.range(2, 6)])
                    .with_pattern(random_pattern(&mut rng))
                    .with_text(3, rng.range(0, 3));
                let tokens_major = heads_major.clone().with_tensors(AttentionLayout::TokensMajor);
                let len = heads_major.seq_len();
                let n = batch * heads * len * dim;
                let inputs: Vec<Vec<f32>> = (0..3).map(|_| stored(&rng.vec(n, 1.0), dtype)).collect();
                let up = |x: &[f32], shape: &[usize]| Tensor::from_f32(device, shape, x, dtype).unwrap();
                let hm = [batch, heads, len, dim];
                let tm = [batch, len, heads, dim];
                let want = grouped_attention(&up(&inputs[0], &hm), &up(&inputs[1], &hm), &up(&inputs[2], &hm), &heads_major, None)
                    .unwrap()
                    .to_vec_f32()
                    .unwrap();
                let t = |x: &[f32]| heads_to_tokens_major(x, batch, heads, len, dim);
                let got = grouped_attention(
                    &up(&t(&inputs[0]), &tm),
                    &up(&t(&inputs[1]), &tm),
                    &up(&t(&inputs[2]), &tm),
                    &tokens_major,
                    None,
                )
                .unwrap();
                assert_eq!(got.shape(), tm);
                let want: Vec<f64> = t(&want).iter().map(|&x| x as f64).collect();
                // The same kernel on the same values in another memory order: equal up to rounding.
                let what = format!("{config} {dtype} {tokens_major:?} b{batch} h{heads} d{dim}");
                assert_close(&got.to_vec_f32().unwrap(), &want, Tol::for_dtype(dtype, 1.0), &what);
            }
        }
        let layout = GroupedLayout::image(4, 4).with_tensors(AttentionLayout::TokensMajor);
        let x = Tensor::zeros(device, &[1, 16, 1, 8], DType::F32).unwrap();
        let err = scalewise::ops::to_group_major(&x, &layout).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    }
}

#[test]
fn shuffled_rows_only_in_blocks_of_full_subgroups() {
    // The shuffles number a block's threads by subgroup and lane, which covers the block once only
    // where its subgroups come full: a block within the narrowest subgroup, or a multiple of the
    // widest. Rows in fours or pairs need the shuffles; without them a block keeps one row per thread.
    let mut caps = full_device().caps();
    caps.attention = AttentionDesign::RowsInRegisters;
    caps.subgroups = true;
    caps.shared_memory_bytes = 32768;
    caps.max_threads_per_group = 256;
    let mut seen = std::collections::BTreeSet::new();
    for sizes in [(8, 8), (32, 64), (8, 32), (16, 16), (4, 128), (64, 64)] {
        caps.subgroup_sizes = sizes;
        let (narrowest, widest) = (sizes.0 as usize, sizes.1 as usize);
        for (key_split, staged) in [(false, true), (true, true), (true, false)] {
            caps.attention_key_split = key_split;
            caps.attention_staged_key_slices = key_split;
            caps.attention_staged_scores = staged;
            for dim in [16, 40, 64, 128, 256] {
                for (rows, keys) in [(1, 680), (3, 40), (8, 100), (16, 680), (100, 300), (256, 680)] {
                    let t = scalewise::ops::attention_tiles_for(&caps, dim, rows, keys).unwrap();
                    let what = format!(
                        "subgroups {sizes:?}, key split {key_split}, staged {staged}, d{dim}, {rows}x{keys}: {t:?}"
                    );
                    let row_threads = t.threads * t.rows_per_thread / (t.key_slices * t.block_q);
                    assert_eq!(row_threads, dim.div_ceil(32 / t.rows_per_thread), "{what}");
                    let full = t.threads <= narrowest || t.threads.is_multiple_of(widest);
                    let fits = row_threads > 1 && row_threads.is_power_of_two() && row_threads <= narrowest;
                    assert_eq!(t.subgroup_exchange, full && fits, "{what}");
                    // Pairs need the shuffles; four rows without them stage their scores.
                    assert!(t.rows_per_thread != 2 || t.subgroup_exchange, "{what}");
                    assert_eq!(t.staged_scores(), t.rows_per_thread == 4 && !t.subgroup_exchange, "{what}");
                    assert!(staged || !t.staged_scores(), "{what}");
                    // Keys split only where allowed; staged scores merge two slices at most.
                    assert!(key_split || t.key_slices == 1, "{what}");
                    assert!(!t.staged_scores() || t.key_slices <= 2, "{what}");
                    // The entry points fill the block's token table one row per thread.
                    assert!(t.threads >= t.block_q, "{what}");
                    seen.insert((t.rows_per_thread, t.subgroup_exchange, full));
                }
            }
        }
    }
    // Each case came up: four rows, pairs, single rows shuffled, a power-of-two row kept off the
    // shuffles because its block's subgroups would not be full, and four rows with staged scores in
    // blocks of full subgroups (rows too wide for the narrowest) and of others.
    let cases = [
        (4, true, true),
        (2, true, true),
        (1, true, true),
        (1, false, false),
        (1, false, true),
        (4, false, true),
        (4, false, false),
    ];
    for case in cases {
        assert!(seen.contains(&case), "never chosen: {case:?} (of {seen:?})");
    }
}

#[test]
fn matrix_unit_tiles_need_subgroups_that_share_their_fragments_evenly() {
    // The kernel shares each tile's fragments among its subgroups in equal rounds. Subgroups of 16
    // lanes are 8 per workgroup: a 64-row block's 8 score and 16+ product fragments share evenly, a
    // 32-row block's 4 score fragments do not (some would never be computed), so few rows get none.
    let mut caps = full_device().caps();
    caps.shared_memory_bytes = 65536;
    caps.max_threads_per_group = 1024;
    caps.matrix_units = MatrixUnits::Native;
    let cases = [(64, 256, Some(64)), (40, 20, Some(32)), (128, 100, Some(32)), (64, 32, Some(32))];
    for sizes in [(32, 64), (64, 64), (16, 64), (8, 32)] {
        caps.subgroup_sizes = sizes;
        for (dim, rows, block_q) in cases {
            let tiles = coop_attention_tiles_for(&caps, dim, rows);
            // Four threads per row: a 64-row block is 256 invocations, a 32-row one 128.
            let subgroups = block_q.map(|q| 4 * q / sizes.0 as usize);
            let fragments = block_q.map(|q| [(q / 16) * 2, (q / 16) * dim.div_ceil(32) * 2]);
            let want = block_q.filter(|_| fragments.unwrap().iter().all(|f| f % subgroups.unwrap() == 0));
            let what = format!("subgroups {sizes:?}, head_dim {dim}, {rows} rows: {tiles:?}");
            assert_eq!(tiles.map(|t| t.block_q), want, "{what}");
            if let Some(t) = tiles {
                assert_eq!(t.threads(), 4 * t.block_q, "{what}");
            }
        }
    }
    caps.subgroup_sizes = (16, 64);
    assert!(coop_attention_tiles_for(&caps, 40, 20).is_none(), "32-row blocks in 8 subgroups");
    assert!(coop_attention_tiles_for(&caps, 64, 256).is_none(), "64-row blocks in 16 subgroups");
    // A device whose workgroups hold fewer invocations than a 64-row block's gets 32-row blocks.
    caps.subgroup_sizes = (32, 64);
    caps.max_threads_per_group = 128;
    assert_eq!(coop_attention_tiles_for(&caps, 64, 256).map(|t| t.block_q), Some(32));
    // The emulation's virtual subgroups are 32 lanes at the narrowest, whatever the adapter's.
    caps.matrix_units = MatrixUnits::Emulated;
    assert!(coop_attention_tiles_for(&caps, 40, 20).is_some());
}

#[test]
fn density_matches_the_published_key_counts_and_bounds() {
    // Flux at 8192^2: 512 x 512 tokens in 16 x 16 groups, 512 text tokens.
    let b = GroupedLayout::image(512, 512);
    let x = b.clone().with_pattern(GratPattern::CrissCross);
    let image = 512 * 512;
    assert_eq!(b.attended_pairs().unwrap(), image as u64 * 2304, "GRAT-B: 3 x 3 groups = 2304 keys per query");
    assert_eq!(x.attended_pairs().unwrap(), image as u64 * 16128, "GRAT-X: 63 groups = 16128 keys per query");
    // The published bounds count the image queries' work (keys + 512 text) against L^2.
    let len = (image + 512) as f64;
    let bound = |keys: f64| len * len / (image as f64 * (keys + 512.0));
    assert!((bound(2304.0) - 93.4).abs() < 0.5 && (bound(16128.0) - 15.8).abs() < 0.1);
    // HunyuanVideo 720p: 4 x 8 x 8 groups on 32 x 48 x 80 -> 8 x 6 x 10 = 480 groups, 165 attended.
    let video = GroupedLayout::video(32, 48, 80).with_pattern(GratPattern::CrissCross);
    assert_eq!(video.attended_pairs().unwrap(), 32 * 48 * 80 * 165 * 256);
    assert!((1.0 / video.density().unwrap() - 480.0 / 165.0).abs() < 1e-9);
    // The fields are public: counting a layout that `validate` would refuse is an error, not a panic.
    for bad in [
        GroupedLayout { grid: vec![64], ..GroupedLayout::image(8, 8) },
        GroupedLayout::image(8, 8).with_group(&[0, 16]),
        GroupedLayout::image(usize::MAX, 2),
    ] {
        assert!(bad.attended_pairs().is_err() && bad.density().is_err(), "{bad:?}");
    }
}

#[test]
fn bad_layouts_and_shapes_are_typed_errors() {
    let device = full_device();
    let t = |shape: &[usize]| Tensor::zeros(device, shape, DType::F32).unwrap();
    let q = t(&[1, 2, 40, 64]);
    let err_text = |r: Result<Tensor, Error>| r.unwrap_err().to_string();
    let e = err_text(attention(&t(&[1, 1, 4, 300]), &t(&[1, 1, 4, 300]), &t(&[1, 1, 4, 300]), &Default::default()));
    assert!(e.contains("300"), "{e}");
    let e = err_text(grouped_attention(&q, &q, &q, &GroupedLayout::image(5, 8).with_group(&[0, 4]), None));
    assert!(e.contains("[0, 4]"), "{e}");
    let e = err_text(grouped_attention(&q, &q, &q, &GroupedLayout::image(6, 7), None));
    assert!(e.contains("42") && e.contains("40"), "{e}");
    let e = err_text(grouped_attention(&q, &q, &q, &GroupedLayout::image(4, 9).with_text(4, 5), None));
    assert!(e.contains("valid length 5") && e.contains("text length 4"), "{e}");
    let e = err_text(attention(&q, &t(&[1, 2, 30, 64]), &t(&[1, 2, 31, 64]), &Default::default()));
    assert!(e.contains("[1, 2, 30, 64]") && e.contains("[1, 2, 31, 64]"), "{e}");
    let e = err_text(attention(&q, &t(&[1, 3, 30, 64]), &t(&[1, 3, 30, 64]), &Default::default()));
    assert!(e.contains("[1, 2, 40, 64]"), "{e}");
    let options = AttentionOptions { kv_len: Some(0), ..Default::default() };
    assert!(attention(&q, &q, &q, &options).is_err());
    let options = AttentionOptions { kv_len: Some(41), ..Default::default() };
    assert!(attention(&q, &q, &q, &options).is_err());
}

/// Raster indices of the image tokens in group-major order, built directly from the definition:
/// groups in raster order, each group's tokens in group-local raster order.
fn group_major_order(grid: [usize; 3], group: [usize; 3]) -> Vec<usize> {
    let counts = [0, 1, 2].map(|a| grid[a].div_ceil(group[a]));
    let mut order = Vec::new();
    for gt in 0..counts[0] {
        for gh in 0..counts[1] {
            for gw in 0..counts[2] {
                for t in gt * group[0]..((gt + 1) * group[0]).min(grid[0]) {
                    for h in gh * group[1]..((gh + 1) * group[1]).min(grid[1]) {
                        for w in gw * group[2]..((gw + 1) * group[2]).min(grid[2]) {
                            order.push((t * grid[1] + h) * grid[2] + w);
                        }
                    }
                }
            }
        }
    }
    order
}

backend_tests! {
    fn group_major_permutation_and_kernel_match_the_raster_path(device: &Device, config: &str) {
        use scalewise::ops::{TokenOrder, from_group_major, grouped_attention_in, to_group_major};
        let mut rng = Rng::for_config("group_major", config);
        let layout =
            GroupedLayout::video(3, 7, 10).with_group(&[2, 3, 4]).with_pattern(GratPattern::CrissCross).with_text(4, 3);
        let (heads, dim, len) = (2, 40, layout.seq_len());
        let shape = [1, heads, len, dim];
        let n = heads * len * dim;
        let data = rng.vec(n, 1.0);
        let x = Tensor::from_f32(device, &shape, &data, DType::F32).unwrap();
        let permuted = to_group_major(&x, &layout).unwrap();
        let order = group_major_order([3, 7, 10], [2, 3, 4]);
        let mut want = Vec::with_capacity(n);
        for h in 0..heads {
            let rows = &data[h * len * dim..(h + 1) * len * dim];
            for &token in order.iter().chain(&(210..len).collect::<Vec<_>>()) {
                want.extend(rows[token * dim..(token + 1) * dim].iter().map(|&v| v as f64));
            }
        }
        assert_close(&permuted.to_vec_f32().unwrap(), &want, Tol { atol: 0.0, rtol: 0.0 }, config);
        assert_eq!(from_group_major(&permuted, &layout).unwrap().to_vec_f32().unwrap(), data, "{config}: round trip");

        let up = |x: Vec<f32>| Tensor::from_f32(device, &shape, &x, DType::F32).unwrap();
        let (q, k, v) = (up(rng.vec(n, 1.0)), up(rng.vec(n, 1.0)), up(rng.vec(n, 1.0)));
        let raster = grouped_attention(&q, &k, &v, &layout, None).unwrap().to_vec_f32().unwrap();
        let [gq, gk, gv] = [&q, &k, &v].map(|t| to_group_major(t, &layout).unwrap());
        let grouped = grouped_attention_in(&gq, &gk, &gv, &layout, None, TokenOrder::GroupMajor).unwrap();
        let back = from_group_major(&grouped, &layout).unwrap().to_vec_f32().unwrap();
        let raster: Vec<f64> = raster.iter().map(|&v| v as f64).collect();
        assert_close(&back, &raster, Tol::for_dtype(DType::F32, 1.0), &format!("{config} group-major kernel"));
    }
}

backend_tests! {
    /// The matrix-unit attention (wgpu: attention_coop.wgsl on cooperative matrices, or their
    /// emulation, which shares a block's fragments among 4, 2 or 1 virtual subgroups by the block's
    /// index, so calls of three or more blocks take all three; CUDA: the tensor-core kernel). Dense
    /// calls of ragged rows, keys and head dims (zero-padded to 32) with kv_len short of the keys,
    /// both tensor layouts and explicit scales; GRAT with text; the typed errors where it cannot run.
    fn cooperative_attention_matches_reference(device: &Device, config: &str) {
        let test = format!("ops::attention::cooperative_attention_matches_reference::{config}");
        let caps = device.caps();
        let cooperative = |scale, kv_len, layout| AttentionOptions {
            scale,
            kv_len,
            layout,
            algorithm: AttentionAlgorithm::Cooperative,
        };
        if caps.matrix_units == MatrixUnits::None || !caps.f16 {
            let x = Tensor::zeros(device, &[1, 1, 40, 64], DType::F32).unwrap();
            let err = attention(&x, &x, &x, &cooperative(None, None, AttentionLayout::HeadsMajor)).unwrap_err();
            assert!(matches!(err, Error::MissingFeature { .. }), "{config}: {err:?}");
            crate::common::skip(&test, "no matrix units (or no f16) on this device: checked the typed error only");
            return;
        }
        let mut rng = Rng::for_config("cooperative_attention", config);
        let dtype = DType::F16;
        let x = Tensor::zeros(device, &[1, 1, 40, 64], DType::F32).unwrap();
        let err = attention(&x, &x, &x, &cooperative(None, None, AttentionLayout::HeadsMajor)).unwrap_err();
        assert!(matches!(err, Error::UnsupportedDType { .. }), "{config}: {err:?}");
        // The self-check `Auto` waits for passes on the units (or on their emulation).
        scalewise::ops::attention_units_verified(device).unwrap_or_else(|e| panic!("{config}: {e}"));
        // Head dims whose tiles fit this adapter's workgroup memory (a 32 KiB one: up to 64).
        let fits = |dim| coop_attention_tiles_for(&caps, dim, 64).is_some();
        let dims: Vec<usize> = [64, 40, rng.range(1, 31), rng.range(65, 128), 100, 128].into_iter().filter(|&d| fits(d)).collect();
        assert!(dims.len() >= 3 || caps.attention == AttentionDesign::ScoreTiles, "{config}: only head dims {dims:?} fit");
        // A last trial of three 64-row blocks (256 invocations each: 8, 4 and 2 virtual subgroups in
        // the emulation) at a head dim whose 64-row tiles fit a 32 KiB adapter too.
        let wide = (rng.range(1, 32), rng.range(129, 200));
        let wide_tiles = coop_attention_tiles_for(&caps, wide.0, wide.1);
        if caps.shared_memory_bytes >= 32768 && caps.max_threads_per_group >= 256 {
            assert_eq!(wide_tiles.map(|t| (t.block_q, t.threads())), Some((64, 256)), "{config}: {wide:?}");
        } else {
            crate::common::skip(&test, format_args!("64-row blocks do not fit this adapter: its last trial runs {wide_tiles:?}"));
        }
        for (trial, &dim) in dims.iter().chain([wide.0].iter()).enumerate() {
            let (batch, heads) = (rng.range(1, 2), rng.range(1, 3));
            // Three blocks of 32 rows at least, in the first trials; three of 64 in the last.
            let lq = match trial {
                _ if trial == dims.len() => wide.1,
                0 | 1 => rng.range(65, 140),
                _ => rng.range(1, 140),
            };
            let lk = rng.range(20, 200);
            let kv_len = if trial % 2 == 0 { lk } else { rng.range(1, lk) };
            let layout = if trial % 3 == 1 { AttentionLayout::TokensMajor } else { AttentionLayout::HeadsMajor };
            let scale = if trial % 2 == 1 { Some(0.37f32) } else { None };
            let q = stored(&rng.vec(batch * heads * lq * dim, 1.0), dtype);
            let k = stored(&rng.vec(batch * heads * lk * dim, 1.0), dtype);
            let v = stored(&rng.vec(batch * heads * lk * dim, 1.0), dtype);
            let shape = |len| match layout {
                AttentionLayout::HeadsMajor => vec![batch, heads, len, dim],
                AttentionLayout::TokensMajor => vec![batch, len, heads, dim],
            };
            let up = |x: &[f32], len| Tensor::from_f32(device, &shape(len), x, dtype).unwrap();
            let options = cooperative(scale, Some(kv_len), layout);
            let out = attention(&up(&q, lq), &up(&k, lk), &up(&v, lk), &options).unwrap().to_vec_f32().unwrap();
            let scale = scale.map_or(1.0 / (dim as f64).sqrt(), f64::from);
            let want = dense_reference([&q, &k, &v], layout, (batch, heads, dim), (lq, lk, kv_len), scale);
            let what = format!("{config} cooperative b{batch} h{heads} lq{lq} kv{kv_len}/{lk} d{dim} {layout:?}");
            assert_close(&out, &want, Tol::for_dtype(dtype, 1.0), &what);
        }
        // A softmax scale that takes q past f16's range (7e4 x 1 > 65504) on well-separated scores:
        // the scale must meet the f32 scores, not the f16 queries (inf x 0 would give NaN).
        {
            let (dim, lq, lk) = (dims[0], 40, 50);
            let first = |i: usize| [1.0, -1.0][(i / dim) % 2];
            let q: Vec<f32> = (0..lq * dim).map(|i| if i % dim == 0 { first(i) } else { 0.0 }).collect();
            let mut k = stored(&rng.vec(lk * dim, 1.0), dtype);
            for j in 0..lk {
                k[j * dim] = ((j * 37) % lk) as f32 / 64.0 - 0.375;
            }
            let v = stored(&rng.vec(lk * dim, 1.0), dtype);
            let up = |x: &[f32], len| Tensor::from_f32(device, &[1, 1, len, dim], x, dtype).unwrap();
            let options = cooperative(Some(7.0e4), None, AttentionLayout::HeadsMajor);
            let out = attention(&up(&q, lq), &up(&k, lk), &up(&v, lk), &options).unwrap().to_vec_f32().unwrap();
            let shape = (1, 1, dim);
            let want = dense_reference([&q, &k, &v], AttentionLayout::HeadsMajor, shape, (lq, lk, lk), 7.0e4);
            assert_close(&out, &want, Tol::for_dtype(dtype, 1.0), &format!("{config} cooperative scale 7e4 d{dim}"));
        }
        // GRAT: ragged groups, every pattern kind, text; the text queries run the dense entry.
        for trial in 0..3 {
            let dim = dims[trial % dims.len()];
            let layout = GroupedLayout::image(rng.range(5, 20), rng.range(5, 20))
                .with_group(&[rng.range(4, 8), rng.range(4, 9)])
                .with_pattern(random_pattern(&mut rng))
                .with_text(rng.range(1, 40), rng.range(0, 5));
            let (batch, heads) = (1, rng.range(1, 2));
            let len = layout.seq_len();
            let n = batch * heads * len * dim;
            let (q, k, v) = (stored(&rng.vec(n, 1.0), dtype), stored(&rng.vec(n, 1.0), dtype), stored(&rng.vec(n, 1.0), dtype));
            let shape = [batch, heads, len, dim];
            let up = |x: &[f32]| Tensor::from_f32(device, &shape, x, dtype).unwrap();
            let options = GroupedOptions { algorithm: AttentionAlgorithm::Cooperative, ..Default::default() };
            let out = grouped_attention_with(&up(&q), &up(&k), &up(&v), &layout, &options).unwrap().to_vec_f32().unwrap();
            let scale = 1.0 / (dim as f64).sqrt();
            let mut want = Vec::with_capacity(n);
            for h in 0..heads {
                let rows = |x| head_rows(x, heads, len, dim, 0, h);
                want.extend(masked_attention(rows(&q), rows(&k), rows(&v), dim, scale, |i, j| allowed(&layout, i, j)));
            }
            let what = format!("{config} cooperative GRAT {layout:?} d{dim}");
            assert_close(&out, &want, Tol::for_dtype(dtype, 1.0), &what);
        }
        if caps.attention == AttentionDesign::RowsInRegisters {
            // A head dim whose tiles cannot fit: the typed error, not a failed pipeline.
            let dim = 256;
            if !fits(dim) {
                let x = Tensor::zeros(device, &[1, 1, 40, dim], dtype).unwrap();
                let err = attention(&x, &x, &x, &cooperative(None, None, AttentionLayout::HeadsMajor)).unwrap_err();
                assert!(matches!(err, Error::MissingFeature { .. }), "{config}: {err:?}");
            }
        }
    }
}
