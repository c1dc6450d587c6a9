//! The M-VAR transformer (spec MVAR.md): VAR with each block's attention split into attention inside
//! the current scale and a Mamba-2 layer over the multi-scale sequence, loaded from the official
//! state_dict key names with every hyperparameter inferred from the tensor shapes. Everything outside
//! the blocks is VAR's (shared code in `var.rs`): a pipeline drives [`MvarModel`] the way it drives
//! [`super::VarModel`] (conditions, first_input, scale_input, forward once per scale).
//!
//! Between scales each block's Mamba-2 carries its state (SSM state and the last conv inputs, per
//! batch row, so the CFG halves stay separate): the condition is the same at every scale and the
//! norms are per token, so the Mamba input of earlier tokens never changes, and 256px costs 680
//! Mamba token-steps per layer. [`ScaleHistory::RecomputePrefix`] instead reruns Mamba-2 over every
//! scale so far from a zero state, as the official inference does (1710 token-steps per layer).

use std::collections::BTreeMap;

use super::Loader;
use super::mamba::{Mamba2Block, Mamba2Dims, MambaState};
use super::var::{
    AdaConditions, LN_EPS, VarConfig, VarIo, attention_temperatures, check_model_dtype, check_transformer,
    has_mamba_blocks, qkv_bias,
};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::scan::check_finite_host_a;
use crate::ops::{
    GatedResidual, QkvHeads, adaln_layer_norm, gated_residual, linear, linear_gated_residual, linear_gelu,
    qkv_attention,
};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Attention head size of every M-VAR (heads = C / 64).
pub const HEAD_DIM: usize = 64;
/// Mamba-2 state size of every M-VAR (`Mamba2(d_state=64)`).
pub const D_STATE: usize = 64;
/// Softmax scale of the plain attention (checkpoints without scale_mul_1H11): 0.25 / sqrt(64).
pub const PLAIN_ATTENTION_SCALE: f32 = 0.25 / 8.0;

const OP: &str = "M-VAR checkpoint";

fn bad(msg: String) -> Error {
    Error::InvalidArgument { op: OP, msg }
}

/// What the shapes of an M-VAR checkpoint say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MvarConfig {
    /// What M-VAR shares with VAR: depth, width C, heads (C / 64), head_dim 64, MLP width, classes,
    /// vocabulary, Cvae, schedule, class names, parameter count (`shared_adaln` is false).
    pub base: VarConfig,
    /// Cosine attention with the learned per-head temperature (d24, d32); otherwise plain attention
    /// with softmax scale 1/32 (d16, d20).
    pub cosine_attention: bool,
    /// Every block's Mamba-2 layer.
    pub mamba: Mamba2Dims,
}

/// Whether `sd` looks like an M-VAR checkpoint (its blocks hold Mamba-2 layers), for a loader that
/// takes either kind of checkpoint.
pub fn is_mvar(sd: &dyn Weights) -> bool {
    has_mamba_blocks(sd)
}

