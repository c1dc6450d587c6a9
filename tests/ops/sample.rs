//! The sampler step against its float64 reference: Philox words, CFG + top-k + top-p filtering on
//! rows with many ties and V not a power of two, the inverse-CDF draw, argmax for top_k = 1,
//! determinism, the distribution of draws, and the typed errors.
//!
//! Filtering is compared exactly where f32 is exact: the CFG weight is dyadic (t = 1.5) and the
//! logits lie on a grid, so the guided values, the top-k set and the ties are identical in f32 and
//! f64. The top-p cut and the draw compare f32 masses with thresholds, so a GPU decision may differ
//! from the f64 one only when the threshold lies within DELTA (1e-5 of the total mass) of a
//! cumulative boundary: the GPU's kept set must lie between the reference's sets for tail +- DELTA,
//! and its token between the reference's draws for u -+ DELTA.

use std::collections::HashSet;

use crate::common::{Rng, Seeded, Tol, WGPU_FULL, assert_close, full_device};
use scalewise::ops::sample::{self, SampleOptions, reference};
use scalewise::{DType, Device, Error, Tensor};

const DELTA: f64 = 1e-5;

fn upload(device: &Device, shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(device, shape, data, DType::F32).expect("upload")
}

/// Values on a grid of `step` in [-scale, scale].
fn grid(rng: &mut Rng, n: usize, scale: f32, step: f32) -> Vec<f32> {
    rng.vec(n, scale).iter().map(|v| (v / step).round() * step).collect()
}

fn kept(row: &[f64]) -> Vec<bool> {
    row.iter().map(|v| v.is_finite()).collect()
}

/// One GPU row of filtered logits against the reference definition; returns the GPU's kept mask.
fn check_filtered_row(got: &[f32], guided: &[f64], top_k: usize, top_p: f32, what: &str) -> Vec<bool> {
    let gpu: Vec<bool> = got.iter().map(|v| v.is_finite()).collect();
    for (i, (&g, &w)) in got.iter().zip(guided).enumerate() {
        assert!(!g.is_nan(), "{what}: element {i} is NaN (unwritten)");
        if g.is_finite() {
            assert_eq!(g as f64, w, "{what}: kept element {i} changed value");
        } else {
            assert_eq!(g, f32::NEG_INFINITY, "{what}: element {i}");
        }
    }
    if top_p > 0.0 && top_p < 1.0 {
        let tail = 1.0 - top_p as f64;
        let fewest = kept(&reference::filter_row_tail(guided, top_k, Some(tail + DELTA)));
        let most = kept(&reference::filter_row_tail(guided, top_k, Some(tail - DELTA)));
        for i in 0..got.len() {
            assert!(
                (!fewest[i] || gpu[i]) && (!gpu[i] || most[i]),
                "{what}: element {i} = {} kept {} but the reference keeps it only {} (tail {tail} +- {DELTA})",
                guided[i],
                gpu[i],
                if fewest[i] {
                    "always"
                } else if most[i] {
                    "near the cut"
                } else {
                    "never"
                }
            );
        }
    } else {
        assert_eq!(gpu, kept(&reference::filter_row(guided, top_k, 0.0)), "{what}: kept set");
    }
    gpu
}

/// The GPU's token for one row against the reference draw on the GPU's kept set: equal to the draw
/// for u, or (rounding) between the draws for u -+ DELTA. Returns whether it equals the u draw.
fn check_draw(id: u32, gpu_kept: &[bool], guided: &[f64], top_k: usize, u: f64, what: &str) -> bool {
    let id = id as usize;
    assert!(id < guided.len() && gpu_kept[id], "{what}: token {id} is not a kept token");
    let row: Vec<f64> = guided.iter().zip(gpu_kept).map(|(&v, &k)| if k { v } else { f64::NEG_INFINITY }).collect();
    if top_k == 1 {
        assert_eq!(id, reference::argmax_row(&row), "{what}: top_k = 1 must be the argmax");
        return true;
    }
    let exact = reference::draw_row(&row, u);
    let low = reference::draw_row(&row, (u - DELTA).max(0.0));
    let high = reference::draw_row(&row, (u + DELTA).min(1.0 - f64::EPSILON));
    assert!(low <= id && id <= high, "{what}: token {id}, reference {exact} (u = {u}, range {low}..={high})");
    id == exact
}

