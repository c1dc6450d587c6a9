//! The VAR next-scale sampler step (spec VAR.md section 2, steps c-e), entirely on the GPU: CFG
//! combine, top-k, top-p and a multinomial draw, one workgroup of 256 threads per token row.
//!
//! Semantics (the official order; [`reference`] is the executable definition):
//! - CFG: logits (2B, T, V) with the conditional half first give
//!   guided = (1 + t) * cond - t * uncond, t = cfg * cfg_ratio (computed in f32). Without CFG the
//!   logits (B, T, V) are used as they are.
//! - top-k: keeps logits >= the k-th largest value, ties kept; k = 0 or k >= V disables it.
//! - top-p on the top-k survivors (the others are -inf): in the ascending order of (value, index),
//!   the prefix whose cumulative softmax mass is <= 1 - top_p is removed, never the last (largest)
//!   element. Equal values are ordered by index, so among ties at the cut the lowest indices go
//!   first. top_p <= 0 or >= 1 disables it (top_p = 1 removes only zero-mass elements officially).
//! - draw: u in [0, 1) from the top 24 bits of the first Philox4x32-10 word of counter
//!   (token index, batch row, 0, 0) under the key of (seed, step) ([`reference::draw_key`]); the
//!   token is the first index, in index order, whose cumulative filtered probability exceeds u.
//!   The stream of a batch row depends on neither the batch size nor the device.
//! - top_k = 1 is argmax: the lowest index among the kept maxima, independent of the RNG.
//!
//! The kernel finds the thresholds without sorting: bisection on an order-preserving u32 key of the
//! values with workgroup reductions of counts (top-k) and masses (top-p), then a bisection on the
//! index for the ties at the top-p cut. The result equals the sort-based definition up to f32
//! rounding of the masses; the draw scans the row in a fixed order that does not depend on subgroups.

use super::{elements, index_u32, launch, rows as row_grid};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::kernels::{Constants, Family, SampleParams};
use crate::tensor::{DType, Tensor};

/// How to sample one step. `Default`: no CFG, no top-k, no top-p, seed 0, step 0.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// Guidance scale; `None` means no CFG (the logits are (B, T, V) and used as they are).
    pub cfg: Option<f32>,
    /// Multiplies `cfg` (VAR ramps it as scale index / (scales - 1)).
    pub cfg_ratio: f32,
    /// 0 or >= V: no top-k.
    pub top_k: usize,
    /// In [0, 1]; 0 or 1: no top-p.
    pub top_p: f32,
    pub seed: u64,
    /// Keys the random stream together with `seed` (the scale index in VAR).
    pub step: u32,
    /// Also return the guided logits after filtering (-inf where removed), for smooth mode.
    pub keep_filtered_logits: bool,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self { cfg: None, cfg_ratio: 1.0, top_k: 0, top_p: 0.0, seed: 0, step: 0, keep_filtered_logits: false }
    }
}

impl SampleOptions {
    /// The CFG weight t = cfg * cfg_ratio in f32, as the kernel uses it; `None` without CFG.
    pub fn guidance(&self) -> Option<f32> {
        self.cfg.map(|cfg| cfg * self.cfg_ratio)
    }
}

/// What [`sample_tokens`] produces, on the logits' device.
#[derive(Debug)]
pub struct SampleOutput {
    /// (B, T) u32 token ids.
    pub ids: Tensor,
    /// (B, T, V) f32 guided logits with -inf where filtered, when `keep_filtered_logits` is set.
    /// A new tensor: with CFG its shape differs from the input's, and the caller's logits stay intact.
    pub filtered_logits: Option<Tensor>,
}

const OP: &str = "sample_tokens";

fn invalid(msg: String) -> Error {
    Error::InvalidArgument { op: OP, msg }
}

