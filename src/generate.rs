//! Next-scale generation (spec VAR.md section 2): a transformer (VAR, or M-VAR whose generation loop
//! is VAR's line for line, spec MVAR.md) and the multi-scale VQVAE driven scale by scale.
//! [`Generation`] is an iterator that yields after every scale with the token map, the GPU time of
//! each stage and, on request, the image decoded from the current f_hat, so a UI can show the picture
//! sharpen while it is generated.
//!
//! ```no_run
//! # fn main() -> scalewise::Result<()> {
//! use scalewise::generate::{GenerateOptions, Pipeline};
//! let device = scalewise::Device::from_env()?;
//! // A VAR or an M-VAR checkpoint: the pipeline tells them apart by their keys.
//! let pipeline = Pipeline::load(&device, "var_d16.pth", "vae_ch160v4096z32.pth", None)?;
//! let options = GenerateOptions { labels: vec![207], seed: 1, ..GenerateOptions::default() };
//! let mut generation = pipeline.start(&options)?;
//! for step in generation.by_ref() {
//!     let step = step?;
//!     println!("scale {} ({}x{}): {:.1} ms", step.index, step.side, step.side, step.times.total_ms());
//! }
//! let images = generation.decode()?;
//! images[0].save_png("out.png")?;
//! # Ok(()) }
//! ```

use std::path::Path;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::nn::mvar::{BlockPart, MvarConditions, MvarState, is_mvar};
use crate::nn::var::{VarConditions, VarKvCache};
use crate::nn::{MvarConfig, MvarModel, ScaleHistory, VarConfig, VarModel, VqVae};
use crate::ops::matmul;
use crate::ops::sample::{SampleOptions, gumbel_softmax, sample_tokens};
use crate::tensor::{DType, Tensor};
use crate::weights::{LoadOptions, Weights, WeightsFile};

/// The largest batch a generation accepts whatever the adapter, a bound on host-side bookkeeping (labels,
/// token lists, images) before any buffer is sized.
pub const MAX_BATCH: usize = 4096;

/// A transformer and the VQVAE it was trained with.
pub struct Pipeline {
    pub transformer: Transformer,
    pub vae: VqVae,
}

/// The transformer a pipeline drives. M-VAR shares everything outside its blocks with VAR (class
/// conditions, scale inputs, head), so one generation loop serves both; what differs is what the
/// blocks carry between scales: VAR's KV cache, M-VAR's Mamba-2 state.
pub enum Transformer {
    Var(VarModel),
    Mvar(MvarModel),
}

impl From<VarModel> for Transformer {
    fn from(model: VarModel) -> Self {
        Self::Var(model)
    }
}

impl From<MvarModel> for Transformer {
    fn from(model: MvarModel) -> Self {
        Self::Mvar(model)
    }
}

impl Transformer {
    /// Loads whichever transformer `sd` holds: M-VAR when some block has a Mamba-2 layer (M-VAR's
    /// inference then refuses a mix of VAR and M-VAR blocks), else VAR.
    pub fn from_state_dict(device: &Device, sd: &dyn Weights, dtype: DType) -> Result<Self> {
        if is_mvar(sd) {
            MvarModel::from_state_dict(device, sd, dtype).map(Self::Mvar)
        } else {
            VarModel::from_state_dict(device, sd, dtype).map(Self::Var)
        }
    }

    /// The configuration of a VAR or M-VAR checkpoint (the parts they share) without a device.
    pub fn infer_config(sd: &dyn Weights) -> Result<VarConfig> {
        if is_mvar(sd) { MvarConfig::infer(sd).map(|c| c.base) } else { VarConfig::infer(sd) }
    }

    /// Depth, width, classes, vocabulary, schedule: what VAR and M-VAR have in common.
    pub fn config(&self) -> &VarConfig {
        match self {
            Self::Var(model) => &model.config,
            Self::Mvar(model) => &model.config.base,
        }
    }

    /// Storage type of the weights and activations.
    pub fn dtype(&self) -> DType {
        match self {
            Self::Var(model) => model.dtype,
            Self::Mvar(model) => model.dtype,
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Self::Var(model) => model.device(),
            Self::Mvar(model) => model.device(),
        }
    }

    /// "VAR" or "M-VAR".
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Var(_) => "VAR",
            Self::Mvar(_) => "M-VAR",
        }
    }
}

/// "VAR d16", "M-VAR d24, cosine attention", "M-VAR d16, plain attention".
impl std::fmt::Display for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} d{}", self.kind(), self.config().depth)?;
        match self {
            Self::Var(_) => Ok(()),
            Self::Mvar(model) => {
                write!(f, ", {} attention", if model.config.cosine_attention { "cosine" } else { "plain" })
            }
        }
    }
}