struct Case {
    cfg: Option<f32>,
    cfg_ratio: f32,
    top_k: usize,
    top_p: f32,
    /// Grid step of the logits: coarse grids make many ties.
    step: f32,
}

backend_tests! {
    fn filtering_and_draws_match_the_reference_with_ties_and_ragged_vocabularies(device: &Device, config: &str) {
        let mut rng = Rng::for_config("sample_filter", config);
        let mut partial_tie_cuts = 0;
        let (mut draws, mut exact_draws) = (0, 0);
        for vocab in [4096, 1000, 37] {
            let cases = [
                // t = 1.5: exact in f32 for logits on these grids.
                Case { cfg: Some(3.0), cfg_ratio: 0.5, top_k: rng.range(2, vocab / 2), top_p: 0.9, step: 0.25 },
                Case { cfg: Some(3.0), cfg_ratio: 0.5, top_k: 0, top_p: 0.8, step: 1.0 / 65536.0 },
                Case { cfg: Some(3.0), cfg_ratio: 0.5, top_k: rng.range(1, vocab), top_p: 0.0, step: 0.5 },
                Case { cfg: Some(3.0), cfg_ratio: 0.0, top_k: 0, top_p: 0.5, step: 0.25 },
                Case { cfg: None, cfg_ratio: 1.0, top_k: rng.range(2, vocab), top_p: 0.95, step: 0.125 },
                Case { cfg: None, cfg_ratio: 1.0, top_k: 1, top_p: 0.3, step: 0.5 },
                Case { cfg: None, cfg_ratio: 1.0, top_k: 0, top_p: 0.0, step: 1.0 / 1024.0 },
            ];
            for case in cases {
                let (batch, tokens) = (rng.range(1, 3), rng.range(1, 5));
                let rows_in = if case.cfg.is_some() { 2 * batch } else { batch };
                let logits = grid(&mut rng, rows_in * tokens * vocab, 2.0, case.step);
                let options = SampleOptions {
                    cfg: case.cfg,
                    cfg_ratio: case.cfg_ratio,
                    top_k: case.top_k,
                    top_p: case.top_p,
                    seed: rng.next_u64(),
                    step: rng.range(0, 9) as u32,
                    keep_filtered_logits: true,
                };
                let what = format!(
                    "{config} V={vocab} b{batch} t{tokens} cfg {:?} ratio {} top_k {} top_p {} grid {}",
                    case.cfg, case.cfg_ratio, case.top_k, case.top_p, case.step
                );
                let input = upload(device, &[rows_in, tokens, vocab], &logits);
                let out = sample::sample_tokens(&input, &options).expect("sample");
                assert_eq!(out.ids.shape(), [batch, tokens], "{what}");
                let filtered = out.filtered_logits.expect("filtered logits");
                assert_eq!(filtered.shape(), [batch, tokens, vocab], "{what}");
                let (ids, filtered) = (out.ids.to_vec_u32().unwrap(), filtered.to_vec_f32().unwrap());
                let without = SampleOptions { keep_filtered_logits: false, ..options.clone() };
                let plain = sample::sample_tokens(&input, &without).expect("sample");
                assert!(plain.filtered_logits.is_none());
                assert_eq!(plain.ids.to_vec_u32().unwrap(), ids, "{what}: ids depend on keep_filtered_logits");

                let want = reference::sample(&logits, tokens, vocab, &options);
                let guided = reference::guide(&logits, options.guidance());
                let key = reference::draw_key(options.seed, options.step);
                for (row, &id) in ids.iter().enumerate() {
                    let span = row * vocab..(row + 1) * vocab;
                    let what = format!("{what} row {row}");
                    let gpu_kept = check_filtered_row(
                        &filtered[span.clone()],
                        &guided[span.clone()],
                        case.top_k,
                        case.top_p,
                        &what,
                    );
                    let reference_row = &want.filtered[span.clone()];
                    // Top-k keeps whole tie groups, so a value both kept and removed is a top-p cut.
                    let removed: HashSet<u64> = reference_row
                        .iter()
                        .zip(&guided[span.clone()])
                        .filter(|(f, _)| !f.is_finite())
                        .map(|(_, g)| (g + 0.0).to_bits())
                        .collect();
                    let cut_inside_ties = reference_row
                        .iter()
                        .zip(&guided[span.clone()])
                        .any(|(f, g)| f.is_finite() && removed.contains(&(g + 0.0).to_bits()));
                    partial_tie_cuts += cut_inside_ties as usize;
                    let u = reference::uniform(key, (row % tokens) as u32, (row / tokens) as u32);
                    exact_draws += check_draw(id, &gpu_kept, &guided[span.clone()], case.top_k, u, &what) as usize;
                    draws += 1;
                    if id != want.ids[row] {
                        eprintln!("{what}: token {id} vs reference {} within the rounding band", want.ids[row]);
                    }
                }
            }
        }
        eprintln!(
            "{config}: {exact_draws} of {draws} draws equal the reference exactly; {partial_tie_cuts} rows cut \
             inside a tie"
        );
        assert!(partial_tie_cuts > 0, "{config}: no row exercised a top-p cut inside a group of equal values");
        assert!(exact_draws + 2 >= draws, "{config}: {} draws differ from the reference", draws - exact_draws);
    }
}

