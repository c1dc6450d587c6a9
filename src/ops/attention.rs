//! Dense flash attention and GRAT grouped attention (GRAT-B block, GRAT-X criss-cross; 2D images and
//! 3D video; text tokens after the image tokens).
//!
//! ```no_run
//! use scalewise::ops::{GratPattern, GroupedLayout, grouped_attention};
//! # fn demo(q: &scalewise::Tensor, k: &scalewise::Tensor, v: &scalewise::Tensor) -> scalewise::Result<()> {
//! // A 64 x 96 latent in 16 x 16 groups, criss-cross pattern, then 77 text tokens of which 20 are real.
//! // q, k, v: (batch, heads, 64 * 96 + 77, head_dim).
//! let layout = GroupedLayout::image(64, 96).with_pattern(GratPattern::CrissCross).with_text(77, 20);
//! let out = grouped_attention(q, k, v, &layout, None)?;
//! # Ok(()) }
//! ```

use super::{check_operand, elements, index_u32, launch, shape_error};
use crate::device::{AttentionDesign, Caps, Device, Grid, MatrixUnits};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::{AttentionParams, Constants, Family, size};
use crate::tensor::Tensor;

/// Largest head_dim the kernels accept (any size up to it is exact).
pub const MAX_HEAD_DIM: usize = 256;

/// How (batch, heads, tokens, head_dim) map onto the tensor's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionLayout {
    /// (B, H, L, D)
    #[default]
    HeadsMajor,
    /// (B, L, H, D): what a fused qkv projection gives after a reshape.
    TokensMajor,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionOptions {
    /// Softmax scale; default 1 / sqrt(head_dim).
    pub scale: Option<f32>,
    /// Attend only the first `kv_len` keys (a preallocated KV cache); default all.
    pub kv_len: Option<usize>,
    pub layout: AttentionLayout,
    pub algorithm: AttentionAlgorithm,
}

/// Which kernel runs an attention call (dense or grouped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionAlgorithm {
    /// The matrix units for f16 blocks of at least [`COOP_MIN_ROWS`] rows where the device has them
    /// ([`MatrixUnits::Native`]), they pass their self-check ([`attention_units_verified`]) and the
    /// tiles fit; the scalar kernel otherwise.
    #[default]
    Auto,
    /// The scalar kernel (wgpu: attention_tile.wgsl; CUDA: attention.cu, whose f16 path is on the
    /// tensor cores anyway).
    Scalar,
    /// 16 x 16 x 16 f16 matrix units with f32 accumulation: wgpu's cooperative matrices
    /// (attention_coop.wgsl), or their emulation on a device opened with
    /// [`crate::DeviceOptions::emulate_matrix_units`]; CUDA's tensor-core attention. f16 storage only;
    /// refused with a typed error on a device without the units or where the tiles do not fit.
    Cooperative,
}

/// The fewest query rows per block of work (a call's rows, or a GRAT group's tokens) for which
/// `Auto` takes the matrix units: below it the block would be mostly padding, and the scalar
/// kernel's key slices serve few rows better.
pub const COOP_MIN_ROWS: usize = 32;

/// How the matrix-unit attention (attention_coop.wgsl) is tiled: [`coop_attention_tiles_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoopAttentionTiles {
    /// Query rows per workgroup: 64 or 32.
    pub block_q: usize,
    /// Keys per tile: 32.
    pub block_kv: usize,
    /// head_dim padded with zeros to a multiple of 32.
    pub coop_dim: usize,
}

impl CoopAttentionTiles {
    /// Invocations per workgroup: [`COOP_ROW_THREADS`] per query row.
    pub fn threads(&self) -> usize {
        COOP_ROW_THREADS * self.block_q
    }

    /// Elements of the f16 weight stage: block_q rows, padded (size::COOP_PAD_F16).
    fn weight_words(&self) -> usize {
        self.block_q * (self.block_kv + size::COOP_PAD_F16 as usize)
    }

    /// Elements of the f32 product stage: block_q rows of the scores, then of P V, padded
    /// (size::COOP_PAD_F32).
    fn product_words(&self) -> usize {
        self.block_q * (self.coop_dim.max(self.block_kv) + size::COOP_PAD_F32 as usize)
    }

    /// Bytes of workgroup memory: the f16 Q, K, V and weight stages, the f32 product stage, the
    /// rows' exchange slots (one per thread), the subgroup count and the token tables.
    pub fn workgroup_bytes(&self) -> usize {
        let (q, kv, d) = (self.block_q, self.block_kv, self.coop_dim);
        2 * (q * d + 2 * kv * d + self.weight_words())
            + 4 * self.product_words()
            + 4 * (self.threads() + 1)
            + TOKEN_TABLE_BYTES
    }

    /// The constants of these tiles, for a launch of `family` (attention_coop or qkv_attention_coop).
    pub fn constants(&self, family: Family, dim: usize) -> Constants {
        let (q, kv, d) = (self.block_q as u32, self.block_kv as u32, self.coop_dim as u32);
        Constants::new(family)
            .set("HEAD_DIM", dim as u32)
            .set("BLOCK_Q", q)
            .set("BLOCK_KV", kv)
            .set("THREADS", self.threads() as u32)
            .set("COOP_DIM", d)
            .set("COOP_Q_WORDS", q * d)
            .set("COOP_KV_WORDS", kv * d)
            .set("COOP_P_WORDS", self.weight_words() as u32)
            .set("COOP_PRODUCT_WORDS", self.product_words() as u32)
    }
}

/// The WGSL machineries' token tables and the tile's key count (attention_common.wgsl), u32 each.
const TOKEN_TABLE_BYTES: usize = 4 * (size::ATTENTION_MAX_BLOCK_Q + size::ATTENTION_MAX_BLOCK_KV + 1) as usize;

/// Output columns one thread of the matrix-unit kernel keeps in registers (OUT_SHARE).
const COOP_OUT_SHARE: usize = 32;

/// Threads per query row of the matrix-unit kernel. Its stages belong to the workgroup, so the more
/// threads share them, the less workgroup memory each wave holds: with 4 (was 2) a 64-row block at
/// head_dim 64 puts 9.9 KiB on each of its four wave64s instead of 18.8 KiB on two, which doubles
/// the waves RDNA3 can keep per SIMD (RADV: 8, was 4), and the softmax step's share of a row halves.
pub const COOP_ROW_THREADS: usize = 4;