/// Lists block indices compactly: "0, 2, 5".
fn list(indices: &[usize]) -> String {
    indices.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

impl MvarConfig {
    /// Infers the configuration from a checkpoint's shapes: depth = the number of blocks, C from
    /// pos_1LC, heads = C / 64, cosine attention when blocks.0.attn.scale_mul_1H11 exists, Mamba-2
    /// dimensions from blocks.0.mamba's in_proj, conv1d and A_log. Refuses VQVAE and VAR
    /// checkpoints, a mix of VAR and M-VAR blocks, and Mamba-2 layers with ngroups other than 1.
    pub fn infer(sd: &dyn Weights) -> Result<Self> {
        check_transformer(sd, OP)?;
        // Per block index: (has VAR's attention, has a Mamba-2 layer).
        let mut blocks: BTreeMap<usize, (bool, bool)> = BTreeMap::new();
        for key in sd.keys() {
            let Some((index, name)) = key.strip_prefix("blocks.").and_then(|rest| rest.split_once('.')) else {
                continue;
            };
            let Ok(index) = index.parse::<usize>() else { continue };
            let entry = blocks.entry(index).or_default();
            entry.0 |= name == "attn.mat_qkv.weight";
            entry.1 |= name.starts_with("mamba.");
        }
        let depth = blocks.len();
        if depth == 0 {
            return Err(bad("no transformer blocks: the checkpoint has no blocks.* keys".into()));
        }
        if let Some(gap) = (0..depth).find(|i| !blocks.contains_key(i)) {
            return Err(bad(format!(
                "the blocks are not numbered 0..{depth}: block {gap} is absent (found blocks {})",
                list(&blocks.keys().copied().collect::<Vec<_>>())
            )));
        }
        let (with, without): (Vec<usize>, Vec<usize>) = blocks.keys().partition(|i| blocks[i].1);
        if with.is_empty() {
            return Err(bad(if blocks[&0].0 {
                format!(
                    "this is a VAR checkpoint, not M-VAR: its {depth} blocks have attention (blocks.0.attn.mat_qkv.weight) \
                     and no Mamba-2 layer (no blocks.*.mamba.* keys); load it with nn::VarModel"
                )
            } else {
                format!("not an M-VAR checkpoint: none of its {depth} blocks has a Mamba-2 layer (blocks.*.mamba.*)")
            }));
        }
        if !without.is_empty() {
            return Err(bad(format!(
                "a mix of VAR and M-VAR blocks: blocks {} have a Mamba-2 layer (mamba.*) but blocks {} have none",
                list(&with),
                list(&without)
            )));
        }

        let pos = sd.require_shape("", "pos_1LC")?;
        let width = match pos {
            [1, _, c] if *c > 0 => *c,
            other => return Err(bad(format!("pos_1LC has shape {other:?}, expected (1, L, C)"))),
        };
        if !width.is_multiple_of(HEAD_DIM) {
            return Err(bad(format!("width {width} (pos_1LC) is not a multiple of the head size {HEAD_DIM}")));
        }
        let base = VarConfig::from_shapes(sd, OP, depth, width / HEAD_DIM)?;
        let cosine_attention = sd.contains("blocks.0.attn.scale_mul_1H11");
        let mamba = infer_mamba(sd, width)?;
        Ok(Self { base, cosine_attention, mamba })
    }
}

/// The Mamba-2 dimensions from blocks.0.mamba: in_proj has 2 d_inner + 2 ngroups d_state + nheads
/// rows, conv1d d_inner + 2 ngroups d_state channels, A_log nheads entries; d_state is 64.
fn infer_mamba(sd: &dyn Weights, d_model: usize) -> Result<Mamba2Dims> {
    const PREFIX: &str = "blocks.0.mamba.";
    let shape = |name: &str| sd.require_shape(PREFIX, name).map(<[usize]>::to_vec);
    let misshaped = |name: &str, want: Vec<usize>, got: Vec<usize>| Error::Weights {
        prefix: PREFIX.into(),
        missing: Vec::new(),
        unexpected: Vec::new(),
        misshaped: vec![(format!("{PREFIX}{name}"), want, got)],
    };
    let rows = match shape("in_proj.weight")?.as_slice() {
        &[rows, c] if c == d_model => rows,
        other => return Err(misshaped("in_proj.weight", vec![0, d_model], other.to_vec())),
    };
    let (channels, d_conv) = match shape("conv1d.weight")?.as_slice() {
        &[channels, 1, d_conv] if d_conv > 0 => (channels, d_conv),
        other => return Err(misshaped("conv1d.weight", vec![0, 1, 4], other.to_vec())),
    };
    let n_heads = match shape("A_log")?.as_slice() {
        &[n] if n > 0 => n,
        other => return Err(misshaped("A_log", vec![0], other.to_vec())),
    };
    // rows - channels = d_inner + nheads.
    let d_inner = rows.checked_sub(channels + n_heads).filter(|&d| d > 0 && d < channels).ok_or_else(|| {
        bad(format!(
            "{PREFIX}in_proj.weight has {rows} rows and conv1d {channels} channels with {n_heads} heads: not \
             2 * d_inner + 2 * ngroups * d_state + nheads rows over d_inner + 2 * ngroups * d_state channels"
        ))
    })?;
    let group_states = channels - d_inner;
    if !group_states.is_multiple_of(2 * D_STATE) {
        return Err(bad(format!(
            "{PREFIX}conv1d has {channels} channels = d_inner {d_inner} + {group_states}, not d_inner + 2 * ngroups * \
             d_state with M-VAR's d_state {D_STATE}"
        )));
    }
    let n_groups = group_states / (2 * D_STATE);
    if n_groups != 1 {
        return Err(bad(format!(
            "{PREFIX} has ngroups = {n_groups} ({channels} conv channels = d_inner {d_inner} + 2 * {n_groups} * \
             d_state {D_STATE}); M-VAR's Mamba-2 has ngroups 1 (B and C shared by all heads), the only value \
             supported"
        )));
    }
    if !d_inner.is_multiple_of(n_heads) {
        return Err(bad(format!("{PREFIX}: d_inner {d_inner} is not a multiple of nheads {n_heads}")));
    }
    Ok(Mamba2Dims { d_model, d_inner, d_state: D_STATE, n_heads, n_groups, d_conv })
}

struct MvarBlock {
    /// AdaLN Linear(C, 9C).
    ada_weight: Tensor,
    ada_bias: Tensor,
    qkv_weight: Tensor,
    /// cat(q_bias, 0, v_bias): K has no bias.
    qkv_bias: Tensor,
    /// Per head, f32: exp(min(scale_mul_1H11, ln 100)) with cosine attention; unused (ones) without.
    head_scale: Tensor,
    proj_weight: Tensor,
    proj_bias: Tensor,
    mamba: Mamba2Block,
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
}

/// The M-VAR transformer on one device.
pub struct MvarModel {
    pub config: MvarConfig,
    /// Storage type of activations and weights (the head and the logits are always f32; the SSM
    /// parameters and state too).
    pub dtype: DType,
    device: Device,
    io: VarIo,
    blocks: Vec<MvarBlock>,
}

/// M-VAR's conditions: gamma1, gamma2, gamma3, scale1, scale2, scale3, shift1, shift2, shift3 per
/// block (not VAR's 6-way order).
pub type MvarConditions = AdaConditions<9>;

/// How the Mamba-2 layers see the scales before the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScaleHistory {
    /// Carry each layer's state (SSM state and the last d_conv - 1 conv inputs) from scale to scale:
    /// every token goes through Mamba-2 once.
    #[default]
    CarryState,
    /// Keep every scale's post-attention activations and rerun Mamba-2 over all of them from a zero
    /// state at each scale, keeping the last pn^2 rows: the official inference.
    RecomputePrefix,
}