backend_tests! {
    fn cfg_with_a_non_dyadic_weight_matches_the_reference(device: &Device, config: &str) {
        let mut rng = Rng::for_config("sample_cfg", config);
        let (batch, tokens, vocab) = (2, 4, rng.range(300, 4096));
        let logits = rng.vec(2 * batch * tokens * vocab, 6.0);
        let options = SampleOptions {
            cfg: Some(4.0),
            cfg_ratio: 5.0 / 9.0,
            seed: 7,
            keep_filtered_logits: true,
            ..Default::default()
        };
        let out = sample::sample_tokens(&upload(device, &[2 * batch, tokens, vocab], &logits), &options).unwrap();
        let guided = reference::guide(&logits, options.guidance());
        let got = out.filtered_logits.unwrap().to_vec_f32().unwrap();
        assert_close(&got, &guided, Tol::for_dtype(DType::F32, 30.0), &format!("{config} guided logits"));
        let ids = out.ids.to_vec_u32().unwrap();
        let key = reference::draw_key(options.seed, options.step);
        for (row, &id) in ids.iter().enumerate() {
            let span = row * vocab..(row + 1) * vocab;
            let u = reference::uniform(key, (row % tokens) as u32, (row / tokens) as u32);
            check_draw(id, &vec![true; vocab], &guided[span], 0, u, &format!("{config} row {row}"));
        }
    }
}