/// A transformer's per-generation state: the conditions of the batch's classes and what the blocks
/// carry from scale to scale (VAR's KV cache; M-VAR's Mamba-2 state, one per batch row, so the CFG
/// halves stay separate).
enum Session<'a> {
    Var { model: &'a VarModel, conditions: VarConditions, cache: VarKvCache },
    Mvar { model: &'a MvarModel, conditions: MvarConditions, state: MvarState },
}

impl<'a> Session<'a> {
    /// The session for class `labels` (2B with CFG) and the input of scale 0.
    fn start(transformer: &'a Transformer, labels: &[u32], history: ScaleHistory) -> Result<(Self, Tensor)> {
        Ok(match transformer {
            Transformer::Var(model) => {
                let conditions = model.conditions(labels)?;
                let cache = model.new_cache(labels.len())?;
                let first = model.first_input(&conditions)?;
                (Self::Var { model, conditions, cache }, first)
            }
            Transformer::Mvar(model) => {
                let conditions = model.conditions(labels)?;
                let state = model.new_state(labels.len(), history);
                let first = model.first_input(&conditions)?;
                (Self::Mvar { model, conditions, state }, first)
            }
        })
    }

    /// The f32 logits of the next scale's tokens `x`; `entering` is told where M-VAR's blocks move
    /// into and out of their Mamba-2 layers (VAR has none).
    fn forward(&mut self, x: &Tensor, entering: impl FnMut(BlockPart) -> Result<()>) -> Result<Tensor> {
        match self {
            Self::Var { model, conditions, cache } => model.forward(x, conditions, cache),
            Self::Mvar { model, conditions, state } => model.forward_with(x, conditions, state, entering),
        }
    }

    fn scale_input(&self, si: usize, token_map: &Tensor, cfg_halves: bool) -> Result<Tensor> {
        match self {
            Self::Var { model, .. } => model.scale_input(si, token_map, cfg_halves),
            Self::Mvar { model, .. } => model.scale_input(si, token_map, cfg_halves),
        }
    }
}

/// The largest [`GenerateOptions::cfg`] a generation takes. The guided logits are
/// (1 + t) * cond - t * uncond in f32; a finite but huge t overflows them to infinities and NaN,
/// which sample no token (VAR's published settings are 1.5 to 5; 10^6 keeps logits below 10^32 finite).
pub const MAX_CFG: f32 = 1.0e6;

/// How to generate. `Default`: the official demo's settings (cfg 4, top-k 900, top-p 0.95).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// One class label per image (the batch).
    pub labels: Vec<usize>,
    pub seed: u64,
    /// Classifier-free guidance; ramps linearly from 0 at the first scale to `cfg` at the last. 0
    /// turns guidance off (and skips the unconditional half). At most [`MAX_CFG`].
    pub cfg: f32,
    /// 0: no top-k; 1: argmax; at or above the vocabulary size every token is kept (so the default,
    /// the official 900, also suits models with smaller codebooks).
    pub top_k: usize,
    /// In [0, 1]; 0 or 1: no top-p.
    pub top_p: f32,
    /// The official `more_smooth` mode: Gumbel-softmax mixtures of codebook vectors feed f_hat.
    pub smooth: bool,
    /// Decode f_hat after every scale (costs a full decoder pass each).
    pub preview_every_scale: bool,
    /// With `preview_every_scale`: every scale but the last decodes f_hat area-downsampled to its own
    /// token-map side, a smaller image (side x the decoder's upsampling) at (side / latent side)^2 of
    /// a full decode's cost; the last scale's preview is the exact final image. For a viewer that
    /// shows each scale as it comes (the app): about 1.7 decodes' worth of previews at 256px instead
    /// of 9.
    pub preview_reduced: bool,
    /// Return every scale's raw logits (2B or B, n, V) (tests, analysis).
    pub keep_logits: bool,
    /// Time each stage: GPU timestamps where the device has them, else the wall clock with a wait at
    /// the end of each stage. Turn it off to measure end-to-end latency (the times are then zero).
    /// The profiler belongs to the device, so generations profiled at the same time on one device
    /// from several threads get approximate times (their results are unaffected).
    pub profile_stages: bool,
    /// How M-VAR's Mamba-2 layers see the earlier scales: their state carried (the default: every
    /// token steps through each layer once) or, as the official inference does, the whole prefix
    /// recomputed at every scale. The two differ only by float reassociation. VAR ignores it.
    pub scale_history: ScaleHistory,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            labels: vec![0],
            seed: 0,
            cfg: 4.0,
            top_k: 900,
            top_p: 0.95,
            smooth: false,
            preview_every_scale: false,
            preview_reduced: false,
            keep_logits: false,
            profile_stages: true,
            scale_history: ScaleHistory::CarryState,
        }
    }
}

