//! The Mamba selective scan (Mamba-1) and SSD (Mamba-2), with an initial state in, the final state
//! out, and either direction; one chunked kernel family serves both (see `shaders/wgsl/scan.wgsl`).

use super::{check_operand, index_u32, launch};
use crate::device::Grid;
use crate::error::{Error, Result};
use crate::kernels::{CarryParams, Constants, Family, ScanParams, SsdParams, size};
use crate::tensor::{DType, Tensor, check_same_device};

/// Largest state size N per channel.
pub const MAX_STATE: usize = size::MAX_STATE as usize;
/// Storage buffers one scan dispatch binds.
const SCAN_BINDINGS: u32 = 11;

/// Where time sits in the sequence tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SequenceLayout {
    /// u, delta, z, y: (B, D, L); B, C: (B, G, N, L), as mamba_ssm's selective_scan_fn.
    #[default]
    ChannelsMajor,
    /// u, delta, z, y: (B, L, D); B, C: (B, L, G, N), as the activations of a model.
    TokensMajor,
}

/// Mamba-1 selective scan arguments (shapes for [`SequenceLayout::ChannelsMajor`]).
#[derive(Debug, Clone, Copy)]
pub struct SelectiveScan<'a> {
    /// (B, D, L)
    pub u: &'a Tensor,
    /// (B, D, L)
    pub delta: &'a Tensor,
    /// (D, N) f32: A itself (mamba blocks pass -exp(A_log)).
    pub a: &'a Tensor,
    /// (B, G, N, L); channel d uses group d / (D / G).
    pub b: &'a Tensor,
    /// (B, G, N, L)
    pub c: &'a Tensor,
    /// (D) f32
    pub d_skip: Option<&'a Tensor>,
    /// (B, D, L): the output is multiplied by silu(z).
    pub z: Option<&'a Tensor>,
    /// (D) f32, added to delta before the softplus.
    pub delta_bias: Option<&'a Tensor>,
    pub delta_softplus: bool,
    /// (B, D, N) f32; zeros when absent.
    pub initial_state: Option<&'a Tensor>,
    /// Scan from the last step to the first (no flipped copies are made).
    pub reverse: bool,
    pub layout: SequenceLayout,
    /// Steps per chunk of the parallel chunked scan; default chosen from B x D and L.
    pub chunk_len: Option<usize>,
}

/// How SSD is computed; both give the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SsdForm {
    /// The recurrent form: measured faster (`scalewise bench scan --ssd-forms`, BENCHMARKS.md) on
    /// every device measured so far. Revisit with GPU numbers.
    #[default]
    Auto,
    /// The state recurrence (the selective-scan kernels with A per head).
    Recurrent,
    /// Mamba-2's chunked matrix form: masked (C B^T) products within chunks, states between them.
    ChunkedMatrix,
}

/// Largest headdim the chunked matrix form takes.
pub const SSD_MAX_HEAD_DIM: usize = size::SSD_MAX_HEAD_DIM as usize;
/// Workgroup memory the chunked matrix form needs: the larger of ssd_chunk_states' stage (SSD_STAGE
/// steps of B and of 64 columns of x) and ssd_chunk_outputs' C, scores and stage, in bytes.
const SSD_WORKGROUP_BYTES: u32 = {
    let states = size::SSD_STAGE * 2 * 64;
    let outputs = size::SSD_OUT_ROWS * (size::MAX_STATE + size::SSD_OUT_KEYS) + size::SSD_OUT_STAGE;
    4 * if states > outputs { states } else { outputs }
};
// The refusal's message states it.
const _: () = assert!(SSD_WORKGROUP_BYTES == 20480);
/// Default chunk of the matrix form: its per-token work grows with the chunk, and 64 keeps it near
/// the recurrence's 2NP at N = P = 64 (Mamba-2's 256 suits tensor-core matmuls we do not have).
const SSD_DEFAULT_CHUNK: usize = 64;