/// The matrix-unit tiles for head_dim `dim` and `rows` query rows per block of work on a device with
/// `caps`, or `None` where none fits its workgroup memory. 64-row blocks for more than 32 rows where
/// they fit, else 32; [`COOP_ROW_THREADS`] threads per row. Both fragment counts of a tile,
/// (block_q / 16) x (block_kv / 16) and (block_q / 16) x (coop_dim / 16), must share out in equal
/// rounds among the block's subgroups (the kernel's matrix operations must be in uniform control
/// flow): with subgroups of 32 lanes or more they do (8 and 8k fragments among at most 8 subgroups in
/// a 64-row block, 4 and 4k among at most 4 in a 32-row one). With native units whose subgroups may
/// be narrower, a tile whose fragments do not share evenly is passed over (e.g. 16-lane subgroups,
/// 16 and 8 per block): some fragments would never be computed. wgpu devices do not list such units
/// as native today; this keeps a hand-written `Caps` from reaching the kernel. A device whose
/// workgroups are limited to fewer invocations than a 64-row block's gets 32-row blocks.
pub fn coop_attention_tiles_for(caps: &Caps, dim: usize, rows: usize) -> Option<CoopAttentionTiles> {
    let coop_dim = dim.div_ceil(32) * 32;
    // The emulation's virtual subgroups are 32, 64 or 128 lanes wide.
    let narrowest = match caps.matrix_units {
        MatrixUnits::Native => caps.subgroup_sizes.0 as usize,
        _ => 32,
    };
    let wanted = if rows > 32 { [64, 32].as_slice() } else { [32].as_slice() };
    const _: () = assert!(size::ATTENTION_MAX_BLOCK_Q >= 64 && size::ATTENTION_MAX_BLOCK_KV >= 32);
    wanted.iter().map(|&block_q| CoopAttentionTiles { block_q, block_kv: 32, coop_dim }).find(|t| {
        let fragments = [(t.block_q / 16) * (t.block_kv / 16), (t.block_q / 16) * (t.coop_dim / 16)];
        let threads = t.threads();
        let subgroups = threads / narrowest.clamp(1, threads);
        t.workgroup_bytes() <= caps.shared_memory_bytes as usize
            && t.block_q * t.coop_dim / threads <= COOP_OUT_SHARE
            && threads <= caps.max_threads_per_group as usize
            && fragments.iter().all(|f| f % subgroups == 0)
    })
}

/// Whether `device`'s matrix units compute attention as they should, checked once per device: the
/// matrix-unit kernel on a dense call of 140 rows over 150 keys (at least three blocks of 64 or 32
/// rows, so the emulation takes its three subgroup widths; ragged tiles) at head_dim 40, against a
/// float64 reference. The error says what failed; `Auto` then keeps f16 attention on the scalar
/// kernel.
pub fn attention_units_verified(device: &Device) -> std::result::Result<(), String> {
    if device.caps().matrix_units == MatrixUnits::None {
        return Err("the device has no matrix units".into());
    }
    device.check_attention_units(|| {
        let (heads, lq, lk, dim) = (2, 140, 150, 40);
        let (q, k, v) = (
            super::eighths(heads * lq * dim, 1),
            super::eighths(heads * lk * dim, 5),
            super::eighths(heads * lk * dim, 11),
        );
        let fail = |e: Error| format!("the matrix-unit attention failed to run: {e}");
        let up = |x: &[f32], len| Tensor::from_f32(device, &[1, heads, len, dim], x, DType::F16).map_err(fail);
        let options = AttentionOptions { algorithm: AttentionAlgorithm::Cooperative, ..Default::default() };
        let got =
            attention(&up(&q, lq)?, &up(&k, lk)?, &up(&v, lk)?, &options).and_then(|o| o.to_vec_f32()).map_err(fail)?;
        let scale = 1.0 / (dim as f64).sqrt();
        for h in 0..heads {
            let rows = |x: &[f32], len: usize| x[h * len * dim..(h + 1) * len * dim].to_vec();
            let want =
                reference::masked_attention(&rows(&q, lq), &rows(&k, lk), &rows(&v, lk), dim, scale, |_, _| true);
            for (i, (&g, &w)) in got[h * lq * dim..].iter().zip(&want).enumerate() {
                // f16 queries, weights and output: a few parts in 1e3 of the values' scale (1).
                if g.is_nan() || (g as f64 - w).abs() > 4e-3 {
                    return Err(format!(
                        "the matrix-unit attention computed {g} for element {i} of head {h} \
                         ({lq} rows, {lk} keys, head_dim {dim}), not {w}"
                    ));
                }
            }
        }
        Ok(())
    })
}

/// Which key groups a query group attends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GratPattern {
    /// GRAT-B: the (2r+1)^d box of groups around the query group, shifted inward at the border.
    Block { radius: usize },
    /// GRAT-B variant: the box truncated at the border instead of shifted.
    BlockTruncated { radius: usize },
    /// GRAT-X: every group sharing a group row or column (2D), or one of three planes (3D).
    CrissCross,
    /// Every image group: dense attention through the grouped kernel (a test and a baseline).
    All,
}

impl GratPattern {
    fn code_and_radius(self) -> (u32, usize) {
        match self {
            GratPattern::Block { radius } => (0, radius),
            GratPattern::BlockTruncated { radius } => (1, radius),
            GratPattern::CrissCross => (2, 0),
            GratPattern::All => (3, 0),
        }
    }
}

/// The token layout grouped attention works on: a raster-order grid of image tokens, its group
/// shape and pattern, then `text_len` text tokens of which the first `text_valid` are real.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupedLayout {
    /// [H, W] for images, [T, H, W] for video.
    pub grid: Vec<usize>,
    /// Tokens per group along each grid axis.
    pub group: Vec<usize>,
    pub pattern: GratPattern,
    pub text_len: usize,
    pub text_valid: usize,
    /// How q, k, v and the output are stored: (B, H, L, D) by default, or (B, L, H, D) as a fused qkv
    /// projection produces them (no transpose needed).
    pub tensors: AttentionLayout,
}

impl GroupedLayout {
    /// A 2D grid with the defaults: 16 x 16 groups, GRAT-B radius 1, no text.
    pub fn image(height: usize, width: usize) -> Self {
        Self {
            grid: vec![height, width],
            group: vec![16, 16],
            pattern: GratPattern::Block { radius: 1 },
            text_len: 0,
            text_valid: 0,
            tensors: AttentionLayout::HeadsMajor,
        }
    }

    /// A 3D (frames, height, width) grid with 4 x 8 x 8 groups, GRAT-B radius 1, no text.
    pub fn video(frames: usize, height: usize, width: usize) -> Self {
        Self { grid: vec![frames, height, width], group: vec![4, 8, 8], ..Self::image(height, width) }
    }

    pub fn with_group(mut self, group: &[usize]) -> Self {
        self.group = group.to_vec();
        self
    }

    pub fn with_pattern(mut self, pattern: GratPattern) -> Self {
        self.pattern = pattern;
        self
    }

    /// Tensors stored (B, L, H, D) (`AttentionLayout::TokensMajor`) or (B, H, L, D).
    pub fn with_tensors(mut self, tensors: AttentionLayout) -> Self {
        self.tensors = tensors;
        self
    }

    pub fn with_text(mut self, text_len: usize, text_valid: usize) -> Self {
        self.text_len = text_len;
        self.text_valid = text_valid;
        self
    }

    /// The grid's tokens (saturating: an impossible grid reads as usize::MAX, which the checks of
    /// every launch refuse, never as a wrapped small number).
    pub fn image_tokens(&self) -> usize {
        self.grid.iter().fold(1usize, |tokens, &axis| tokens.saturating_mul(axis))
    }

    /// Image and text tokens (saturating, as [`Self::image_tokens`]).
    pub fn seq_len(&self) -> usize {
        self.image_tokens().saturating_add(self.text_len)
    }

    /// Grid, group shape and group counts as (t, h, w), with t = 1 for images. Each group side is
    /// clamped to its grid side: a group larger than the grid is the whole axis either way (one group,
    /// whose extent the kernels already cut to the grid), but the launch is sized by the group's
    /// tokens, so an unclamped 2^13 x 2^13 group on a 1 x 1 grid would run 2^26 / block_q empty blocks.
    fn dims3(&self) -> ([usize; 3], [usize; 3], [usize; 3]) {
        let pad = |v: &[usize]| if v.len() == 2 { [1, v[0], v[1]] } else { [v[0], v[1], v[2]] };
        let grid = pad(&self.grid);
        let group = [0, 1, 2].map(|a| pad(&self.group)[a].min(grid[a]));
        let counts = [0, 1, 2].map(|a| grid[a].div_ceil(group[a]));
        (grid, group, counts)
    }