backend_tests! {
    /// A row holding a NaN or +inf (or whose CFG combine overflows f32) gets id V whatever the
    /// filters, so the caller can tell it from every token; -inf logits are masked tokens, not faults.
    fn rows_with_nan_or_infinity_get_the_id_past_the_vocabulary(device: &Device, config: &str) {
        let mut rng = Rng::for_config("sample_non_finite", config);
        let vocab = rng.range(300, 1000);
        let tokens = 6;
        let mut logits = grid(&mut rng, 2 * tokens * vocab, 2.0, 0.25);
        // Conditional rows 1-5 (row 0 stays finite); the unconditional half is logits[tokens * vocab..].
        let at = |row: usize, c: usize| row * vocab + c;
        let c = rng.range(0, vocab);
        logits[at(1, c)] = f32::NAN;
        logits[at(2, vocab - 1)] = f32::INFINITY;
        // Masked in the conditional half only, and in both halves (-inf - t * -inf must not be NaN).
        for c in [0, 3, vocab / 2, vocab - 1] {
            logits[at(3, c)] = f32::NEG_INFINITY;
        }
        for c in [0, vocab / 2] {
            logits[tokens * vocab + at(3, c)] = f32::NEG_INFINITY;
        }
        for c in 0..vocab {
            logits[at(4, c)] = f32::NAN;
        }
        // Finite, but (1 + t) x - t y overflows f32 under CFG.
        logits[at(5, 7)] = 3.0e38;
        logits[tokens * vocab + at(5, 7)] = -3.0e38;
        let input = upload(device, &[2, tokens, vocab], &logits);
        let without_cfg = upload(device, &[1, tokens, vocab], &logits[..tokens * vocab]);
        let vocab_id = vocab as u32;
        for (top_k, top_p) in [(0, 0.0), (1, 0.0), (5, 0.0), (0, 0.9), (40, 0.8)] {
            for cfg in [None, Some(1.5)] {
                let what = format!("{config} V={vocab} top_k {top_k} top_p {top_p} cfg {cfg:?}");
                let options = SampleOptions { cfg, top_k, top_p, seed: 11, ..Default::default() };
                let on = if cfg.is_some() { &input } else { &without_cfg };
                let ids = sample::sample_tokens(on, &options).expect("sample").ids.to_vec_u32().unwrap();
                let want = reference::sample(if cfg.is_some() { &logits } else { &logits[..tokens * vocab] }, tokens, vocab, &options).ids;
                for row in [1, 2, 4] {
                    assert_eq!(ids[row], vocab_id, "{what}: row {row} holds a NaN or +inf");
                    assert_eq!(want[row], vocab_id, "{what}: the reference's row {row}");
                }
                // Row 3's -inf entries are masked tokens: a real token, never one of them.
                assert!(ids[3] < vocab_id && logits[at(3, ids[3] as usize)].is_finite(), "{what}: row 3 drew {}", ids[3]);
                assert!(ids[0] < vocab_id, "{what}: row 0 is finite");
                let overflow = if cfg.is_some() { vocab_id } else { ids[5] };
                assert_eq!(ids[5], overflow, "{what}: row 5's guided value overflows f32 only under CFG");
                assert!(cfg.is_some() || ids[5] < vocab_id, "{what}: row 5 is finite without CFG");
                if top_k == 1 {
                    for row in [0, 3] {
                        assert_eq!(ids[row], want[row], "{what}: argmax of row {row}");
                    }
                }
            }
        }
    }
}

backend_tests! {
    fn top_k_one_is_the_argmax_whatever_the_seed(device: &Device, config: &str) {
        let mut rng = Rng::for_config("sample_argmax", config);
        for vocab in [4096, 777, 3] {
            let (batch, tokens) = (2, 5);
            // Coarse values: the maximum is often tied and the lowest index must win.
            let logits = grid(&mut rng, 2 * batch * tokens * vocab, 2.0, 0.5);
            let input = upload(device, &[2 * batch, tokens, vocab], &logits);
            let guided = reference::guide(&logits, Some(1.5));
            let want: Vec<u32> = guided.chunks(vocab).map(|row| reference::argmax_row(row) as u32).collect();
            for seed in [0, 1, rng.next_u64()] {
                let options = SampleOptions { cfg: Some(3.0), cfg_ratio: 0.5, top_k: 1, seed, ..Default::default() };
                let ids = sample::sample_tokens(&input, &options).unwrap().ids.to_vec_u32().unwrap();
                assert_eq!(ids, want, "{config} V={vocab} seed {seed}");
            }
        }
    }
}

backend_tests! {
    /// Every configuration draws the tokens `wgpu_full` draws (the inputs are the same in every
    /// configuration: one seed for the test, whatever the configuration).
    fn same_seed_same_tokens_on_every_device_and_batch_size(device: &Device, config: &str) {
        let mut rng = Rng::for_test("sample_determinism");
        let (tokens, vocab) = (16, 4096);
        // Flat-ish logits: every draw has thousands of candidates.
        let logits = rng.vec(3 * tokens * vocab, 1.0);
        let options = SampleOptions { seed: 1234, step: 3, top_k: 900, ..Default::default() };
        let draw = |device: &Device| {
            let input = upload(device, &[3, tokens, vocab], &logits);
            sample::sample_tokens(&input, &options).unwrap().ids.to_vec_u32().unwrap()
        };
        let input = upload(device, &[3, tokens, vocab], &logits);
        let ids = sample::sample_tokens(&input, &options).unwrap().ids.to_vec_u32().unwrap();
        let again = sample::sample_tokens(&input, &options).unwrap().ids.to_vec_u32().unwrap();
        assert_eq!(ids, again, "{config}: same seed, different tokens");
        let two_rows = upload(device, &[2, tokens, vocab], &logits[..2 * tokens * vocab]);
        let fewer = sample::sample_tokens(&two_rows, &options).unwrap().ids.to_vec_u32().unwrap();
        assert_eq!(fewer, ids[..2 * tokens], "{config}: tokens depend on the batch size");
        for other in [SampleOptions { seed: 1235, ..options.clone() }, SampleOptions { step: 4, ..options.clone() }] {
            let differ = sample::sample_tokens(&input, &other).unwrap().ids.to_vec_u32().unwrap();
            let same = ids.iter().zip(&differ).filter(|(a, b)| a == b).count();
            assert!(same < ids.len() / 4, "{config}: {same} of {} tokens repeat for another seed or step", ids.len());
        }
        if config != WGPU_FULL {
            assert_eq!(ids, draw(full_device()), "{config}: tokens differ from {WGPU_FULL}'s");
        }
    }
}

