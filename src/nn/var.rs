//! The VAR transformer (spec VAR.md sections 3-4) for KV-cached next-scale inference, loaded from the
//! official state_dict key names with every hyperparameter inferred from the tensor shapes.

use super::Loader;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{
    QkvHeads, adaln_layer_norm, add, add_repeat, linear, linear_gated_residual, linear_gelu, qkv_attention, silu,
};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// LayerNorm epsilon of every VAR norm.
pub const LN_EPS: f32 = 1e-6;

/// The official 256px, 512px and 1024px scale schedules (side of each token map).
pub const PATCH_NUMS_256: &[usize] = &[1, 2, 3, 4, 5, 6, 8, 10, 13, 16];
pub const PATCH_NUMS_512: &[usize] = &[1, 2, 3, 4, 6, 9, 13, 18, 24, 32];
pub const PATCH_NUMS_1024: &[usize] = &[1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64];

/// Metadata key (safetensors `__metadata__`) holding the scale schedule as a JSON list.
pub const META_PATCH_NUMS: &str = "patch_nums";
/// Metadata key holding the class names as a JSON list of strings.
pub const META_CLASS_NAMES: &str = "class_names";

/// What the shapes of a VAR checkpoint say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarConfig {
    pub depth: usize,
    /// Model width C.
    pub width: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub mlp_hidden: usize,
    /// Real classes; the class table has one more row, the null class of CFG.
    pub num_classes: usize,
    /// Codebook size V (the logits' width).
    pub vocab: usize,
    /// VQVAE latent channels.
    pub cvae: usize,
    pub patch_nums: Vec<usize>,
    /// d36 style: one shared AdaLN projection plus a per-block additive `ada_gss`.
    pub shared_adaln: bool,
    /// Class names: the checkpoint's metadata (`class_names`, a JSON list) when it has them, else
    /// ImageNet's for a 1000-class model (the official checkpoints carry no names), else none.
    pub class_names: Option<Vec<String>>,
    /// Learned values in the checkpoint (buffers such as the attention mask not counted).
    pub parameters: usize,
}

impl VarConfig {
    /// Total tokens over all scales.
    pub fn seq_len(&self) -> usize {
        self.patch_nums.iter().map(|p| p * p).sum()
    }

    /// First token of each scale.
    pub fn scale_starts(&self) -> Vec<usize> {
        self.patch_nums
            .iter()
            .scan(0, |acc, p| {
                let start = *acc;
                *acc += p * p;
                Some(start)
            })
            .collect()
    }

    /// The class id of `text`: a number in 0..num_classes, or one of the class names (see
    /// [`crate::labels::resolve`]).
    pub fn resolve_class(&self, text: &str) -> Result<usize> {
        crate::labels::resolve(self.class_names.as_deref().unwrap_or(&[]), self.num_classes, text)
    }

    /// The class's name, or its number when the model has no names.
    pub fn class_name(&self, id: usize) -> String {
        self.class_names.as_ref().and_then(|n| n.get(id).cloned()).unwrap_or_else(|| id.to_string())
    }

    /// The last scale's side: the VQVAE latent is that many tokens square.
    pub fn latent_side(&self) -> usize {
        *self.patch_nums.last().unwrap_or(&0)
    }

