//! The multi-scale VQVAE of VAR (spec VAR.md section 5) for generation: codebook lookup, the Phi
//! residual convolutions with their fixed scale table, f_hat accumulation, the next scale's input, and
//! the decoder. The architecture (widths, blocks per level, attention levels, codebook) is read from
//! the tensor shapes, so the official vae_ch160v4096z32 and smaller variants load alike.

use super::Loader;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::matmul::MatmulOptions;
use crate::ops::{
    add, conv2d, downsample_area, embedding_channels_first, group_norm, matmul_with, silu, softmax_scaled,
    upsample_bicubic, upsample_nearest2x,
};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// GroupNorm of every decoder norm: 32 groups, eps 1e-6.
pub const GROUPS: usize = 32;
pub const GN_EPS: f32 = 1e-6;

/// The Phi index of each scale for the official 10-scale schedule with 4 convs. argmin over
/// linspace(1/12, 11/12, 4) has two exact ties in real arithmetic, so the official table is used as is.
pub const PHI_TABLE_10: [usize; 10] = [0, 0, 1, 1, 1, 2, 2, 3, 3, 3];

/// The Phi conv used at scale `si` of `scales` with `convs` partially shared convs: the official
/// numpy computation argmin |linspace(1/3/K, 1 - 1/3/K, K) - si / (SN - 1)| in float64 (first
/// minimum), with the official table for 10 scales and 4 convs.
pub fn phi_index(si: usize, scales: usize, convs: usize) -> usize {
    if convs <= 1 {
        return 0;
    }
    if scales == 10
        && convs == 4
        && let Some(&index) = PHI_TABLE_10.get(si)
    {
        return index;
    }
    let at = if scales > 1 { si as f64 / (scales - 1) as f64 } else { 0.0 };
    // numpy.linspace: start + i * step, the last tick exactly `stop`.
    let start = 1.0 / 3.0 / convs as f64;
    let stop = 1.0 - 1.0 / 3.0 / convs as f64;
    let step = (stop - start) / (convs - 1) as f64;
    let tick = |i: usize| if i == convs - 1 { stop } else { i as f64 * step + start };
    let mut best = 0;
    for i in 1..convs {
        if (tick(i) - at).abs() < (tick(best) - at).abs() {
            best = i;
        }
    }
    best
}

/// What the shapes of a VQVAE checkpoint say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VqVaeConfig {
    pub vocab: usize,
    /// Latent (codebook vector) channels.
    pub cvae: usize,
    /// Phi convolutions (quant_resi).
    pub phi_convs: usize,
    /// Channels of each decoder level, level 0 (full resolution) first.
    pub level_channels: Vec<usize>,
    /// ResBlocks per decoder level.
    pub blocks_per_level: usize,
    /// Levels with an AttnBlock after each ResBlock.
    pub attn_levels: Vec<usize>,
    pub mid_attention: bool,
}

/// The most decoder levels a VQVAE may have: each doubles the image side (the official one has 5, so
/// 16 pixels per token); more would overflow the size arithmetic long before it made sense.
const MAX_LEVELS: usize = 12;

impl VqVaeConfig {
    /// Pixels per latent token along each axis.
    pub fn upscale(&self) -> usize {
        1 << (self.level_channels.len().saturating_sub(1))
    }

    /// The largest buffer [`VqVae::decode`] makes for one image of `image` x `image` pixels, in
    /// bytes at 4 per element (the bound, whatever the storage type): level i runs at image / 2^i
    /// pixels a side with its own channels, after taking the level above's there (its upsampled
    /// output) into its first block; an AttnBlock adds its fused q, k, v and its (HW x HW) scores.
    /// The widest level's channels at full resolution, which this replaced, was 4x the official
    /// VQVAE's largest (640 channels live at 16 x 16, not at 256 x 256): a 167772160-byte bound that
    /// refused official models on adapters binding 128 MiB.
    pub fn largest_decode_buffer(&self, image: usize) -> u64 {
        let levels = self.level_channels.len();
        (0..levels)
            .map(|i| {
                let side = (image >> i) as u64;
                let pixels = side.saturating_mul(side);
                let c = self.level_channels[i] as u64;
                let input = self.level_channels.get(i + 1).map_or(c, |&above| above as u64);
                let attention = self.attn_levels.contains(&i) || (i + 1 == levels && self.mid_attention);
                let attention_bytes = if attention { (3 * c).max(pixels).saturating_mul(pixels) } else { 0 };
                pixels.saturating_mul(c.max(input)).max(attention_bytes).saturating_mul(4)
            })
            .max()
            .unwrap_or(0)
    }
}