    /// Checks the layout against a sequence length; errors name the offending values.
    pub fn validate(&self, seq_len: usize) -> Result<()> {
        let tokens = self.checked_seq_len()?;
        if tokens != seq_len {
            return Err(Error::InvalidArgument {
                op: "grouped_attention",
                msg: format!(
                    "grid {:?} ({} tokens) + {} text tokens = {tokens} does not match the sequence length {seq_len}",
                    self.grid,
                    self.image_tokens(),
                    self.text_len,
                ),
            });
        }
        Ok(())
    }

    /// The layout's own checks (everything but a tensor's sequence length), then its sequence length.
    fn checked_seq_len(&self) -> Result<usize> {
        let invalid = |msg: String| Err(Error::InvalidArgument { op: "grouped_attention", msg });
        if !(2..=3).contains(&self.grid.len()) {
            return invalid(format!("the grid must be [H, W] or [T, H, W], got {:?}", self.grid));
        }
        if self.group.len() != self.grid.len() {
            return invalid(format!("group shape {:?} does not match grid {:?}", self.group, self.grid));
        }
        if self.grid.contains(&0) {
            return invalid(format!("grid {:?} has an empty axis", self.grid));
        }
        if self.group.contains(&0) {
            return invalid(format!("group shape {:?} has a zero-sized axis", self.group));
        }
        if self.text_valid > self.text_len {
            return invalid(format!("text valid length {} exceeds the text length {}", self.text_valid, self.text_len));
        }
        if let GratPattern::Block { radius } | GratPattern::BlockTruncated { radius } = self.pattern
            && radius > 1 << 16
        {
            return invalid(format!("radius {radius} is out of range"));
        }
        match self.grid.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).and_then(|n| n.checked_add(self.text_len)) {
            Some(seq_len) => Ok(seq_len),
            None => invalid(format!("grid {:?} with {} text tokens overflows", self.grid, self.text_len)),
        }
    }

    /// Allowed (query, key) pairs, counting text: the work the grouped kernel does. Errors as
    /// [`GroupedLayout::validate`] does on the layout's own values, and when the count exceeds u64.
    ///
    /// Computed per axis without listing groups (a 65536^2 grid of 1 x 1 groups has 2^32 of them):
    /// the group patterns are products or unions of per-axis conditions, and a group's tokens are the
    /// product of its per-axis extents, so the sum over (query group, key group) pairs factors by axis
    /// ([`AxisSums`]). `reference::attended_pairs` counts the same pairs group by group.
    pub fn attended_pairs(&self) -> Result<u64> {
        self.checked_seq_len()?;
        let (grid, group, counts) = self.dims3();
        // Images have a dummy t axis; only the grid's own axes take part in the pattern.
        let axes: &[usize] = if self.grid.len() == 2 { &[1, 2] } else { &[0, 1, 2] };
        let sums: Vec<AxisSums> = axes.iter().map(|&a| AxisSums::new(grid[a], group[a], counts[a])).collect();
        let image = self.image_tokens() as u128;
        // Every factor is at most image^2 < 2^128 (image fits usize), and so is every product.
        let product = |f: &dyn Fn(&AxisSums) -> u128| sums.iter().map(f).product::<u128>();
        let image_pairs = match self.pattern {
            GratPattern::All => image * image,
            GratPattern::Block { radius } => product(&|s| s.block(radius as u128)),
            GratPattern::BlockTruncated { radius } => product(&|s| s.block_truncated(radius as u128)),
            // Allowed unless no axis matches: all pairs less those differing on every axis.
            GratPattern::CrissCross => image * image - product(&|s| s.len * s.len - s.same_group()),
        };
        let (text_len, text_valid) = (self.text_len as u128, self.text_valid as u128);
        // Image queries attend the valid text; text queries attend every image and valid text token.
        let total = image_pairs + image * text_valid + text_len * (image + text_valid);
        u64::try_from(total).map_err(|_| Error::InvalidArgument {
            op: "grouped_attention",
            msg: format!(
                "grid {:?} with {} text tokens attends {total} pairs, more than u64 counts",
                self.grid, self.text_len
            ),
        })
    }

    /// Fraction of the dense (seq_len^2) pairs attended.
    pub fn density(&self) -> Result<f64> {
        Ok(self.attended_pairs()? as f64 / (self.seq_len() as f64).powi(2))
    }
}

/// One grid axis of `len` tokens in `n` groups of `group` (the last one `last` tokens): sums over
/// (query group, key group) pairs along the axis of size(query) x size(key), for the pairs each
/// pattern allows, in closed form. size(i) = group - (group - last) [i = n - 1], so a sum of sizes
/// over a range of groups is group x (its groups) less (group - last) if it holds the last one.
struct AxisSums {
    len: u128,
    group: u128,
    n: u128,
    last: u128,
}

impl AxisSums {
    fn new(len: usize, group: usize, n: usize) -> Self {
        let (len, group, n) = (len as u128, group as u128, n as u128);
        Self { len, group, n, last: len - (n - 1) * group }
    }

    /// Pairs within the same group: the sum of size(i)^2.
    fn same_group(&self) -> u128 {
        (self.n - 1) * self.group * self.group + self.last * self.last
    }

    /// GRAT-B: query group q attends the 2r+1 groups around clamp(q, r, n-1-r), or the whole axis
    /// when it has no more. Otherwise (n > 2r+1) each window weighs group x (2r+1), less (group -
    /// last) for the windows that hold the last group: those of the queries from n-1-r on (r full
    /// groups and the last).
    fn block(&self, r: u128) -> u128 {
        if self.n <= 2 * r + 1 {
            return self.len * self.len;
        }
        self.len * self.group * (2 * r + 1) - (self.group - self.last) * (r * self.group + self.last)
    }

    /// GRAT-B truncated: query group q attends groups max(0, q-r)..=min(n-1, q+r). With m = min(r,
    /// n-1): the windows hold sum |window| = n + 2 (m n - m (m+1) / 2) groups; the last query's
    /// window (m+1 groups) is the one whose own size is `last`, and the queries from n-1-m on (m full
    /// groups and the last) have windows holding the last group.
    fn block_truncated(&self, r: u128) -> u128 {
        let m = r.min(self.n - 1);
        let windows = self.n + 2 * (m * self.n - m * (m + 1) / 2);
        let short = self.group - self.last;
        self.group * (self.group * windows - short * (m + 1)) - short * (m * self.group + self.last)
    }
}

/// (batch, heads, tokens, head_dim) of a tensor in `layout`, with its element strides.
struct Geometry {
    batch: usize,
    heads: usize,
    tokens: usize,
    dim: usize,
    strides: [usize; 3],
}

fn geometry(t: &Tensor, layout: AttentionLayout, what: &str) -> Result<Geometry> {
    let [a, b, c, dim] = t.dims("attention", what)?;
    Ok(match layout {
        AttentionLayout::HeadsMajor => {
            Geometry { batch: a, heads: b, tokens: c, dim, strides: [b * c * dim, c * dim, dim] }
        }
        AttentionLayout::TokensMajor => {
            Geometry { batch: a, heads: c, tokens: b, dim, strides: [b * c * dim, dim, c * dim] }
        }
    })
}