    /// Infers the configuration from a checkpoint's shapes (and `patch_nums` metadata when the
    /// schedule is not an official one), rejecting VQVAE files, M-VAR checkpoints and pre-April-2024
    /// uploads.
    pub fn infer(sd: &dyn Weights) -> Result<Self> {
        const OP: &str = "VAR checkpoint";
        let bad = |reason: String| Error::InvalidArgument { op: OP, msg: reason };
        check_transformer(sd, OP)?;
        if has_mamba_blocks(sd) {
            return Err(bad(
                "this is an M-VAR checkpoint (its blocks hold mamba.* keys), not a VAR transformer: load it with \
                 nn::MvarModel"
                    .into(),
            ));
        }
        let depth = (0..).take_while(|i| sd.contains(&format!("blocks.{i}.attn.mat_qkv.weight"))).count();
        if depth == 0 {
            return Err(bad("no transformer blocks: blocks.0.attn.mat_qkv.weight is missing".into()));
        }
        let heads = match sd.shape("blocks.0.attn.scale_mul_1H11") {
            Some(shape) if shape.len() == 4 && shape[1] > 0 => shape[1],
            Some(shape) => {
                return Err(bad(format!(
                    "blocks.0.attn.scale_mul_1H11 has shape {shape:?}, expected (1, heads, 1, 1)"
                )));
            }
            None => {
                return Err(bad(
                    "blocks.0.attn.scale_mul_1H11 is missing: this is a pre-April-2024 VAR upload (before the \
                     attention temperature was added). Download the current checkpoints (var_d16.pth ... \
                     var_d30.pth from the FoundationVision/var Hugging Face repository)"
                        .into(),
                ));
            }
        };
        Self::from_shapes(sd, OP, depth, heads)
    }

    /// The configuration of a checkpoint with VAR's parts outside the blocks (M-VAR's too), given the
    /// depth and heads the caller read from its blocks: width from the class table, MLP width from
    /// blocks.0.ffn.fc1, vocabulary, Cvae, schedule, class names and parameter count. Errors name `op`.
    pub(crate) fn from_shapes(sd: &dyn Weights, op: &'static str, depth: usize, heads: usize) -> Result<Self> {
        let bad = |reason: String| Error::InvalidArgument { op, msg: reason };
        let shape = |key: &str| sd.require_shape("", key).map(<[usize]>::to_vec);
        let class_shape = shape("class_emb.weight")?;
        let [rows, width] = two(&class_shape, "class_emb.weight")?;
        if rows < 2 {
            return Err(bad(format!("class_emb.weight has {rows} rows; it needs the classes plus the null class")));
        }
        // A width of 0 is a multiple of any head count, and the heads then size other keys' shapes.
        if width == 0 || heads == 0 || !width.is_multiple_of(heads) {
            return Err(bad(format!("width {width} is not a positive multiple of {heads} heads")));
        }
        let head_dim = width / heads;
        let mlp_hidden = two(&shape("blocks.0.ffn.fc1.weight")?, "blocks.0.ffn.fc1.weight")?[0];
        let vocab = two(&shape("head.weight")?, "head.weight")?[0];
        let cvae = two(&shape("word_embed.weight")?, "word_embed.weight")?[1];
        let pos_shape = shape("pos_1LC")?;
        let seq_len = match pos_shape.as_slice() {
            [1, l, c] if *c == width => *l,
            _ => return Err(bad(format!("pos_1LC has shape {pos_shape:?}, expected (1, L, {width})"))),
        };
        let scales = two(&shape("lvl_embed.weight")?, "lvl_embed.weight")?[0];
        let patch_nums = match sd.metadata().get(META_PATCH_NUMS) {
            Some(text) => serde_json::from_str::<Vec<usize>>(text).map_err(|e| {
                bad(format!(
                    "metadata {META_PATCH_NUMS} = {:?} is not a JSON list of sides: {e}",
                    crate::error::shown(text)
                ))
            })?,
            None => schedule_from_mask(sd, seq_len)
                .or_else(|| {
                    [PATCH_NUMS_256, PATCH_NUMS_512, PATCH_NUMS_1024]
                        .into_iter()
                        .find(|p| p.len() == scales && p.iter().map(|s| s * s).sum::<usize>() == seq_len)
                        .map(<[usize]>::to_vec)
                })
                .ok_or_else(|| {
                    bad(format!(
                        "{scales} scales with {seq_len} tokens match no official schedule; store the schedule as \
                         safetensors metadata {META_PATCH_NUMS:?} (e.g. \"[1, 2, 3, 4]\")"
                    ))
                })?,
        };
        if let Some(&side) = patch_nums.iter().find(|&&side| side == 0 || side > MAX_SIDE) {
            return Err(bad(format!(
                "the schedule {patch_nums:?} has a side of {side}: sides must be in 1..={MAX_SIDE}"
            )));
        }
        // Coarse to fine: each scale's map is upsampled into the next, and the last is the latent.
        if let Some(pair) = patch_nums.windows(2).find(|pair| pair[0] >= pair[1]) {
            return Err(bad(format!(
                "the schedule {patch_nums:?} does not grow from scale to scale ({} then {}): sides must increase",
                pair[0], pair[1]
            )));
        }
        // Sides are bounded, so the squares cannot overflow; the sum is checked against pos_1LC below.
        let scheduled: usize = patch_nums.iter().map(|s| s * s).sum();
        if patch_nums.len() != scales || scheduled != seq_len {
            return Err(bad(format!(
                "the schedule {patch_nums:?} ({scheduled} tokens) disagrees with lvl_embed ({scales} scales) and pos_1LC \
                 ({seq_len} tokens)"
            )));
        }
        let config = VarConfig {
            depth,
            width,
            heads,
            head_dim,
            mlp_hidden,
            num_classes: rows - 1,
            vocab,
            cvae,
            shared_adaln: sd.contains("shared_ada_lin.1.weight"),
            patch_nums,
            parameters: sd
                .keys()
                .filter(|key| *key != "attn_bias_for_masking" && !key.ends_with(".zero_k_bias"))
                .filter_map(|key| sd.shape(key))
                .map(|shape| shape.iter().product::<usize>())
                .sum(),
            class_names: match sd.metadata().get(META_CLASS_NAMES) {
                Some(text) => Some(serde_json::from_str::<Vec<String>>(text).map_err(|e| {
                    bad(format!(
                        "metadata {META_CLASS_NAMES} = {:?} is not a JSON list of names: {e}",
                        crate::error::shown(text)
                    ))
                })?),
                None if rows - 1 == crate::labels::IMAGENET_CLASSES => Some(crate::labels::imagenet().to_vec()),
                None => None,
            },
        };
        if let Some(names) = &config.class_names
            && names.len() != config.num_classes
        {
            return Err(bad(format!(
                "metadata {META_CLASS_NAMES} has {} names for {} classes",
                names.len(),
                config.num_classes
            )));
        }
        Ok(config)
    }
}