/// SSD (Mamba-2) scan arguments: A, dt, D and dt_bias are per head; x has nheads * headdim channels.
#[derive(Debug, Clone, Copy)]
pub struct SsdScan<'a> {
    /// (B, H * P, L)
    pub x: &'a Tensor,
    /// (B, H, L)
    pub dt: &'a Tensor,
    /// (H) f32: A itself (-exp(A_log)).
    pub a: &'a Tensor,
    /// (B, G, N, L)
    pub b: &'a Tensor,
    pub c: &'a Tensor,
    /// (H) f32
    pub d_skip: Option<&'a Tensor>,
    /// (H) f32
    pub dt_bias: Option<&'a Tensor>,
    pub dt_softplus: bool,
    /// (B, H * P, N) f32, i.e. (B, H, P, N).
    pub initial_state: Option<&'a Tensor>,
    pub reverse: bool,
    pub layout: SequenceLayout,
    pub chunk_len: Option<usize>,
    pub form: SsdForm,
}

pub struct ScanOutput {
    /// Same shape and dtype as u (x).
    pub y: Tensor,
    /// (B, D, N) f32: the state after the last processed step.
    pub final_state: Tensor,
}

/// What both scans reduce to.
struct Scan<'a> {
    check_a: bool,
    /// SSD only: the chunked matrix form instead of the recurrence.
    matrix_form: bool,
    x: &'a Tensor,
    delta: &'a Tensor,
    a: &'a Tensor,
    b: &'a Tensor,
    c: &'a Tensor,
    d_skip: Option<&'a Tensor>,
    z: Option<&'a Tensor>,
    delta_bias: Option<&'a Tensor>,
    softplus: bool,
    initial_state: Option<&'a Tensor>,
    reverse: bool,
    layout: SequenceLayout,
    chunk_len: Option<usize>,
    /// SSD: A, delta, D and delta_bias are per head of `channels_per_head` channels (even when that is 1).
    per_head: bool,
    channels_per_head: usize,
}

pub fn selective_scan(s: &SelectiveScan) -> Result<ScanOutput> {
    selective_scan_checked(s, true)
}

/// `check_a = false` skips reading A back: for model blocks, which checked it once at load, and for
/// benchmarks, which time the kernels alone.
pub fn selective_scan_checked(s: &SelectiveScan, check_a: bool) -> Result<ScanOutput> {
    run(&Scan {
        matrix_form: false,
        check_a,
        x: s.u,
        delta: s.delta,
        a: s.a,
        b: s.b,
        c: s.c,
        d_skip: s.d_skip,
        z: s.z,
        delta_bias: s.delta_bias,
        softplus: s.delta_softplus,
        initial_state: s.initial_state,
        reverse: s.reverse,
        layout: s.layout,
        chunk_len: s.chunk_len,
        per_head: false,
        channels_per_head: 1,
    })
}

pub fn ssd_scan(s: &SsdScan) -> Result<ScanOutput> {
    ssd_scan_checked(s, true)
}