/// How an attention kernel is tiled: the constants every attention launch sets. [`attention_tiles`]
/// says which tiles a call would get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionTiles {
    /// Query rows per workgroup.
    pub block_q: usize,
    /// Keys per tile.
    pub block_kv: usize,
    pub threads: usize,
    /// CUDA: the query tile in vec4s. WGSL: the partial scores exchanged per tile (1 when each row
    /// has one thread; with staged scores, one per thread, for the queries' norms).
    pub q_tile_vecs: usize,
    /// The K and V tiles in vec4s.
    pub kv_tile_vecs: usize,
    /// WGSL: copies of the row layout that split each key tile between them (flash-decoding inside
    /// the workgroup, for blocks of few rows; two for staged scores, whose workgroup memory then
    /// serves twice the invocations); 1 on CUDA, whose kernels split keys among warps.
    pub key_slices: usize,
    /// WGSL: query rows per thread (1, 2 or 4), each v word (and, but for staged scores, each k
    /// word) read from workgroup memory meeting that many rows; 1 on CUDA.
    pub rows_per_thread: usize,
    /// WGSL: a row's partial scores meet through subgroup shuffles rather than workgroup memory (the
    /// subgroups variant, a row's threads within the narrowest subgroup); false on CUDA.
    pub subgroup_exchange: bool,
}

impl AttentionTiles {
    /// WGSL: four rows per thread without shuffles, whose tiles' scores are computed whole from the
    /// block's staged queries and staged in workgroup memory (attention_tile.wgsl).
    pub fn staged_scores(&self) -> bool {
        self.rows_per_thread == 4 && !self.subgroup_exchange
    }

    /// WGSL: the staged queries and a tile's staged scores in vec4s, for head_dim `dim` (one each,
    /// unused, where the scores are not staged: WGSL arrays have at least one element). What the
    /// launch declares and what the tiles are sized for.
    fn stage_vecs(&self, dim: usize) -> (usize, usize) {
        if self.staged_scores() { (self.block_q * dim.div_ceil(4), self.block_q / 4 * self.block_kv) } else { (1, 1) }
    }

    /// The constants of these tiles, for a launch of `family` (attention or qkv_heads).
    pub fn constants(&self, family: Family, dim: usize) -> Constants {
        let (q_stage, score_tile) = self.stage_vecs(dim);
        Constants::new(family)
            .set("HEAD_DIM", dim as u32)
            .set("BLOCK_Q", self.block_q as u32)
            .set("BLOCK_KV", self.block_kv as u32)
            .set("THREADS", self.threads as u32)
            .set("Q_TILE_VECS", self.q_tile_vecs as u32)
            .set("KV_TILE_VECS", self.kv_tile_vecs as u32)
            .set("KV_SPLIT", self.key_slices as u32)
            .set("ROWS", self.rows_per_thread as u32)
            .set("SUBGROUP_EXCHANGE", self.subgroup_exchange)
            .set("STAGED_SCORES", self.staged_scores())
            .set("Q_STAGE_VECS", q_stage as u32)
            .set("SCORE_TILE_VECS", score_tile as u32)
    }
}

/// Dimensions of q and of the output one WGSL thread keeps in registers, over its rows
/// (attention_tile.wgsl: SLICE_VECS vec4s).
const WGSL_SLICE_DIMS: usize = 32;

/// Invocations a WGSL workgroup of few query rows widens to by splitting its keys: a 64-wide wave
/// or two 32-wide ones, so the block's rows do not stream every key through one lane each.
const KEY_SPLIT_THREADS: usize = 64;

/// The fewest keys of a tile one key slice attends. With 2, RADV (gfx1100) unrolls the slice's
/// score loop and holds both keys' K rows beside q and the output: 132 VGPRs and 43 spilled
/// (`scalewise shader-stats`, before this limit); with 4, the loop stays a loop, at 120 and none.
const KEYS_PER_SLICE: usize = 4;

/// The key slices for a WGSL block of `block_q` rows of `row_threads` threads with `block_kv`-key
/// tiles, over `keys` keys: a power of two that widens the block towards KEY_SPLIT_THREADS, leaves
/// each slice KEYS_PER_SLICE keys of a tile (and of the call), and lets half of the slices' output
/// shares (min(32, head_dim) dimensions per thread) fit the K tile for the merge.
fn key_slices(block_q: usize, block_kv: usize, row_threads: usize, head_vecs: usize, keys: usize) -> usize {
    let share = head_vecs.min(WGSL_SLICE_DIMS / 4);
    let mut slices = 1;
    loop {
        let next = 2 * slices;
        let widens = next * block_q * row_threads <= KEY_SPLIT_THREADS;
        let has_keys = next * KEYS_PER_SLICE <= block_kv.min(keys.max(1).next_power_of_two());
        let merges = slices * block_q * row_threads * share <= block_kv * head_vecs;
        if !(widens && has_keys && merges) {
            return slices;
        }
        slices = next;
    }
}

/// The tiles an attention call on `device` gets, for head_dim `dim`, `rows` query rows per block
/// of work and at most `keys` keys per query: what fits the adapter's workgroup memory and
/// invocation limits.
///
/// WGSL (attention_tile.wgsl): one query row per ceil(head_dim / 32) threads, q and the output in
/// registers, K and V tiles in workgroup memory; with subgroups, blocks of many rows put four rows on
/// each ceil(head_dim / 8) threads (at least 4, so that a block keeps a thread per row), or else two
/// on each ceil(head_dim / 16), where that is a power of two within the narrowest subgroup (each k
/// and v word read then serves all of them), and a row's partial scores meet through shuffles
/// wherever its threads fit a subgroup ([`AttentionTiles::rows_per_thread`],
/// [`AttentionTiles::subgroup_exchange`]). Where no shuffles serve them (no subgroups, or rows too
/// wide for the narrowest), blocks of many rows still put four rows on each ceil(head_dim / 8)
/// threads where the block's queries and a tile's scores fit workgroup memory beside the tiles:
/// the scores are then computed whole from the staged queries, 4 rows x 4 keys per thread, and
/// staged ([`AttentionTiles::staged_scores`]), in two copies of the row layout that split each
/// tile's keys on GPUs where 256 invocations are allowed ([`Caps::attention_staged_key_slices`]).
/// A workgroup's rows shrink to a power of two for few-row calls (a KV-cache step), and such a
/// block splits its keys between copies of the row layout ([`AttentionTiles::key_slices`]). CUDA
/// (attention.cu): BLOCK_Q x BLOCK_KV threads, one score each, with the query tile in shared memory.
pub fn attention_tiles(device: &Device, dim: usize, rows: usize, keys: usize) -> Result<AttentionTiles> {
    attention_tiles_for(&device.caps(), dim, rows, keys)
}