/// GPU time of one scale's stages in milliseconds (timestamps where the adapter has them).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// The transformer, less its Mamba-2 layers (which only M-VAR has).
    pub transformer_ms: f64,
    /// M-VAR's Mamba-2 layers with their input norms (and the prefix concatenation when the prefix
    /// is recomputed); 0 for VAR.
    pub mamba_ms: f64,
    pub sampling_ms: f64,
    /// Codebook lookup, Phi, f_hat accumulation and the next scale's input.
    pub accumulate_ms: f64,
    /// The preview decode, when one was asked for.
    pub decode_ms: f64,
}

impl std::ops::AddAssign for StageTimes {
    fn add_assign(&mut self, other: Self) {
        self.transformer_ms += other.transformer_ms;
        self.mamba_ms += other.mamba_ms;
        self.sampling_ms += other.sampling_ms;
        self.accumulate_ms += other.accumulate_ms;
        self.decode_ms += other.decode_ms;
    }
}

impl StageTimes {
    pub fn total_ms(&self) -> f64 {
        self.transformer_ms + self.mamba_ms + self.sampling_ms + self.accumulate_ms + self.decode_ms
    }
}

/// What one scale produced.
#[derive(Debug, Clone)]
pub struct ScaleStep {
    pub index: usize,
    pub scales: usize,
    /// Token-map side.
    pub side: usize,
    /// (B, side * side) token ids, row-major per image.
    pub tokens: Vec<u32>,
    pub times: StageTimes,
    /// Decoded from f_hat after this scale, when `preview_every_scale` is set.
    pub images: Option<Vec<Image>>,
    /// Raw logits (2B with CFG, side * side, V), when `keep_logits` is set.
    pub logits: Option<Vec<f32>>,
}

impl Pipeline {
    /// Pairs a transformer (a [`VarModel`] or an [`MvarModel`]) with its VQVAE, checking that they
    /// fit together.
    pub fn new(transformer: impl Into<Transformer>, vae: VqVae) -> Result<Self> {
        let transformer = transformer.into();
        let (vc, ac) = (transformer.config(), &vae.config);
        if vc.vocab != ac.vocab || vc.cvae != ac.cvae {
            return Err(Error::InvalidArgument {
                op: "Pipeline",
                msg: format!(
                    "the {} model predicts {} tokens of {} channels but the VQVAE codebook is {} x {}: they were not \
                     trained together",
                    transformer.kind(),
                    vc.vocab,
                    vc.cvae,
                    ac.vocab,
                    ac.cvae
                ),
            });
        }
        // The matrix units' self-check runs once per device, at the first f16 matmul that could use
        // them: here, so that its dispatches and readbacks land at load time, not inside the first
        // generation's stages. Its outcome (kept by the device) decides the kernels; not an error.
        let device = transformer.device();
        if transformer.dtype() == DType::F16 && device.caps().matrix_units == crate::MatrixUnits::Native {
            let _ = crate::ops::matmul::matrix_units_verified(device);
        }
        // The convolutions' own check, likewise, before the first decode.
        if vae.dtype == DType::F16 && device.caps().matrix_units == crate::MatrixUnits::Native {
            let _ = crate::ops::conv_units_verified(device);
        }
        Ok(Self { transformer, vae })
    }

    /// Loads both checkpoints (safetensors or .pth); the transformer is VAR or M-VAR, told apart by
    /// its keys. `dtype` defaults to f16 where the device has SHADER_F16, else f32.
    pub fn load(device: &Device, var: impl AsRef<Path>, vae: impl AsRef<Path>, dtype: Option<DType>) -> Result<Self> {
        Self::load_with(device, var, vae, dtype, &LoadOptions::default())
    }

    /// [`Pipeline::load`] with explicit limits and checks for reading the files.
    pub fn load_with(
        device: &Device,
        var: impl AsRef<Path>,
        vae: impl AsRef<Path>,
        dtype: Option<DType>,
        options: &LoadOptions,
    ) -> Result<Self> {
        let dtype = dtype.unwrap_or(device.preferred_float());
        // Streamed: each tensor is read, converted and uploaded, then dropped, so the host never holds
        // more than one tensor of a checkpoint (WeightsFile).
        let vae = VqVae::from_state_dict(device, &WeightsFile::open(vae, options)?, dtype)?;
        let transformer = Transformer::from_state_dict(device, &WeightsFile::open(var, options)?, dtype)?;
        Self::new(transformer, vae)
    }

    pub fn device(&self) -> &Device {
        self.transformer.device()
    }

    /// The transformer's configuration (classes, vocabulary, schedule...).
    pub fn config(&self) -> &VarConfig {
        self.transformer.config()
    }