/// One sampler step on logits (2B, T, V) with CFG or (B, T, V) without; see the module docs.
///
/// A row whose guided logits hold a NaN or +inf (from the model, or from the CFG combine overflowing
/// f32) has no distribution to draw from: its id is V, outside the vocabulary, whatever the other
/// options (the generation loop reports it as an error naming the scale), and its filtered logits,
/// when kept, are unspecified. -inf is not a fault: a logit of -inf is a token of probability 0, and
/// with CFG a token whose conditional logit is -inf stays masked whatever its unconditional one (PyTorch's
/// `(1 + t) x - t y` would make a token masked in both halves NaN).
pub fn sample_tokens(logits: &Tensor, options: &SampleOptions) -> Result<SampleOutput> {
    if logits.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType { op: OP, dtype: logits.dtype(), expected: "f32" });
    }
    let &[rows_in, tokens, vocab] = logits.shape() else {
        return Err(invalid(format!(
            "logits must be (B, T, V) or (2B, T, V) with CFG, got shape {:?}",
            logits.shape()
        )));
    };
    if vocab == 0 {
        return Err(invalid(format!("logits have an empty vocabulary (shape {:?})", logits.shape())));
    }
    let batch = match options.cfg {
        Some(cfg) => {
            if !cfg.is_finite() || cfg < 0.0 {
                return Err(invalid(format!("cfg must be finite and >= 0, got {cfg}")));
            }
            if !options.cfg_ratio.is_finite() || options.cfg_ratio < 0.0 {
                return Err(invalid(format!("cfg_ratio must be finite and >= 0, got {}", options.cfg_ratio)));
            }
            // Each finite, the product may not be: an infinite t makes every guided logit NaN.
            if !(cfg * options.cfg_ratio).is_finite() {
                return Err(invalid(format!(
                    "the guidance cfg * cfg_ratio = {cfg} * {} overflows f32",
                    options.cfg_ratio
                )));
            }
            if !rows_in.is_multiple_of(2) {
                return Err(invalid(format!(
                    "CFG needs the conditional and unconditional halves stacked (2B rows), got {rows_in} rows \
                     in shape {:?}",
                    logits.shape()
                )));
            }
            rows_in / 2
        }
        None => rows_in,
    };
    if !(0.0..=1.0).contains(&options.top_p) {
        return Err(invalid(format!("top_p must be in [0, 1], got {}", options.top_p)));
    }
    if options.top_k > vocab {
        return Err(invalid(format!("top_k = {} exceeds the vocabulary size V = {vocab}", options.top_k)));
    }
    index_u32(OP, "logits elements", logits.numel())?;
    let rows = batch * tokens;
    let device = logits.device();
    let ids = Tensor::empty(device, &[batch, tokens], DType::U32)?;
    let cfg = options.cfg.is_some();
    let keep = options.keep_filtered_logits;
    // With CFG the kernel stores the guided values first, so it needs the full buffer either way.
    let filtered = if cfg || keep {
        Tensor::empty(device, &[batch, tokens, vocab], DType::F32)?
    } else {
        Tensor::empty(device, &[1], DType::F32)?
    };
    if rows == 0 {
        return Ok(SampleOutput { ids, filtered_logits: keep.then_some(filtered) });
    }
    let top_k = if options.top_k >= vocab { 0 } else { options.top_k };
    let top_p = if options.top_p > 0.0 && options.top_p < 1.0 { options.top_p } else { 0.0 };
    let key = reference::draw_key(options.seed, options.step);
    let constants = Constants::new(Family::Sample).set("CFG", cfg).set("KEEP_FILTERED", keep);
    let params = SampleParams {
        counter_base: [0; 4],
        rows: rows as u32,
        tokens: tokens as u32,
        vocab: vocab as u32,
        top_k: top_k as u32,
        top_p,
        cfg_t: options.guidance().unwrap_or(0.0),
        key0: key[0],
        key1: key[1],
        uncond_offset: (rows * vocab) as u32,
    };
    let bindings = [logits.arg("logits"), ids.arg_mut("ids"), filtered.arg_mut("filtered")];
    launch(logits, Family::Sample, "sample", DType::F32, &constants, &bindings, &params, row_grid(rows))?;
    Ok(SampleOutput { ids, filtered_logits: keep.then_some(filtered) })
}

/// The kernel's Philox4x32-10 words for the counters (counter\[0\] + i, counter\[1..4\]), i < count:
/// a (count, 4) u32 tensor. Exposed to check the WGSL generator against [`reference::philox4x32_10`].
pub fn philox_words(device: &Device, key: [u32; 2], counter: [u32; 4], count: usize) -> Result<Tensor> {
    const OP: &str = "philox_words";
    index_u32(OP, "words", count.saturating_mul(4))?;
    let out = Tensor::empty(device, &[count, 4], DType::U32)?;
    let unused_in = Tensor::empty(device, &[1], DType::F32)?;
    let unused_out = Tensor::empty(device, &[1], DType::F32)?;
    let params =
        SampleParams { counter_base: counter, rows: count as u32, key0: key[0], key1: key[1], ..Default::default() };
    let bindings = [unused_in.arg("unused"), out.arg_mut("words"), unused_out.arg_mut("unused")];
    let constants = Constants::new(Family::Sample);
    launch(&out, Family::Sample, "philox_words", DType::F32, &constants, &bindings, &params, elements(count))?;
    Ok(out)
}