/// [`attention_tiles`] for a device with `caps` (e.g. a GPU described without being opened).
pub fn attention_tiles_for(caps: &Caps, dim: usize, rows: usize, keys: usize) -> Result<AttentionTiles> {
    let vecs = dim.div_ceil(4);
    let fits = |words: usize, threads: usize| {
        words * 4 <= caps.shared_memory_bytes as usize && threads <= caps.max_threads_per_group as usize
    };
    if caps.attention == AttentionDesign::ScoreTiles {
        for (bq, bkv) in [(16, 16), (16, 8), (8, 8), (8, 4), (4, 4)] {
            let floats = 4 * vecs * (bq + 2 * bkv) + 512 + 3 * 16;
            let words = floats + 16 + 32 + 256; // token tables and the reduction scratch
            if fits(words, bq * bkv) && vecs.div_ceil(bkv) <= 16 {
                return Ok(AttentionTiles {
                    block_q: bq,
                    block_kv: bkv,
                    threads: bq * bkv,
                    q_tile_vecs: bq * vecs,
                    kv_tile_vecs: bkv * vecs,
                    key_slices: 1,
                    rows_per_thread: 1,
                    subgroup_exchange: false,
                });
            }
        }
    } else {
        // A row's threads for `rows` rows per thread (each holding WGSL_SLICE_DIMS / rows of a row's
        // dimensions), and whether they can sum their partial scores in one subgroup: a power of two
        // within the narrowest subgroup the adapter may run.
        let row_threads = |rows: usize| vecs.div_ceil(WGSL_SLICE_DIMS / 4 / rows);
        let in_subgroup =
            |rt: usize| caps.subgroups && rt > 1 && rt.is_power_of_two() && rt <= caps.subgroup_sizes.0 as usize;
        // Shuffles number a block's threads by subgroup and lane (attention_lanes_subgroup.wgsl),
        // which covers the block once only where its subgroups come full: a block of one subgroup,
        // or a multiple of the widest subgroup the adapter may run.
        let full_subgroups = |threads: usize| {
            threads <= caps.subgroup_sizes.0 as usize || threads.is_multiple_of(caps.subgroup_sizes.1.max(1) as usize)
        };
        // `shuffled`: whether several rows per thread must meet through shuffles (four rows without
        // them stage their scores; two rows need them).
        let tiles = |bq: usize, bkv: usize, slices: usize, rows: usize, shuffled: bool| {
            let rt = row_threads(rows);
            let threads = slices * bq / rows * rt;
            let subgroup_exchange = in_subgroup(rt) && full_subgroups(threads);
            // A block keeps a thread per row, as the entry points fill its token table one row per
            // thread (four rows of head_dim 16 or less would have 2 threads, or 1).
            if (rows > 1 && subgroup_exchange != shuffled) || threads < bq {
                return None;
            }
            let mut tiles = AttentionTiles {
                block_q: bq,
                block_kv: bkv,
                threads,
                q_tile_vecs: 1,
                kv_tile_vecs: bkv * vecs,
                key_slices: slices,
                rows_per_thread: rows,
                subgroup_exchange,
            };
            if tiles.staged_scores() && !caps.attention_staged_scores {
                return None;
            }
            tiles.q_tile_vecs = if tiles.staged_scores() {
                // The queries' norms meet through partial_scores (row_totals), a word per thread.
                threads
            } else if rt > 1 && !subgroup_exchange {
                bq * bkv * rt
            } else {
                1
            };
            let (q_stage, score_tile) = tiles.stage_vecs(dim);
            // K and V tiles, partial scores, stages, token tables
            let words =
                2 * 4 * tiles.kv_tile_vecs + tiles.q_tile_vecs + 4 * (q_stage + score_tile) + TOKEN_TABLE_BYTES / 4;
            fits(words, threads).then_some(tiles)
        };
        let row_threads = row_threads(1);
        // Few rows over enough keys: a block of exactly those rows, whose copies split the keys. It
        // takes 32-key tiles where they fit (more slices; its grid is small, so occupancy does not
        // bind it).
        if caps.attention_key_split {
            let bq = rows.max(1).next_power_of_two();
            // No tile longer than the call's keys, whose slices past them would only see padding.
            let longest = keys.max(1).next_power_of_two();
            for bkv in [32, 16, 8, 4].into_iter().filter(|&bkv| bkv <= longest) {
                let slices = key_slices(bq, bkv, row_threads, vecs, keys);
                if let Some(tiles) = tiles(bq, bkv, slices, 1, false).filter(|_| slices > 1) {
                    return Ok(within_token_tables(tiles));
                }
            }
        }
        // One slice: rows shrink to a power of two from 8 up (lavapipe runs a workgroup of one
        // invocation at half the speed of an 8-row one with 7 rows of padding). 16-key tiles first:
        // at head_dim 64 their 8.5 KiB keep 8 waves per SIMD on RDNA3, where 32-key tiles' 17 KiB
        // keep 4 (shader-stats).
        let wanted_q = rows.next_power_of_two().clamp(8, 64);
        for bq in [64, 32, 16, 8, 4].into_iter().filter(|&bq| bq <= wanted_q) {
            // Four or two rows per thread where the block's subgroups allow the shuffles; else four
            // rows with staged scores; else one. Two rows without shuffles would exchange their
            // partial scores through workgroup memory, twice the space of one row per thread, and
            // hold both rows' scores of a tile in registers (RADV: 132 VGPRs, 6 waves and a worse
            // throughput estimate than one row, `scalewise shader-stats`).
            let layouts = [(4, true), (2, true), (4, false), (1, false)];
            for (rows, shuffled) in layouts.into_iter().filter(|&(r, _)| r <= bq) {
                // A thread's scores of a tile, rows x keys, fit its score array (attention_tile.wgsl);
                // four rows take their keys one at a time and hold no such array.
                let score_slots = size::ATTENTION_MAX_BLOCK_KV as usize;
                // Staged scores take two key slices where they may: the stages' workgroup memory
                // then holds twice the invocations, which raises waves per SIMD where it binds them
                // (RDNA3 at head_dim 64: 6 -> 10, `scalewise shader-stats`). 16-key tiles still:
                // 32-key ones in two slices take 41.5 KiB for 8 waves, and ACO's estimate is worse.
                let staged = rows == 4 && !shuffled;
                let slices: &[usize] = if staged && caps.attention_staged_key_slices { &[2, 1] } else { &[1] };
                for bkv in [16, 32, 8, 4].into_iter().filter(|&bkv| rows == 4 || rows * bkv <= score_slots) {
                    for &slices in slices.iter().filter(|&&s| bkv / s >= KEYS_PER_SLICE) {
                        if let Some(tiles) = tiles(bq, bkv, slices, rows, shuffled) {
                            return Ok(within_token_tables(tiles));
                        }
                    }
                }
            }
        }
    }
    Err(Error::MissingFeature {
        what: format!("attention with head_dim {dim} ({} bytes of workgroup memory)", caps.shared_memory_bytes),
        feature: "max_compute_workgroup_storage_size >= 16 KiB",
    })
}

/// WGSL tiles as chosen, checked against the kernels' token tables (kernels::size).
fn within_token_tables(tiles: AttentionTiles) -> AttentionTiles {
    let (max_q, max_kv) = (size::ATTENTION_MAX_BLOCK_Q as usize, size::ATTENTION_MAX_BLOCK_KV as usize);
    debug_assert!(tiles.block_q <= max_q && tiles.block_kv <= max_kv, "{tiles:?} outgrow the token tables");
    tiles
}

/// The kernel an attention call (or ops::qkv_attention) runs, with its tiles.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AttentionKernel {
    Scalar(AttentionTiles),
    Cooperative(CoopAttentionTiles),
}