/// [`ssd_scan`] without reading A back (see [`selective_scan_checked`]).
pub fn ssd_scan_checked(s: &SsdScan, check_a: bool) -> Result<ScanOutput> {
    const OP: &str = "ssd_scan";
    let heads = match s.a.shape() {
        &[h] if h > 0 => h,
        other => return Err(invalid(OP, format!("A must have shape (nheads), got {other:?}"))),
    };
    let channels = sequence_dims(s.x, s.layout, "x")?.1;
    // Zero channels are a multiple of any head count, but leave no head dimension to divide by.
    if channels == 0 || !channels.is_multiple_of(heads) {
        return Err(invalid(OP, format!("{channels} channels are not nheads ({heads}) x headdim")));
    }
    let head_dim = channels / heads;
    let matrix_fits = head_dim <= SSD_MAX_HEAD_DIM && s.x.device().caps().shared_memory_bytes >= SSD_WORKGROUP_BYTES;
    let form = match s.form {
        SsdForm::Auto => SsdForm::Recurrent,
        SsdForm::ChunkedMatrix if !matrix_fits => {
            return Err(Error::MissingFeature {
                what: format!("SSD's chunked matrix form with headdim {head_dim} (at most {SSD_MAX_HEAD_DIM})"),
                feature: "max_compute_workgroup_storage_size >= 20480 bytes",
            });
        }
        form => form,
    };
    run(&Scan {
        matrix_form: form == SsdForm::ChunkedMatrix,
        check_a,
        x: s.x,
        delta: s.dt,
        a: s.a,
        b: s.b,
        c: s.c,
        d_skip: s.d_skip,
        z: None,
        delta_bias: s.dt_bias,
        softplus: s.dt_softplus,
        initial_state: s.initial_state,
        reverse: s.reverse,
        layout: s.layout,
        chunk_len: s.chunk_len,
        per_head: true,
        channels_per_head: channels / heads,
    })
}

fn invalid(op: &'static str, msg: String) -> Error {
    Error::InvalidArgument { op, msg }
}

/// (batch, channels, length) of a sequence tensor.
fn sequence_dims(t: &Tensor, layout: SequenceLayout, what: &str) -> Result<(usize, usize, usize)> {
    match (t.shape(), layout) {
        (&[b, d, l], SequenceLayout::ChannelsMajor) => Ok((b, d, l)),
        (&[b, l, d], SequenceLayout::TokensMajor) => Ok((b, d, l)),
        (other, _) => Err(invalid("selective_scan", format!("{what} must be 3-D ({layout:?}), got {other:?}"))),
    }
}

fn expect_shape(t: &Tensor, shape: &[usize], what: &str) -> Result<()> {
    if t.shape() != shape {
        return Err(Error::ShapeMismatch {
            op: "selective_scan",
            lhs: shape.to_vec(),
            rhs: t.shape().to_vec(),
            detail: format!("{what} must have the shape on the left"),
        });
    }
    Ok(())
}

fn expect_f32(t: &Tensor, what: &'static str) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType { op: "selective_scan", dtype: t.dtype(), expected: what });
    }
    Ok(())
}