backend_tests! {
    fn draws_follow_the_softmax_distribution(device: &Device, config: &str) {
        let probabilities = [0.1, 0.25, 0.05, 0.4, 0.2];
        let logits_row: Vec<f32> = probabilities.iter().map(|p: &f64| (p.ln() + 3.0) as f32).collect();
        let (batch, tokens) = (4, 5000);
        let draws = (batch * tokens) as f64;
        let logits: Vec<f32> = logits_row.iter().copied().cycle().take(batch * tokens * 5).collect();
        let input = upload(device, &[batch, tokens, 5], &logits);
        let options = SampleOptions { seed: 2024, step: 9, ..Default::default() };
        let ids = sample::sample_tokens(&input, &options).unwrap().ids.to_vec_u32().unwrap();
        for (token, &p) in probabilities.iter().enumerate() {
            let count = ids.iter().filter(|&&id| id as usize == token).count() as f64;
            let sigma = (draws * p * (1.0 - p)).sqrt();
            assert!(
                (count - draws * p).abs() <= 3.0 * sigma,
                "{config}: token {token} drawn {count} times, expected {} +- {:.1} (3 sigma)",
                draws * p,
                3.0 * sigma
            );
        }
        assert!(ids.iter().all(|&id| id < 5), "{config}: token out of range");
    }
}