impl AttentionKernel {
    /// What `algorithm` runs for head_dim `dim`, `rows` query rows per block of work and at most
    /// `keys` keys per query, on `device` with f16 or f32 storage `dtype`.
    pub(crate) fn choose(
        device: &Device,
        algorithm: AttentionAlgorithm,
        dtype: DType,
        dim: usize,
        (rows, keys): (usize, usize),
    ) -> Result<Self> {
        let caps = device.caps();
        let scalar = || Ok(AttentionKernel::Scalar(attention_tiles(device, dim, rows, keys)?));
        match algorithm {
            AttentionAlgorithm::Scalar => scalar(),
            AttentionAlgorithm::Auto => {
                let coop = dtype == DType::F16
                    && caps.matrix_units == MatrixUnits::Native
                    && caps.attention == AttentionDesign::RowsInRegisters
                    && rows >= COOP_MIN_ROWS;
                match coop_attention_tiles_for(&caps, dim, rows) {
                    Some(tiles) if coop && attention_units_verified(device).is_ok() => {
                        Ok(AttentionKernel::Cooperative(tiles))
                    }
                    _ => scalar(),
                }
            }
            AttentionAlgorithm::Cooperative => {
                if caps.matrix_units == MatrixUnits::None {
                    return Err(Error::MissingFeature {
                        what: "attention on matrix units".into(),
                        feature: "16 x 16 f16 matrix units (cooperative matrices or tensor cores)",
                    });
                }
                if dtype != DType::F16 {
                    return Err(Error::UnsupportedDType {
                        op: "attention (matrix units)",
                        dtype,
                        expected: "f16 (the units multiply f16)",
                    });
                }
                // CUDA's attention kernel puts f16 on the tensor cores itself.
                if caps.attention == AttentionDesign::ScoreTiles {
                    return scalar();
                }
                coop_attention_tiles_for(&caps, dim, rows).map(AttentionKernel::Cooperative).ok_or_else(|| {
                    Error::MissingFeature {
                        what: format!(
                            "attention on matrix units with head_dim {dim} ({} bytes of workgroup memory)",
                            caps.shared_memory_bytes
                        ),
                        feature: "workgroup memory for 32 query rows, 32 keys and the head dimension in f16 stages",
                    }
                })
            }
        }
    }

    pub(crate) fn block_q(&self) -> usize {
        match self {
            AttentionKernel::Scalar(tiles) => tiles.block_q,
            AttentionKernel::Cooperative(tiles) => tiles.block_q,
        }
    }
}

struct AttentionLaunch<'a> {
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    out: &'a Tensor,
    qg: Geometry,
    kg: Geometry,
    scale: f32,
    /// From the algorithm, head_dim, the query rows and the adapter's limits.
    kernel: AttentionKernel,
}

impl<'a> AttentionLaunch<'a> {
    fn new(
        q: &'a Tensor,
        k: &'a Tensor,
        v: &'a Tensor,
        out: &'a Tensor,
        (qg, kg): (Geometry, Geometry),
        (scale, algorithm): (f32, AttentionAlgorithm),
        rows_and_keys: (usize, usize),
    ) -> Result<Self> {
        let kernel = AttentionKernel::choose(q.device(), algorithm, q.dtype(), qg.dim, rows_and_keys)?;
        Ok(Self { q, k, v, out, qg, kg, scale, kernel })
    }

    /// AttentionParams: strides, the dense ranges, then the grouped layout (a single group of one
    /// token for dense launches).
    fn params(&self, dense: [usize; 3], grouped: Option<&GroupedLayout>) -> Result<AttentionParams> {
        let u = |what: &str, v: usize| index_u32("attention", what, v);
        let [qb, qh, qt] = self.qg.strides;
        let [kb, kh, kt] = self.kg.strides;
        let mut p = AttentionParams {
            heads: u("heads", self.qg.heads)?,
            q_batch_stride: u("a stride", qb)?,
            q_head_stride: u("a stride", qh)?,
            q_token_stride: u("a stride", qt)?,
            kv_batch_stride: u("a stride", kb)?,
            kv_head_stride: u("a stride", kh)?,
            kv_token_stride: u("a stride", kt)?,
            o_batch_stride: u("a stride", qb)?,
            o_head_stride: u("a stride", qh)?,
            o_token_stride: u("a stride", qt)?,
            q_start: u("a token count", dense[0])?,
            q_count: u("a token count", dense[1])?,
            kv_len: u("a token count", dense[2])?,
            scale: self.scale,
            axes: 2,
            blocks_per_group: 1,
            ..Default::default()
        };
        match grouped {
            Some(layout) => {
                let (grid, group, counts) = layout.dims3();
                let (pattern, radius) = layout.pattern.code_and_radius();
                [p.grid_t, p.grid_h, p.grid_w] =
                    [u("a grid size", grid[0])?, u("a grid size", grid[1])?, u("a grid size", grid[2])?];
                [p.group_t, p.group_h, p.group_w] =
                    [u("a grid size", group[0])?, u("a grid size", group[1])?, u("a grid size", group[2])?];
                [p.groups_t, p.groups_h, p.groups_w] =
                    [u("a grid size", counts[0])?, u("a grid size", counts[1])?, u("a grid size", counts[2])?];
                p.pattern = pattern;
                p.radius = radius as u32;
                p.axes = layout.grid.len() as u32;
                p.text_start = u("text start", layout.image_tokens())?;
                p.text_valid = u("text valid", layout.text_valid)?;
                p.blocks_per_group =
                    u("blocks per group", group.iter().product::<usize>().div_ceil(self.kernel.block_q()))?;
            }
            None => {
                [p.grid_t, p.grid_h, p.grid_w, p.group_t, p.group_h, p.group_w, p.groups_t, p.groups_h, p.groups_w] =
                    [1; 9];
            }
        }
        Ok(p)
    }

    fn run(&self, entry: &'static str, params: &AttentionParams, blocks: usize, order: TokenOrder) -> Result<()> {
        let (family, constants) = match self.kernel {
            AttentionKernel::Scalar(tiles) => (Family::Attention, tiles.constants(Family::Attention, self.qg.dim)),
            AttentionKernel::Cooperative(tiles) => {
                (Family::AttentionCoop, tiles.constants(Family::AttentionCoop, self.qg.dim))
            }
        };
        let constants = constants.set("GROUP_MAJOR", order == TokenOrder::GroupMajor);
        let batch = index_u32("attention", "batch * heads", self.qg.batch * self.qg.heads)?;
        let args = [self.q.arg("q"), self.k.arg("k"), self.v.arg("v"), self.out.arg_mut("out")];
        let grid = Grid::Batched { groups: blocks as u64, batch };
        launch(self.q, family, entry, self.q.dtype(), &constants, &args, params, grid)
    }
}

fn prepare<'a>(q: &'a Tensor, k: &'a Tensor, v: &'a Tensor, layout: AttentionLayout) -> Result<(Geometry, Geometry)> {
    const OP: &str = "attention";
    check_operand(OP, q, k)?;
    check_operand(OP, q, v)?;
    if !q.dtype().is_float() {
        return Err(Error::UnsupportedDType { op: OP, dtype: q.dtype(), expected: "f32 or f16" });
    }
    let qg = geometry(q, layout, "q")?;
    let kg = geometry(k, layout, "k")?;
    geometry(v, layout, "v")?;
    if k.shape() != v.shape() {
        return Err(shape_error(OP, k, v, "k and v must have the same shape"));
    }
    if (qg.batch, qg.heads, qg.dim) != (kg.batch, kg.heads, kg.dim) {
        return Err(shape_error(OP, q, k, "q and k must agree in batch, heads and head_dim"));
    }
    if qg.dim == 0 || qg.dim > MAX_HEAD_DIM {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("head_dim {} is outside the supported range 1..={MAX_HEAD_DIM}", qg.dim),
        });
    }
    Ok((qg, kg))
}