/// Smooth mode (VAR's `more_smooth`): per row, softmax((logits * mul + g) / tau) with a Gumbel draw g
/// per element from the (seed, step) stream, on filtered logits (B, T, V) f32 (-inf entries get
/// probability 0). Returns the probabilities (B, T, V); times a codebook they give the soft token
/// embeddings.
pub fn gumbel_softmax(logits: &Tensor, mul: f32, tau: f32, seed: u64, step: u32) -> Result<Tensor> {
    const OP: &str = "gumbel_softmax";
    if logits.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType { op: OP, dtype: logits.dtype(), expected: "f32" });
    }
    let [batch, tokens, vocab] = logits.dims(OP, "logits (B, T, V)")?;
    if !(tau.is_finite() && tau > 0.0 && mul.is_finite()) {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("tau must be > 0 and finite (got {tau}), mul finite (got {mul})"),
        });
    }
    index_u32(OP, "logits elements", logits.numel())?;
    let device = logits.device();
    let probs = Tensor::empty(device, logits.shape(), DType::F32)?;
    let rows = batch * tokens;
    if rows == 0 || vocab == 0 {
        return Ok(probs);
    }
    let unused = Tensor::empty(device, &[1], DType::U32)?;
    let key = reference::draw_key(seed, step);
    // gumbel_softmax reads tau from the top_p slot and the logit multiplier from cfg_t.
    let params = SampleParams {
        rows: rows as u32,
        tokens: tokens as u32,
        vocab: vocab as u32,
        top_p: tau,
        cfg_t: mul,
        key0: key[0],
        key1: key[1],
        ..Default::default()
    };
    let bindings = [logits.arg("logits"), unused.arg_mut("unused"), probs.arg_mut("probs")];
    let constants = Constants::new(Family::Sample);
    launch(logits, Family::Sample, "gumbel_softmax", DType::F32, &constants, &bindings, &params, row_grid(rows))?;
    Ok(probs)
}

/// The float64 definition: CFG, the sort-based top-k / top-p, Philox and the inverse-CDF draw.
pub mod reference {
    use super::SampleOptions;