/// The part of a block [`MvarModel::forward_with`] is entering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockPart {
    /// The Mamba-2 layer with its input norm (and, recomputing the prefix, the concatenation).
    Mamba,
    /// The rest of the block: its residual add, FFN, then the next block's attention.
    Rest,
}

/// What the blocks carry from one scale to the next (M-VAR's counterpart of VAR's KV cache).
pub struct MvarState {
    history: ScaleHistory,
    rows: usize,
    /// CarryState: each block's Mamba-2 state after the tokens so far.
    carried: Vec<Option<MambaState>>,
    /// RecomputePrefix: each block's post-attention x of every scale so far (2B, len, C).
    prefix: Vec<Option<Tensor>>,
    /// Tokens processed.
    pub len: usize,
    /// Tokens of the whole schedule.
    pub capacity: usize,
    /// Tokens each Mamba-2 layer has stepped through so far: `len` when carrying the state, the sum
    /// of the prefix lengths when recomputing (at 256px, 680 against 1710).
    pub mamba_token_steps: usize,
}

impl MvarState {
    pub fn history(&self) -> ScaleHistory {
        self.history
    }
}

impl MvarModel {
    /// Loads the transformer from a state_dict with official key names; `dtype` is the storage type
    /// of weights and activations (f16 needs SHADER_F16). Every missing, unexpected and mis-shaped key
    /// is reported in one [`Error::Weights`].
    pub fn from_state_dict(device: &Device, sd: &dyn Weights, dtype: DType) -> Result<Self> {
        check_model_dtype(dtype, "MvarModel")?;
        let config = MvarConfig::infer(sd)?;
        let base = &config.base;
        let (c, heads) = (base.width, base.heads);
        let lp = Loader::new(device, sd, dtype);
        let lp32 = lp.with_dtype(DType::F32);
        let io = VarIo::load(&lp, base)?;
        // NaN temperatures never get here: the loader refuses non-finite weights (unless allowed).
        let mut a_values = Vec::with_capacity(base.depth);
        let mut blocks = Vec::with_capacity(base.depth);
        for i in 0..base.depth {
            let block = lp.pp("blocks").pp(i);
            let (attn, ffn, ada, mamba) = (block.pp("attn"), block.pp("ffn"), block.pp("ada_lin.1"), block.pp("mamba"));
            let scales = if config.cosine_attention {
                attention_temperatures(&attn.host("scale_mul_1H11", &[1, heads, 1, 1])?)
            } else {
                vec![1.0; heads]
            };
            // The official attention module's integer buffer (the reader skips integer tensors).
            attn.accept("patch_nums", &[base.patch_nums.len()]);
            // mamba_ssm's default conv_bias=True, which M-VAR keeps: absent, it is a missing key.
            if !mamba.has("conv1d.bias") {
                mamba.host("conv1d.bias", &[config.mamba.conv_channels()])?;
            }
            let (mamba_block, a) = Mamba2Block::load(&mamba, config.mamba)?;
            a_values.push(a);
            blocks.push(MvarBlock {
                ada_weight: ada.tensor("weight", &[9 * c, c])?,
                ada_bias: ada.tensor("bias", &[9 * c])?,
                qkv_weight: attn.tensor("mat_qkv.weight", &[3 * c, c])?,
                qkv_bias: qkv_bias(&attn, c)?,
                head_scale: lp32.upload(&[heads], &scales)?,
                proj_weight: attn.tensor("proj.weight", &[c, c])?,
                proj_bias: attn.tensor("proj.bias", &[c])?,
                mamba: mamba_block,
                fc1_weight: ffn.tensor("fc1.weight", &[base.mlp_hidden, c])?,
                fc1_bias: ffn.tensor("fc1.bias", &[base.mlp_hidden])?,
                fc2_weight: ffn.tensor("fc2.weight", &[c, base.mlp_hidden])?,
                fc2_bias: ffn.tensor("fc2.bias", &[c])?,
            });
        }
        lp.finish()?;
        for a in &a_values {
            check_finite_host_a(a, &[config.mamba.n_heads])?;
        }
        Ok(Self { dtype, device: device.clone(), io, blocks, config })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty state for `rows` sequences (2B with CFG).
    pub fn new_state(&self, rows: usize, history: ScaleHistory) -> MvarState {
        let depth = self.blocks.len();
        MvarState {
            history,
            rows,
            carried: vec![None; depth],
            prefix: vec![None; depth],
            len: 0,
            capacity: self.config.base.seq_len(),
            mamba_token_steps: 0,
        }
    }

    /// The AdaLN parameters for class labels (2B with CFG: conditional labels, then the null class).
    pub fn conditions(&self, labels: &[u32]) -> Result<MvarConditions> {
        self.io.conditions(labels, "MvarModel::conditions", |act| {
            self.blocks.iter().map(|block| linear(act, &block.ada_weight, Some(&block.ada_bias))).collect()
        })
    }

    /// The input of scale 0: cond + pos_start + lvl_pos[0], (2B, 1, C).
    pub fn first_input(&self, conditions: &MvarConditions) -> Result<Tensor> {
        self.io.first_input(conditions)
    }

    /// The input of scale `si` > 0 from the VQVAE's next token map (B, n, Cvae): word_embed + the
    /// scale's position embeddings, duplicated for the CFG halves when `cfg_halves` is set.
    pub fn scale_input(&self, si: usize, token_map: &Tensor, cfg_halves: bool) -> Result<Tensor> {
        self.io.scale_input(si, token_map, cfg_halves, "MvarModel::scale_input")
    }

    /// Runs every block on the next scale's tokens x (2B, n, C), continuing from `state`, and returns
    /// the f32 logits (2B, n, V).
    pub fn forward(&self, x: &Tensor, conditions: &MvarConditions, state: &mut MvarState) -> Result<Tensor> {
        self.forward_with(x, conditions, state, |_| Ok(()))
    }

    /// [`MvarModel::forward`], calling `entering` where each block's work moves into or out of its
    /// Mamba-2 layer (the norm of its input, the prefix concatenation, the layer): a profiler can
    /// then time the inter-scale Mamba part apart from attention and FFN.
    pub fn forward_with(
        &self,
        x: &Tensor,
        conditions: &MvarConditions,
        state: &mut MvarState,
        mut entering: impl FnMut(BlockPart) -> Result<()>,
    ) -> Result<Tensor> {
        const FORWARD: &str = "MvarModel::forward";
        let [rows, tokens, width] = x.dims(FORWARD, "x (2B, n, C)")?;
        if width != self.config.base.width || rows != conditions.cond.shape()[0] || rows != state.rows {
            return Err(Error::ShapeMismatch {
                op: FORWARD,
                lhs: x.shape().to_vec(),
                rhs: conditions.cond.shape().to_vec(),
                detail: format!("x, the conditions and the state ({} rows) must agree in rows and width", state.rows),
            });
        }
        // Conditions and states are plain values a caller may take from another model: one of another
        // depth would index past its blocks.
        let depth = self.blocks.len();
        if conditions.blocks.len() != depth || state.carried.len() != depth || state.prefix.len() != depth {
            return Err(Error::InvalidArgument {
                op: FORWARD,
                msg: format!(
                    "the model has {depth} blocks, the conditions {} and the state {}: they come from another model",
                    conditions.blocks.len(),
                    state.carried.len().min(state.prefix.len())
                ),
            });
        }
        if state.len.checked_add(tokens).is_none_or(|end| end > state.capacity) {
            return Err(Error::InvalidArgument {
                op: FORWARD,
                msg: format!(
                    "{tokens} new tokens go past the schedule ({} of {} tokens done)",
                    state.len, state.capacity
                ),
            });
        }
        let heads = self.config.base.heads;
        let softmax_scale = if self.config.cosine_attention { 1.0 } else { PLAIN_ATTENTION_SCALE };
        let mut x = x.clone();
        for (i, block) in self.blocks.iter().enumerate() {
            let [gamma1, gamma2, gamma3, scale1, scale2, scale3, shift1, shift2, shift3] = &conditions.blocks[i];
            // Attention inside the current scale: keys and values of its tokens only, no mask.
            let h = adaln_layer_norm(&x, scale1, shift1, LN_EPS)?;
            let qkv = linear(&h, &block.qkv_weight, Some(&block.qkv_bias))?;
            let kv_shape = [rows, tokens, heads, HEAD_DIM];
            let (k, v) = (
                Tensor::empty(&self.device, &kv_shape, self.dtype)?,
                Tensor::empty(&self.device, &kv_shape, self.dtype)?,
            );
            let qkv_heads = QkvHeads {
                qkv: &qkv,
                heads,
                l2_norm: self.config.cosine_attention,
                head_scale: &block.head_scale,
                k_cache: &k,
                v_cache: &v,
                start: 0,
            };
            let o = qkv_attention(&qkv_heads, softmax_scale)?.reshape(&[rows, tokens, width])?;
            x = linear_gated_residual(&o, &block.proj_weight, Some(&block.proj_bias), &x, gamma1)?;
            // Mamba-2 over the multi-scale sequence.
            entering(BlockPart::Mamba)?;
            x = match state.history {
                ScaleHistory::CarryState => {
                    // The output projection adds the gated residual itself.
                    let h = adaln_layer_norm(&x, scale2, shift2, LN_EPS)?;
                    let residual = GatedResidual { x: &x, gate: gamma2 };
                    let (x, carried) = block.mamba.forward_with(&h, state.carried[i].as_ref(), Some(residual))?;
                    state.carried[i] = Some(carried);
                    x
                }
                ScaleHistory::RecomputePrefix => {
                    let seq = match &state.prefix[i] {
                        Some(prefix) => Tensor::concat(&[prefix, &x], 1)?,
                        None => x.clone(),
                    };
                    let (m, _) = block.mamba.forward(&adaln_layer_norm(&seq, scale2, shift2, LN_EPS)?, None)?;
                    state.prefix[i] = Some(seq);
                    gated_residual(&x, &m.slice(1, state.len..state.len + tokens)?, gamma2)?
                }
            };
            entering(BlockPart::Rest)?;
            let h = adaln_layer_norm(&x, scale3, shift3, LN_EPS)?;
            let h = linear_gelu(&h, &block.fc1_weight, Some(&block.fc1_bias))?;
            x = linear_gated_residual(&h, &block.fc2_weight, Some(&block.fc2_bias), &x, gamma3)?;
        }
        state.len += tokens;
        state.mamba_token_steps += match state.history {
            ScaleHistory::CarryState => tokens,
            ScaleHistory::RecomputePrefix => state.len,
        };
        self.io.logits(&x, conditions)
    }
}