    /// Output image side in pixels.
    pub fn image_size(&self) -> usize {
        self.config().latent_side() * self.vae.config.upscale()
    }

    /// Checks options against the model: one clear error per problem.
    pub fn validate(&self, options: &GenerateOptions) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument { op: "generate", msg });
        let config = self.config();
        if options.labels.is_empty() {
            return bad("no class labels given (the batch is empty)".into());
        }
        if let Some(&label) = options.labels.iter().find(|&&l| l >= config.num_classes) {
            return bad(format!(
                "class {label} is outside 0..={} (this model has {} classes)",
                config.num_classes - 1,
                config.num_classes
            ));
        }
        if !options.cfg.is_finite() || !(0.0..=MAX_CFG).contains(&options.cfg) {
            return bad(format!("cfg must be a finite number in 0..={MAX_CFG:e}, got {}", options.cfg));
        }
        if !(0.0..=1.0).contains(&options.top_p) {
            return bad(format!("top-p must be in [0, 1], got {}", options.top_p));
        }
        self.check_batch(options.labels.len(), options.cfg > 0.0, options.scale_history)
    }

    /// The most images one generation may hold on this device: every buffer a generation of `batch`
    /// images allocates must fit the adapter's per-binding limit. Checked before anything is allocated,
    /// so an oversized batch is one clear error instead of a failure deep inside a kernel (or an
    /// allocation the machine cannot survive). For M-VAR, with the default scale history (carried
    /// state); see [`Pipeline::max_batch_with`].
    pub fn max_batch(&self, cfg: bool) -> usize {
        self.max_batch_with(cfg, ScaleHistory::default())
    }

    /// [`Pipeline::max_batch`] for an M-VAR scale history: recomputing the prefix runs Mamba-2 over
    /// every scale so far, so its buffers grow with the whole sequence (VAR ignores `history`).
    pub fn max_batch_with(&self, cfg: bool, history: ScaleHistory) -> usize {
        let per_image = self.largest_buffer_per_image(cfg, history);
        let limit = self.device().caps().max_arg_bytes.min(self.device().caps().max_buffer_bytes);
        let by_memory = usize::try_from(limit / per_image.max(1)).unwrap_or(usize::MAX);
        by_memory.min(MAX_BATCH)
    }

    fn check_batch(&self, batch: usize, cfg: bool, history: ScaleHistory) -> Result<()> {
        let max = self.max_batch_with(cfg, history);
        if batch > max {
            let per_image = self.largest_buffer_per_image(cfg, history);
            return Err(Error::InvalidArgument {
                op: "generate",
                msg: format!(
                    "a batch of {batch} images is more than this model runs on this adapter: at most {max} (each image \
                     needs buffers of up to {per_image} bytes{}, and the adapter binds at most {} bytes per buffer)",
                    if cfg { " with CFG" } else { "" },
                    self.device().caps().max_arg_bytes.min(self.device().caps().max_buffer_bytes),
                ),
            });
        }
        Ok(())
    }

    /// The largest buffer one image contributes to: logits, the FFN's hidden activations, the
    /// decoder's largest buffer ([`VqVaeConfig::largest_decode_buffer`]), and what the blocks carry: VAR's KV cache of a block; M-VAR's
    /// Mamba-2 in_proj output (over the scale, or over every scale so far when the prefix is
    /// recomputed, which also keeps that multi-scale sequence) and its f32 SSM state (saturating: a
    /// model too large for the arithmetic cannot run a single image anyway).
    fn largest_buffer_per_image(&self, cfg: bool, history: ScaleHistory) -> u64 {
        let (v, a) = (self.config(), &self.vae.config);
        let halves: u64 = if cfg { 2 } else { 1 };
        let last = (v.latent_side() as u64).saturating_mul(v.latent_side() as u64);
        let tokens = v.seq_len() as u64;
        let weight_bytes = self.transformer.dtype().size_in_bytes() as u64;
        let rows = |n: u64, width: usize, bytes: u64| {
            halves.saturating_mul(n).saturating_mul(width as u64).saturating_mul(bytes)
        };
        let mut sizes =
            vec![rows(last, v.vocab, 4), rows(last, v.mlp_hidden, 4), a.largest_decode_buffer(self.image_size())];
        match &self.transformer {
            Transformer::Var(_) => sizes.push(rows(tokens, v.width, weight_bytes)),
            Transformer::Mvar(model) => {
                let m = &model.config.mamba;
                let mamba_tokens = match history {
                    ScaleHistory::CarryState => last,
                    ScaleHistory::RecomputePrefix => {
                        sizes.push(rows(tokens, v.width, weight_bytes));
                        tokens
                    }
                };
                sizes.push(rows(mamba_tokens, m.in_proj_rows(), weight_bytes));
                // The state (2B, heads x 64, 64) and the scan's per-chunk totals, twice its size with
                // the one chunk a large batch gets (a small batch splits the sequence into more
                // chunks, but then all of them together stay far below any binding limit).
                sizes.push(rows(1, m.d_inner, 2 * m.d_state as u64 * 4));
            }
        }
        sizes.into_iter().max().unwrap_or(0)
    }

    /// The name the pipelines of the checkpoints `var` and `vae` in `dtype` are recorded under
    /// ([`Device::prewarm_pipelines`]): the files' canonical paths and the storage type, so the CLI
    /// and the app share one manifest per model.
    pub fn workload(var: &Path, vae: &Path, dtype: DType) -> String {
        let path = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
        format!("{} {} {dtype}", path(var), path(vae))
    }

    /// Starts a generation; iterate it to run the scales.
    pub fn start(&self, options: &GenerateOptions) -> Result<Generation<'_>> {
        self.validate(options)?;
        let batch = options.labels.len();
        let cfg_halves = options.cfg > 0.0;
        let config = self.config();
        let mut labels: Vec<u32> = options.labels.iter().map(|&l| l as u32).collect();
        if cfg_halves {
            labels.extend(std::iter::repeat_n(config.num_classes as u32, batch));
        }
        let (session, next_input) = Session::start(&self.transformer, &labels, options.scale_history)?;
        let side = config.latent_side();
        let f_hat = Tensor::zeros(self.device(), &[batch, config.cvae, side, side], self.vae.dtype)?;
        Ok(Generation {
            pipeline: self,
            options: options.clone(),
            cfg_halves,
            session,
            next_input: Some(next_input),
            f_hat,
            scale: 0,
            in_flight: None,
            tokens: Vec::new(),
        })
    }

    /// Runs a whole generation and decodes the final images.
    pub fn generate(&self, options: &GenerateOptions) -> Result<(Vec<Image>, Vec<ScaleStep>)> {
        let mut generation = self.start(options)?;
        let steps = generation.by_ref().collect::<Result<Vec<_>>>()?;
        Ok((generation.decode()?, steps))
    }
}

