//! Shared test support: the devices every op is checked on, fresh random inputs, and the
//! |got - want| <= atol + rtol * |want| comparison against float64 references.
#![allow(dead_code)]

use std::sync::OnceLock;

use scalewise::{DType, Device, DeviceOptions};

/// Each op runs on the adapter with every optional feature it has, and again with f16, subgroups and
/// timestamps switched off (the portable path). Outputs are NaN-poisoned at allocation.
pub fn devices() -> &'static [(&'static str, Device)] {
    static DEVICES: OnceLock<Vec<(&'static str, Device)>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        let base = DeviceOptions { poison_allocations: true, ..DeviceOptions::from_env().expect("valid environment") };
        let full = Device::new(&base).expect("a GPU adapter (install mesa-vulkan-drivers for software Vulkan)");
        let portable =
            Device::new(&DeviceOptions { allow_f16: false, allow_subgroups: false, allow_timestamps: false, ..base })
                .expect("a portable device");
        vec![("full", full), ("portable", portable)]
    })
}

/// The dtypes a device supports.
pub fn dtypes(device: &Device) -> Vec<DType> {
    if device.caps().f16 { vec![DType::F32, DType::F16] } else { vec![DType::F32] }
}

/// SplitMix64, seeded from the clock unless SCALEWISE_TEST_SEED is set; the seed is printed so a
/// failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(test: &str) -> Self {
        let seed = std::env::var("SCALEWISE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        });
        eprintln!("{test}: SCALEWISE_TEST_SEED={seed}");
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in lo..=hi.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Uniform in [-scale, scale).
    pub fn uniform(&mut self, scale: f32) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(scale)).collect()
    }
}

/// Tolerance for a result stored as `dtype`.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
}

impl Tol {
    /// f32 near 1e-5 relative; f16 storage near 1e-3 (one f16 rounding of the output is 4.9e-4).
    pub fn for_dtype(dtype: DType, magnitude: f64) -> Self {
        match dtype {
            DType::F16 => Tol { atol: 1e-3 * magnitude, rtol: 2e-3 },
            _ => Tol { atol: 1e-5 * magnitude, rtol: 1e-5 },
        }
    }
}

/// Fails on NaN (a poisoned element never written) and on values outside tolerance.
pub fn assert_close(got: &[f32], want: &[f64], tol: Tol, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}: element {i} should be NaN, got {g}");
            continue;
        }
        assert!(g.is_finite(), "{what}: element {i} is {g} (want {w}): unwritten or overflowed");
        let err = (g as f64 - w).abs();
        let excess = err - (tol.atol + tol.rtol * w.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "{what}: element {i} got {} want {} (|err| {:.3e}, {tol:?})",
            got[i],
            want[i],
            (got[i] as f64 - want[i]).abs()
        );
    }
}

/// (B, D, L) channels-major host data as (B, L, D).
pub fn to_tokens_major(x: &[f32], batch: usize, d: usize, l: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for c in 0..d {
            for t in 0..l {
                out[(b * l + t) * d + c] = x[(b * d + c) * l + t];
            }
        }
    }
    out
}

pub fn from_tokens_major(x: &[f32], batch: usize, d: usize, l: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..batch {
        for c in 0..d {
            for t in 0..l {
                out[(b * d + c) * l + t] = x[(b * l + t) * d + c];
            }
        }
    }
    out
}

/// Asserts that `err` is one `Error::Weights` listing exactly these missing, unexpected and
/// mis-shaped keys (name, expected shape, found shape), and that its message names every key and
/// both shapes of each mis-shaped one. Returns the message for further checks.
pub fn assert_weights_error(
    err: scalewise::Error,
    missing: &[&str],
    unexpected: &[&str],
    misshaped: &[(&str, &[usize], &[usize])],
) -> String {
    let text = err.to_string();
    let scalewise::Error::Weights {
        missing: got_missing, unexpected: got_unexpected, misshaped: got_misshaped, ..
    } = err
    else {
        panic!("not a Weights error: {text}")
    };
    assert_eq!(got_missing, missing, "{text}");
    assert_eq!(got_unexpected, unexpected, "{text}");
    let want: Vec<(String, Vec<usize>, Vec<usize>)> =
        misshaped.iter().map(|(k, want, got)| (k.to_string(), want.to_vec(), got.to_vec())).collect();
    assert_eq!(got_misshaped, want, "{text}");
    let shapes = misshaped.iter().flat_map(|(_, want, got)| [format!("{want:?}"), format!("{got:?}")]);
    for needle in missing
        .iter()
        .chain(unexpected)
        .map(|k| k.to_string())
        .chain(misshaped.iter().map(|m| m.0.to_string()))
        .chain(shapes)
    {
        assert!(text.contains(&needle), "{text} should mention {needle}");
    }
    text
}