fn run(s: &Scan) -> Result<ScanOutput> {
    const OP: &str = "selective_scan";
    let (batch, channels, length) = sequence_dims(s.x, s.layout, "u")?;
    let heads = channels / s.channels_per_head;
    let per_head = s.per_head;
    let (groups, n_state) = match (s.b.shape(), s.layout) {
        (&[_, g, n, _], SequenceLayout::ChannelsMajor) | (&[_, _, g, n], SequenceLayout::TokensMajor) => (g, n),
        (other, _) => return Err(invalid(OP, format!("B must be 4-D, got {other:?}"))),
    };
    if n_state == 0 || n_state > MAX_STATE {
        return Err(invalid(OP, format!("state size N = {n_state} is outside the supported range 1..={MAX_STATE}")));
    }
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(invalid(OP, format!("{groups} groups do not divide {channels} channels")));
    }
    // SSD's heads share B and C by group whatever the form (a head straddling two groups has none);
    // for the selective scan heads are channels, checked just above.
    if per_head && !heads.is_multiple_of(groups) {
        return Err(invalid("ssd_scan", format!("{groups} groups do not divide {heads} heads")));
    }
    if batch == 0 || channels == 0 || length == 0 {
        return Err(invalid(OP, format!("empty sequence: batch {batch}, channels {channels}, length {length}")));
    }
    if !s.x.dtype().is_float() {
        return Err(Error::UnsupportedDType { op: OP, dtype: s.x.dtype(), expected: "f32 or f16" });
    }
    let seq = |d: usize| match s.layout {
        SequenceLayout::ChannelsMajor => vec![batch, d, length],
        SequenceLayout::TokensMajor => vec![batch, length, d],
    };
    let bc_shape = match s.layout {
        SequenceLayout::ChannelsMajor => vec![batch, groups, n_state, length],
        SequenceLayout::TokensMajor => vec![batch, length, groups, n_state],
    };
    for (t, shape, what) in [(s.delta, seq(heads), "delta"), (s.b, bc_shape.clone(), "B"), (s.c, bc_shape, "C")] {
        check_operand(OP, s.x, t)?;
        expect_shape(t, &shape, what)?;
    }
    if let Some(z) = s.z {
        check_operand(OP, s.x, z)?;
        expect_shape(z, &seq(channels), "z")?;
    }
    // Every operand is bound to one launch on x's device; A, D, delta_bias and the initial state are
    // f32 whatever x's dtype, so only their device is compared.
    let f32_operands = [Some(s.a), s.d_skip, s.delta_bias, s.initial_state];
    for t in f32_operands.into_iter().flatten() {
        check_same_device(OP, s.x, t)?;
    }
    let a_shape = if per_head { vec![heads] } else { vec![channels, n_state] };
    expect_shape(s.a, &a_shape, "A")?;
    expect_f32(s.a, "f32 A")?;
    for (t, what) in [(s.d_skip, "D"), (s.delta_bias, "delta_bias")] {
        if let Some(t) = t {
            expect_shape(t, &[heads], what)?;
            expect_f32(t, "f32 D and delta_bias")?;
        }
    }
    if let Some(h0) = s.initial_state {
        expect_shape(h0, &[batch, channels, n_state], "the initial state")?;
        expect_f32(h0, "an f32 initial state")?;
    }
    if s.check_a {
        check_finite_a(s.a)?;
    }
    let caps = s.x.device().caps();
    if caps.max_storage_args < SCAN_BINDINGS {
        return Err(Error::MissingFeature {
            what: format!("the selective scan ({SCAN_BINDINGS} storage buffers per stage)"),
            feature: "max_storage_buffers_per_shader_stage >= 11",
        });
    }

    let chunk_len = match s.chunk_len {
        Some(0) => return Err(invalid(OP, "chunk_len must be above 0".into())),
        Some(c) => c.min(length),
        None if s.matrix_form => SSD_DEFAULT_CHUNK.min(length),
        None => default_chunk_len(batch * channels, length, caps.is_cpu),
    };
    let chunks = length.div_ceil(chunk_len);
    let strides = match s.layout {
        SequenceLayout::ChannelsMajor => [[channels * length, length, 1], [heads * length, length, 1]],
        SequenceLayout::TokensMajor => [[length * channels, 1, channels], [length * heads, 1, heads]],
    };
    let bc = match s.layout {
        SequenceLayout::ChannelsMajor => [groups * n_state * length, n_state * length, length, 1],
        SequenceLayout::TokensMajor => [length * groups * n_state, n_state, 1, groups * n_state],
    };
    let u = |v: usize| index_u32(OP, "a size", v);
    let [[x_batch, x_channel, x_time], [dt_batch, dt_channel, dt_time]] = strides;
    let params = ScanParams {
        batch: u(batch)?,
        channels: u(channels)?,
        length: u(length)?,
        groups: u(groups)?,
        chunk_len: u(chunk_len)?,
        chunks: u(chunks)?,
        x_batch: u(x_batch)?,
        x_channel: u(x_channel)?,
        x_time: u(x_time)?,
        dt_batch: u(dt_batch)?,
        dt_channel: u(dt_channel)?,
        dt_time: u(dt_time)?,
        bc_batch: u(bc[0])?,
        bc_group: u(bc[1])?,
        bc_state: u(bc[2])?,
        bc_time: u(bc[3])?,
    };
    index_u32(OP, "elements", s.x.numel())?;
    index_u32(OP, "state elements", batch * channels * chunks * n_state * 2)?;

    let y = Tensor::empty(s.x.device(), s.x.shape(), s.x.dtype())?;
    let final_state = Tensor::empty(s.x.device(), &[batch, channels, n_state], DType::F32)?;
    if s.matrix_form {
        let geometry =
            SsdGeometry { batch, heads, head_dim: s.channels_per_head, length, groups, n_state, chunk_len, chunks };
        ssd_matrix_form(s, &geometry, &params, &y, &final_state)?;
        return Ok(ScanOutput { y, final_state });
    }
    let constants_for = |initial: bool| {
        Constants::new(Family::Scan)
            .set("N_STATE", n_state as u32)
            .set("CHANNELS_PER_HEAD", s.channels_per_head as u32)
            .set("A_PER_HEAD", per_head)
            .set("HAS_Z", s.z.is_some())
            .set("HAS_D_SKIP", s.d_skip.is_some())
            .set("HAS_DELTA_BIAS", s.delta_bias.is_some())
            .set("DELTA_SOFTPLUS", s.softplus)
            .set("HAS_INITIAL_STATE", initial)
            .set("REVERSE", s.reverse)
    };
    let dtype = s.x.dtype();
    let per_group = (channels / groups) as u32;
    let groups_y = index_u32(OP, "groups x chunks", groups * chunks)?;
    let grid = Grid::Groups([per_group.div_ceil(size::SCAN_WG), groups_y, batch as u32]);
    let dispatch = |entry: &'static str, state_in: &Tensor, state_out: &Tensor, initial: bool| {
        let args = [
            s.x.arg("u"),
            s.delta.arg("delta"),
            s.z.unwrap_or(s.x).arg("z"),
            s.a.arg("A"),
            s.b.arg("B"),
            s.c.arg("C"),
            s.d_skip.unwrap_or(s.a).arg("D"),
            s.delta_bias.unwrap_or(s.a).arg("delta_bias"),
            state_in.arg("state_in"),
            y.arg_mut("y"),
            state_out.arg_mut("state_out"),
        ];
        launch(s.x, Family::Scan, entry, dtype, &constants_for(initial), &args, &params, grid)
    };
    if chunks == 1 {
        dispatch("scan_chunk_outputs", s.initial_state.unwrap_or(s.a), &final_state, s.initial_state.is_some())?;
        return Ok(ScanOutput { y, final_state });
    }
    let totals = Tensor::empty(s.x.device(), &[batch, channels, chunks, 2 * n_state], DType::F32)?;
    dispatch("scan_chunk_totals", s.a, &totals, false)?;
    let chunk_initial = Tensor::empty(s.x.device(), &[batch, channels, chunks, n_state], DType::F32)?;
    carry_states(s, &totals, &chunk_initial, &final_state, batch * channels * n_state, chunks, n_state)?;
    dispatch("scan_chunk_outputs", &chunk_initial, &totals, true)?;
    Ok(ScanOutput { y, final_state })
}