fn softmax_scale(scale: Option<f32>, dim: usize) -> Result<f32> {
    let scale = scale.unwrap_or(1.0 / (dim as f32).sqrt());
    if !scale.is_finite() {
        return Err(Error::InvalidArgument { op: "attention", msg: format!("softmax scale {scale} is not finite") });
    }
    Ok(scale)
}

/// Dense softmax attention, flash style: softmax(scale * q k^T) v over the first `kv_len` keys.
/// The query length may differ from the key length (a block of new tokens against a KV cache).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, options: &AttentionOptions) -> Result<Tensor> {
    let (qg, kg) = prepare(q, k, v, options.layout)?;
    let kv_len = options.kv_len.unwrap_or(kg.tokens);
    if kv_len == 0 || kv_len > kg.tokens {
        return Err(Error::InvalidArgument {
            op: "attention",
            msg: format!("kv_len {kv_len} must be in 1..={} (the keys' length)", kg.tokens),
        });
    }
    let out = Tensor::empty(q.device(), q.shape(), q.dtype())?;
    let scale = softmax_scale(options.scale, qg.dim)?;
    let tokens = qg.tokens;
    let launch = AttentionLaunch::new(q, k, v, &out, (qg, kg), (scale, options.algorithm), (tokens, kv_len))?;
    let params = launch.params([0, tokens, kv_len], None)?;
    launch.run("flash_attention", &params, tokens.div_ceil(launch.kernel.block_q()), TokenOrder::Raster)?;
    Ok(out)
}

/// Order of the image tokens in a tensor given to grouped attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenOrder {
    /// (t, y, x) raster order, as models produce them; the kernel gathers groups itself.
    #[default]
    Raster,
    /// Each group's tokens contiguous, groups in raster order ([`to_group_major`]).
    GroupMajor,
}

/// GRAT grouped attention over (B, H, L, D) tensors, or (B, L, H, D) ones with
/// `layout.tensors = AttentionLayout::TokensMajor` (L = image tokens in raster order + text).
/// Exactly softmax attention restricted to the pattern; image queries attend their pattern's groups
/// and the valid text, text queries attend every valid token.
pub fn grouped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &GroupedLayout,
    scale: Option<f32>,
) -> Result<Tensor> {
    grouped_attention_in(q, k, v, layout, scale, TokenOrder::Raster)
}

/// [`grouped_attention`] on tensors whose image tokens are in `order`; the output is in the same order.
pub fn grouped_attention_in(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &GroupedLayout,
    scale: Option<f32>,
    order: TokenOrder,
) -> Result<Tensor> {
    grouped_attention_with(q, k, v, layout, &GroupedOptions { scale, order, ..Default::default() })
}

/// How a grouped attention call runs: [`grouped_attention_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupedOptions {
    /// Softmax scale; default 1 / sqrt(head_dim).
    pub scale: Option<f32>,
    /// The order of the image tokens in the tensors and the output.
    pub order: TokenOrder,
    pub algorithm: AttentionAlgorithm,
}

/// [`grouped_attention`] with every option.
pub fn grouped_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &GroupedLayout,
    options: &GroupedOptions,
) -> Result<Tensor> {
    let (scale, order) = (options.scale, options.order);
    let (qg, kg) = prepare(q, k, v, layout.tensors)?;
    layout.validate(qg.tokens)?;
    if kg.tokens != qg.tokens {
        return Err(shape_error("grouped_attention", q, k, "q and k must have the same sequence length"));
    }
    let out = Tensor::empty(q.device(), q.shape(), q.dtype())?;
    let scale = softmax_scale(scale, qg.dim)?;
    let image = layout.image_tokens();
    let (_, group, counts) = layout.dims3();
    let group_tokens = group.iter().product::<usize>();
    // A key tile holds one key group (or text), so a split block's slices share a group's tokens.
    let rows = group_tokens.max(layout.text_len);
    let keys = group_tokens.max(layout.text_valid);
    let launch = AttentionLaunch::new(q, k, v, &out, (qg, kg), (scale, options.algorithm), (rows, keys))?;
    // The clamped groups (dims3) cover the grid at most twice per axis, so this stays near the
    // image's tokens; checked all the same, as the grid may be anything `validate` passes.
    let blocks = counts
        .iter()
        .try_fold(group_tokens.div_ceil(launch.kernel.block_q()), |n, &c| n.checked_mul(c))
        .ok_or_else(|| Error::InvalidArgument {
            op: "grouped_attention",
            msg: format!("grid {:?} in groups of {:?} needs more blocks than usize counts", layout.grid, layout.group),
        })?;
    let params = launch.params([0, image, image], Some(layout))?;
    launch.run("grouped_attention", &params, blocks, order)?;
    if layout.text_len > 0 {
        let params = launch.params([image, layout.text_len, image + layout.text_valid], None)?;
        launch.run("flash_attention", &params, layout.text_len.div_ceil(launch.kernel.block_q()), order)?;
    }
    Ok(out)
}

/// Moves the image tokens of a (B, H, L, D) tensor from raster to group-major order (text stays).
pub fn to_group_major(x: &Tensor, layout: &GroupedLayout) -> Result<Tensor> {
    permute_tokens(x, layout, true)
}

/// The inverse of [`to_group_major`].
pub fn from_group_major(x: &Tensor, layout: &GroupedLayout) -> Result<Tensor> {
    permute_tokens(x, layout, false)
}

fn permute_tokens(x: &Tensor, layout: &GroupedLayout, to_group_major: bool) -> Result<Tensor> {
    if layout.tensors != AttentionLayout::HeadsMajor {
        return Err(Error::InvalidArgument {
            op: "to_group_major",
            msg: "permutes (B, H, L, D) tensors; the layout says (B, L, H, D)".into(),
        });
    }
    let (g, _) = prepare(x, x, x, AttentionLayout::HeadsMajor)?;
    layout.validate(g.tokens)?;
    let out = Tensor::empty(x.device(), x.shape(), x.dtype())?;
    let (grid, group, counts) = layout.dims3();
    // permute_tokens reads heads as batch * heads, the head and token strides, the grid, and the
    // text range; the other fields are unused.
    let params = AttentionParams {
        heads: index_u32("permute_tokens", "batch * heads", g.batch * g.heads)?,
        q_head_stride: (g.tokens * g.dim) as u32,
        q_token_stride: g.dim as u32,
        grid_t: grid[0] as u32,
        grid_h: grid[1] as u32,
        grid_w: grid[2] as u32,
        group_t: group[0] as u32,
        group_h: group[1] as u32,
        group_w: group[2] as u32,
        groups_t: counts[0] as u32,
        groups_h: counts[1] as u32,
        groups_w: counts[2] as u32,
        axes: layout.grid.len() as u32,
        text_start: layout.image_tokens() as u32,
        text_valid: layout.text_len as u32,
        ..Default::default()
    };
    let constants =
        Constants::new(Family::Attention).set("HEAD_DIM", g.dim as u32).set("TO_GROUP_MAJOR", to_group_major);
    let n = index_u32("permute_tokens", "elements", x.numel())?;
    let args = [x.arg("x"), x.arg("x"), x.arg("x"), out.arg_mut("out")];
    launch(x, Family::Attention, "permute_tokens", x.dtype(), &constants, &args, &params, elements(n as usize))?;
    Ok(out)
}