/// Whether some block of `sd` holds a Mamba-2 layer (blocks.{i}.mamba.*): M-VAR, not VAR.
pub(crate) fn has_mamba_blocks(sd: &dyn Weights) -> bool {
    sd.keys().any(|k| {
        k.strip_prefix("blocks.")
            .and_then(|rest| rest.split_once('.'))
            .is_some_and(|(_, name)| name.starts_with("mamba."))
    })
}

/// Fails unless `sd` has a class table: names the VQVAE when it is one. Errors name `op`.
pub(crate) fn check_transformer(sd: &dyn Weights, op: &'static str) -> Result<()> {
    if sd.contains("class_emb.weight") {
        return Ok(());
    }
    let msg = if sd.contains("quantize.embedding.weight") || sd.contains("decoder.conv_in.weight") {
        "this is a VQVAE checkpoint (it holds quantize.* and decoder.* keys), not a VAR transformer: pass it as \
         --vae (the app's VAE field) and the var_d*.pth file as --var (the VAR field)"
            .to_string()
    } else {
        format!(
            "not a VAR transformer checkpoint: class_emb.weight is missing (the file has {} tensors{})",
            sd.len(),
            sd.keys().next().map(|k| format!(", the first is {k:?}")).unwrap_or_default()
        )
    };
    Err(Error::InvalidArgument { op, msg })
}