struct SsdGeometry {
    batch: usize,
    heads: usize,
    head_dim: usize,
    length: usize,
    groups: usize,
    n_state: usize,
    chunk_len: usize,
    chunks: usize,
}

/// Runs `ops` in the chunked matrix form: cumsum, chunk states, carry, outputs (see ssd.wgsl).
/// `scan` holds the selective scan's sizes and strides; SsdParams wants heads and head_dim in place of
/// channels.
fn ssd_matrix_form(s: &Scan, g: &SsdGeometry, scan: &ScanParams, y: &Tensor, final_state: &Tensor) -> Result<()> {
    const OP: &str = "ssd_scan";
    if !g.heads.is_multiple_of(g.groups) {
        return Err(invalid(OP, format!("{} groups do not divide {} heads", g.groups, g.heads)));
    }
    let device = s.x.device();
    let channels = g.heads * g.head_dim;
    let params = SsdParams {
        batch: g.batch as u32,
        heads: g.heads as u32,
        head_dim: g.head_dim as u32,
        length: g.length as u32,
        groups: g.groups as u32,
        chunk_len: g.chunk_len as u32,
        chunks: g.chunks as u32,
        x_batch: scan.x_batch,
        x_channel: scan.x_channel,
        x_time: scan.x_time,
        dt_batch: scan.dt_batch,
        dt_channel: scan.dt_channel,
        dt_time: scan.dt_time,
        bc_batch: scan.bc_batch,
        bc_group: scan.bc_group,
        bc_state: scan.bc_state,
        bc_time: scan.bc_time,
    };
    let work = Tensor::empty(device, &[2, g.batch, g.heads, g.length], DType::F32)?;
    let totals = Tensor::empty(device, &[g.batch, channels, g.chunks, 2 * g.n_state], DType::F32)?;
    let chunk_initial = Tensor::empty(device, &[g.batch, channels, g.chunks, g.n_state], DType::F32)?;
    let constants = Constants::new(Family::Ssd)
        .set("N_STATE", g.n_state as u32)
        .set("HAS_D_SKIP", s.d_skip.is_some())
        .set("HAS_DT_BIAS", s.delta_bias.is_some())
        .set("DT_SOFTPLUS", s.softplus)
        .set("REVERSE", s.reverse);
    let dispatch = |entry: &'static str, workgroups: [u32; 3]| {
        let args = [
            s.x.arg("x"),
            s.delta.arg("dt"),
            s.a.arg("A"),
            s.b.arg("B"),
            s.c.arg("C"),
            s.d_skip.unwrap_or(s.a).arg("D"),
            s.delta_bias.unwrap_or(s.a).arg("dt_bias"),
            chunk_initial.arg("chunk_initial"),
            work.arg_mut("work"),
            totals.arg_mut("totals"),
            y.arg_mut("y"),
        ];
        launch(s.x, Family::Ssd, entry, s.x.dtype(), &constants, &args, &params, Grid::Groups(workgroups))
    };
    let heads_total = index_u32(OP, "batch * heads", g.batch * g.heads)?;
    let chunks = index_u32(OP, "chunks", g.chunks)?;
    let tasks = index_u32(OP, "cumsum tasks", g.batch * g.heads * g.chunks)?;
    dispatch("ssd_cumsum", [tasks.div_ceil(size::SCAN_WG), 1, 1])?;
    let column_groups = (g.head_dim as u32).div_ceil(64);
    dispatch("ssd_chunk_states", [heads_total, chunks, column_groups])?;
    carry_states(s, &totals, &chunk_initial, final_state, g.batch * channels * g.n_state, g.chunks, g.n_state)?;
    let row_blocks = (g.chunk_len as u32).div_ceil(size::SSD_OUT_ROWS);
    dispatch("ssd_chunk_outputs", [heads_total, chunks, row_blocks * column_groups])
}