/// Float64 references and the pattern predicate, written from the GRAT spec.
pub mod reference {
    use super::{GratPattern, GroupedLayout};

    /// Is key group `kg` attended by query group `qg` (group coordinates as (t, h, w))?
    pub fn groups_allowed(layout: &GroupedLayout, qg: [usize; 3], kg: [usize; 3]) -> bool {
        let (_, _, counts) = layout.dims3();
        // Images have a dummy t axis; only the grid's own axes take part in the pattern.
        let axes: &[usize] = if layout.grid.len() == 2 { &[1, 2] } else { &[0, 1, 2] };
        match layout.pattern {
            GratPattern::All => true,
            GratPattern::CrissCross => axes.iter().any(|&a| kg[a] == qg[a]),
            GratPattern::Block { radius: r } => axes.iter().all(|&a| {
                let n = counts[a] as i64;
                let r = r as i64;
                // Centre shifted inward so the window keeps its 2r+1 groups; the whole axis if shorter.
                let c = if n < 2 * r + 1 { return true } else { (qg[a] as i64).clamp(r, n - 1 - r) };
                (kg[a] as i64 - c).abs() <= r
            }),
            GratPattern::BlockTruncated { radius } => {
                axes.iter().all(|&a| (kg[a] as i64 - qg[a] as i64).abs() <= radius as i64)
            }
        }
    }

    /// [`GroupedLayout::attended_pairs`] counted group by group (every pair of groups: for small
    /// layouts, to check the closed form).
    pub fn attended_pairs(layout: &GroupedLayout) -> u64 {
        let (grid, group, counts) = layout.dims3();
        let size = |g: [usize; 3]| -> u64 { (0..3).map(|a| group[a].min(grid[a] - g[a] * group[a]) as u64).product() };
        let all: Vec<[usize; 3]> = (0..counts[0])
            .flat_map(|t| (0..counts[1]).flat_map(move |h| (0..counts[2]).map(move |w| [t, h, w])))
            .collect();
        let mut pairs = 0u64;
        for &qg in &all {
            let keys: u64 = all.iter().filter(|&&kg| groups_allowed(layout, qg, kg)).map(|&kg| size(kg)).sum();
            pairs += size(qg) * (keys + layout.text_valid as u64);
        }
        pairs + layout.text_len as u64 * (layout.image_tokens() + layout.text_valid) as u64
    }

    /// May token `q` attend token `k` (raster-order image tokens, then text)?
    pub fn allowed(layout: &GroupedLayout, q: usize, k: usize) -> bool {
        let image = layout.image_tokens();
        let (grid, group, _) = layout.dims3();
        if k >= image {
            return k - image < layout.text_valid;
        }
        if q >= image {
            return true;
        }
        let coords = |i: usize| [i / (grid[1] * grid[2]), (i / grid[2]) % grid[1], i % grid[2]];
        let to_group = |c: [usize; 3]| [c[0] / group[0], c[1] / group[1], c[2] / group[2]];
        groups_allowed(layout, to_group(coords(q)), to_group(coords(k)))
    }

    /// softmax(scale * q k^T restricted to `allowed`) v for one (batch, head): q (lq, d), k/v (lk, d).
    pub fn masked_attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dim: usize,
        scale: f64,
        allowed: impl Fn(usize, usize) -> bool,
    ) -> Vec<f64> {
        let (lq, lk) = (q.len() / dim, k.len() / dim);
        let mut out = vec![0.0; lq * dim];
        for i in 0..lq {
            let scores: Vec<Option<f64>> = (0..lk)
                .map(|j| {
                    allowed(i, j)
                        .then(|| scale * (0..dim).map(|d| q[i * dim + d] as f64 * k[j * dim + d] as f64).sum::<f64>())
                })
                .collect();
            let max = scores.iter().flatten().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let weights: Vec<f64> = scores.iter().map(|s| s.map_or(0.0, |s| (s - max).exp())).collect();
            let total: f64 = weights.iter().sum();
            for (j, w) in weights.iter().enumerate() {
                for d in 0..dim {
                    out[i * dim + d] += w / total * v[j * dim + d] as f64;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attended_pairs_in_closed_form_match_the_count_by_groups() {
        let patterns = [
            GratPattern::All,
            GratPattern::CrissCross,
            GratPattern::Block { radius: 0 },
            GratPattern::Block { radius: 1 },
            GratPattern::Block { radius: 2 },
            GratPattern::BlockTruncated { radius: 0 },
            GratPattern::BlockTruncated { radius: 1 },
            GratPattern::BlockTruncated { radius: 3 },
        ];
        // Ragged and exact grids, groups larger than the grid, 2D and 3D, with and without text.
        let layouts = [
            GroupedLayout::image(7, 10).with_group(&[3, 4]),
            GroupedLayout::image(16, 16).with_group(&[4, 4]).with_text(5, 3),
            GroupedLayout::image(1, 9).with_group(&[2, 1]),
            GroupedLayout::image(5, 3).with_group(&[8, 8]).with_text(2, 2),
            GroupedLayout::image(11, 13).with_group(&[2, 3]),
            GroupedLayout::video(3, 7, 10).with_group(&[2, 3, 4]).with_text(4, 1),
            GroupedLayout::video(5, 4, 9).with_group(&[1, 4, 2]),
        ];
        for layout in layouts {
            for pattern in patterns {
                let layout = layout.clone().with_pattern(pattern);
                assert_eq!(layout.attended_pairs().unwrap(), reference::attended_pairs(&layout), "{layout:?}");
            }
        }
    }

    #[test]
    fn attended_pairs_of_huge_grids_are_counted_without_listing_groups() {
        // 2^32 groups of one token: listing them took ~100 GB; the closed form takes no time.
        let side = 1usize << 16;
        let tokens = (side * side) as u64;
        let block = GroupedLayout::image(side, side).with_group(&[1, 1]);
        block.validate(side * side).unwrap();
        assert_eq!(block.attended_pairs().unwrap(), tokens * 9, "3 x 3 one-token groups per query");
        let cross = block.clone().with_pattern(GratPattern::CrissCross).with_text(3, 2);
        let image_pairs = tokens * (2 * side as u64 - 1);
        assert_eq!(cross.attended_pairs().unwrap(), image_pairs + tokens * 2 + 3 * (tokens + 2));
        // Past u64: an error, not a wrapped or saturated count.
        let dense = GroupedLayout::image(1 << 20, 1 << 20).with_pattern(GratPattern::All);
        assert!(dense.attended_pairs().is_err() && dense.density().is_err());
    }

    #[test]
    fn groups_larger_than_the_grid_are_clamped_where_launches_are_sized() {
        // One group either way, but sized by the group the launch ran 2^26 / block_q empty blocks.
        let (grid, group, counts) = GroupedLayout::image(1, 3).with_group(&[1 << 13, 2]).dims3();
        assert_eq!((grid, group, counts), ([1, 1, 3], [1, 1, 2], [1, 1, 2]));
        // Sides whose product overflows usize.
        let (_, group, counts) = GroupedLayout::video(2, 5, 6).with_group(&[1 << 32, 1 << 32, 4]).dims3();
        assert_eq!((group, counts), ([2, 5, 4], [1, 1, 2]));
        let layout = GroupedLayout::image(4, 4).with_group(&[1 << 40, 1 << 40]);
        assert_eq!(layout.attended_pairs().unwrap(), 256);
    }
}