/// The schedule written in the `attn_bias_for_masking` buffer (1, 1, L, L). In VAR a query of scale s
/// sees exactly the tokens of scales 0..=s (block-causal); in M-VAR those of scale s only
/// (block-diagonal). Either way each row's finite entries are one run ending at its scale's end, so
/// the distinct run ends are the cumulative scale ends. `None` when the buffer is absent or of
/// neither form.
fn schedule_from_mask(sd: &dyn Weights, seq_len: usize) -> Option<Vec<usize>> {
    if sd.shape("attn_bias_for_masking")? != [1, 1, seq_len, seq_len] {
        return None;
    }
    let mask = sd.read("attn_bias_for_masking").ok()?;
    let mut sides = Vec::new();
    // The current scale's tokens [start, end), and whether rows start at it (block-diagonal).
    let (mut start, mut end) = (0, 0);
    let mut diagonal = None;
    for row in mask.chunks_exact(seq_len) {
        let first = row.iter().position(|v| v.is_finite())?;
        let last = first + row[first..].iter().take_while(|v| v.is_finite()).count();
        if row[last..].iter().any(|v| v.is_finite()) {
            return None;
        }
        if last != end {
            let tokens = last.checked_sub(end)?;
            let side = (tokens as f64).sqrt().round() as usize;
            if side * side != tokens {
                return None;
            }
            sides.push(side);
            (start, end) = (end, last);
        }
        if start > 0 {
            let row_diagonal = match first {
                0 => false,
                f if f == start => true,
                _ => return None,
            };
            if *diagonal.get_or_insert(row_diagonal) != row_diagonal {
                return None;
            }
        } else if first != 0 {
            return None;
        }
    }
    (end == seq_len).then_some(sides)
}

/// A key's shape as (rows, columns), both positive: every dimension read this way sizes other keys
/// (an empty one would make the model's widths 0 and its checks vacuous).
fn two(shape: &[usize], key: &str) -> Result<[usize; 2]> {
    match <[usize; 2]>::try_from(shape) {
        Ok(dims) if dims.iter().all(|&d| d > 0) => Ok(dims),
        _ => Err(Error::InvalidArgument {
            op: "VAR checkpoint",
            msg: format!("{key} has shape {shape:?}: expected a matrix (2 dimensions, neither empty)"),
        }),
    }
}

/// The largest scale side a schedule may name: 1024 px images have 64 tokens a side; 4096 leaves room
/// for any model while keeping every token count far from overflow.
const MAX_SIDE: usize = 4096;

/// VAR's parts around the blocks, which M-VAR shares: the class table (start token and AdaLN
/// input), the word, level and position embeddings of each scale's input, and the AdaLN head.
pub(crate) struct VarIo {
    width: usize,
    num_classes: usize,
    dtype: DType,
    class_emb: Tensor,
    /// pos_start + lvl_embed[0] + pos_1LC[0] (1, C): added to the class embedding for scale 0.
    first_pos: Tensor,
    /// lvl_embed[scale] + pos_1LC[tokens of the scale], one (n, C) tensor per scale.
    scale_pos: Vec<Tensor>,
    word_embed_weight: Tensor,
    word_embed_bias: Tensor,
    head_ada_weight: Tensor,
    head_ada_bias: Tensor,
    head_weight: Tensor,
    head_bias: Tensor,
}

/// Per-generation conditioning: the class embeddings and the AdaLN parameters of every block and of
/// the head, computed once from the class labels (they do not change across scales). `N` is the
/// number of (2B, C) AdaLN chunks per block: 6 in VAR, 9 in M-VAR.
pub struct AdaConditions<const N: usize> {
    /// (2B, C) class embeddings: the start token and the AdaLN input.
    pub cond: Tensor,
    /// Per block: the N chunks in the checkpoint's order, each (2B, C).
    pub(crate) blocks: Vec<[Tensor; N]>,
    /// Head AdaLN scale and shift (2B, C), f32.
    pub(crate) head: [Tensor; 2],
}

/// VAR's conditions: gamma1, gamma2, scale1, scale2, shift1, shift2 per block.
pub type VarConditions = AdaConditions<6>;