/// The serial pass over chunk totals: every chunk's initial state and the final state.
fn carry_states(
    s: &Scan,
    totals: &Tensor,
    chunk_initial: &Tensor,
    final_state: &Tensor,
    states: usize,
    chunks: usize,
    n_state: usize,
) -> Result<()> {
    let args = [
        totals.arg("totals"),
        s.initial_state.unwrap_or(totals).arg("initial_state"),
        chunk_initial.arg_mut("chunk_initial"),
        final_state.arg_mut("final_state"),
    ];
    let params = CarryParams {
        states: states as u32,
        chunks: chunks as u32,
        n_state: n_state as u32,
        has_initial: s.initial_state.is_some() as u32,
    };
    let grid = Grid::Linear((states as u64).div_ceil(size::SCAN_WG as u64));
    launch(s.x, Family::ScanCarry, "scan_carry", DType::F32, &Constants::new(Family::ScanCarry), &args, &params, grid)
}

/// Enough chunks that B x D x chunks threads fill the device, but chunks of at least 64 steps.
/// Chunking recomputes every step once more, so it only pays where threads would otherwise idle:
/// a large GPU wants tens of thousands of threads, a CPU adapter (lavapipe) a couple of thousand.
fn default_chunk_len(channels: usize, length: usize, cpu: bool) -> usize {
    let target_threads: usize = if cpu { 2 * 1024 } else { 32 * 1024 };
    let chunks = target_threads.div_ceil(channels).clamp(1, length.div_ceil(64).max(1));
    length.div_ceil(chunks)
}