/// A generation in progress: each `next()` runs one scale.
///
/// Unprofiled and without previews or kept logits, the iterator reads each scale's tokens a scale
/// late: `next()` records the following scale's work before it waits for this scale's tokens, so
/// the GPU always has work queued and the wait does not drain it. The tokens are not needed on the
/// host to go on (sampling, lookup and f_hat stay on the GPU). While a scale is in flight,
/// [`Generation::f_hat`] already includes it.
pub struct Generation<'a> {
    pipeline: &'a Pipeline,
    options: GenerateOptions,
    cfg_halves: bool,
    session: Session<'a>,
    next_input: Option<Tensor>,
    f_hat: Tensor,
    /// Scales completed (their step returned).
    scale: usize,
    /// A scale whose work is recorded but whose step has not been returned yet.
    in_flight: Option<LaunchedScale<'a>>,
    tokens: Vec<Vec<u32>>,
}

/// One scale's recorded work, waiting to be read back.
struct LaunchedScale<'a> {
    index: usize,
    side: usize,
    tokens: ScaleTokens,
    /// Only with `keep_logits`: otherwise the logits are released with the scale's other
    /// intermediates instead of living on while the next scale runs.
    logits: Option<Tensor>,
    clock: StageClock<'a>,
}

/// A scale's token ids: on their way back from the GPU, or given by the caller (`step_forced`).
enum ScaleTokens {
    Reading(crate::tensor::PendingRead),
    Known(Vec<u32>),
}

/// Times the stages of one scale. With GPU timestamps one profiler spans the scale and each stage
/// owns the dispatches recorded during it, so the kernels stay batched and the timestamps come back
/// in one readback per scale. Without timestamps each stage is bracketed by waits (the wall clock up
/// to its completion). Off, it only runs the stages.
pub struct StageClock<'a> {
    device: &'a Device,
    mode: ClockMode,
    /// Entries of the result so far: one per stage, two per split stage.
    entries: usize,
    /// Contiguous runs of work in order, each with its entry and its end: the dispatch count at its
    /// end (timestamps) or its milliseconds (wall clock).
    marks: Vec<(usize, usize)>,
    wall_ms: Vec<(usize, f64)>,
    /// Wall clock: when the current run of work began.
    since: std::time::Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClockMode {
    Off,
    Timestamps,
    WallClock,
}

/// The body of a split stage ([`StageClock::stage_split`]) moves between the stage's main work and
/// the part timed apart with [`StageSplit::enter`].
pub struct StageSplit<'c, 'a> {
    clock: &'c mut StageClock<'a>,
    main: usize,
    in_part: bool,
}