impl VarIo {
    /// Reads the keys outside `blocks.*` (the caller reads the blocks) through `lp`.
    pub(crate) fn load(lp: &Loader, config: &VarConfig) -> Result<Self> {
        let (c, l) = (config.width, config.seq_len());
        // The head runs in f32 as the official get_logits does.
        let lp32 = lp.with_dtype(DType::F32);
        let class_emb = lp.tensor("class_emb.weight", &[config.num_classes + 1, c])?;
        let pos = lp.host("pos_1LC", &[1, l, c])?;
        let lvl = lp.host("lvl_embed.weight", &[config.patch_nums.len(), c])?;
        let start = lp.host("pos_start", &[1, 1, c])?;
        // A buffer without learned state (lvl_1L is an integer buffer and skipped on load).
        lp.accept("attn_bias_for_masking", &[1, 1, l, l]);
        let mut scale_pos = Vec::with_capacity(config.patch_nums.len());
        for (si, (&pn, first)) in config.patch_nums.iter().zip(config.scale_starts()).enumerate() {
            let n = pn * pn;
            let mut values = vec![0f32; n * c];
            for t in 0..n {
                for ch in 0..c {
                    values[t * c + ch] = lvl[si * c + ch] + pos[(first + t) * c + ch];
                }
            }
            scale_pos.push(lp.upload(&[n, c], &values)?);
        }
        // The official sum: cond + pos_start + (lvl_embed[0] + pos_1LC[0]), in that association.
        let first: Vec<f32> = (0..c).map(|ch| start[ch] + (lvl[ch] + pos[ch])).collect();
        let first_pos = lp.upload(&[1, c], &first)?;
        let word_embed = lp.pp("word_embed");
        let head_ada = lp32.pp("head_nm.ada_lin.1");
        let head = lp32.pp("head");
        Ok(Self {
            width: c,
            num_classes: config.num_classes,
            dtype: lp.dtype(),
            class_emb,
            first_pos,
            scale_pos,
            word_embed_weight: word_embed.tensor("weight", &[c, config.cvae])?,
            word_embed_bias: word_embed.tensor("bias", &[c])?,
            head_ada_weight: head_ada.tensor("weight", &[2 * c, c])?,
            head_ada_bias: head_ada.tensor("bias", &[2 * c])?,
            head_weight: head.tensor("weight", &[config.vocab, c])?,
            head_bias: head.tensor("bias", &[config.vocab])?,
        })
    }

    /// The conditions of class `labels` (2B with CFG: conditional labels, then the null class).
    /// `blocks` maps SiLU(class embeddings) to every block's AdaLN output (2B, N * C).
    pub(crate) fn conditions<const N: usize>(
        &self,
        labels: &[u32],
        op: &'static str,
        blocks: impl FnOnce(&Tensor) -> Result<Vec<Tensor>>,
    ) -> Result<AdaConditions<N>> {
        if let Some(&bad) = labels.iter().find(|&&l| l as usize > self.num_classes) {
            return Err(Error::InvalidArgument {
                op,
                msg: format!("label {bad} is outside 0..={} (the last is the null class)", self.num_classes),
            });
        }
        let c = self.width;
        let ids = Tensor::from_u32(self.class_emb.device(), &[labels.len()], labels)?;
        let cond = crate::ops::embedding(&ids, &self.class_emb)?;
        let act = silu(&cond)?;
        let blocks = blocks(&act)?.iter().map(|ada| ada.split(1, [c; N])).collect::<Result<Vec<_>>>()?;
        let head = linear(&act.to_dtype(DType::F32)?, &self.head_ada_weight, Some(&self.head_ada_bias))?;
        Ok(AdaConditions { cond, blocks, head: head.split(1, [c; 2])? })
    }

    /// The input of scale 0: cond + pos_start + lvl_pos[0], (2B, 1, C).
    pub(crate) fn first_input<const N: usize>(&self, conditions: &AdaConditions<N>) -> Result<Tensor> {
        let rows = conditions.cond.shape()[0];
        add(&conditions.cond, &self.first_pos.reshape(&[self.width])?)?.reshape(&[rows, 1, self.width])
    }