/// A must be finite: one exp(delta * inf) poisons the whole state. A is small (D x N), so the check
/// reads it back; model blocks hold A on the host already and check it once at load.
fn check_finite_a(a: &Tensor) -> Result<()> {
    check_finite_host_a(&a.to_vec_f32()?, a.shape())
}

pub(crate) fn check_finite_host_a(values: &[f32], shape: &[usize]) -> Result<()> {
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(invalid("selective_scan", format!("A[{i}] = {v} is not finite (shape {shape:?})")));
    }
    Ok(())
}

/// Float64 references in the channels-major layout.
pub mod reference {
    pub struct ScanReference<'a> {
        pub batch: usize,
        pub channels: usize,
        pub length: usize,
        pub groups: usize,
        pub n_state: usize,
        /// 1 for Mamba-1; headdim P for SSD (A, delta, D, delta_bias per head).
        pub channels_per_head: usize,
        /// SSD: A is one scalar per head.
        pub a_per_head: bool,
        pub u: &'a [f32],
        pub delta: &'a [f32],
        pub a: &'a [f32],
        pub b: &'a [f32],
        pub c: &'a [f32],
        pub d_skip: Option<&'a [f32]>,
        pub z: Option<&'a [f32]>,
        pub delta_bias: Option<&'a [f32]>,
        pub softplus: bool,
        pub initial_state: Option<&'a [f32]>,
        pub reverse: bool,
    }

    fn softplus(x: f64) -> f64 {
        if x > 20.0 { x } else { x.exp().ln_1p() }
    }

    /// (y (B, D, L), final state (B, D, N)), straight from the recurrence.
    pub fn scan(r: &ScanReference) -> (Vec<f64>, Vec<f64>) {
        let (bs, d, l, n) = (r.batch, r.channels, r.length, r.n_state);
        let heads = d / r.channels_per_head;
        let mut y = vec![0.0; bs * d * l];
        let mut state = vec![0.0; bs * d * n];
        for b in 0..bs {
            for ch in 0..d {
                let head = ch / r.channels_per_head;
                let g = ch / (d / r.groups);
                let mut h: Vec<f64> = match r.initial_state {
                    Some(h0) => h0[(b * d + ch) * n..(b * d + ch + 1) * n].iter().map(|&v| v as f64).collect(),
                    None => vec![0.0; n],
                };
                for i in 0..l {
                    let t = if r.reverse { l - 1 - i } else { i };
                    let mut dt = r.delta[(b * heads + head) * l + t] as f64;
                    if let Some(bias) = r.delta_bias {
                        dt += bias[head] as f64;
                    }
                    if r.softplus {
                        dt = softplus(dt);
                    }
                    let x = r.u[(b * d + ch) * l + t] as f64;
                    let mut out = 0.0;
                    for (s, hs) in h.iter_mut().enumerate() {
                        let a = if r.a_per_head { r.a[head] } else { r.a[ch * n + s] } as f64;
                        let bc = ((b * r.groups + g) * n + s) * l + t;
                        *hs = (dt * a).exp() * *hs + dt * r.b[bc] as f64 * x;
                        out += r.c[bc] as f64 * *hs;
                    }
                    if let Some(dk) = r.d_skip {
                        out += dk[head] as f64 * x;
                    }
                    if let Some(z) = r.z {
                        let g = z[(b * d + ch) * l + t] as f64;
                        out *= g / (1.0 + (-g).exp());
                    }
                    y[(b * d + ch) * l + t] = out;
                }
                state[(b * d + ch) * n..(b * d + ch + 1) * n].copy_from_slice(&h);
            }
        }
        (y, state)
    }
}