/// Random123's known-answer vectors: (counter, key, words).
const PHILOX_KNOWN: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
    ([0u32; 4], [0u32; 2], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]),
    ([u32::MAX; 4], [u32::MAX; 2], [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]),
    (
        [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
        [0xa409_3822, 0x299f_31d0],
        [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
    ),
];

#[test]
fn philox_known_answers_and_mul_hi_lo_on_the_cpu() {
    for (counter, key, want) in PHILOX_KNOWN {
        assert_eq!(reference::philox4x32_10(counter, key), want, "Philox known answer for {counter:x?} {key:x?}");
    }
    let mut rng = Rng::for_test("philox");
    for _ in 0..10_000 {
        let (a, b) = (rng.next_u64() as u32, rng.next_u64() as u32);
        let wide = a as u64 * b as u64;
        assert_eq!(reference::mul_hi_lo(a, b), ((wide >> 32) as u32, wide as u32), "{a:#x} * {b:#x}");
    }
}

backend_tests! {
    fn philox_words_on_the_gpu_equal_the_cpu_reference(device: &Device, config: &str) {
        let known = PHILOX_KNOWN;
        let mut rng = Rng::for_config("philox_words", config);
        let random = [rng.next_u64() as u32, rng.next_u64() as u32, rng.next_u64() as u32, rng.next_u64() as u32];
        let cases = [
            (known[0].1, known[0].0),
            (known[1].1, [u32::MAX - 500, u32::MAX, u32::MAX, u32::MAX]),
            (known[2].1, known[2].0),
            ([rng.next_u64() as u32, rng.next_u64() as u32], random),
            (reference::draw_key(42, 7), [0, 3, 0, 0]),
        ];
        for (key, counter) in cases {
            let count = 1000;
            let got = sample::philox_words(device, key, counter, count).unwrap().to_vec_u32().unwrap();
            for i in 0..count {
                let c = [counter[0].wrapping_add(i as u32), counter[1], counter[2], counter[3]];
                assert_eq!(
                    got[4 * i..4 * i + 4],
                    reference::philox4x32_10(c, key),
                    "{config}: counter {c:x?} key {key:x?}"
                );
            }
        }
    }
}

backend_tests! {
    fn disabled_stages_and_empty_inputs(device: &Device, config: &str) {
        let mut rng = Rng::for_config("sample_disabled", config);
        let (tokens, vocab) = (3, 500);
        let logits = rng.vec(2 * tokens * vocab, 3.0);
        let input = upload(device, &[2, tokens, vocab], &logits);
        let run = |top_k, top_p| {
            let options = SampleOptions { top_k, top_p, seed: 5, keep_filtered_logits: true, ..Default::default() };
            let out = sample::sample_tokens(&input, &options).unwrap();
            (out.ids.to_vec_u32().unwrap(), out.filtered_logits.unwrap().to_vec_f32().unwrap())
        };
        let plain = run(0, 0.0);
        assert_eq!(plain.1, logits, "{config}: nothing filtered without top-k and top-p");
        assert_eq!(run(vocab, 0.0), plain, "{config}: top_k = V");
        assert_eq!(run(0, 1.0), plain, "{config}: top_p = 1");
        // A one-token vocabulary and a step with no tokens.
        let single = upload(device, &[2, 2, 1], &[0.5, -1.0, 3.0, 0.0]);
        for top_k in [0, 1] {
            let options = SampleOptions { top_k, top_p: 0.5, ..Default::default() };
            assert_eq!(sample::sample_tokens(&single, &options).unwrap().ids.to_vec_u32().unwrap(), [0; 4]);
        }
        let empty = Tensor::empty(device, &[4, 0, vocab], DType::F32).unwrap();
        let options = SampleOptions { cfg: Some(1.5), keep_filtered_logits: true, ..Default::default() };
        let out = sample::sample_tokens(&empty, &options).unwrap();
        assert_eq!(out.ids.shape(), [2, 0]);
        assert_eq!(out.filtered_logits.unwrap().shape(), [2, 0, vocab]);
    }
}

#[test]
fn bad_options_are_typed_errors_naming_the_values() {
    let device = full_device();
    let logits = upload(device, &[3, 2, 10], &[0.5; 60]);
    let even = upload(device, &[2, 2, 10], &[0.5; 40]);
    let invalid = |tensor: &Tensor, options: SampleOptions, needle: &str| {
        let err = sample::sample_tokens(tensor, &options).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { op: "sample_tokens", .. }), "{err:?}");
        assert!(err.to_string().contains(needle), "{err} should mention {needle:?}");
    };
    invalid(&even, SampleOptions { cfg: Some(-1.0), ..Default::default() }, "-1");
    invalid(&even, SampleOptions { cfg: Some(f32::NAN), ..Default::default() }, "NaN");
    invalid(&even, SampleOptions { cfg: Some(2.0), cfg_ratio: -0.5, ..Default::default() }, "-0.5");
    invalid(&even, SampleOptions { top_p: 1.5, ..Default::default() }, "1.5");
    invalid(&even, SampleOptions { top_p: -0.25, ..Default::default() }, "-0.25");
    invalid(&even, SampleOptions { top_p: f32::NAN, ..Default::default() }, "NaN");
    invalid(&even, SampleOptions { top_k: 11, ..Default::default() }, "11");
    invalid(&logits, SampleOptions { cfg: Some(1.5), ..Default::default() }, "3 rows");
    invalid(&upload(device, &[4, 10], &[0.0; 40]), SampleOptions::default(), "[4, 10]");
    let ids = Tensor::from_u32(device, &[1, 1, 4], &[0, 1, 2, 3]).unwrap();
    let err = sample::sample_tokens(&ids, &SampleOptions::default()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedDType { dtype: DType::U32, .. }), "{err:?}");
    if device.caps().f16 {
        let half = Tensor::from_f32(device, &[1, 1, 4], &[0.0; 4], DType::F16).unwrap();
        let err = sample::sample_tokens(&half, &SampleOptions::default()).unwrap_err();
        assert!(matches!(err, Error::UnsupportedDType { dtype: DType::F16, .. }), "{err:?}");
    }
    assert!(sample::sample_tokens(&logits, &SampleOptions { top_k: 10, ..Default::default() }).is_ok());
}