    /// The input of scale `si` > 0 from the VQVAE's next token map (B, n, Cvae): word_embed + the
    /// scale's position embeddings, duplicated for the CFG halves when `cfg_halves` is set.
    pub(crate) fn scale_input(
        &self,
        si: usize,
        token_map: &Tensor,
        cfg_halves: bool,
        op: &'static str,
    ) -> Result<Tensor> {
        let pos = self.scale_pos.get(si).ok_or_else(|| Error::InvalidArgument {
            op,
            msg: format!("scale {si} is outside the schedule of {} scales", self.scale_pos.len()),
        })?;
        let x = linear(&token_map.to_dtype(self.dtype)?, &self.word_embed_weight, Some(&self.word_embed_bias))?;
        add_repeat(&x, pos, if cfg_halves { 2 } else { 1 })
    }

    /// The f32 logits (2B, n, V) of the last block's output x (2B, n, C).
    pub(crate) fn logits<const N: usize>(&self, x: &Tensor, conditions: &AdaConditions<N>) -> Result<Tensor> {
        let [scale, shift] = &conditions.head;
        let h = adaln_layer_norm(&x.to_dtype(DType::F32)?, scale, shift, LN_EPS)?;
        linear(&h, &self.head_weight, Some(&self.head_bias))
    }
}

struct VarBlock {
    /// Per-block AdaLN Linear(C, 6C), or the additive ada_gss (6C) of the shared variant.
    ada_weight: Option<Tensor>,
    ada_bias: Tensor,
    qkv_weight: Tensor,
    /// cat(q_bias, 0, v_bias): K has no bias.
    qkv_bias: Tensor,
    /// exp(min(scale_mul_1H11, ln 100)) per head, f32.
    head_scale: Tensor,
    proj_weight: Tensor,
    proj_bias: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
}

/// The VAR transformer on one device.
pub struct VarModel {
    pub config: VarConfig,
    /// Storage type of activations and weights (the head and the logits are always f32).
    pub dtype: DType,
    device: Device,
    io: VarIo,
    shared_ada: Option<(Tensor, Tensor)>,
    blocks: Vec<VarBlock>,
}

/// Keys and values of every block for the tokens generated so far.
pub struct VarKvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Tokens cached.
    pub len: usize,
    /// Tokens the cache can hold.
    pub capacity: usize,
}

/// Fails unless `dtype` can store a model's weights and activations.
pub(crate) fn check_model_dtype(dtype: DType, op: &'static str) -> Result<()> {
    if dtype.is_float() {
        Ok(())
    } else {
        Err(Error::InvalidArgument { op, msg: format!("dtype must be f32 or f16, got {dtype}") })
    }
}

/// exp(min(scale_mul_1H11, ln 100)): the per-head temperatures of cosine attention.
pub(crate) fn attention_temperatures(scale_mul: &[f32]) -> Vec<f32> {
    let ln_100 = 100f32.ln();
    scale_mul.iter().map(|s| s.min(ln_100).exp()).collect()
}

/// cat(q_bias, 0, v_bias): the fused qkv bias (K has none).
pub(crate) fn qkv_bias(attn: &Loader, c: usize) -> Result<Tensor> {
    let mut bias = vec![0f32; 3 * c];
    bias[..c].copy_from_slice(&attn.host("q_bias", &[c])?);
    bias[2 * c..].copy_from_slice(&attn.host("v_bias", &[c])?);
    attn.accept("zero_k_bias", &[c]);
    attn.upload(&[3 * c], &bias)
}