impl StageSplit<'_, '_> {
    /// The work from here on belongs to the split-off part (`true`) or to the main stage (`false`).
    pub fn enter(&mut self, part: bool) -> Result<()> {
        if part != self.in_part {
            self.clock.close(self.main + usize::from(self.in_part))?;
            self.in_part = part;
        }
        Ok(())
    }
}

impl<'a> StageClock<'a> {
    pub fn start(device: &'a Device, profile: bool) -> Result<Self> {
        let mode = match (profile, device.caps().timestamps) {
            (false, _) => ClockMode::Off,
            (true, true) => ClockMode::Timestamps,
            (true, false) => ClockMode::WallClock,
        };
        if mode == ClockMode::Timestamps {
            device.start_profiling()?;
        }
        Ok(Self { device, mode, entries: 0, marks: Vec::new(), wall_ms: Vec::new(), since: std::time::Instant::now() })
    }

    /// Runs one stage.
    pub fn stage<T>(&mut self, body: impl FnOnce() -> Result<T>) -> Result<T> {
        let entry = self.entries;
        self.entries += 1;
        self.open()?;
        let result = body()?;
        self.close(entry)?;
        Ok(result)
    }

    /// Runs one stage whose body times a part of its work apart (see [`StageSplit::enter`]): two
    /// entries of [`StageClock::finish`], the stage without the part, then the part (0 when the
    /// body never entered it).
    pub fn stage_split<T>(&mut self, body: impl FnOnce(&mut StageSplit<'_, 'a>) -> Result<T>) -> Result<T> {
        let main = self.entries;
        self.entries += 2;
        self.open()?;
        let mut split = StageSplit { clock: self, main, in_part: false };
        let result = body(&mut split)?;
        let last = main + usize::from(split.in_part);
        self.close(last)?;
        Ok(result)
    }

    /// Starts a run of work (the wall clock waits for the work before it).
    fn open(&mut self) -> Result<()> {
        if self.mode == ClockMode::WallClock {
            self.device.synchronize()?;
            self.since = std::time::Instant::now();
        }
        Ok(())
    }

    /// Ends the current run of work as `entry`'s and starts the next.
    fn close(&mut self, entry: usize) -> Result<()> {
        match self.mode {
            ClockMode::Off => {}
            ClockMode::Timestamps => self.marks.push((entry, self.device.profiled_dispatches()?)),
            ClockMode::WallClock => {
                self.device.synchronize()?;
                let now = std::time::Instant::now();
                self.wall_ms.push((entry, (now - self.since).as_secs_f64() * 1e3));
                self.since = now;
            }
        }
        Ok(())
    }

    /// Milliseconds per entry, in the order the stages ran (empty when off).
    pub fn finish(mut self) -> Result<Vec<f64>> {
        let mut ms = vec![0.0; self.entries];
        match self.mode {
            ClockMode::Off => return Ok(Vec::new()),
            ClockMode::WallClock => {
                for &(entry, run) in &self.wall_ms {
                    ms[entry] += run;
                }
            }
            ClockMode::Timestamps => {
                self.mode = ClockMode::Off; // the profiler is finished here, not again on drop
                let timings = self.device.finish_profiling()?;
                // The profiler belongs to the device: another thread profiling the same device at
                // the same time replaces it, and the counts no longer line up. Clamp rather than
                // index out of range; the times are then only approximate.
                let at = |i: usize| i.min(timings.len());
                let mut start = 0;
                for &(entry, end) in &self.marks {
                    let range = at(start)..at(end).max(at(start));
                    start = end;
                    ms[entry] += timings[range].iter().map(|t| t.nanoseconds).sum::<f64>() / 1e6;
                }
            }
        }
        Ok(ms)
    }
}

impl Drop for StageClock<'_> {
    /// A stage that failed leaves the profiler installed; stop it so later dispatches are not timed.
    fn drop(&mut self) {
        if self.mode == ClockMode::Timestamps {
            let _ = self.device.finish_profiling();
        }
    }
}

impl<'a> Generation<'a> {
    pub fn scales(&self) -> usize {
        self.pipeline.config().patch_nums.len()
    }

    /// M-VAR: the tokens each Mamba-2 layer has stepped through so far (at 256px, 680 in all with
    /// the carried state, 1710 recomputing the prefix). None for VAR.
    pub fn mamba_token_steps(&self) -> Option<usize> {
        match &self.session {
            Session::Var { .. } => None,
            Session::Mvar { state, .. } => Some(state.mamba_token_steps),
        }
    }

    /// Scales run so far.
    pub fn completed(&self) -> usize {
        self.scale
    }

    pub fn is_done(&self) -> bool {
        self.scale >= self.scales()
    }