struct Conv {
    weight: Tensor,
    bias: Tensor,
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

struct ResBlock {
    norm1: Norm,
    conv1: Conv,
    norm2: Norm,
    conv2: Conv,
    shortcut: Option<Conv>,
}

/// The decoder's single-head spatial self-attention block (public so it can be checked alone).
pub struct AttnBlock {
    channels: usize,
    norm: Norm,
    qkv: Conv,
    proj_out: Conv,
}

struct UpLevel {
    blocks: Vec<ResBlock>,
    attn: Vec<AttnBlock>,
    upsample: Option<Conv>,
}

pub struct VqVae {
    pub config: VqVaeConfig,
    pub dtype: DType,
    device: Device,
    codebook: Tensor,
    /// Phi_k folded into one conv: 0.5 x + 0.5 conv(x) = conv'(x) with the identity added to the centre tap.
    phi: Vec<Conv>,
    post_quant_conv: Conv,
    conv_in: Conv,
    mid: (ResBlock, Option<AttnBlock>, ResBlock),
    /// Level 0 first; decoding runs them from the last to the first.
    up: Vec<UpLevel>,
    norm_out: Norm,
    conv_out: Conv,
}

fn weights_error(missing: Vec<String>, misshaped: Vec<(String, Vec<usize>, Vec<usize>)>) -> Error {
    Error::Weights { prefix: String::new(), missing, unexpected: Vec::new(), misshaped }
}

/// Keys a VQVAE checkpoint may hold that generation does not use.
fn unused_vae_key(key: &str) -> bool {
    key.starts_with("encoder.") || key.starts_with("quant_conv.") || key == "quantize.ema_vocab_hit_SV"
}

impl VqVaeConfig {
    pub fn infer(sd: &dyn Weights) -> Result<Self> {
        let bad = |reason: String| Error::InvalidArgument { op: "VQVAE checkpoint", msg: reason };
        let Some(codebook) = sd.shape("quantize.embedding.weight") else {
            if sd.contains("class_emb.weight") || sd.contains("blocks.0.attn.mat_qkv.weight") {
                return Err(bad(
                    "this is a transformer checkpoint (VAR or M-VAR: it holds class_emb and blocks.* keys), not the VQVAE: \
                     pass it as --var (the app's VAR field) and the vae_ch160v4096z32.pth file as --vae (the VAE field)"
                        .into(),
                ));
            }
            return Err(bad(format!(
                "not a VQVAE checkpoint: quantize.embedding.weight is missing (the file has {} tensors)",
                sd.len()
            )));
        };
        let &[vocab, cvae] = codebook else {
            return Err(bad(format!(
                "quantize.embedding.weight has shape {:?}: expected a matrix (codebook size, channels)",
                codebook
            )));
        };
        if vocab == 0 || cvae == 0 {
            return Err(bad(format!(
                "quantize.embedding.weight has shape {codebook:?}: the codebook needs at least one entry of at least \
                 one channel"
            )));
        }
        let phi_convs = (0..).take_while(|k| sd.contains(&format!("quantize.quant_resi.qresi_ls.{k}.weight"))).count();
        if phi_convs == 0 {
            return Err(weights_error(vec!["quantize.quant_resi.qresi_ls.0.weight".into()], vec![]));
        }
        let levels = (0..).take_while(|i| sd.contains(&format!("decoder.up.{i}.block.0.conv1.weight"))).count();
        if levels == 0 {
            return Err(weights_error(vec!["decoder.up.0.block.0.conv1.weight".into()], vec![]));
        }
        let blocks_per_level =
            (0..).take_while(|j| sd.contains(&format!("decoder.up.0.block.{j}.conv1.weight"))).count();
        if levels > MAX_LEVELS {
            return Err(bad(format!(
                "the decoder has {levels} levels (decoder.up.*); at most {MAX_LEVELS} are supported (the official VQVAE \
                 has 5)"
            )));
        }
        let mut level_channels = Vec::with_capacity(levels);
        for i in 0..levels {
            let key = format!("decoder.up.{i}.block.0.conv1.weight");
            match sd.require_shape("", &key)? {
                &[out, _, _, _] => level_channels.push(out),
                other => return Err(bad(format!("{key} has shape {other:?}: expected a 4-dimensional conv weight"))),
            }
        }
        if let Some(&c) = level_channels.iter().find(|&&c| c == 0 || !c.is_multiple_of(GROUPS)) {
            return Err(bad(format!("decoder level width {c} is not a positive multiple of the {GROUPS} norm groups")));
        }
        let attn_levels = (0..levels).filter(|i| sd.contains(&format!("decoder.up.{i}.attn.0.qkv.weight"))).collect();
        let config = VqVaeConfig {
            vocab,
            cvae,
            phi_convs,
            level_channels,
            blocks_per_level,
            attn_levels,
            mid_attention: sd.contains("decoder.mid.attn_1.qkv.weight"),
        };
        Ok(config)
    }
}

impl VqVae {
    pub fn from_state_dict(device: &Device, sd: &dyn Weights, dtype: DType) -> Result<Self> {
        if !dtype.is_float() {
            return Err(Error::InvalidArgument { op: "VqVae", msg: format!("dtype must be f32 or f16, got {dtype}") });
        }
        let config = VqVaeConfig::infer(sd)?;
        let lp = Loader::new(device, sd, dtype);
        // The encoder, quant_conv and the training statistics are accepted and ignored.
        lp.accept_if(unused_vae_key);
        let z = config.cvae;
        let levels = config.level_channels.len();
        let top = *config.level_channels.last().expect("inferred levels");
        let codebook = lp.tensor("quantize.embedding.weight", &[config.vocab, z])?;
        let mut phi = Vec::with_capacity(config.phi_convs);
        for k in 0..config.phi_convs {
            let p = lp.pp("quantize.quant_resi.qresi_ls").pp(k);
            let mut weight: Vec<f32> = p.host("weight", &[z, z, 3, 3])?.iter().map(|v| 0.5 * v).collect();
            for c in 0..z {
                // Centre tap of output c from input c.
                weight[(c * z + c) * 9 + 4] += 0.5;
            }
            let bias: Vec<f32> = p.host("bias", &[z])?.iter().map(|v| 0.5 * v).collect();
            phi.push(Conv { weight: p.upload(&[z, z, 3, 3], &weight)?, bias: p.upload(&[z], &bias)? });
        }
        let post_quant_conv = Conv::load(&lp.pp("post_quant_conv"), z, z, 3)?;
        let dec = lp.pp("decoder");
        let conv_in = Conv::load(&dec.pp("conv_in"), top, z, 3)?;
        let mid = dec.pp("mid");
        let mid = (
            ResBlock::load(&mid.pp("block_1"), top, top)?,
            if config.mid_attention { Some(AttnBlock::load(&mid.pp("attn_1"), top)?) } else { None },
            ResBlock::load(&mid.pp("block_2"), top, top)?,
        );
        // Decoding runs from the last level (fed by the middle at `top` channels) to level 0.
        let up = (0..levels)
            .map(|i| -> Result<UpLevel> {
                let level = dec.pp("up").pp(i);
                let c = config.level_channels[i];
                let input = config.level_channels[(i + 1).min(levels - 1)];
                Ok(UpLevel {
                    blocks: (0..config.blocks_per_level)
                        .map(|j| ResBlock::load(&level.pp("block").pp(j), if j == 0 { input } else { c }, c))
                        .collect::<Result<_>>()?,
                    attn: if config.attn_levels.contains(&i) {
                        (0..config.blocks_per_level)
                            .map(|j| AttnBlock::load(&level.pp("attn").pp(j), c))
                            .collect::<Result<_>>()?
                    } else {
                        Vec::new()
                    },
                    upsample: if i != 0 { Some(Conv::load(&level.pp("upsample.conv"), c, c, 3)?) } else { None },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let c0 = config.level_channels[0];
        let vae = Self {
            dtype,
            device: device.clone(),
            codebook,
            phi,
            post_quant_conv,
            conv_in,
            mid,
            up,
            norm_out: Norm::load(&dec.pp("norm_out"), c0)?,
            conv_out: Conv::load(&dec.pp("conv_out"), 3, c0, 3)?,
            config,
        };
        lp.finish()?;
        Ok(vae)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The codebook (V, Cvae).
    pub fn codebook(&self) -> &Tensor {
        &self.codebook
    }

    /// Codebook vectors of token ids (B, n) as a map (B, Cvae, side, side), n = side^2 row-major.
    pub fn lookup(&self, ids: &Tensor, side: usize) -> Result<Tensor> {
        let [_, n] = ids.dims("VqVae::lookup", "ids (B, n)")?;
        // Checked: a side whose square wraps past usize could match n.
        if side.checked_mul(side) != Some(n) {
            return Err(Error::InvalidArgument {
                op: "VqVae::lookup",
                msg: format!("{n} tokens are not a {side} x {side} map"),
            });
        }
        embedding_channels_first(ids, &self.codebook)?.reshape(&[ids.shape()[0], self.config.cvae, side, side])
    }

    /// (B, n, Cvae) token vectors -> (B, Cvae, side, side).
    pub fn tokens_to_map(&self, tokens: &Tensor, side: usize) -> Result<Tensor> {
        let [batch, _, _] = tokens.dims("VqVae::tokens_to_map", "tokens (B, n, Cvae)")?;
        tokens.transpose_last2()?.reshape(&[batch, self.config.cvae, side, side])
    }

    /// f_hat (B, Cvae, S, S) += Phi_si(h upsampled bicubically to S x S) for scale `si` of `scales`
    /// (no upsampling when h is already S x S, the last scale).
    pub fn accumulate(&self, f_hat: &Tensor, h: &Tensor, si: usize, scales: usize) -> Result<Tensor> {
        const OP: &str = "VqVae::accumulate";
        if si >= scales {
            return Err(Error::InvalidArgument { op: OP, msg: format!("scale {si} of {scales} scales") });
        }
        let [_, _, side_h, side_w] = f_hat.dims(OP, "f_hat (B, Cvae, S, S)")?;
        let [_, _, h_h, h_w] = h.dims(OP, "h (B, Cvae, s, s)")?;
        let h = if [h_h, h_w] == [side_h, side_w] { h.clone() } else { upsample_bicubic(h, side_h, side_w)? };
        let phi = &self.phi[phi_index(si, scales, self.phi.len())];
        add(f_hat, &conv2d(&h, &phi.weight, Some(&phi.bias))?)
    }

    /// The next scale's VAR input: f_hat area-downsampled to side x side, as tokens (B, side^2, Cvae).
    pub fn next_token_map(&self, f_hat: &Tensor, side: usize) -> Result<Tensor> {
        let [batch, _, h, w] = f_hat.dims("VqVae::next_token_map", "f_hat (B, Cvae, S, S)")?;
        let small = if [h, w] == [side, side] { f_hat.clone() } else { downsample_area(f_hat, side, side)? };
        small.reshape(&[batch, self.config.cvae, side * side])?.transpose_last2()
    }

    /// decoder(post_quant_conv(f_hat)): (B, Cvae, h, w) -> (B, 3, h * up, w * up), unclamped, in the
    /// model's [-1, 1] range.
    pub fn decode(&self, f_hat: &Tensor) -> Result<Tensor> {
        let x = apply_conv(&f_hat.to_dtype(self.dtype)?, &self.post_quant_conv)?;
        let mut h = apply_conv(&x, &self.conv_in)?;
        h = self.mid.0.forward(&h)?;
        if let Some(attn) = &self.mid.1 {
            h = attn.forward(&h)?;
        }
        h = self.mid.2.forward(&h)?;
        for level in self.up.iter().rev() {
            for (j, block) in level.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                if let Some(attn) = level.attn.get(j) {
                    h = attn.forward(&h)?;
                }
            }
            if let Some(conv) = &level.upsample {
                h = apply_conv(&upsample_nearest2x(&h)?, conv)?;
            }
        }
        let h = silu(&self.norm_out.apply(&h)?)?;
        apply_conv(&h, &self.conv_out)
    }
}

impl Conv {
    /// `weight` (cout, cin, k, k) and `bias` (cout).
    fn load(lp: &Loader, cout: usize, cin: usize, k: usize) -> Result<Self> {
        Ok(Conv { weight: lp.tensor("weight", &[cout, cin, k, k])?, bias: lp.tensor("bias", &[cout])? })
    }
}

fn apply_conv(x: &Tensor, conv: &Conv) -> Result<Tensor> {
    conv2d(x, &conv.weight, Some(&conv.bias))
}

impl Norm {
    /// GroupNorm `weight` and `bias`, (c) each.
    fn load(lp: &Loader, c: usize) -> Result<Self> {
        Ok(Norm { weight: lp.tensor("weight", &[c])?, bias: lp.tensor("bias", &[c])? })
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        group_norm(x, GROUPS, Some(&self.weight), Some(&self.bias), GN_EPS)
    }
}

impl ResBlock {
    /// norm1, conv1, norm2, conv2, and the 1x1 nin_shortcut when the width changes.
    fn load(lp: &Loader, cin: usize, cout: usize) -> Result<Self> {
        Ok(ResBlock {
            norm1: Norm::load(&lp.pp("norm1"), cin)?,
            conv1: Conv::load(&lp.pp("conv1"), cout, cin, 3)?,
            norm2: Norm::load(&lp.pp("norm2"), cout)?,
            conv2: Conv::load(&lp.pp("conv2"), cout, cout, 3)?,
            shortcut: if cin != cout { Some(Conv::load(&lp.pp("nin_shortcut"), cout, cin, 1)?) } else { None },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = apply_conv(&silu(&self.norm1.apply(x)?)?, &self.conv1)?;
        let h = apply_conv(&silu(&self.norm2.apply(&h)?)?, &self.conv2)?;
        let skip = match &self.shortcut {
            Some(conv) => apply_conv(x, conv)?,
            None => x.clone(),
        };
        add(&skip, &h)
    }
}

impl AttnBlock {
    /// Loads `{prefix}norm`, `{prefix}qkv` and `{prefix}proj_out` for `channels` channels: a missing or
    /// mis-shaped key is an error, other keys under `prefix` are ignored.
    pub fn from_state_dict(
        device: &Device,
        sd: &dyn Weights,
        prefix: &str,
        channels: usize,
        dtype: DType,
    ) -> Result<Self> {
        let lp = Loader::new_with_prefix(device, sd, prefix, dtype);
        let block = Self::load(&lp, channels)?;
        lp.accept_if(|_| true);
        lp.finish()?;
        Ok(block)
    }

    /// The block under `lp`'s prefix for `channels` channels.
    pub fn load(lp: &Loader, channels: usize) -> Result<Self> {
        let c = channels;
        Ok(AttnBlock {
            channels,
            norm: Norm::load(&lp.pp("norm"), c)?,
            qkv: Conv::load(&lp.pp("qkv"), 3 * c, c, 1)?,
            proj_out: Conv::load(&lp.pp("proj_out"), c, c, 1)?,
        })
    }

    /// Single-head attention over the H * W positions, scale C^-0.5, with a residual.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [batch, c, height, width] = x.dims("AttnBlock", "x (B, C, H, W)")?;
        if c != self.channels {
            return Err(Error::InvalidArgument {
                op: "AttnBlock",
                msg: format!("x has {c} channels, the block {}", self.channels),
            });
        }
        let hw = height * width;
        let qkv = apply_conv(&self.norm.apply(x)?, &self.qkv)?.reshape(&[batch, 3 * c, hw])?;
        let [q, k, v] = qkv.split(1, [c; 3])?;
        let transpose_b = MatmulOptions { transpose_b: true, ..Default::default() };
        // scores (B, HW, HW) = q^T k
        let scores = matmul_with(&q.transpose_last2()?, &k.transpose_last2()?, &transpose_b)?;
        let weights = softmax_scaled(&scores, (self.channels as f32).powf(-0.5))?;
        // out (B, C, HW) = v weights^T
        let out = matmul_with(&v, &weights, &transpose_b)?.reshape(&[batch, c, height, width])?;
        add(x, &apply_conv(&out, &self.proj_out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::VqVaeConfig;

    fn config(level_channels: &[usize], attn_levels: &[usize], mid_attention: bool) -> VqVaeConfig {
        VqVaeConfig {
            vocab: 4096,
            cvae: 32,
            phi_convs: 4,
            level_channels: level_channels.to_vec(),
            blocks_per_level: 3,
            attn_levels: attn_levels.to_vec(),
            mid_attention,
        }
    }

    #[test]
    fn the_largest_decode_buffer_is_the_widest_activation_at_its_own_resolution() {
        // The official VQVAE at 256 px: 160 channels at 256 x 256 (the 640 live at 16 x 16).
        let official = config(&[160, 160, 320, 320, 640], &[], true);
        assert_eq!(official.largest_decode_buffer(256), 256 * 256 * 160 * 4);
        // A level takes the level above's channels at its own resolution: 64 x 64 x 512 here.
        assert_eq!(config(&[32, 512], &[], false).largest_decode_buffer(64), 64 * 64 * 512 * 4);
        // An AttnBlock's (HW x HW) scores at 32 x 32 outgrow every activation.
        assert_eq!(config(&[8, 8], &[0], false).largest_decode_buffer(32), 1024 * 1024 * 4);
        // The middle's attention at the top level: its fused q, k, v (3 x 640 channels at 4 x 4;
        // with a level below, that level's upsampled input, 4x the pixels, is larger).
        assert_eq!(config(&[640], &[], true).largest_decode_buffer(4), 3 * 640 * 16 * 4);
        assert_eq!(config(&[16, 640], &[], true).largest_decode_buffer(8), 8 * 8 * 640 * 4);
    }
}