impl VarModel {
    /// Loads the transformer from a state_dict with official key names; `dtype` is the storage type
    /// of weights and activations (f16 needs SHADER_F16).
    pub fn from_state_dict(device: &Device, sd: &dyn Weights, dtype: DType) -> Result<Self> {
        check_model_dtype(dtype, "VarModel")?;
        let config = VarConfig::infer(sd)?;
        let c = config.width;
        let lp = Loader::new(device, sd, dtype);
        // The attention temperatures stay f32.
        let lp32 = lp.with_dtype(DType::F32);
        let io = VarIo::load(&lp, &config)?;
        let shared_ada = if config.shared_adaln {
            let shared = lp.pp("shared_ada_lin.1");
            Some((shared.tensor("weight", &[6 * c, c])?, shared.tensor("bias", &[6 * c])?))
        } else {
            None
        };
        // NaN temperatures never get here: the loader refuses non-finite weights (unless allowed).
        let mut blocks = Vec::with_capacity(config.depth);
        for i in 0..config.depth {
            let block = lp.pp("blocks").pp(i);
            let (attn, ffn) = (block.pp("attn"), block.pp("ffn"));
            let (ada_weight, ada_bias) = if config.shared_adaln {
                (None, block.tensor_as("ada_gss", &[1, 1, 6, c], &[6 * c])?)
            } else {
                let ada = block.pp("ada_lin.1");
                (Some(ada.tensor("weight", &[6 * c, c])?), ada.tensor("bias", &[6 * c])?)
            };
            let scales = attention_temperatures(&attn.host("scale_mul_1H11", &[1, config.heads, 1, 1])?);
            blocks.push(VarBlock {
                ada_weight,
                ada_bias,
                qkv_weight: attn.tensor("mat_qkv.weight", &[3 * c, c])?,
                qkv_bias: qkv_bias(&attn, c)?,
                head_scale: lp32.upload(&[config.heads], &scales)?,
                proj_weight: attn.tensor("proj.weight", &[c, c])?,
                proj_bias: attn.tensor("proj.bias", &[c])?,
                fc1_weight: ffn.tensor("fc1.weight", &[config.mlp_hidden, c])?,
                fc1_bias: ffn.tensor("fc1.bias", &[config.mlp_hidden])?,
                fc2_weight: ffn.tensor("fc2.weight", &[c, config.mlp_hidden])?,
                fc2_bias: ffn.tensor("fc2.bias", &[c])?,
            });
        }
        let model = Self { dtype, device: device.clone(), io, shared_ada, blocks, config };
        lp.finish()?;
        Ok(model)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache for `rows` sequences (2B with CFG) over the whole schedule.
    pub fn new_cache(&self, rows: usize) -> Result<VarKvCache> {
        let capacity = self.config.seq_len();
        let shape = [rows, capacity, self.config.heads, self.config.head_dim];
        let mut k = Vec::with_capacity(self.config.depth);
        let mut v = Vec::with_capacity(self.config.depth);
        for _ in 0..self.config.depth {
            k.push(Tensor::empty(&self.device, &shape, self.dtype)?);
            v.push(Tensor::empty(&self.device, &shape, self.dtype)?);
        }
        Ok(VarKvCache { k, v, len: 0, capacity })
    }

    /// The AdaLN parameters for class labels (2B with CFG: conditional labels, then the null class).
    pub fn conditions(&self, labels: &[u32]) -> Result<VarConditions> {
        self.io.conditions(labels, "VarModel::conditions", |act| {
            let shared = match &self.shared_ada {
                Some((w, b)) => Some(linear(act, w, Some(b))?),
                None => None,
            };
            self.blocks
                .iter()
                .map(|block| match (&block.ada_weight, &shared) {
                    (Some(w), _) => linear(act, w, Some(&block.ada_bias)),
                    (None, Some(shared)) => add(shared, &block.ada_bias),
                    (None, None) => unreachable!("blocks without ada_lin only exist with the shared AdaLN"),
                })
                .collect()
        })
    }

    /// The input of scale 0: cond + pos_start + lvl_pos[0], (2B, 1, C).
    pub fn first_input(&self, conditions: &VarConditions) -> Result<Tensor> {
        self.io.first_input(conditions)
    }

    /// The input of scale `si` > 0 from the VQVAE's next token map (B, n, Cvae): word_embed + the
    /// scale's position embeddings, duplicated for the CFG halves when `cfg_halves` is set.
    pub fn scale_input(&self, si: usize, token_map: &Tensor, cfg_halves: bool) -> Result<Tensor> {
        self.io.scale_input(si, token_map, cfg_halves, "VarModel::scale_input")
    }

    /// Runs every block on the new tokens x (2B, n, C), appending their keys and values to the cache,
    /// and returns the f32 logits (2B, n, V).
    pub fn forward(&self, x: &Tensor, conditions: &VarConditions, cache: &mut VarKvCache) -> Result<Tensor> {
        let [rows, tokens, width] = x.dims("VarModel::forward", "x (2B, n, C)")?;
        if width != self.config.width
            || rows != conditions.cond.shape()[0]
            || cache.k.first().is_some_and(|k| k.shape()[0] != rows)
        {
            return Err(Error::ShapeMismatch {
                op: "VarModel::forward",
                lhs: x.shape().to_vec(),
                rhs: conditions.cond.shape().to_vec(),
                detail: "x, the conditions and the cache must agree in rows and width".into(),
            });
        }
        // Conditions and caches are plain values a caller may take from another model: one of another
        // depth would index past its blocks.
        let depth = self.blocks.len();
        if conditions.blocks.len() != depth || cache.k.len() != depth || cache.v.len() != depth {
            return Err(Error::InvalidArgument {
                op: "VarModel::forward",
                msg: format!(
                    "the model has {depth} blocks, the conditions {} and the cache {}: they come from another model",
                    conditions.blocks.len(),
                    cache.k.len().min(cache.v.len())
                ),
            });
        }
        let cache_shape = [rows, cache.capacity, self.config.heads, self.config.head_dim];
        if let Some(k) = cache.k.iter().chain(&cache.v).find(|k| k.shape() != cache_shape) {
            return Err(Error::ShapeMismatch {
                op: "VarModel::forward",
                lhs: cache_shape.to_vec(),
                rhs: k.shape().to_vec(),
                detail: "the cache must be (rows, capacity, heads, head_dim) of this model".into(),
            });
        }
        if cache.len.checked_add(tokens).is_none_or(|end| end > cache.capacity) {
            return Err(Error::InvalidArgument {
                op: "VarModel::forward",
                msg: format!("{tokens} new tokens do not fit the cache ({} of {} used)", cache.len, cache.capacity),
            });
        }
        let mut x = x.clone();
        for (i, block) in self.blocks.iter().enumerate() {
            let [gamma1, gamma2, scale1, scale2, shift1, shift2] = &conditions.blocks[i];
            let h = adaln_layer_norm(&x, scale1, shift1, LN_EPS)?;
            let qkv = linear(&h, &block.qkv_weight, Some(&block.qkv_bias))?;
            // Cosine attention: the temperature is in q, the softmax scale is 1.
            let qkv_heads = QkvHeads {
                qkv: &qkv,
                heads: self.config.heads,
                l2_norm: true,
                head_scale: &block.head_scale,
                k_cache: &cache.k[i],
                v_cache: &cache.v[i],
                start: cache.len,
            };
            let o = qkv_attention(&qkv_heads, 1.0)?.reshape(&[rows, tokens, width])?;
            x = linear_gated_residual(&o, &block.proj_weight, Some(&block.proj_bias), &x, gamma1)?;
            let h = adaln_layer_norm(&x, scale2, shift2, LN_EPS)?;
            let h = linear_gelu(&h, &block.fc1_weight, Some(&block.fc1_bias))?;
            x = linear_gated_residual(&h, &block.fc2_weight, Some(&block.fc2_bias), &x, gamma2)?;
        }
        cache.len += tokens;
        self.io.logits(&x, conditions)
    }
}