    /// Token ids of every scale run so far: per scale (B, side * side) row-major.
    pub fn tokens(&self) -> &[Vec<u32>] {
        &self.tokens
    }

    /// The accumulated latent f_hat (B, Cvae, S, S).
    pub fn f_hat(&self) -> &Tensor {
        &self.f_hat
    }

    /// Decoder output for the current f_hat as (B, 3, H, W) values in [-1, 1] (unclamped).
    pub fn decode_raw(&self) -> Result<Tensor> {
        self.pipeline.vae.decode(&self.f_hat)
    }

    /// The images decoded from the current f_hat (after the last scale: the result).
    pub fn decode(&self) -> Result<Vec<Image>> {
        self.images(self.decode_raw()?)
    }

    /// A reduced preview: f_hat area-downsampled to `side` x `side` latents, decoded (an image of
    /// `side` x the decoder's upsampling; the full size when `side` is the latent side).
    pub fn decode_at(&self, side: usize) -> Result<Vec<Image>> {
        let small = match self.f_hat.shape() {
            [.., h, w] if *h == side && *w == side => self.f_hat.clone(),
            _ => crate::ops::downsample_area(&self.f_hat, side, side)?,
        };
        self.images(self.pipeline.vae.decode(&small)?)
    }

    fn images(&self, out: Tensor) -> Result<Vec<Image>> {
        let &[batch, _, h, w] = out.shape() else { unreachable!("the decoder returns (B, 3, H, W)") };
        Image::from_decoder_output(&out.to_vec_f32()?, batch, h, w)
    }

    /// Runs the next scale with the given token ids (B * side^2) instead of sampling: teacher forcing,
    /// or replaying a token dump.
    pub fn step_forced(&mut self, ids: &[u32]) -> Result<ScaleStep> {
        if self.in_flight.is_some() {
            return Err(Error::InvalidArgument {
                op: "Generation::step_forced",
                msg: format!("scale {} was already sampled by the iterator running ahead", self.scale),
            });
        }
        let launched = self.launch_scale(Some(ids))?;
        self.complete_scale(launched)
    }

    /// Runs the next scale (or returns the one the iterator started ahead).
    pub fn step(&mut self) -> Result<ScaleStep> {
        let launched = match self.in_flight.take() {
            Some(launched) => launched,
            None => self.launch_scale(None)?,
        };
        self.complete_scale(launched)
    }

    /// Whether the iterator may record the next scale before returning this one: only when nothing
    /// this scale returns depends on the GPU state after it (previews, logits) and no profiler spans
    /// the scale.
    fn reads_late(&self) -> bool {
        !self.options.profile_stages && !self.options.preview_every_scale && !self.options.keep_logits
    }

    /// The scale after the completed and in-flight ones.
    fn next_to_launch(&self) -> usize {
        self.scale + usize::from(self.in_flight.is_some())
    }