    pub const PHILOX_M: [u32; 2] = [0xD251_1F53, 0xCD9E_8D57];
    pub const PHILOX_W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];
    /// Counter word that separates key derivation from draws ("SMPL").
    pub const KEY_DOMAIN: u32 = 0x534D_504C;

    /// (high, low) words of a * b from 16-bit halves, exactly as the WGSL does it.
    pub fn mul_hi_lo(a: u32, b: u32) -> (u32, u32) {
        let (a_lo, a_hi, b_lo, b_hi) = (a & 0xFFFF, a >> 16, b & 0xFFFF, b >> 16);
        let (ll, lh, hl, hh) = (a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi);
        let carry = ((ll >> 16) + (lh & 0xFFFF) + (hl & 0xFFFF)) >> 16;
        (hh.wrapping_add(lh >> 16).wrapping_add(hl >> 16).wrapping_add(carry), a.wrapping_mul(b))
    }

    /// Philox4x32-10 (Salmon, Moraes, Dror, Shaw 2011; Random123's reference).
    pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
        let (mut c, mut k) = (counter, key);
        for _ in 0..10 {
            let (hi0, lo0) = mul_hi_lo(PHILOX_M[0], c[0]);
            let (hi1, lo1) = mul_hi_lo(PHILOX_M[1], c[2]);
            c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
            k = [k[0].wrapping_add(PHILOX_W[0]), k[1].wrapping_add(PHILOX_W[1])];
        }
        c
    }

    /// The key of one (seed, step): the first two words of Philox under the key (seed low, seed high)
    /// at counter (step, KEY_DOMAIN, 0, 0).
    pub fn draw_key(seed: u64, step: u32) -> [u32; 2] {
        let words = philox4x32_10([step, KEY_DOMAIN, 0, 0], [seed as u32, (seed >> 32) as u32]);
        [words[0], words[1]]
    }

    /// The Gumbel-softmax probabilities of one row (see [`super::gumbel_softmax`]).
    pub fn gumbel_softmax_row(row: &[f32], mul: f32, tau: f32, key: [u32; 2], token: u32, batch_row: u32) -> Vec<f64> {
        let z: Vec<f64> = row
            .iter()
            .enumerate()
            .map(|(c, &x)| {
                if x == f32::NEG_INFINITY {
                    return f64::NEG_INFINITY;
                }
                let word = philox4x32_10([token, batch_row, c as u32, 1], key)[0];
                let u = ((word >> 8) as f64 + 0.5) / (1u64 << 24) as f64;
                (x as f64 * mul as f64 - (-u.ln()).ln()) / tau as f64
            })
            .collect();
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
        let total: f64 = e.iter().sum();
        e.iter().map(|v| v / total).collect()
    }

    /// u in [0, 1) with 24 bits for (token, batch row) under `key`.
    pub fn uniform(key: [u32; 2], token: u32, batch_row: u32) -> f64 {
        (philox4x32_10([token, batch_row, 0, 0], key)[0] >> 8) as f64 / (1u64 << 24) as f64
    }

    /// Guided logits (B * T * V) from logits (2B, T, V) with weight t, or the logits themselves.
    pub fn guide(logits: &[f32], t: Option<f32>) -> Vec<f64> {
        match t {
            None => logits.iter().map(|&x| x as f64).collect(),
            Some(t) => {
                let t = t as f64;
                let (cond, uncond) = logits.split_at(logits.len() / 2);
                // A token masked in the conditional half stays masked (as the kernels do).
                cond.iter()
                    .zip(uncond)
                    .map(
                        |(&x, &y)| {
                            if x == f32::NEG_INFINITY { f64::NEG_INFINITY } else { (1.0 + t) * x as f64 - t * y as f64 }
                        },
                    )
                    .collect()
            }
        }
    }

    /// top-k then top-p on one row (-inf where removed), with the options' conventions: top_k = 0 or
    /// >= V and top_p outside (0, 1) disable the stage.
    pub fn filter_row(row: &[f64], top_k: usize, top_p: f64) -> Vec<f64> {
        let tail = (top_p > 0.0 && top_p < 1.0).then_some(1.0 - top_p);
        filter_row_tail(row, top_k, tail)
    }

    /// `filter_row` with the top-p tail mass given directly (`None`: no top-p).
    pub fn filter_row_tail(row: &[f64], top_k: usize, tail: Option<f64>) -> Vec<f64> {
        let mut out = row.to_vec();
        if top_k > 0 && top_k < row.len() {
            let mut sorted = row.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[top_k - 1];
            for v in &mut out {
                if *v < kth {
                    *v = f64::NEG_INFINITY;
                }
            }
        }
        if let Some(tail) = tail {
            let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = out.iter().map(|&v| (v - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            let mut order: Vec<usize> = (0..row.len()).collect();
            // -0 and +0 are equal values, ordered by index like any other tie.
            order.sort_by(|&a, &b| (out[a] + 0.0).total_cmp(&(out[b] + 0.0)).then(a.cmp(&b)));
            let mut cumulative = 0.0;
            let mut remove = Vec::new();
            for &i in &order[..order.len() - 1] {
                cumulative += exps[i] / total;
                if cumulative <= tail {
                    remove.push(i);
                }
            }
            for i in remove {
                out[i] = f64::NEG_INFINITY;
            }
        }
        out
    }

    /// The first index whose cumulative probability (index order) exceeds u.
    pub fn draw_row(filtered: &[f64], u: f64) -> usize {
        let max = filtered.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = filtered.iter().map(|&v| (v - max).exp()).collect();
        let target = u * weights.iter().sum::<f64>();
        let mut cumulative = 0.0;
        for (i, &w) in weights.iter().enumerate() {
            cumulative += w;
            if cumulative > target {
                return i;
            }
        }
        weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
    }

    /// The lowest index of the maximum.
    pub fn argmax_row(row: &[f64]) -> usize {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        row.iter().position(|&v| v == max).unwrap_or(0)
    }

    /// The reference's results for one call.
    pub struct Sampled {
        /// (B, T) token ids.
        pub ids: Vec<u32>,
        /// (B, T, V) guided logits, -inf where filtered.
        pub filtered: Vec<f64>,
    }

    /// The whole step on logits of shape (rows_in, tokens, vocab), as [`super::sample_tokens`].
    pub fn sample(logits: &[f32], tokens: usize, vocab: usize, options: &SampleOptions) -> Sampled {
        let guided = guide(logits, options.guidance());
        let key = draw_key(options.seed, options.step);
        let mut ids = Vec::new();
        let mut filtered = Vec::with_capacity(guided.len());
        for (row, values) in guided.chunks(vocab).enumerate() {
            let kept = filter_row(values, options.top_k, options.top_p as f64);
            // The kernel's f32 guided value: NaN or +inf there (an overflow included) means no token.
            let no_token = values.iter().any(|&v| (v as f32).is_nan() || v as f32 == f32::INFINITY);
            let id = if no_token {
                vocab
            } else if options.top_k == 1 {
                argmax_row(&kept)
            } else {
                draw_row(&kept, uniform(key, (row % tokens) as u32, (row / tokens) as u32))
            };
            ids.push(id as u32);
            filtered.extend(kept);
        }
        Sampled { ids, filtered }
    }
}