    /// Records a scale's work (transformer, sampling, f_hat and the next input) and starts reading
    /// its tokens back, without waiting for them.
    fn launch_scale(&mut self, forced: Option<&[u32]>) -> Result<LaunchedScale<'a>> {
        let pipeline = self.pipeline;
        let config = pipeline.config();
        let device = pipeline.device();
        let si = self.next_to_launch();
        let scales = config.patch_nums.len();
        if si >= scales {
            return Err(Error::InvalidArgument { op: "Generation", msg: format!("all {scales} scales are done") });
        }
        let side = config.patch_nums[si];
        let batch = self.options.labels.len();
        if let Some(ids) = forced {
            if ids.len() != batch * side * side {
                return Err(Error::InvalidArgument {
                    op: "Generation::step_forced",
                    msg: format!(
                        "scale {si} needs {} ids ({batch} x {side}^2), got {}",
                        batch * side * side,
                        ids.len()
                    ),
                });
            }
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= config.vocab) {
                return Err(Error::InvalidArgument {
                    op: "Generation::step_forced",
                    msg: format!("token id {bad} is outside the vocabulary of {}", config.vocab),
                });
            }
        }
        let mut clock = StageClock::start(device, self.options.profile_stages)?;
        // Taken here and set again once the scale's work is recorded: only a scale that failed on the
        // way leaves it empty, and the generation cannot go on from there.
        let Some(x) = self.next_input.take() else {
            return Err(Error::InvalidArgument {
                op: "Generation",
                msg: format!("scale {si} has no input: an earlier scale failed; start a new generation"),
            });
        };
        let session = &mut self.session;
        let logits = clock.stage_split(|split| session.forward(&x, |part| split.enter(part == BlockPart::Mamba)))?;
        let ratio = if scales > 1 { si as f32 / (scales - 1) as f32 } else { 0.0 };
        let sample_options = SampleOptions {
            cfg: self.cfg_halves.then_some(self.options.cfg),
            cfg_ratio: ratio,
            // Above the vocabulary, top-k keeps every token (the official 900 on a smaller codebook).
            top_k: self.options.top_k.min(config.vocab),
            top_p: self.options.top_p,
            seed: self.options.seed,
            step: si as u32,
            keep_filtered_logits: self.options.smooth && forced.is_none(),
        };
        let (ids, soft) = clock.stage(|| {
            let ids = match forced {
                Some(ids) => {
                    return Ok((Tensor::from_u32(device, &[batch, side * side], ids)?, None));
                }
                None => sample_tokens(&logits, &sample_options)?,
            };
            let soft = match &ids.filtered_logits {
                Some(filtered) => {
                    let tau = (0.27 * (1.0 - 0.95 * ratio)).max(0.005);
                    let probs = gumbel_softmax(filtered, 1.0 + ratio, tau, self.options.seed, si as u32)?;
                    Some(probs)
                }
                None => None,
            };
            Ok((ids.ids, soft))
        })?;
        clock.stage(|| {
            let vae = &pipeline.vae;
            let h = match &soft {
                Some(probs) => {
                    let mixed = matmul(&probs.to_dtype(vae.dtype)?, vae.codebook())?;
                    vae.tokens_to_map(&mixed, side)?
                }
                None => vae.lookup(&ids, side)?,
            };
            self.f_hat = vae.accumulate(&self.f_hat, &h, si, scales)?;
            if si + 1 < scales {
                let next_side = config.patch_nums[si + 1];
                let token_map = vae.next_token_map(&self.f_hat, next_side)?;
                self.next_input = Some(self.session.scale_input(si + 1, &token_map, self.cfg_halves)?);
            }
            Ok(())
        })?;
        let tokens = match forced {
            Some(ids) => ScaleTokens::Known(ids.to_vec()),
            None => ScaleTokens::Reading(ids.read_async()?),
        };
        let logits = self.options.keep_logits.then_some(logits);
        Ok(LaunchedScale { index: si, side, tokens, logits, clock })
    }

    /// Waits for a launched scale's tokens (and logits, previews, stage times) and returns its step.
    fn complete_scale(&mut self, launched: LaunchedScale<'a>) -> Result<ScaleStep> {
        let LaunchedScale { index, side, tokens, logits, mut clock } = launched;
        let tokens = match tokens {
            ScaleTokens::Reading(read) => read.wait_u32()?,
            ScaleTokens::Known(ids) => ids,
        };
        // The sampler's sign of a row without finite logits (see `sample_tokens`): the scale's f_hat
        // and the next scale's input were built from an id the codebook does not have.
        let vocab = self.pipeline.config().vocab;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            self.in_flight = None;
            self.next_input = None;
            self.scale = self.scales();
            return Err(Error::InvalidArgument {
                op: "generate",
                msg: format!(
                    "the logits of scale {index} are not finite: the sampler drew token {id}, outside the \
                     vocabulary of {vocab} (non-finite weights, or a guidance too large for the logits)"
                ),
            });
        }
        let logits = logits.map(|l| l.to_vec_f32()).transpose()?;
        self.scale += 1;
        self.tokens.push(tokens.clone());
        let reduced = self.options.preview_reduced && index + 1 < self.scales();
        let images = match (self.options.preview_every_scale, reduced) {
            (false, _) => None,
            (true, false) => Some(clock.stage(|| self.decode())?),
            (true, true) => Some(clock.stage(|| self.decode_at(side))?),
        };
        let ms = clock.finish()?;
        let stage_ms = |i: usize| ms.get(i).copied().unwrap_or(0.0);
        Ok(ScaleStep {
            index,
            scales: self.scales(),
            side,
            tokens,
            times: StageTimes {
                transformer_ms: stage_ms(0),
                mamba_ms: stage_ms(1),
                sampling_ms: stage_ms(2),
                accumulate_ms: stage_ms(3),
                decode_ms: stage_ms(4),
            },
            images,
            logits,
        })
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<ScaleStep>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.is_done() {
            return None;
        }
        let step = (|| {
            let launched = match self.in_flight.take() {
                Some(launched) => launched,
                None => self.launch_scale(None)?,
            };
            // Record the next scale before waiting for this one's tokens (see the type's docs).
            if self.reads_late() && launched.index + 1 < self.scales() {
                self.in_flight = Some(launched);
                let ahead = self.launch_scale(None)?;
                let launched = self.in_flight.replace(ahead).expect("just stored");
                return self.complete_scale(launched);
            }
            self.complete_scale(launched)
        })();
        if step.is_err() {
            // A failed scale leaves no consistent state to continue from.
            self.in_flight = None;
            self.scale = self.scales();
        }
        Some(step)
    }
}
